"""The math on both sides of the cut that either party may run: decode a cut activation and render it.

The client renders its training batches and evaluation views with it; an attacker's surrogate head renders
the same way. Neither side's role code lives here.
"""

from __future__ import annotations

import numpy as np
import torch

from torch import nn

from privnerf.fields.grid_field import (GridFieldConfig, decode_cut, deferred_shading, make_feature_out, make_key,
                                       make_rgb_net)
from privnerf.render.renderer import composite_samples
from privnerf.render.sampler import Samples


class ClientHead(nn.Module):
    """The client half of a :class:`~privnerf.fields.grid_field.GridField`: the feature decoder (with
    ``cut_width``) and the view-dependent head. Parameter names match the field's, and it is built in the
    field's order, so after ``torch.manual_seed(seed)`` it equals the head of a field built from that seed.
    With ``cfg.key_cells`` it also holds a key (:class:`~privnerf.fields.keyed.KeyedRotation`) over ``box``, the
    field's working box, and decoding needs the samples' positions."""

    def __init__(self, cfg: GridFieldConfig, box: torch.Tensor | None = None):
        super().__init__()
        self.rgb_net = make_rgb_net(cfg)
        self.feature_out = make_feature_out(cfg)
        self.dir_freqs = cfg.dir_freqs
        self.key = make_key(cfg, box)


def render_activations(head: ClientHead, shift: float, h: torch.Tensor, s: Samples, dirs: torch.Tensor,
                       background: torch.Tensor, xs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The client half of rendering: cut activation ``h (m, C)`` at packed samples ``s`` on rays ``dirs (n, 3)``
    → ``rgb (n, 3)``, ``opacity (n,)``, ``depth (n,)``. An attacker's surrogate head renders the same way.
    A keyed head also needs the samples' working-box positions ``xs (m, 3)``."""
    sigma, values = decode_cut(h, shift, head.feature_out, head.key, xs)
    return composite_samples(sigma, values, s, dirs,
                             lambda c, o, d: deferred_shading(head.rgb_net, head.dir_freqs, c, o, d), background)


def unpack_activations(arrays: dict[str, np.ndarray], device
                       ) -> tuple[torch.Tensor, Samples, torch.Tensor, torch.Tensor]:
    """An ``activations`` message → ``h (m, C)``, the samples, ``dirs (n, 3)`` and ``xs`` (``(m, 3)``, or
    ``(0, 3)`` when the server sent no positions)."""
    t = lambda a, dt=torch.float32: torch.from_numpy(np.asarray(a)).to(device=device, dtype=dt)  # noqa: E731
    s = Samples(t(arrays["ray"], torch.long), t(arrays["t"]), t(arrays["delta"]))
    n = arrays["dirs"].shape[0]
    if len(s) and (s.ray_idx.min() < 0 or s.ray_idx.max() >= n or bool((s.ray_idx[1:] < s.ray_idx[:-1]).any())):
        raise ValueError("server activations: sample ray indices are out of range or not sorted by ray")
    if arrays["h"].shape[0] != len(s):
        raise ValueError("server activations: h and the sample packing differ in length")
    if arrays["xs"].shape[1:] != (3,) or arrays["xs"].shape[0] not in (0, len(s)):
        raise ValueError(f"server activations: positions xs {arrays['xs'].shape} for {len(s)} samples")
    return t(arrays["h"]), s, t(arrays["dirs"]), t(arrays["xs"])
