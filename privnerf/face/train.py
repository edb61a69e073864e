"""Identity-Obscured NeRF's two stages on the surface field: ``privnerf face train --data DIR --output RUN``.

``DIR`` is what ``privnerf face obscure`` wrote on the person's side (:mod:`privnerf.face.obscure`): raw RGB of
the privacy-neutral views, σ images (codes) of the sensitive ones, masks, cameras. Training reads nothing
else (a test audits every file it opens).

* **Stage 1** (``stage1_steps``): the core trainer's step on the neutral views' RGB (images composited on
  black by their masks) with the surface field (``--field.kind surface``: Du-NeRF's dual field, eikonal and
  curvature terms), plus a mask term: binary cross-entropy between each branch's opacity and the mask, and
  once the SDF is born IDR's silhouette loss on it (:func:`silhouette_loss`: the ray's closest approach).
* **Stage 2** (``stage2_steps``): the same step, and on the sensitive views ``patches`` square patches of
  ``patch`` pixels are rendered, turned grey, passed through the *same* operator σ
  (:func:`privnerf.face.operators.apply_operator`) and compared (L1) with the stored σ image, dequantised:
  for the density branch's colour and for the SDF branch's (whose colours are detached, so that term moves
  the surface only; ``--shading``: the SDF branch shaded instead, :func:`shaded_sdf_grey`). The masks of the
  sensitive views supervise both opacities too, and the SDF through :func:`silhouette_loss` (the silhouette
  is shared by ``obscure``; ``--no-sensitive-masks`` drops it). The refinement ``Δs = s - s_stage1`` of the SDF
  is kept smooth by a Lipschitz-style penalty ``mean |∇Δs|²`` on the regulariser points, so stage 2 can
  bend the surface but not break it (our reading; the paper's exact regulariser was not retrieved, see
  ../shared/specs/idobscured_jacobinerf.md A.3).

The mesh of the SDF's zero level set is exported at the end (``mesh.ply``), in the data's frame.

Example (two stages, then export)::

    privnerf face obscure --data ../shared/data/nerd_ethiopian_head --out outputs/head-obscured
    privnerf face train --data outputs/head-obscured --output outputs/head-run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass, field as dc_field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from privnerf.data.cameras import rays_from_pixels
from privnerf.data.scene import Scene
from privnerf.fields.encoding import DenseGrid
from privnerf.face.head import MaskHull
from privnerf.fields.surface_field import SurfaceField
from privnerf.render.renderer import render_rays
from privnerf.render.volume import accumulate, weights_from_density
from privnerf.train.checkpoint import atomic_torch_save, atomic_write_text, latest_checkpoint
from privnerf.train.config import TrainConfig
from privnerf.train.trainer import Trainer, config_to_dict, set_threads, write_results


def _default_train_config() -> TrainConfig:
    """The core trainer's settings for a head: the surface field as the head study measured it (docs/face.md):
    the SDF born early in stage 1 from the density branch's solid at opacity 0.02 and coupled throughout
    (the surface field's own defaults, a late birth without the coupling, were chosen on the built-in scene
    and lego, where the SDF only has to match the density branch; here stage 2 must move it)."""
    cfg = TrainConfig()
    cfg.field.kind = "surface"
    cfg.optim.batch_rays = 4096
    sc = cfg.field.surface
    sc.warm_start_progress, sc.warm_start_alpha = 0.0, 0.02
    sc.coupling_weight, sc.coupling_until, sc.coupling_confidence = 1.0, 1.0, 0.0
    sc.photo_colour_share = 0.0  # as the head study measured it (the surface field's 0.1 came later, unmeasured here)
    sc.cull_weight = 1e-4  # likewise (the surface field's 1e-3 came later, for speed on lego; unmeasured here)
    return cfg


@dataclass
class FaceTrainConfig:
    stage1_steps: int = 3000
    stage2_steps: int = 1500
    """0: rear-only (stage 1 alone)."""
    mask_weight: float = 0.05
    """Binary cross-entropy of each branch's opacity against the view's mask."""
    grad_weight: float = 0.1
    """Weight of the σ (gradient image) loss on the sensitive views (0: the σ patches are not rendered, and
    stage 2 is the σ views' masks alone). Measured on the head with the mask hull
    (docs/face.md): 1 wrinkles the surface (face Chamfer 0.216 %, normal consistency 0.87), 0.1 and 0 tie
    (0.194 / 0.195 %, 0.91 / 0.92); σ carries little shape there, the masks carry the silhouette."""
    lipschitz_weight: float = 0.1
    """Weight of ``mean |∇(s - s_stage1)|²`` in stage 2."""
    patches: int = 5
    patch: int = 40
    """Sensitive-view patches per step and their side in pixels (rays per step: patches * patch²); σ is
    compared ``patch_margin`` (13 px at blur 6) inside each border, so 40 px leaves a 14 px core."""
    sensitive_masks: bool = True
    silhouette_weight: float = 1.0
    """IDR's mask loss on the SDF (:func:`silhouette_loss`) once the SDF is born: on the neutral batch's rays,
    and in stage 2 on ``silhouette_rays`` pixels of the sensitive views' masks per step (measured on the head,
    docs/face.md: 0.1 closed 9 % of the face gap, 1.0 16 %)."""
    silhouette_rays: int = 2048
    hull_carve: bool = True
    """Intersect the SDF with the visual hull of every mask the run holds (:class:`~privnerf.face.head.MaskHull`:
    ``s = max(s, d_hull)``, an exact CSG intersection) when stage 2 starts, every ``hull_every`` stage-2 steps
    and when training ends. Space that the neutral cameras never saw is solid after the SDF's birth (the
    warm start cannot call it empty); on the head that left a sheet above the forehead that the σ views'
    silhouettes say is empty and the silhouette loss, which moves one point per ray, did not remove in
    750 steps (docs/face.md)."""
    hull_tolerance_px: float = 3.0
    hull_min_views: int = 3
    """A point is outside the hull when this many views see it more than ``hull_tolerance_px`` from their
    mask: masks and poses disagree with the RGB surface by a few pixels (half the full reconstruction's face
    lies > 3 px outside at least one mask), and a single-view 2 px hull shaved 0.2 % of the diagonal off it."""
    hull_every: int = 250
    early_masks: bool = False
    """The σ views' masks join the silhouette loss and the hull from the SDF's birth in stage 1 (carved then),
    instead of from stage 2. Measured on the head (docs/face.md): face Chamfer 0.188 % against 0.191 %, 15 %
    more training time; off."""
    shading: bool = False
    """Stage 2's σ term on the SDF branch sees it shaded (Lambertian, grey SH lighting fitted on the neutral
    views, :func:`fit_lighting`), so that σ reaches the surface through its normals; off (default): the SDF
    branch composites the radiance field's colours (detached), as Du-NeRF's coupling does. Measured on the
    head (docs/face.md): the Lambertian fit explains 40 % of the bronze's grey variance, and shading left the
    face's Chamfer where it was, lowered its normal consistency and doubled stage 2's step time."""
    relight_every: int = 250
    light_rays: int = 8192
    silhouette_points: int = 64
    silhouette_width_voxels: float = 2.0
    mesh_resolution: int = 256
    quiet: bool = False
    train: TrainConfig = dc_field(default_factory=_default_train_config)


def _unit_mask(m) -> np.ndarray:
    m = np.asarray(m, np.float32)
    return np.clip(m / (255.0 if m.max() > 1 else 1.0), 0.0, 1.0)


class MaskedPixels:
    """Pixels of some views with their mask values (and colours, where the views are RGB), sampled uniformly:
    rays, colours ``(n, 3)`` or ``None``, mask ``(n,)`` in [0, 1]."""

    def __init__(self, c2w, intrinsics, masks: list, images: list | None = None):
        self.rgb = None if images is None else torch.from_numpy(np.concatenate([im.reshape(-1, 3) for im in images])).float()
        self.mask = torch.from_numpy(np.concatenate([_unit_mask(m).reshape(-1) for m in masks]))
        self.offsets = torch.tensor(np.cumsum([0] + [m.shape[0] * m.shape[1] for m in masks]), dtype=torch.long)
        self.widths = torch.tensor([m.shape[1] for m in masks])
        self.c2w = torch.as_tensor(np.asarray(c2w), dtype=torch.float32)
        self.intr = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float32)

    @classmethod
    def of_scene(cls, scene: Scene) -> "MaskedPixels":
        if scene.masks is None:
            raise ValueError("face training needs masks with every view")
        return cls(scene.c2w, scene.intrinsics, list(scene.masks), list(scene.images))

    @classmethod
    def of_sensitive(cls, views: list) -> "MaskedPixels":
        """The sensitive views' silhouettes (their σ images are not read here)."""
        return cls([v.c2w for v in views], [v.intrinsics for v in views], [v.mask for v in views])

    def sample(self, n: int, gen: torch.Generator):
        flat = torch.randint(0, int(self.offsets[-1]), (n,), generator=gen)
        img = torch.searchsorted(self.offsets, flat, right=True) - 1
        rem = flat - self.offsets[img]
        u, v = rem % self.widths[img], rem // self.widths[img]
        o, d, _ = rays_from_pixels(self.c2w[img], self.intr[img], u, v)
        return o, d, None if self.rgb is None else self.rgb[flat], self.mask[flat]


