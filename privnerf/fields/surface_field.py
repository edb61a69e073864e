"""The surface field: an SDF grid beside the density grid (Du-NeRF's dual field), rendered with VolSDF density.

A :class:`SurfaceField` is a :class:`~privnerf.fields.grid_field.GridField` (density grid, feature grid,
deferred shading: it trains exactly as the density field does) plus a one-channel *signed distance* grid
``s(x)`` in world units (negative inside) and a learned sharpness ``beta``. The SDF becomes a density by
VolSDF's rule (Yariv et al. 2021)::

    sigma_s(x) = Psi_beta(-s(x)) / beta,   Psi_beta = CDF of a zero-mean Laplace distribution of scale beta

Why VolSDF and not NeuS: VolSDF's SDF-to-density map is a *density per point*, so the SDF branch runs through
the engine's own sampler, occupancy grid, culling and compositing unchanged (a point far outside the
surface has density ~0 and is skipped like empty space). NeuS defines opacity per *interval* from the SDF
at both ends and would need a second compositing path.

Two modes (``--field.surface.mode``):

* ``dual`` (Du-NeRF): the density branch renders the image and is trained on the photos as today; the SDF
  branch composites the same samples with its own weights and learns from its own photometric loss
  (``photo_weight``). Du-NeRF's coupling, the density branch's view-independent (diffuse) colour as the SDF
  branch's label, is here as an option (``coupling_weight``, off by default: measured, it pulls the SDF
  toward the density branch's half-transparent surfaces). Written out, per ray::

      C_vi = sum_k w^d_k c_k + (1 - O^d) bg            (density branch, gradient stopped: the label)
      C_s  = sum_k w^s_k sg(c_k) + (1 - O^s) bg          (SDF branch; colours c_k detached)
      L_couple = mean over confident rays |C_s - C_vi|^2   (O^d < c or > 1 - c; c = coupling_confidence)

  so the coupling moves only the SDF (and beta): geometry follows colour without the SDF branch pulling
  the colours. The view-dependent residual never reaches the SDF, which is the paper's point (the
  specular part is what makes geometry from radiance ambiguous).
* ``sdf``: the SDF alone: it renders the image (full colour through the deferred shading) and the density
  grid is unused. The baseline the dual field is measured against.

In ``dual`` mode the SDF is *born from the density branch* late in training (:meth:`SurfaceField.warm_start`,
at ``warm_start_progress``, 85 %): the signed distance transform of the density branch's filled solid.
Before that the field is the density field (same kernels, same speed). Grown from a sphere by the coupling
alone, the SDF on the built-in scene (a wide, flat ground with objects) had found 11 % of the surface after
120 s (recall at 1 % of the diagonal), the SDF alone from the sphere lost its surface altogether, and an
SDF born early drifted off the ground as it trained (docs/notes/surface-rounds.md).

Both modes add the eikonal term ``mean (|grad s| - 1)^2`` and a curvature term ``mean |laplacian s|`` (in
voxel units), from central finite differences on the grid (six extra one-channel reads per point), on
shaded samples and on uniform points in the box. Finite differences, not autograd, because the compiled
trilinear kernel has no double backward (and Neuralangelo found numerical gradients better for grids).

Example::

    >>> import torch
    >>> from privnerf.fields.surface_field import SurfaceField, SurfaceFieldConfig, laplace_density
    >>> from privnerf.fields.grid_field import GridFieldConfig
    >>> f = SurfaceField(GridFieldConfig(), SurfaceFieldConfig(), torch.tensor([[-1.] * 3, [1.] * 3]), False, 0.02)
    >>> float(f.sdf(torch.zeros(1, 3))) < 0 < float(f.sdf(torch.tensor([[0.9, 0.9, 0.9]])))  # a sphere at start
    True
    >>> round(float(laplace_density(torch.zeros(1), torch.tensor(0.1))), 3)  # on the surface: 1 / (2 beta)
    5.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from privnerf.fields.encoding import DenseGrid, read_grids
from privnerf.fields.grid_field import GridField, GridFieldConfig, decode_cut


@dataclass
class SurfaceFieldConfig:
    mode: Literal["dual", "sdf"] = "dual"
    """dual: Du-NeRF (the density branch renders and labels the SDF with its view-independent colour);
    sdf: the SDF branch alone renders (the baseline)."""
    box_margin: float = 0.05
    """Bounded scenes: the field's box is the scene box grown by this fraction of its longest side on every
    side, and a shrunk box keeps the same margin around the content. An SDF needs room on both sides of a
    surface: the built-in scene's box ends 0.05 under its ground, where the SDF branch's inside (density at
    most ``1 / beta``) cannot reach full opacity (0.7 at beta = 0.04) and the ground came out as blobs."""
    init_radius: float = 0.5
    """The SDF starts as a sphere of this fraction of the box's smallest half-extent, at the box centre."""
    beta_init: float = 0.02
    """Initial Laplace scale, as a fraction of the box diagonal."""
    beta_min_voxels: float = 0.5
    """beta never drops below this many voxels of the current grid: a sharper surface than the render
    step falls between samples (density 1/beta inside, so a step of half a voxel takes 63 % opacity)."""
    lr_sdf: float = 0.001
    """Adam learning rate of the SDF grid values, in world units per step, times the box diagonal / 2."""
    eikonal_weight: float = 2.0
    """Measured on the built-in scene (300 steps after a warm start from a 120 s density branch): 0.05 ->
    F-score at 1 % 0.43 (the SDF hovers above zero where the density branch's ground is half transparent,
    and the ground disappears), 0.5 -> 0.49, 2 -> 0.70, 5 -> 0.74 (with curvature 5e-3)."""
    curvature_weight: float = 5e-4
    coupling_weight: float = 0.0
    """dual mode: weight of the view-independent colour label on the SDF branch (Du-NeRF's coupling). Off by
    default: on the built-in scene, with the SDF born at 85 % of a 600 s run, the coupling on every ray took
    F-score at 1 % from 0.90 to 0.76 in 90 s (it pulls the SDF toward the density branch's half-transparent
    ground); on confident rays only (``coupling_confidence`` 0.1) it held at 0.91; off, 0.93
    (docs/notes/surface-rounds.md, "Fourth round"). ``--field.surface.coupling-weight 1`` turns it on."""
    coupling_until: float = 1.0
    """dual mode: training progress (0..1) from which the coupling is off (1: on to the end). With an SDF
    born early (at step 1200 of 600 s on the built-in scene) the coupling kept floaters out at first and then
    pulled the SDF off the ground; off from 0.45 it held F-score at 1 % at 0.74 against 0.45 coupled to the
    end (docs/notes/surface-rounds.md, "Third round")."""
    coupling_confidence: float = 0.1
    """dual mode: the coupling acts only on rays whose density-branch opacity is below this or above
    ``1 - coupling_confidence`` (0: every ray). A half-transparent ray (the built-in ground, opacity 0.2-0.5
    on a white background, its colour darkened to match) is a shape-radiance ambiguity, not a label."""
    photo_weight: float = 1.0
    """dual mode: weight of the SDF branch's own photometric loss ``mean |C_s^full - C_gt|^2``, its weights
    compositing the full colour (diffuse + view-dependent, through the deferred shading) against the photos
    (Du-NeRF's L_rgb on the SDF branch); see ``photo_reaches_colours``."""
    photo_reaches_colours: bool = False
    """dual mode: whether the SDF branch's photometric loss also trains the shared colours (feature grid and
    shading network). Off: it moves only the SDF and beta, and the density branch trains exactly as the
    density field does. Measured at 600 s (the SDF born at 85 %): lego 29.29 dB off, 27.11 dB on (the density
    field: 29.35 dB); the built-in mesh F-score at 1 % 0.84 off, 0.90 on: the two scenes want opposite
    settings (docs/notes/surface-rounds.md, "Fourth round")."""
    photo_colour_share: float = 0.1
    """dual mode, ``photo_reaches_colours`` off: the share of the SDF branch's photometric gradient that reaches
    the colour values (grids; the shading network stays out of it): 0 none, 1 all of it. Measured at 600 s
    (2026-12-06 night): 0.1 meets the built-in mesh bars (Chamfer 0.46 %, F @ 1 % 0.904) and keeps lego within
    0.37 dB of the density field (29.13 against 29.51 dB); 0 missed the built-in bars (0.58 %, 0.84), all of
    it (``photo_reaches_colours``) cost lego 2.2 dB."""
    coupling_opacity_weight: float = 0.0
    """dual mode: weight of ``mean (O_s - sg(O_d))^2``, the density branch's opacity as a label too."""
    coupling_depth_weight: float = 0.0
    """dual mode: weight of ``mean |D_s - sg(D_d)| / voxel`` on rays both branches find opaque (> 0.5)."""
    cull_weight: float = 1e-3
    """The SDF branch's sample culling: a sample it alone weights below this is not shaded (the density
    branch keeps the render settings' ``weight_threshold``, 1e-4). The Laplace density's tail in front of a
    surface is long: at beta = one voxel and half-voxel steps, weights stay above 1e-4 for about 8 voxels
    (30 % of lego's samples in the dual phase were the SDF branch's alone). The tail this drops sums to at
    most about ``2.5 * cull_weight`` of opacity per ray (a geometric series at ratio ``exp(-step / beta)``).
    Measured on lego's dual phase at one state (2026-12-07): 116k / 106k / 98k samples and 125 / 117 /
    111 ms a step at 1e-4 / 1e-3 / 3e-3 (the density field alone: 68 ms); again after the one-pass grid
    reads, 112k / 101k samples and 118 / 109 ms at 1e-4 / 1e-3. Built-in mesh at 600 s: F-score at 1 %
    0.951 / 0.946 and Chamfer 0.420 / 0.426 % at 1e-4 / 1e-3 (birth at 0.035); 3e-3 had cost 0.02 of
    F-score at the older birth (the tail in front of a missing surface is what the photometric loss grows
    it from)."""
    reg_points: int = 4096
    """Points per step for the eikonal and curvature terms: half from the shaded samples, half uniform in
    the grid box."""
    reg_warmup: float = 0.0
    """Training progress before which the curvature term is off (the eikonal term is always on)."""
    warm_start_steps: int = 1200
    """dual mode: the SDF is born from the density branch at this step (the signed distance transform of
    its occupied, filled region, see :meth:`SurfaceField.warm_start`); until then only the density branch
    trains and marches. 0: keep the sphere and couple from the first step (measured worse, see
    docs/notes/surface-rounds.md)."""
    warm_start_progress: float = 0.85
    """dual mode: the warm start also waits until training progress (0..1, steps or time, whichever is
    further) reaches this. An SDF born late, from a mature density branch, is a better surface than one born
    early and trained long: built-in scene, 600 s, F-score at 1 % 0.93 born at 0.85 against 0.76 born at
    0.3 (docs/notes/surface-rounds.md, "Fourth round"). Until then the field trains and renders exactly as
    the density field does, at its speed."""
    warm_start_after_growth: bool = True
    """dual mode: the warm start also waits until the grid has made its last growth (``grow_at``), so the SDF
    is born at the final resolution from a density branch trained there (in a 600 s run the last growth
    comes at 180 s, long after step 1200). It did not by itself keep the built-in ground in long runs (F-score
    at 1 % 0.45 at 600 s against 0.47 without it); ``coupling_until`` did (docs/notes/surface-rounds.md, "Third round")."""
    warm_start_alpha: float = 0.035
    """Opacity over the first render step above which a voxel of the density branch counts as occupied (the
    engine's box-shrink rule). Measured on the built-in scene after 120 s (the warm start alone, no SDF
    training): 0.05 -> F-score at 1 % 0.86-0.92, 0.1 -> 0.48, 0.2 -> 0.22 (the density field's surfaces are a
    few voxels of haze, its ground half transparent: a high bar leaves holes). From a 600 s density branch
    (the late birth): 0.02 -> 0.79 (haze becomes solid: precision 0.67), 0.05 -> 0.94, 0.1 -> 0.59. Again
    on 2026-12-07, once the density phase had sped up (27k steps by the birth instead of 21k; its surfaces
    sharper), the birth alone from the 600 s density branch: 0.02 -> 0.864, 0.025 -> 0.931, 0.03 -> 0.955,
    0.035 -> 0.958, 0.04 -> 0.939, 0.05 -> 0.855 (recall 0.78: holes), 0.08 -> 0.616. 0.035 is the middle
    of that plateau."""


