"""Defenses a split-learning client applies to the cut gradient before it leaves the device.

Every defense maps the clean cut gradient ``g: (m, C)`` (one row per shaded sample point) to the tensor that
is sent. The server trains on what is sent, so every defense costs utility; the attacker sees exactly what
the server sees.

* ``none`` — the clean gradient.
* ``s2nerf`` — S²NeRF's decaying noise (official code, ``noise_type=random``):
  ``sigma_t = c * max_i ||g_i||_2 * r ** min(t / T, 1)``, ``g + N(0, sigma_t^2)`` on every entry. With
  ``mix`` (the official ``mix`` type) entries whose forward activation is exactly zero get an extra, huge
  noise ``c * max_i ||g_i|| * partial_scale``: a ReLU at the server's side of the cut discards those entries,
  so the noise costs the server nothing but ruins gradient matching. It needs such a ReLU (``--cut-width``
  > 0); on the default grid cut no activation is a dead ReLU and ``mix`` is refused.
* ``s2nerf-light`` — ours, for constrained clients (the paper names a light version but the available
  sources do not define it): the same ``sigma_t``, but noise only on a random ``light_fraction`` of the sample
  rows per step, so the client draws that fraction of the normals. What it gives up: the other rows cross
  clean, so the attacker gets a clean gradient for most points of each batch (measured in BENCHMARKS.md).
* ``gaussian`` — fixed-sigma Gaussian noise (the DP-style baseline without clipping): ``sigma`` is set once,
  at the first step, to ``c * max_i ||g_i||`` and stays constant, whatever the gradients do later.
* ``prune`` — gradient pruning (as DLG evaluated it): zero the ``prune_ratio`` smallest-magnitude entries;
  with ``clip`` > 0 each row is first clipped to ``clip *`` the median row norm (the official code's
  ``--gradient_clip``).

NaN entries are zeroed first (as the official code does) for every defense but ``none``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

DefenseName = Literal["none", "s2nerf", "s2nerf-light", "gaussian", "prune"]


@dataclass
class DefenseConfig:
    name: DefenseName = "none"
    c: float = 1.0
    """Noise scale: sigma is this multiple of the batch's largest per-sample gradient norm."""
    r: float = 0.01
    """S²NeRF decay ratio: sigma falls exponentially from c·max‖g‖ to r·c·max‖g‖ over the run, then stays."""
    mix: bool = False
    """S²NeRF ``mix``: also drown the gradient entries whose activation is zero (needs a ReLU cut)."""
    partial_scale: float = 1e4
    light_fraction: float = 0.25
    """s2nerf-light: share of sample rows that get noise each step."""
    prune_ratio: float = 0.9
    """prune: share of entries zeroed (smallest magnitudes)."""
    clip: float = 0.0
    """prune: clip each row's norm to this multiple of the median row norm first (0 = no clipping)."""


def _row_norm_max(g: torch.Tensor) -> torch.Tensor:
    return g.norm(dim=1).max() if g.numel() else g.new_zeros(())


class GradientDefense:
    """Stateful transform of cut gradients; ``total_steps`` is T in the S²NeRF schedule."""

    def __init__(self, cfg: DefenseConfig, total_steps: int, generator: torch.Generator | None = None):
        if cfg.name not in ("none", "s2nerf", "s2nerf-light", "gaussian", "prune"):
            raise ValueError(f"unknown defense {cfg.name!r}")
        if cfg.c < 0 or cfg.r <= 0:
            raise ValueError(f"defense needs c >= 0 and r > 0, got c={cfg.c}, r={cfg.r}")
        if not 0.0 <= cfg.prune_ratio < 1.0 or not 0.0 < cfg.light_fraction <= 1.0:
            raise ValueError("prune_ratio must be in [0, 1) and light_fraction in (0, 1]")
        self.cfg = cfg
        self.total_steps = max(int(total_steps), 1)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(12345)
        self.fixed_sigma: float | None = None
        self.last_sigma = 0.0

    def decay(self, step: int) -> float:
        """``r ** min(t / T, 1)``."""
        return self.cfg.r ** min(step / self.total_steps, 1.0)

    def _normal(self, shape, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator).to(like)

    def __call__(self, g: torch.Tensor, activation: torch.Tensor | None, step: int) -> torch.Tensor:
        """Defended gradient ``(m, C)`` for clean ``g`` ``(m, C)`` at training step ``step``.

        ``activation`` (the cut activation the gradient belongs to) is needed only by ``mix``.
        """
        cfg = self.cfg
        if cfg.name == "none":
            self.last_sigma = 0.0
            return g
        g = torch.nan_to_num(g, nan=0.0)
        if cfg.name == "prune":
            return self._prune(g)
        gmax = float(_row_norm_max(g))
        if cfg.name == "gaussian":
            if self.fixed_sigma is None:
                self.fixed_sigma = cfg.c * gmax
            sigma = self.fixed_sigma
        else:
            sigma = cfg.c * gmax * self.decay(step)
        self.last_sigma = sigma
        if cfg.name == "s2nerf-light":
            rows = torch.rand(g.shape[0], generator=self.generator) < cfg.light_fraction
            idx = rows.nonzero()[:, 0].to(g.device)
            out = g.clone()
            out[idx] += sigma * self._normal((len(idx), g.shape[1]), g)
            return out
        noise = sigma * self._normal(g.shape, g)
        if cfg.mix:
            if activation is None or activation.shape != g.shape:
                raise ValueError("the mix defense needs the cut activation of the same shape as the gradient")
            dead = activation == 0
            if not bool(dead.any()):
                raise ValueError("the mix defense found no zero activations: it needs a ReLU at the cut "
                                 "(split --cut-width > 0)")
            noise = torch.where(dead, cfg.c * gmax * cfg.partial_scale * self._normal(g.shape, g), noise)
        return g + noise

    def _prune(self, g: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.clip > 0 and g.shape[0]:
            norms = g.norm(dim=1, keepdim=True)
            bound = cfg.clip * norms.median()
            g = g * torch.clamp(bound / norms.clamp(min=1e-30), max=1.0)
        k = int(math.floor(cfg.prune_ratio * g.numel()))
        if k <= 0:
            return g
        flat = g.abs().flatten()
        threshold = flat.kthvalue(k).values
        return torch.where(g.abs() > threshold, g, torch.zeros_like(g))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "fixed_sigma": self.fixed_sigma}

    def load_state_dict(self, st: dict) -> None:
        self.generator.set_state(st["generator"])
        self.fixed_sigma = st["fixed_sigma"]