def silhouette_loss(field: SurfaceField, o: torch.Tensor, d: torch.Tensor, mask: torch.Tensor, points: int,
                    width: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """IDR's mask loss on the SDF (Yariv et al. 2020): per ray, the smallest signed distance ``s_min`` over
    ``points`` jittered samples between where the ray enters and leaves the SDF grid's box, and the binary
    cross-entropy of ``sigmoid(-s_min / width)`` against the mask.

    A background pixel pushes the ray's closest approach out of the solid, a foreground pixel pulls the solid
    onto the ray. Unlike the cross-entropy of the rendered opacity, whose gradient vanishes where the ray
    meets no density (the occupancy grid skips it, the Laplace density is flat there), this reaches a
    surface however far it is from where the silhouette says it should be.

    Args:
        o, d: ``(n, 3)`` world rays (bounded scene: world = the field's working box); ``mask`` ``(n,)`` in [0, 1].
        width: the sigmoid's width in distance units.
    Returns:
        a 0-d tensor (0 when no ray meets the box).

    Example::

        >>> import torch
        >>> from privnerf.fields.grid_field import GridFieldConfig
        >>> from privnerf.fields.surface_field import SurfaceField, SurfaceFieldConfig
        >>> f = SurfaceField(GridFieldConfig(), SurfaceFieldConfig(), torch.tensor([[-1.] * 3, [1.] * 3]), False, 0.02)
        >>> o, d = torch.tensor([[0., 0., -3.], [0.95, 0.95, -3.]]), torch.tensor([[0., 0., 1.]] * 2)
        >>> hit = silhouette_loss(f, o, d, torch.tensor([1., 0.]), 64, 0.02)   # what the initial sphere shows
        >>> bool(hit < silhouette_loss(f, o, d, torch.tensor([0., 1.]), 64, 0.02))
        True
    """
    from privnerf.render.sampler import ray_aabb

    if field.space.contraction:
        raise ValueError("the silhouette loss needs a bounded scene")
    box = field.sdf_grid.aabb
    t0, t1 = ray_aabb(o, d, box)
    keep = t1 > t0
    if not bool(keep.any()):
        return o.new_zeros(())
    o, d, mask, t0, t1 = o[keep], d[keep], mask[keep], t0[keep], t1[keep]
    u = (torch.arange(points, dtype=o.dtype) + torch.rand(o.shape[0], points, generator=gen, dtype=o.dtype)) / points
    t = t0[:, None] + (t1 - t0)[:, None] * u
    pts = (o[:, None] + t[..., None] * d[:, None]).reshape(-1, 3)
    pts = torch.maximum(torch.minimum(pts, box[1]), box[0])
    s_min = field.sdf_space(pts).reshape(-1, points).amin(dim=1)
    return torch.nn.functional.binary_cross_entropy_with_logits(-s_min / width, mask)


class SensitivePatches:
    """Square patches of the sensitive views' σ images (dequantised) with the rays through them.

    Patch corners are drawn so that the patch overlaps the view's mask (where the face is)."""

    def __init__(self, views: list, spec, patch: int):
        from privnerf.face.operators import dequantize

        self.spec, self.patch = spec, patch
        self.views = []
        for v in views:
            target = dequantize(spec, torch.from_numpy(np.asarray(v.codes)))  # (C, H, W)
            mask = torch.from_numpy(_unit_mask(v.mask))
            h, w = mask.shape
            ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
            if len(ys) == 0:
                continue
            lo = (max(int(ys.min()) - patch // 2, 0), max(int(xs.min()) - patch // 2, 0))
            hi = (max(min(int(ys.max()) - patch // 2, h - patch), lo[0]), max(min(int(xs.max()) - patch // 2, w - patch), lo[1]))
            self.views.append((torch.as_tensor(np.asarray(v.c2w), dtype=torch.float32),
                               torch.as_tensor(np.asarray(v.intrinsics), dtype=torch.float32), target.float(), mask, lo, hi))
        if not self.views:
            raise ValueError("no sensitive view has a non-empty mask")

    def sample(self, k: int, gen: torch.Generator):
        """``k`` patches → rays ``(k p², 3)`` twice, σ targets ``(k, C, p, p)``, masks ``(k, p, p)``."""
        p = self.patch
        os_, ds, ts, ms = [], [], [], []
        for _ in range(k):
            c2w, intr, target, mask, lo, hi = self.views[int(torch.randint(len(self.views), (1,), generator=gen))]
            y0 = int(torch.randint(lo[0], hi[0] + 1, (1,), generator=gen))
            x0 = int(torch.randint(lo[1], hi[1] + 1, (1,), generator=gen))
            v, u = torch.meshgrid(torch.arange(y0, y0 + p), torch.arange(x0, x0 + p), indexing="ij")
            o, d, _ = rays_from_pixels(c2w, intr, u.reshape(-1), v.reshape(-1))
            os_.append(o)
            ds.append(d)
            ts.append(target[:, y0:y0 + p, x0:x0 + p])
            ms.append(mask[y0:y0 + p, x0:x0 + p])
        return torch.cat(os_), torch.cat(ds), torch.stack(ts), torch.stack(ms)


def _bce(opacity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    o = opacity.clamp(1e-4, 1 - 1e-4)
    return -(mask * torch.log(o) + (1 - mask) * torch.log(1 - o)).mean()


def _sdf_branch(field: SurfaceField, out: dict, n: int, bg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The SDF branch's diffuse colour (colours detached) and opacity from a render's kept samples."""
    s, values = out["samples"], out["values"]
    w_s, _ = weights_from_density(field.sdf_density(values[:, -1]), s.delta, s.ray_idx, n)
    op = accumulate(w_s, None, s.ray_idx, n)
    return accumulate(w_s, values[:, :3].detach(), s.ray_idx, n) + (1 - op)[:, None] * bg, op


def sh_basis(n: torch.Tensor) -> torch.Tensor:
    """The nine real spherical-harmonic functions of order <= 2 (up to constants) at unit normals ``(m, 3)`` →
    ``(m, 9)``: Ramamoorthi and Hanrahan's irradiance model, in which a Lambertian surface under any distant
    lighting is, to ~1 %, a linear function of these.

    Example::

        >>> sh_basis(torch.tensor([[0., 0., 1.]])).tolist()
        [[1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 2.0]]
    """
    x, y, z = n.unbind(-1)
    one = torch.ones_like(x)
    return torch.stack([one, x, y, z, x * y, y * z, x * z, x * x - y * y, 3 * z * z - 1], dim=-1)


def _sample_normals(field: SurfaceField, out: dict, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Unit SDF normals ``(m, 3)`` at a render's kept samples (finite differences: differentiable in the SDF)."""
    s = out["samples"]
    xs = field.space(o[s.ray_idx] + s.t[:, None] * d[s.ray_idx])
    grad, _ = field.sdf_derivatives(xs)
    return grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def _sdf_weights(field: SurfaceField, out: dict, n: int) -> torch.Tensor:
    s = out["samples"]
    w_s, _ = weights_from_density(field.sdf_density(out["values"][:, -1]), s.delta, s.ray_idx, n)
    return w_s


def shaded_sdf_grey(field: SurfaceField, out: dict, o: torch.Tensor, d: torch.Tensor, light: torch.Tensor,
                    bg_grey: float) -> torch.Tensor:
    """The SDF branch rendered as a grey Lambertian surface of uniform albedo under ``light`` (9 SH
    coefficients, albedo folded in): ``sum_k w^s_k (Y(n_k) . light) + (1 - O^s) bg`` per ray ``(n,)``.

    Only the geometry (weights and normals) carries gradient: this is how stage 2's σ term reaches the shape
    (the radiance field's colour does not depend on the normal, so σ of its render can be matched by
    painting edges instead of moving the surface)."""
    n = o.shape[0]
    w_s = _sdf_weights(field, out, n)
    shade = sh_basis(_sample_normals(field, out, o, d)) @ light
    op = accumulate(w_s, None, out["samples"].ray_idx, n)
    return accumulate(w_s, shade[:, None], out["samples"].ray_idx, n)[:, 0] + (1 - op) * bg_grey


@torch.no_grad()
def fit_lighting(field: SurfaceField, occ, settings, pixels: "MaskedPixels", rays: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """Least-squares SH lighting (9 grey coefficients, albedo folded in) that best explains the grey of the
    neutral views' foreground pixels from the SDF branch's rendered normals; returns it and the fit's R²."""
    from privnerf.face.operators import to_gray

    o, d, rgb, mask = pixels.sample(rays, gen)
    out = render_rays(field, occ, o, d, settings, jitter=False, keep_samples=True)
    if len(out["samples"]) == 0:
        return torch.zeros(9), 0.0
    n = o.shape[0]
    w_s = _sdf_weights(field, out, n)
    op = accumulate(w_s, None, out["samples"].ray_idx, n)
    normal = accumulate(w_s, _sample_normals(field, out, o, d), out["samples"].ray_idx, n)
    keep = (op > 0.5) & (mask > 0.5)
    a = sh_basis(normal[keep] / normal[keep].norm(dim=-1, keepdim=True).clamp(min=1e-6))
    g = to_gray(rgb[keep])
    if a.shape[0] < 9:
        return torch.zeros(9), 0.0
    light = torch.linalg.lstsq(a.double(), g.double()[:, None]).solution[:, 0].float()
    r2 = 1.0 - float((a @ light - g).pow(2).mean() / g.var().clamp(min=1e-12))
    return light, r2


def patch_margin(spec) -> int:
    """Pixels of a rendered patch's border where σ is not compared: there the blur and the differences read
    the patch's padding. Two blur widths (95 % of the Gaussian's weight) and one for the differences."""
    return int(math.ceil(2 * float(getattr(spec, "blur_sigma", 0.0)))) + 1


def effective_config(cfg: FaceTrainConfig) -> FaceTrainConfig:
    """A copy of ``cfg`` as the face trainer runs it (what ``config.json`` holds): the core trainer's steps are
    the two stages', and the SDF is born (from the density branch) inside stage 1, at most half-way (in steps
    and in progress), so that stage 2's Lipschitz reference is the stage-1 surface and not the initial sphere
    (measured otherwise on the head: see docs/face.md)."""
    cfg = copy.deepcopy(cfg)
    cfg.train.steps = cfg.stage1_steps + cfg.stage2_steps
    sc = cfg.train.field.surface
    sc.warm_start_steps = min(sc.warm_start_steps, max(cfg.stage1_steps // 2, 1))
    sc.warm_start_progress = min(sc.warm_start_progress, 0.5 * cfg.stage1_steps / max(cfg.train.steps, 1))
    return cfg


class FaceTrainer:
    """Runs the two stages on top of :class:`~privnerf.train.trainer.Trainer` (its loss, step and
    optimizers; this adds the mask and σ terms through ``compute_loss`` / ``apply_loss``)."""

    def __init__(self, cfg: FaceTrainConfig, neutral: Scene, sensitive: list, spec, run_dir: Path | None):
        if cfg.train.field.kind != "surface":
            raise ValueError("face training needs the surface field (--train.field.kind surface)")
        self.cfg = cfg = effective_config(cfg)  # the caller's config stays as given
        self.trainer = Trainer(cfg.train, neutral, run_dir)
        self.pixels = MaskedPixels.of_scene(neutral)
        self.spec = spec
        self.patches = SensitivePatches(sensitive, spec, cfg.patch) if (sensitive and cfg.stage2_steps > 0) else None
        if self.patches is not None and cfg.patch - 2 * patch_margin(spec) < 4:
            raise ValueError(f"--patch {cfg.patch}: σ (blur {spec.blur_sigma:g} px) is compared {patch_margin(spec)} px "
                             f"away from a patch's border, which leaves no 4x4 core; use --patch "
                             f"{2 * patch_margin(spec) + 4} or more")
        if cfg.stage2_steps > 0 and self.patches is None:
            raise ValueError("stage 2 needs at least one sensitive view (or --stage2-steps 0 for rear-only)")
        self.silhouettes = (MaskedPixels.of_sensitive(sensitive)
                            if (sensitive and cfg.stage2_steps > 0 and cfg.sensitive_masks) else None)
        self._born_carved = False
        hull_views = [(neutral.c2w[i], neutral.intrinsics[i], neutral.masks[i]) for i in range(neutral.num_views)]
        if self.silhouettes is not None:
            hull_views += [(v.c2w, v.intrinsics, v.mask) for v in sensitive]
        self.hull = MaskHull(hull_views, cfg.hull_tolerance_px, cfg.hull_min_views) if cfg.hull_carve else None
        self._carved_at = -1
        self.s1_grid: DenseGrid | None = None
        self.light: torch.Tensor | None = None
        self.light_r2: float | None = None
        self._lit_at = -1
        self.history: list[dict] = []

    @property
    def field(self) -> SurfaceField:
        return self.trainer.field

    @torch.no_grad()
    def carve(self) -> dict | None:
        """Intersect the SDF with the mask hull (``hull_carve``); returns what it did, or ``None`` (no hull, or
        the SDF not born)."""
        if self.hull is None or not self.field.sdf_active:
            return None
        f, t = self.field, self.trainer
        g = f.sdf_grid
        pts = f._grid_points(g).reshape(-1, 3).cpu().numpy()
        spacing = ((g.aabb[1] - g.aabb[0]) / (torch.tensor(g.resolution, device=g.aabb.device) - 1)).cpu().numpy()
        hs = torch.from_numpy(self.hull.signed_distance(pts, tuple(g.resolution), spacing)).to(g.data)[..., None]
        before = g.data < 0
        g.data.copy_(torch.maximum(g.data, hs))
        removed = float((before & (g.data >= 0)).float().mean())
        if t.skips_empty:
            r = t.cfg.render
            t.occ.update(t.occupancy_density, t.occ_step, r.occ_threshold, fraction=r.occ_fraction)
        self._carved_at = t.step_count
        info = {"event": "hull_carve", "step": t.step_count, "outside": float((hs > 0).float().mean()), "solid_removed": removed}
        t.events.append(info)
        return info

    def _begin_stage2(self) -> None:
        self.carve()
        g = self.field.sdf_grid
        self.s1_grid = DenseGrid(g.resolution, 1, g.aabb.clone())
        self.s1_grid.data = torch.nn.Parameter(g.data.detach().clone(), requires_grad=False)

    def _lipschitz(self) -> torch.Tensor:
        f = self.field
        g = f.sdf_grid
        if self.s1_grid is None or tuple(self.s1_grid.resolution) != tuple(g.resolution) or not torch.equal(self.s1_grid.aabb, g.aabb):
            self._begin_stage2()  # the grid grew or moved: restart the reference from here
        box = g.aabb
        n = max(f.scfg.reg_points // 2, 1)
        xs = torch.rand(n, 3, generator=self.trainer.generator) * (box[1] - box[0] - 2 * f.voxel) + box[0] + f.voxel
        grad, _ = f.sdf_derivatives(xs)
        with torch.no_grad():
            h = f.voxel
            offs = torch.eye(3) * h
            ref = (self.s1_grid(( xs[:, None] + offs).reshape(-1, 3)) - self.s1_grid((xs[:, None] - offs).reshape(-1, 3)))
            ref = ref.reshape(n, 3) / (2 * h)
        return (grad - ref).pow(2).sum(-1).mean()

    def step(self) -> dict:
        t = self.trainer
        stage2 = t.step_count >= self.cfg.stage1_steps
        if stage2 and self.s1_grid is None:
            self._begin_stage2()
        elif stage2 and self.hull is not None and t.step_count - self._carved_at >= self.cfg.hull_every:
            self.carve()
        t.maintenance()
        early = self.cfg.early_masks and self.silhouettes is not None
        if early and not stage2 and not self._born_carved and self.field.sdf_active:
            self.carve()  # the SDF was just born: give it the hull of every mask at once
            self._born_carved = True
        o, d, rgb, mask = self.pixels.sample(t.cfg.optim.batch_rays, t.generator)
        loss, mse, out = t.compute_loss((o, d, rgb))
        terms = dict(out.get("terms", {}))
        n = o.shape[0]
        bg = t.background
        mask_term = _bce(out["opacity"], mask)
        if "opacity_sdf" in out:
            mask_term = mask_term + _bce(out["opacity_sdf"], mask)
        elif self.field.scfg.mode == "dual":
            mask_term = mask_term + _bce(_sdf_branch(self.field, out, n, bg)[1], mask)
        loss = loss + self.cfg.mask_weight * mask_term
        terms["mask"] = float(mask_term.detach())
        sil_on = self.cfg.silhouette_weight > 0 and self.field.sdf_active
        if sil_on:
            k = min(self.cfg.silhouette_rays, n)
            sil = self._silhouette(o[:k], d[:k], mask[:k])
            if (stage2 or early) and self.silhouettes is not None:
                so, sd, _, smask = self.silhouettes.sample(self.cfg.silhouette_rays, t.generator)
                sil = sil + self._silhouette(so, sd, smask)
            loss = loss + self.cfg.silhouette_weight * sil
            terms["silhouette"] = float(sil.detach())
        if stage2 and self.cfg.grad_weight > 0:  # at weight 0 the patches are not rendered (their mask term goes too)
            from privnerf.face.operators import apply_operator, to_gray

            po, pd, target, pmask = self.patches.sample(self.cfg.patches, t.generator)
            r = render_rays(self.field, t.occ, po, pd, t.settings(), jitter=True, keep_samples=True)
            k, p = target.shape[0], self.cfg.patch
            greys = [to_gray(r["rgb"])]
            if self.field.scfg.mode == "dual" and len(r["samples"]) > 0:
                c_s, op_s = _sdf_branch(self.field, r, po.shape[0], bg)
                if self.cfg.shading:
                    self._relight()
                    greys.append(shaded_sdf_grey(self.field, r, po, pd, self.light, float(to_gray(bg))))
                else:
                    greys.append(to_gray(c_s))
            grad_term = 0.0
            m = self.spec_margin()  # compare away from the patch border, where the blur and differences read padding
            for g in greys:
                sig = apply_operator(self.spec, g.reshape(k, 1, p, p))
                grad_term = grad_term + (sig - target)[..., m:p - m, m:p - m].abs().mean()
            loss = loss + self.cfg.grad_weight * grad_term
            terms["grad"] = float(grad_term.detach())
            if self.cfg.sensitive_masks:
                pm = pmask.reshape(-1)
                sm = _bce(r["opacity"], pm)
                if len(greys) > 1:
                    sm = sm + _bce(op_s, pm)
                loss = loss + self.cfg.mask_weight * sm
        if stage2:
            if self.cfg.lipschitz_weight > 0:
                lip = self._lipschitz()
                loss = loss + self.cfg.lipschitz_weight * lip
                terms["lipschitz"] = float(lip.detach())
        stats = t.apply_loss(loss, mse, out, n)
        stats.update(terms)
        stats["stage"] = 2 if stage2 else 1
        if stage2 and self.light_r2 is not None:
            stats["light_r2"] = self.light_r2
        return stats

    def _relight(self) -> None:
        t = self.trainer
        if self.light is None or t.step_count - self._lit_at >= self.cfg.relight_every:
            self.light, self.light_r2 = fit_lighting(self.field, t.occ, t.settings(), self.pixels,
                                                     self.cfg.light_rays, t.generator)
            self._lit_at = t.step_count

    def _silhouette(self, o, d, mask) -> torch.Tensor:
        return silhouette_loss(self.field, o, d, mask, self.cfg.silhouette_points,
                               self.cfg.silhouette_width_voxels * self.field.voxel, self.trainer.generator)

    def spec_margin(self) -> int:
        return patch_margin(self.spec)

    def save_checkpoint(self) -> None:
        """The core trainer's checkpoint plus ``checkpoints/face.pt``: stage 2's Lipschitz reference (the
        stage-1 SDF) and the loss history."""
        t = self.trainer
        ref = None if self.s1_grid is None else {"data": self.s1_grid.data.detach().cpu(), "aabb": self.s1_grid.aabb.cpu()}
        atomic_torch_save({"step": t.step_count, "s1_grid": ref, "history": self.history, "light": self.light,
                           "light_r2": self.light_r2, "lit_at": self._lit_at},
                          t.run_dir / "checkpoints" / "face.pt")
        t.save_checkpoint()

    def resume(self) -> bool:
        """Continue from the run folder's checkpoint, if it has one; returns whether it did."""
        t = self.trainer
        ckpt = latest_checkpoint(t.run_dir) if t.run_dir is not None else None
        if ckpt is None:
            return False
        t.load_checkpoint(ckpt)
        extra = t.run_dir / "checkpoints" / "face.pt"
        if extra.exists():
            st = torch.load(extra, map_location="cpu", weights_only=False)
            self.history = list(st.get("history", []))
            self.light, self.light_r2, self._lit_at = st.get("light"), st.get("light_r2"), st.get("lit_at", -1)
            ref = st.get("s1_grid")
            if ref is not None:
                g = self.field.sdf_grid
                self.s1_grid = DenseGrid(tuple(ref["data"].shape[:3]), 1, ref["aabb"].to(g.aabb))
                self.s1_grid.data = torch.nn.Parameter(ref["data"].to(g.data), requires_grad=False)
        return True

    def train(self) -> dict:
        t = self.trainer
        total = t.cfg.steps
        bar = tqdm(total=total, initial=t.step_count, disable=self.cfg.quiet, desc="face train", dynamic_ncols=True)
        stats: dict = {}
        t_start = time.perf_counter()
        last_ckpt = time.perf_counter()
        while t.step_count < total:
            t0 = time.perf_counter()
            stats = self.step()
            t.train_time += time.perf_counter() - t0
            if t.step_count % 50 == 0:
                bar.set_postfix(stage=stats["stage"], psnr=f"{stats['psnr']:.2f}",
                                **{k: f"{v:.3g}" for k, v in stats.items() if k in ("grad", "mask", "eikonal")})
                self.history.append({"step": t.step_count, **{k: v for k, v in stats.items()}})
            bar.update(1)
            if t.run_dir is not None and time.perf_counter() - last_ckpt > t.cfg.checkpoint_every_s:
                self.save_checkpoint()
                last_ckpt = time.perf_counter()
        bar.close()
        self.carve()
        if t.run_dir is not None:
            self.save_checkpoint()
        return {"steps": t.step_count, "train_time_s": t.train_time, "wall_s": time.perf_counter() - t_start,
                "last": stats, "beta": float(self.field.beta.detach())}


def run_face(cfg: FaceTrainConfig, neutral: Scene, sensitive: list, spec, out_dir: Path, label: str,
             resume: bool = False) -> dict:
    """Train (or, with ``resume``, continue the checkpoint in ``out_dir``), export the mesh, write
    ``results.json``; the shared entry of the CLI and the benchmark."""
    from privnerf.export.mesh import mesh_from_run, write_mesh

    set_threads(cfg.train.threads)
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        ft = FaceTrainer(cfg, neutral, sensitive, spec, out_dir)
    except Exception:
        if created and not any(out_dir.iterdir()):  # refused settings leave no empty run folder behind
            out_dir.rmdir()
        raise
    stored = out_dir / "config.json"
    mine = json.loads(json.dumps(config_to_dict(ft.cfg)))
    if resume and latest_checkpoint(out_dir) is not None:
        if stored.exists() and json.loads(stored.read_text()) != mine:
            raise ValueError(f"{stored}: the run was started with other settings; resume it with the same flags")
        ft.resume()
        if not cfg.quiet:
            print(f"resumed {out_dir} at step {ft.trainer.step_count}")
    else:
        atomic_write_text(stored, json.dumps(mine, indent=2) + "\n")
    res = ft.train()
    mesh, info = mesh_from_run(out_dir, resolution=cfg.mesh_resolution)
    write_mesh(mesh, out_dir / "mesh.ply")
    res.update({"label": label, "mesh": str(out_dir / "mesh.ply"), "mesh_info": info,
                "neutral_views": neutral.num_views, "sensitive_views": len(sensitive), "history": ft.history})
    write_results(out_dir, res)
    return res


def cli(argv: list[str]) -> int:
    """``privnerf face train --data DIR --output RUN [--stage1-steps N] [--stage2-steps N] ...``"""
    from privnerf.face.obscure import load_obscured

    p = argparse.ArgumentParser(prog="privnerf face train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="a folder written by `privnerf face obscure`")
    p.add_argument("--output", required=True, type=Path)
    d = FaceTrainConfig()
    for name in ("stage1_steps", "stage2_steps", "patches", "patch", "mesh_resolution"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("mask_weight", "grad_weight", "lipschitz_weight", "silhouette_weight"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--no-sensitive-masks", action="store_true")
    p.add_argument("--shading", action=argparse.BooleanOptionalAction, default=d.shading,
                   help="stage 2's σ term sees the SDF shaded (Lambertian, SH lighting fitted on the neutral views)")
    p.add_argument("--hull-carve", action=argparse.BooleanOptionalAction, default=d.hull_carve,
                   help="intersect the SDF with the visual hull of every mask in --data (stage 2's start, every "
                        "--hull-every steps, the end)")
    p.add_argument("--hull-tolerance-px", type=float, default=d.hull_tolerance_px)
    p.add_argument("--early-masks", action="store_true", help="the σ views' masks from the SDF's birth in stage 1")
    p.add_argument("--hull-min-views", type=int, default=d.hull_min_views)
    p.add_argument("--surface-mode", choices=["dual", "sdf"], default="dual")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --output (same flags)")
    a = p.parse_args(argv)
    if a.output.exists() and any(a.output.iterdir()) and not (a.resume and latest_checkpoint(a.output)):
        raise FileExistsError(f"{a.output}: exists and is not empty; choose another --output"
                              + ("" if a.resume else " (or --resume to continue its checkpoint)"))
    data = load_obscured(a.data)
    cfg = FaceTrainConfig(stage1_steps=a.stage1_steps, stage2_steps=a.stage2_steps, patches=a.patches, patch=a.patch,
                          mesh_resolution=a.mesh_resolution, mask_weight=a.mask_weight, grad_weight=a.grad_weight,
                          lipschitz_weight=a.lipschitz_weight, sensitive_masks=not a.no_sensitive_masks,
                          silhouette_weight=a.silhouette_weight, shading=a.shading, hull_carve=a.hull_carve,
                          hull_tolerance_px=a.hull_tolerance_px, hull_min_views=a.hull_min_views,
                          early_masks=a.early_masks,
                          quiet=a.quiet, train=_default_train_config())
    cfg.train.field.surface.mode = a.surface_mode
    cfg.train.seed = a.seed
    cfg.train.threads = a.threads
    res = run_face(cfg, data.neutral, data.sensitive, data.spec, a.output,
                   "rear-only" if a.stage2_steps == 0 else "obscured", resume=a.resume)
    print(f"{res['label']}: {res['steps']} steps in {res['train_time_s']:.0f}s; mesh {res['mesh']}")
    return 0