def laplace_density(s: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """VolSDF density from signed distances.

    Args:
        s: ``(n,)`` signed distance (negative inside); beta: 0-d Laplace scale (world units).
    Returns:
        ``(n,)`` density ``Psi_beta(-s) / beta``: ``1 / beta`` deep inside, ``1 / (2 beta)`` on the surface,
        ``exp(-s / beta) / (2 beta)`` outside.
    """
    e = 0.5 * torch.exp(-s.abs() / beta)
    return torch.where(s > 0, e, 1.0 - e) / beta


class SurfaceField(GridField):
    """Density field + SDF grid. ``forward`` returns the rendering branch's density (``dual``: the density
    grid's; ``sdf``: the SDF's) and values ``[diffuse (3), specular features (F-3), s (1)]``: the signed
    distance rides along as the last value channel so the loss can form the SDF branch from the same
    samples (:meth:`finish` drops it before shading)."""

    def __init__(self, cfg: GridFieldConfig, scfg: SurfaceFieldConfig, aabb: torch.Tensor, contraction: bool,
                 step_size: float, pixel_footprint: float | None = None):
        if cfg.decoder != "none":
            raise ValueError("the surface field has no split decoder (--field.grid.decoder none)")
        if scfg.mode not in ("dual", "sdf"):
            raise ValueError(f"unknown surface mode {scfg.mode!r} (dual, sdf)")
        if not scfg.box_margin >= 0:
            raise ValueError(f"--field.surface.box-margin must be >= 0 (a fraction of the box's longest side), got {scfg.box_margin}")
        if not 0 <= scfg.warm_start_progress < 1:
            raise ValueError("--field.surface.warm-start-progress must be in [0, 1) (a share of training; at 1 the SDF "
                             f"would never be born and the mesh would be the initial sphere), got {scfg.warm_start_progress}")
        if not 0 <= scfg.coupling_confidence <= 0.5:
            raise ValueError("--field.surface.coupling-confidence must be in [0, 0.5] (opacity margin from 0 and 1; "
                             f"0: every ray), got {scfg.coupling_confidence}")
        if not 0 <= scfg.cull_weight < 1:
            raise ValueError("--field.surface.cull-weight must be in [0, 1) (a rendering weight under which the SDF "
                             f"branch drops a sample; at 1 it would drop every sample), got {scfg.cull_weight}")
        pad = scfg.box_margin * float((aabb[1] - aabb[0]).max()) if not contraction else 0.0
        if pad > 0:
            aabb = torch.stack([aabb[0] - pad, aabb[1] + pad])
        super().__init__(cfg, aabb, contraction, step_size, pixel_footprint)
        self.scfg = scfg
        self.box_pad = pad
        """World units the box keeps beyond the content on every side (``box_margin`` of the scene box)."""
        box = self.space.box
        g = self.density_grid
        self.sdf_grid = DenseGrid(g.resolution, 1, box, init=0.0)
        with torch.no_grad():
            centre = (box[0] + box[1]) / 2
            radius = scfg.init_radius * float((box[1] - box[0]).min()) / 2
            self.sdf_grid.data.copy_(self._grid_points(self.sdf_grid).sub(centre).norm(dim=-1, keepdim=True) - radius)
        self.diagonal = float((box[1] - box[0]).norm())
        self.log_beta = nn.Parameter(torch.tensor(math.log(scfg.beta_init * self.diagonal)))
        self.register_buffer("warm", torch.tensor(scfg.mode == "sdf" or scfg.warm_start_steps <= 0))

    @property
    def sdf_active(self) -> bool:
        """Whether the SDF branch marches and trains (always in ``sdf`` mode; after the warm start in ``dual``)."""
        return bool(self.warm)

    @torch.no_grad()
    def warm_start(self, step_length: float, seen_empty: np.ndarray | None = None) -> dict:
        """Replace the SDF by the signed distance to the density branch's solid.

        A voxel of the SDF grid is *outside* when the cameras saw it empty: ``seen_empty`` ``(X, Y, Z)`` bool
        (:meth:`privnerf.train.trainer.Trainer.seen_empty`: in some training view it lies in front of the
        point where the ray through it drops below half transmittance) and its density grid value gives opacity ``<= warm_start_alpha`` over
        ``step_length``. Everything else is solid: content, and space no camera saw through (inside objects,
        under the built-in scene's ground, which is a zero-thickness disk the SDF could not hold as a
        sheet). Without ``seen_empty``, empty voxels connected to the box's border are outside. The SDF is the
        Euclidean distance transform outside minus inside, in world units (scipy.ndimage); ``beta`` restarts
        at one voxel. Returns what it found."""
        from scipy import ndimage

        g = self.sdf_grid
        pts = self._grid_points(g).reshape(-1, 3).to(g.aabb.device)
        sigma = torch.cat([self.grid_density(c) for c in pts.split(1 << 18)])
        occupied = (1 - torch.exp(-sigma * step_length) > self.scfg.warm_start_alpha).reshape(g.resolution).cpu().numpy()
        if seen_empty is not None:
            outside = np.asarray(seen_empty, bool) & ~occupied
            n_parts = -1
        else:
            empty_parts, n_parts = ndimage.label(~occupied)
            border = set(np.unique(np.concatenate([empty_parts[[0, -1]].ravel(), empty_parts[:, [0, -1]].ravel(),
                                                   empty_parts[:, :, [0, -1]].ravel()]))) - {0}
            outside = np.isin(empty_parts, list(border))
        spacing = ((g.aabb[1] - g.aabb[0]) / (torch.tensor(g.resolution, device=g.aabb.device) - 1)).cpu().numpy()
        if outside.all() or not outside.any():
            return {"warm_started": False, "occupied": float(occupied.mean())}
        d_out = ndimage.distance_transform_edt(outside, sampling=spacing)
        d_in = ndimage.distance_transform_edt(~outside, sampling=spacing)
        # the surface lies between the last outside and first inside voxel: half a voxel from each
        half = 0.5 * float(spacing.mean())
        sdf = np.where(outside, d_out - half, -(d_in - half))
        g.data.copy_(torch.from_numpy(sdf).float().reshape(*g.resolution, 1).to(g.data.device))
        self.log_beta.fill_(math.log(self.voxel))
        self.warm.fill_(True)
        return {"warm_started": True, "occupied": float(occupied.mean()), "solid": float((~outside).mean()),
                "empty_components": int(n_parts), "seen_empty": None if seen_empty is None else float(np.mean(seen_empty))}

    def grown_for_warm_start(self) -> bool:
        """Whether the grid's growth allows the warm start now (``warm_start_after_growth``)."""
        return not self.scfg.warm_start_after_growth or int(self.grow_count) >= len(self.cfg.grow_at)

    @staticmethod
    def _grid_points(grid: DenseGrid) -> torch.Tensor:
        axes = [torch.linspace(float(grid.aabb[0, i]), float(grid.aabb[1, i]), grid.resolution[i]) for i in range(3)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)

    def grids(self) -> list[DenseGrid]:
        return [self.density_grid, self.feature_grid, self.sdf_grid]

    def grow(self, box: torch.Tensor | None = None) -> None:
        """As the grid field's, but a shrunk ``box`` keeps ``box_margin`` around the content (within the
        field's box): the inside of a surface on the content box's face must fit in the grid."""
        if box is not None and self.box_pad > 0:
            full = self.space.box.to(box)
            box = torch.stack([torch.maximum(box[0] - self.box_pad, full[0]), torch.minimum(box[1] + self.box_pad, full[1])])
        super().grow(box)

    def grid_lrs(self, lr_density: float, lr_features: float) -> list[float]:
        """Learning rates of :meth:`grids`, in order (the SDF's scales with the box)."""
        return [lr_density, lr_features, self.scfg.lr_sdf * self.diagonal / 2]

    @property
    def density_is_grid(self) -> bool:
        """Until the SDF is born (dual mode) the density grid alone gives the density; after it (and in
        ``sdf`` mode) it does not, and the fused march-and-cull kernel reads the SDF branch through
        :meth:`sdf_branch` instead."""
        return self.scfg.mode == "dual" and not self.sdf_active

    def sdf_branch(self) -> tuple[torch.Tensor, torch.Tensor, float, str, float] | None:
        """What the fused march-and-cull kernel needs to cull for the SDF branch once it is active: the SDF
        grid's values ``(X, Y, Z, 1)``, its box ``(2, 3)``, ``beta``, the mode and the branch's weight
        threshold (``cull_weight``); ``None`` before the birth."""
        if not self.sdf_active:
            return None
        return self.sdf_grid.data, self.sdf_grid.aabb, float(self.beta.detach()), self.scfg.mode, self.scfg.cull_weight

    def branch_weight_thresholds(self) -> list[float]:
        """As :meth:`branch_densities`' branches: the SDF branch drops what it weights below ``cull_weight``."""
        if not self.sdf_active:
            return [0.0]
        return [0.0, self.scfg.cull_weight] if self.scfg.mode == "dual" else [self.scfg.cull_weight]

    # -- the SDF branch ---------------------------------------------------------------------------------
    @property
    def voxel(self) -> float:
        g = self.sdf_grid
        return float(((g.aabb[1] - g.aabb[0]) / (torch.tensor(g.resolution, device=g.aabb.device) - 1)).mean())

    @property
    def beta(self) -> torch.Tensor:
        """The Laplace scale, floored at ``beta_min_voxels`` voxels of the current grid."""
        return self.log_beta.exp().clamp(min=self.scfg.beta_min_voxels * self.voxel)

    def sdf_space(self, xs: torch.Tensor) -> torch.Tensor:
        """Signed distance ``(n,)`` at working-box points ``(n, 3)`` (world units for bounded scenes)."""
        return self.sdf_grid(xs)[:, 0]

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """Signed distance ``(n,)`` at world points ``(n, 3)``, negative inside (the mesh export's level set).
        Contracted scenes: in working-box units, a distance only inside the unit ball."""
        return self.sdf_space(self.space(x))

    def sdf_density(self, s: torch.Tensor) -> torch.Tensor:
        return laplace_density(s, self.beta)

    def density_space(self, xs: torch.Tensor) -> torch.Tensor:
        if not self.sdf_active:
            return self.grid_density(xs)
        if self.scfg.mode == "sdf":
            return self.sdf_density(self.sdf_space(xs)) * self._inside(xs)
        # dual: march where either branch has content, so both branches see their surfaces
        raw, s = read_grids([self.density_grid, self.sdf_grid], xs)
        sigma_d = nn.functional.softplus(raw[:, 0] + self.shift)
        return (sigma_d + self.sdf_density(s[:, 0])) * self._inside(xs)

    def branch_densities(self, x: torch.Tensor) -> list[torch.Tensor]:
        """dual mode after the birth: the density branch's and the SDF branch's densities, so that culling
        keeps what either branch weights (culled by their sum, samples behind the SDF's surface were lost to
        the density branch: lego's test PSNR fell 2 dB from that alone, and its training lost them too)."""
        if self.scfg.mode != "dual" or not self.sdf_active:
            return [self.density(x)]
        xs = self.space(x)
        inside = self._inside(xs)
        return [self.grid_density(xs), self.sdf_density(self.sdf_space(xs)) * inside]

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs = self.space(x)
        if self.sdf_active:  # one pass over the three grids (:func:`read_grids`)
            density_raw, feat, s = read_grids([self.density_grid, self.feature_grid, self.sdf_grid], xs)
            s = s[:, 0]
        else:  # dual mode before the birth: nothing reads the SDF, so it is neither read nor trained
            density_raw, feat = read_grids([self.density_grid, self.feature_grid], xs)
            s = xs.new_zeros(xs.shape[0])
        sigma_d, values = decode_cut(self.cut_of(density_raw, feat), self.shift, None)
        sigma = self.sdf_density(s) if self.scfg.mode == "sdf" else sigma_d
        return sigma * self._inside(xs), torch.cat([values, s[:, None]], dim=-1)

    def finish(self, composited: torch.Tensor, opacity: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        return super().finish(composited[:, :-1], opacity, dirs)

    # -- regularisers ------------------------------------------------------------------------------------
    def sdf_derivatives(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Central differences with a one-voxel step at working-box points ``(n, 3)``: gradient ``(n, 3)`` and
        Laplacian ``(n,)`` (per world unit squared)."""
        h = self.voxel
        offsets = torch.eye(3, device=xs.device, dtype=xs.dtype) * h
        pts = torch.cat([xs, (xs[:, None] + offsets).reshape(-1, 3), (xs[:, None] - offsets).reshape(-1, 3)])
        v = self.sdf_space(pts)
        n = xs.shape[0]
        s0, plus, minus = v[:n], v[n: 4 * n].reshape(n, 3), v[4 * n:].reshape(n, 3)
        grad = (plus - minus) / (2 * h)
        lap = (plus + minus - 2 * s0[:, None]).sum(-1) / h**2
        return grad, lap

    def regularizers(self, sample_xs: torch.Tensor, generator: torch.Generator | None,
                     progress: float) -> dict[str, torch.Tensor]:
        """Eikonal and curvature terms, weighted, on up to ``reg_points / 2`` of the shaded sample points
        (working box, ``(m, 3)``) and as many uniform points in the grid box."""
        c = self.scfg
        half = max(c.reg_points // 2, 1)
        box = self.sdf_grid.aabb
        if sample_xs.shape[0] > half:
            pick = torch.randint(0, sample_xs.shape[0], (half,), generator=generator).to(sample_xs.device)
            sample_xs = sample_xs[pick]
        uniform = torch.rand(half, 3, generator=generator).to(box.device) * (box[1] - box[0]) + box[0]
        # keep the stencil inside the box (clamped reads would fake a zero gradient)
        inner = torch.stack([box[0] + self.voxel, box[1] - self.voxel])
        xs = torch.maximum(torch.minimum(torch.cat([sample_xs.detach(), uniform]), inner[1]), inner[0])
        grad, lap = self.sdf_derivatives(xs)
        out = {"eikonal": c.eikonal_weight * (grad.norm(dim=-1) - 1).pow(2).mean()}
        if c.curvature_weight > 0 and progress >= c.reg_warmup:
            out["curvature"] = c.curvature_weight * (lap * self.voxel).abs().mean()
        return out


__all__ = ["SurfaceField", "SurfaceFieldConfig", "laplace_density"]
