"""What every radiance field provides, and how world points reach its grid.

A field maps world positions to density and, with a view direction, to colour:

* ``density(x)``: ``(n, 3)`` → ``(n,)`` non-negative density (per unit world length).
* ``forward(x, d)``: ``(n, 3)``, ``(n, 3)`` unit directions → ``(sigma (n,), values (n, c))``; the renderer
  alpha-composites ``values`` along each ray and ``finish`` turns the result into colour (identity for
  fields that give colour per sample).

The renderer evaluates ``density`` on every candidate sample without gradient, keeps the samples that
matter, and calls ``forward`` only on those.
"""

from __future__ import annotations

import torch
from torch import nn

from privnerf.fields.encoding import contract


class SceneSpace(nn.Module):
    """World coordinates → the field's working box.

    For bounded scenes the box is the scene ``aabb`` itself. For forward-facing and unbounded scenes the
    ``aabb`` is mapped to ``[-1, 1]^3`` and everything is contracted into ``[-2, 2]^3``
    (:func:`~privnerf.fields.encoding.contract`).
    """

    def __init__(self, aabb: torch.Tensor, contraction: bool):
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32)
        self.register_buffer("aabb", aabb.clone())
        self.contraction = bool(contraction)
        if self.contraction:
            self.register_buffer("box", torch.tensor([[-2.0] * 3, [2.0] * 3]))
        else:
            self.register_buffer("box", aabb.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.contraction:
            return x
        centre = (self.aabb[0] + self.aabb[1]) / 2
        half = (self.aabb[1] - self.aabb[0]) / 2
        return contract((x - centre) / half)

    def inverse(self, xs: torch.Tensor) -> torch.Tensor:
        """Working-box points → world points (inverse of :meth:`forward`; radius-2 shell maps to infinity)."""
        if not self.contraction:
            return xs
        n = xs.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        x = torch.where(n <= 1, xs, xs / n / (2 - n).clamp(min=1e-6))
        centre = (self.aabb[0] + self.aabb[1]) / 2
        half = (self.aabb[1] - self.aabb[0]) / 2
        return x * half + centre


class RadianceField(nn.Module):
    """Base class; subclasses implement :meth:`density` and :meth:`forward`."""

    space: SceneSpace

    cheap_density: bool = False
    """True when density alone costs much less than density + colour (the renderer then runs two passes)."""

    def density_space(self, xs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Density at points ``(n, 3)`` already in the field's working box (see :class:`SceneSpace`)."""
        raise NotImplementedError

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """Density ``(n,)`` at world points ``(n, 3)``."""
        return self.density_space(self.space(x))

    def branch_densities(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The densities ``[(n,), ...]`` of each rendering branch at world points ``(n, 3)``. Culling keeps a
        sample that any branch weights above the threshold, so each branch sees the samples it would see
        alone. One branch (this default): :meth:`density`."""
        return [self.density(x)]

    def branch_weight_thresholds(self) -> list[float]:
        """Per branch of :meth:`branch_densities` (same length), a weight under which that branch drops a
        sample; the render settings' ``weight_threshold`` applies too, the larger wins. Default: none."""
        return [0.0]

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """Per-sample density ``(n,)`` and the values the renderer alpha-composites along each ray ``(n, c)``."""
        raise NotImplementedError

    def finish(self, composited: torch.Tensor, opacity: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """Composited values ``(r, c)``, opacity ``(r,)`` and ray directions ``(r, 3)`` → ray colour ``(r, 3)``
        before the background is added. Fields that output colour per sample return it unchanged; deferred
        shading fields run their view-dependent head here, once per ray."""
        return composited

    def grids(self) -> list:
        """Dense grids optimised with :class:`~privnerf.train.optim.GridAdam` (empty for pure MLPs)."""
        return []
