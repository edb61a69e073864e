"""A client-held secret for split learning: a rotation of the cut channels that varies slowly through space.

Why: with ``--decoder full`` the client decodes the server's 13 grid channels with one secret linear map.
One map for all of space is what makes two attacks work (docs/split.md): the server's principal-component
analysis of its voxels finds the density direction, and SA-SMA fits one head to one leaked photo that then
decodes the grids everywhere. :class:`KeyedRotation` makes the map depend on position,
``h(x) -> Q(x) h(x)``, with ``Q(x)`` a product of Givens rotations whose angles are drawn at random on a
coarse lattice (``cells`` per axis over the field's fixed working box) and interpolated trilinearly, so
``Q`` is orthogonal everywhere and changes over a few coarse cells, not within a voxel: the grids can still
represent any decoded field up to the interpolation error of ``Q`` across one voxel.

The angles are drawn from the global torch generator when the module is built, so a client that seeds
secretly (``--private-head``) holds a key the server cannot replay; they are a buffer (the client does not
train them) unless :meth:`make_trainable` turns them into a parameter, which is what an attacker fitting
its own key does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from privnerf.fields.encoding import trilinear_torch
from privnerf.fields.ext import load_grid_ext


class KeyedRotation(nn.Module):
    """``h (n, C)`` at working-box points ``xs (n, 3)`` → ``Q(xs) h``, ``Q`` orthogonal and position-dependent.

    Args:
        channels: ``C``, the width of the cut activation.
        cells: lattice points per axis of the angle fields (``>= 2``).
        box: ``(2, 3)`` the field's fixed working box (the key does not follow grid growth or shrinking);
            ``None``: placed later with :meth:`place` (a split client learns it from the server's setup reply).
        layers: rounds of rotations; each pairs the channels by a fresh random permutation.
    """

    def __init__(self, channels: int, cells: int, box: torch.Tensor | None, layers: int = 3):
        super().__init__()
        if cells < 2:
            raise ValueError(f"keyed rotation: cells must be >= 2, got {cells}")
        if channels < 2 or layers < 1:
            raise ValueError(f"keyed rotation: needs >= 2 channels and >= 1 layer, got {channels}, {layers}")
        # per layer, the channels of its P disjoint pairs, flattened as i0, j0, i1, j1, ...
        pairs = [torch.randperm(channels)[: 2 * (channels // 2)] for _ in range(layers)]
        self.register_buffer("pairs", torch.stack(pairs))  # (layers, 2P)
        self.register_buffer("box", torch.zeros(2, 3) if box is None else torch.as_tensor(box, dtype=torch.float32).clone())
        # channel-last like DenseGrid, so trilinear_torch interpolates all angle fields at once
        self.register_buffer("angles", torch.rand(cells, cells, cells, layers * (channels // 2)) * 2 * math.pi)

    def place(self, box: torch.Tensor) -> None:
        """Set the working box the angle lattice spans."""
        self.box.copy_(torch.as_tensor(box, dtype=torch.float32))

    def make_trainable(self) -> "KeyedRotation":
        """Turn the angles into a parameter (an attacker fitting its own key)."""
        angles = self.angles
        del self._buffers["angles"]
        self.angles = nn.Parameter(angles.clone())
        return self

    def forward(self, h: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        if not bool((self.box[1] > self.box[0]).all()):
            raise ValueError("keyed rotation: no working box placed yet (KeyedRotation.place)")
        cells = self.angles.shape[0]
        idx = ((xs - self.box[0]) / (self.box[1] - self.box[0]).clamp(min=1e-9) * (cells - 1)).to(self.angles.dtype)
        ext = load_grid_ext() if self.angles.device.type == "cpu" and not self.angles.requires_grad else None
        if ext is not None:  # the compiled kernel of the grids (~5x faster); it has no gradient for the angles
            theta = ext.trilinear_forward(self.angles.contiguous(), idx.clamp(0, cells - 1).contiguous())
        else:
            theta = trilinear_torch(self.angles, idx)  # (n, layers * P)
        cos, sin = torch.cos(theta), torch.sin(theta)
        n, (layers, p2) = h.shape[0], self.pairs.shape
        p = p2 // 2
        for k in range(layers):
            ch = self.pairs[k]
            ab = h[:, ch].view(n, p, 2)  # one gather per layer: both members of every pair
            a, b = ab[..., 0], ab[..., 1]
            c, s = cos[:, k * p : (k + 1) * p], sin[:, k * p : (k + 1) * p]
            h = h.index_copy(1, ch, torch.stack([c * a - s * b, s * a + c * b], dim=-1).view(n, p2))
        return h
