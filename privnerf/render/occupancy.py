"""Occupancy grid for empty-space skipping (the idea of Instant-NGP / nerfacc's ``OccGridEstimator``).

A coarse binary grid over the field's working box marks cells whose density could matter. The ray marcher
(:mod:`privnerf.render.sampler`) emits samples only in occupied cells. Every few training steps the grid
re-reads the field's density at jittered cell centres, keeps a decaying running maximum, and thresholds the
opacity that density would give over one render step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OccupancyGrid(nn.Module):
    """Binary occupancy over ``box`` ``(2, 3)`` (in the field's working coordinates).

    Cell ``(i, j, k)`` covers ``box[0] + [i, i+1) * cell_size`` along x, and so on.
    """

    def __init__(self, box: torch.Tensor, resolution: int = 128):
        super().__init__()
        self.register_buffer("box", torch.as_tensor(box, dtype=torch.float32).clone())
        r = int(resolution)
        self.register_buffer("density", torch.full((r, r, r), float("inf")))
        self.register_buffer("binary", torch.ones((r, r, r), dtype=torch.uint8))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @property
    def resolution(self) -> int:
        return self.binary.shape[0]

    def cell_size(self) -> torch.Tensor:
        return (self.box[1] - self.box[0]) / self.resolution

    def query(self, xs: torch.Tensor) -> torch.Tensor:
        """``(n, 3)`` points → ``(n,)`` bool, False outside the box."""
        r = self.resolution
        idx = ((xs - self.box[0]) / (self.box[1] - self.box[0]) * r).floor().long()
        inside = ((idx >= 0) & (idx < r)).all(dim=-1)
        idx = idx.clamp(0, r - 1)
        return inside & self.binary[idx[:, 0], idx[:, 1], idx[:, 2]].bool()

    @torch.no_grad()
    def update(self, density_fn, step_size: float, threshold: float = 5e-3, decay: float = 0.9,
               fraction: float = 1.0, chunk: int = 1 << 18) -> float:
        """Refresh from ``density_fn`` (working-box points ``(n, 3)`` → ``(n,)``).

        Args:
            step_size: render step length, so the threshold is an opacity ``1 - exp(-sigma * step)``.
            threshold: cells whose running-max opacity falls below this are skipped.
            decay: running maximum decay per update (lets cells empty out as training removes floaters).
            fraction: share of cells re-evaluated this time (random subset; 1.0 = all), for costly fields.
        Returns:
            the fraction of occupied cells.
        """
        r = self.resolution
        n = r**3
        device = self.box.device
        if fraction >= 1.0:
            cells = torch.arange(n, device=device)
        else:
            cells = torch.randperm(n, device=device)[: max(1, int(n * fraction))]
        flat = self.density.view(-1)
        if fraction >= 1.0:
            corners = self._cell_corners()
        for c in cells.split(chunk):
            if fraction >= 1.0:
                base = corners[c[0] : c[-1] + 1]
            else:
                base = self.box[0] + torch.stack([c // (r * r), (c // r) % r, c % r], dim=-1).float() * self.cell_size()
            xs = base + torch.rand_like(base) * self.cell_size()
            sigma = density_fn(xs).float()
            old = flat[c]
            old = torch.where(torch.isfinite(old), old * decay, torch.zeros_like(old))
            flat[c] = torch.maximum(old, sigma)
        self.updates += 1
        alpha = 1.0 - torch.exp(-self.density.clamp(max=1e6) * step_size)
        self.binary.copy_((alpha > threshold).to(torch.uint8))
        return float(self.binary.float().mean())

    def _cell_corners(self) -> torch.Tensor:
        """``(r^3, 3)`` lower corners of all cells, cached (re-used by every full update)."""
        cached = getattr(self, "_corners", None)
        if cached is None or cached.shape[0] != self.resolution**3 or cached.device != self.box.device:
            r = self.resolution
            ax = torch.arange(r, dtype=torch.float32, device=self.box.device)
            ijk = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1).reshape(-1, 3)
            cached = self.box[0] + ijk * self.cell_size()
            self._corners = cached
        return cached

    def occupied_box(self, step_size: float, min_alpha: float = 0.05, margin_cells: int = 3,
                     min_share: float = 1e-3) -> torch.Tensor | None:
        """Tight ``(2, 3)`` box around the scene content, plus a margin of ``margin_cells``.

        Content is cells whose opacity over ``step_size`` exceeds ``min_alpha`` (stricter than the occupancy
        threshold), grouped into 26-connected components; the box covers the components that carry at least
        ``min_share`` of the total opacity mass. Why components: early in training faint floaters sit near the
        box walls, and any per-cell rule keeps the box at full size (a snapshot of lego 400's grid 144 s into
        training: 225 components; the object's carries 99.8% of the mass and has the object's true extent,
        the rest are specks of < 0.01% each). ``min_share`` 0.1% sits well below real objects (the built-in
        scene's smallest separate object carried 1.6% after 300 steps). A trimmed-mass rule per axis fails the
        other way: on the built-in scene the ground holds most of the mass, so it cut the tops off the objects.
        ``None`` if nothing qualifies.
        """
        alpha = 1.0 - torch.exp(-self.density.clamp(max=1e6) * step_size)
        mask = alpha > min_alpha
        if not bool(mask.any()):
            return None
        labels = connected_components(mask)
        ids, inverse = torch.unique(labels[mask], return_inverse=True)
        mass = torch.zeros(len(ids), dtype=torch.float64, device=alpha.device).index_add_(
            0, inverse, alpha[mask].double())
        keep_ids = ids[mass >= min_share * float(mass.sum())]
        nz = (mask & torch.isin(labels, keep_ids)).nonzero()
        lo = (nz.min(0).values - margin_cells).clamp(min=0).float()
        hi = (nz.max(0).values + 1 + margin_cells).clamp(max=self.resolution).float()
        return torch.stack([self.box[0] + lo * self.cell_size(), self.box[0] + hi * self.cell_size()])


@torch.no_grad()
def occupancy_of(density_fn, box: torch.Tensor, resolution: int, step_size: float, threshold: float) -> OccupancyGrid:
    """A fresh OccupancyGrid over ``box`` from one full pass of ``density_fn`` (working-box points ``(n, 3)`` ->
    ``(n,)``): cells whose opacity over one step ``step_size`` exceeds ``threshold``. For a fixed field (a
    received or saved global field), where no running maximum over training is wanted."""
    occ = OccupancyGrid(box, resolution).to(box.device)
    occ.update(density_fn, step_size, threshold)
    return occ


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """Label the 26-connected components of a 3D bool ``mask`` ``(X, Y, Z)``.

    Returns ``(X, Y, Z)`` int64: 0 outside the mask, and inside it the largest flat index + 1 of the
    component's cells (so labels are stable and comparable). Max-pooling propagates labels one cell per
    pass; "pointer jumping" (a label is a cell index, so read that cell's label) shortens long components
    to a few dozen passes (~3.5 s for 128^3 on 2 cores, run once per training).
    """
    shape = mask.shape
    n = mask.numel()
    # float labels for max_pool3d; float64 holds every index exactly
    index = torch.arange(1, n + 1, dtype=torch.float64, device=mask.device)
    flat_mask = mask.reshape(-1)
    labels = torch.where(flat_mask, index, torch.zeros_like(index))
    inside = mask.reshape(1, 1, *shape).to(torch.float64)
    while True:
        grown = (F.max_pool3d(labels.view(1, 1, *shape), 3, 1, 1) * inside).view(-1)
        target = (grown.long() - 1).clamp(min=0)
        grown = torch.where(flat_mask, torch.maximum(grown, grown[target]), grown)
        if torch.equal(grown, labels):
            return labels.long().view(shape)
        labels = grown
