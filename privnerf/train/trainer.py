"""The one training loop.

:class:`Trainer` owns a field, its occupancy grid and optimizers. :meth:`Trainer.step` is the single
training step: centralized training calls :meth:`Trainer.train`, which loops over it with a stop rule
(steps or wall clock), a progress bar, and atomic checkpoints; protocol layers (federated clients, split
learning) call :meth:`Trainer.step` for their local work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from privnerf.data.scene import Scene
from privnerf.fields import make_field
from privnerf.fields.base import RadianceField
from privnerf.fields.grid_field import GridField
from privnerf.fields.personal_field import PersonalField
from privnerf.fields.surface_field import SurfaceField
from privnerf.render.occupancy import OccupancyGrid
from privnerf.render.renderer import RenderSettings, render_rays, render_rays_personal
from privnerf.render.volume import accumulate, composite, distortion_loss, weights_from_density
from privnerf.train.checkpoint import atomic_torch_save, atomic_write_text
from privnerf.train.config import TrainConfig
from privnerf.train.optim import GridAdam
from privnerf.train.rays import PixelSampler

log = logging.getLogger(__name__)


def pixel_footprint(scene: Scene) -> float:
    """World size of one pixel at the scene centre: median over views of camera distance / focal."""
    centre = (scene.aabb[0] + scene.aabb[1]) / 2
    dist = np.linalg.norm(scene.c2w[:, :3, 3] - centre, axis=1)
    focal = scene.intrinsics[:, :2].mean(axis=1)
    return float(np.median(dist / focal))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def set_threads(threads: int | None) -> int:
    if threads:
        n = threads
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count() or 1
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def config_to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Within the block, ``module``'s parameters build no graph (their ``requires_grad`` is off), so a loss
    formed there trains nothing of them; restored on exit."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


class Trainer:
    """Train a field on one scene.

    Args:
        cfg: the training configuration.
        scene: the training split.
        run_dir: where checkpoints, renders and results go.
    """

    TIMELINE_EVERY_S = 10.0
    """Training seconds between two :attr:`timeline` marks."""

    def __init__(self, cfg: TrainConfig, scene: Scene, run_dir: Path | None = None):
        self.cfg = cfg
        self.scene = scene
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        aabb = torch.from_numpy(scene.aabb).float()
        contraction = scene.scene_type != "bounded"
        self.near, self.far = float(scene.near), float(scene.far)
        bg = scene.background if scene.background is not None else (0.0, 0.0, 0.0)
        self.background = torch.tensor(bg, dtype=torch.float32, device=self.device)
        step0 = self._initial_step(aabb, contraction)
        # Occupancy thresholds are opacities over this fixed reference step, i.e. a fixed density: measured
        # over the current (shrinking) render step, growth would push every cell under the threshold.
        self.occ_step = step0
        self.field = make_field(cfg.field, aabb, contraction, step0, pixel_footprint(scene)).to(self.device)
        self.personal: PersonalField | None = None
        if cfg.personal.enabled:
            if not isinstance(self.field, GridField):
                raise ValueError("a personal field needs the grid global field (--field.kind grid)")
            self.personal = PersonalField(cfg.personal, self.field.space.box, scene.num_views,
                                          cfg.field.grid.feature_dim, step0).to(self.device)
        self.occ = OccupancyGrid(self.field.space.box, cfg.render.occ_resolution).to(self.device)
        self.sign_loss = None
        """The owner's signature term (``cfg.ownership.key``), added to every step's loss."""
        if cfg.ownership.key is not None:
            from privnerf.ownership.signature import SignLoss, read_key

            self.sign_loss = SignLoss([read_key(Path(cfg.ownership.key))], self.field, cfg.ownership.margin,
                                      cfg.ownership.weight).to(self.device)
        self.extra_loss = None
        """``callable(trainer) -> 0-d tensor`` added to every step's loss (the black-box watermark's term,
        :class:`privnerf.ownership.watermark.WatermarkLoss`); ``None`` for none."""
        self._pixels: PixelSampler | None = None
        self.excluded_pixels: list[np.ndarray] | None = None
        """Per-view boolean masks of pixels never to train on (set before the first step; see PixelSampler)."""
        self._build_optimizers()
        self.step_count = 0
        self.train_time = 0.0
        self.last_stats: dict[str, float] = {}
        self.curve: list[dict[str, float]] = []
        self.events: list[dict[str, Any]] = []
        """One-off moments of training (the surface field's SDF warm start), with step and training time."""
        self.timeline: list[dict[str, float]] = []
        """``{"time_s", "step"}`` every :attr:`TIMELINE_EVERY_S` seconds of training (:meth:`train`): the speed
        over any window of a run (the surface benchmark compares two runs' steps in the same window)."""

    @property
    def pixels(self) -> PixelSampler:
        """Training pixels, gathered on first use (inference from a checkpoint never needs them)."""
        if self._pixels is None:
            self._pixels = PixelSampler(self.scene, self.device, self.excluded_pixels)
        return self._pixels

    # -- setup --------------------------------------------------------------------------------------
    def _initial_step(self, aabb: torch.Tensor, contraction: bool) -> float:
        if self.cfg.field.kind in ("grid", "surface"):
            from privnerf.fields.grid_field import resolution_for

            box = torch.tensor([[-2.0] * 3, [2.0] * 3]) if contraction else aabb
            res = resolution_for(box, self.cfg.field.grid.num_voxels_start)
            return self._world_step(float(((box[1] - box[0]) / (torch.tensor(res) - 1)).mean()), aabb, contraction)
        return float((aabb[1] - aabb[0]).norm()) / self.cfg.render.samples_per_ray

    def _world_step(self, voxel: float, aabb: torch.Tensor, contraction: bool) -> float:
        # in a contracted scene the inner box [-1, 1]^3 spans the scene aabb
        scale = float(((aabb[1] - aabb[0]) / 2).mean()) if contraction else 1.0
        return self.cfg.render.step_ratio * voxel * scale

    @property
    def skips_empty(self) -> bool:
        """Whether training keeps an occupancy grid (refresh, culling, box shrink). Off, every ray gets uniform
        samples in the box: what a split server must do when it cannot read density (``--decoder full``)."""
        return self.cfg.render.skip_empty

    @property
    def marches_voxels(self) -> bool:
        """A grid field that skips empty space steps by its voxel size; anything else by box diagonal / samples."""
        return self._marches_voxels(self.field)

    def _marches_voxels(self, field: RadianceField) -> bool:
        return isinstance(field, GridField) and self.skips_empty

    @property
    def render_step(self) -> float:
        return self._render_step(self.field)

    def _render_step(self, field: RadianceField) -> float:
        if self._marches_voxels(field):
            g = field.density_grid
            voxel = float(((g.aabb[1] - g.aabb[0]) / (torch.tensor(g.resolution, device=g.aabb.device) - 1)).mean())
            return self._world_step(voxel, field.space.aabb, field.space.contraction)
        return float((field.space.aabb[1] - field.space.aabb[0]).norm()) / self.cfg.render.samples_per_ray

    def settings(self, inference: bool = False, field: RadianceField | None = None) -> RenderSettings:
        """Render settings for training, or (``inference``) for evaluation and rendering, which march with
        ``render.inference_step_scale`` times the step on grid fields. ``field``: settings for another field
        of this configuration (the federated server's global field) instead of the trainer's own."""
        field = self.field if field is None else field
        r = self.cfg.render
        step = self._render_step(field)
        if inference and self._marches_voxels(field):
            step *= r.inference_step_scale
        return RenderSettings(self.near, self.far, step, self.background, r.weight_threshold, self.skips_empty)

    def _build_optimizers(self) -> None:
        o = self.cfg.optim
        grids = self.field.grids()
        lrs = (self.field.grid_lrs(o.lr_density, o.lr_features) if hasattr(self.field, "grid_lrs")
               else [o.lr_density if i == 0 else o.lr_features for i in range(len(grids))])
        if self.personal is not None:
            grids = grids + self.personal.grids()
            lrs += [self.cfg.personal.lr_grid] * len(self.personal.grids())
        grid_params = {id(g.data) for g in grids}
        self.grid_opt: GridAdam | None = GridAdam(grids, lrs) if grids else None
        mlp_params = [p for p in self.field.parameters() if id(p) not in grid_params]
        # Grids on the dense path (CUDA) get their .grad from autograd; GridAdam handles both paths.
        lr = o.lr_mlp if grids else 5e-4
        groups = [{"params": mlp_params, "lr": lr, "base_lr": lr}]
        if self.personal is not None:
            pl = self.cfg.personal.lr_mlp
            groups.append({"params": [p for p in self.personal.parameters() if id(p) not in grid_params],
                           "lr": pl, "base_lr": pl})
        self.mlp_opt = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15 if grids else 1e-8)

    # -- the training step ---------------------------------------------------------------------------
    def progress(self) -> float:
        p = self.step_count / max(self.cfg.steps, 1)
        if self.cfg.max_time:
            p = max(p, self.train_time / self.cfg.max_time)
        return min(p, 1.0)

    def lr_scale(self) -> float:
        return self.cfg.optim.lr_final_factor ** self.progress()

    def maintenance(self) -> None:
        """Occupancy refresh and grid growth, on their schedules."""
        r = self.cfg.render
        # Early on, empty space falls below the threshold within ~10 Adam steps; refreshing every step then
        # keeps the first steps (which start with the whole box occupied) from costing seconds each.
        refresh = self.step_count % r.occ_update_every == 0 or self.step_count < r.occ_warmup_steps
        if refresh and self.skips_empty:
            self.occ.update(self.occupancy_density, self.occ_step, r.occ_threshold, fraction=r.occ_fraction)
        warm = self.step_count >= r.occ_warmup_steps
        if isinstance(self.field, GridField) and warm and self.field.pending_growth(self.progress()):
            gc = self.field.cfg
            box = None
            not_yet_shrunk = torch.equal(self.field.density_grid.aabb, self.field.space.box)
            if (gc.shrink_at_growth and int(self.field.grow_count) + 1 >= gc.shrink_at_growth and not_yet_shrunk
                    and self.step_count >= gc.shrink_after_steps and not self.field.space.contraction
                    and self.skips_empty):
                box = self.occ.occupied_box(self.occ_step, gc.shrink_min_alpha)
            self.field.grow(box)
            if self.grid_opt is not None:
                self.grid_opt.reset()
            if self.skips_empty:
                self.occ.update(self.occupancy_density, self.occ_step, r.occ_threshold, fraction=r.occ_fraction)
        if isinstance(self.field, SurfaceField) and not self.field.sdf_active and \
                self.step_count >= self.field.scfg.warm_start_steps and self.field.grown_for_warm_start() and \
                self.progress() >= self.field.scfg.warm_start_progress:
            t0 = time.perf_counter()
            info = self.field.warm_start(self.occ_step, self.seen_empty(self.field.sdf_grid))
            self.events.append({"event": "sdf_warm_start", "step": self.step_count, "train_time_s": self.train_time,
                                "duration_s": time.perf_counter() - t0, **info})
            log.info("SDF warm start from the density branch at step %d: %s", self.step_count, info)
            if self.skips_empty:
                self.occ.update(self.occupancy_density, self.occ_step, r.occ_threshold, fraction=r.occ_fraction)

    @torch.no_grad()
    def seen_empty(self, grid, rays_per_view: int = 4096, chunk: int = 8192) -> np.ndarray:
        """``(X, Y, Z)`` bool over ``grid``'s points: which the training cameras saw as empty space.

        Per training view, a depth map on a regular lattice of ``rays_per_view`` pixels: the camera depth at
        which a ray's transmittance under the current density first drops below one half (marched at half a
        voxel, no skipping; infinite where it never does), min-filtered over 3x3 lattice cells so that a point
        near a silhouette takes the nearer surface. Every grid point is then projected into the view: it is
        seen empty when it falls inside the image, in front of the camera, and more than half a voxel in front
        of the depth at its lattice cell. Projecting the points, not marking the voxels that rays pass
        through, leaves no gaps between rays: with 4096 rays per 400 px view, lattice rays are several voxels
        apart at a 256-voxel grid's centre, and the unvisited voxels had become speckles of solid in the SDF
        warm start on lego (docs/notes/surface-rounds.md, "Third round"). What the lattice misses (content narrower
        than the ray spacing) counts as seen empty here; the warm start keeps every voxel the density branch
        finds occupied solid regardless."""
        from privnerf.data.cameras import project_points, rays_from_pixels
        from privnerf.render.sampler import ray_aabb

        res = torch.tensor(grid.resolution)
        box = grid.aabb.detach().cpu().float()
        voxel = float(((box[1] - box[0]) / (res - 1)).mean())
        step = voxel / 2
        pts_all = torch.stack(torch.meshgrid(*[torch.linspace(float(box[0, i]), float(box[1, i]), int(res[i]))
                                               for i in range(3)], indexing="ij"), dim=-1).reshape(-1, 3)
        seen = torch.zeros(pts_all.shape[0], dtype=torch.bool)
        sc = self.scene
        for i in range(sc.num_views):
            h, w = sc.hw(i)
            k = max(int(math.sqrt(rays_per_view * w / h)), 2)
            kv = max(rays_per_view // k, 2)
            u = torch.linspace(0, w - 1, k).round().long()
            v = torch.linspace(0, h - 1, kv).round().long()
            vv, uu = torch.meshgrid(v, u, indexing="ij")
            c2w = torch.from_numpy(sc.c2w[i]).float()
            o, d, z_scale = rays_from_pixels(c2w, torch.from_numpy(sc.intrinsics[i]).float(), uu.reshape(-1), vv.reshape(-1))
            t0, t1 = ray_aabb(o, d, box)
            t0, t1 = t0.clamp(min=self.near), t1.clamp(max=self.far)
            hit_t = torch.full((o.shape[0],), float("inf"))
            rows = torch.nonzero(t1 > t0)[:, 0]
            for a in range(0, rows.shape[0], chunk // 64):
                r = rows[a:a + chunk // 64]
                aa, bb = t0[r], t1[r]
                n = int(torch.ceil((bb - aa).max() / step))
                t = aa[:, None] + (torch.arange(n)[None] + 0.5) * step
                valid = t < bb[:, None]
                pts = o[r, None] + t[..., None] * d[r, None]
                sig = GridField.density_space(self.field, pts.reshape(-1, 3).to(self.device)).cpu().reshape(t.shape) * valid
                trans = torch.exp(-torch.cumsum(sig * step, dim=1))
                below = trans < 0.5
                first = below.float().argmax(dim=1)
                hit_t[r] = torch.where(below.any(dim=1), t.gather(1, first[:, None])[:, 0], hit_t[r])
            depth = (hit_t / z_scale).reshape(kv, k)
            depth = -torch.nn.functional.max_pool2d(-depth[None, None], 3, stride=1, padding=1)[0, 0]
            for a in range(0, pts_all.shape[0], 1 << 21):
                p = pts_all[a:a + (1 << 21)]
                pu, pv, pz = project_points(c2w, sc.intrinsics[i], p)
                inside = (pu >= 0) & (pu < w) & (pv >= 0) & (pv < h) & (pz > 0)
                ju = ((pu - 0.5) * (k - 1) / max(w - 1, 1)).round().long().clamp(0, k - 1)
                jv = ((pv - 0.5) * (kv - 1) / max(h - 1, 1)).round().long().clamp(0, kv - 1)
                front = pz.float() < depth[jv, ju] - 0.5 * voxel
                seen[a:a + (1 << 21)] |= inside & front
        return seen.reshape(*grid.resolution).numpy()

    def occupancy_density(self, xs: torch.Tensor) -> torch.Tensor:
        """Density the occupancy grid tracks at working-box points ``(n, 3)``: the global field's, plus the
        personal field's upper bound when there is one (personal content sits where the global field is empty)."""
        sigma = self.field.density_space(xs)
        if self.personal is not None:
            sigma = sigma + self.personal.density_bound(xs)
        return sigma

    def compute_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass on a batch: ``(loss, mse, render outputs)``.

        Without a personal field the loss is the colour MSE, plus (bounded scenes) ``optim.distortion_weight``
        times mip-NeRF 360's distortion loss and ``optim.rgb_per_sample_weight`` times DVGO's per-sample colour
        loss. With one it is NeRF-W's (as nerf_pl implements
        it): ``mean(|C - C^|^2 / (2 beta^2)) + 3 + mean(log beta) + lambda_u mean(sigma_personal)``, plus the
        distortion term on the global field's weights when ``optim.distortion_weight`` > 0 (federated configs
        keep it 0 unless set).
        """
        if self.personal is None:
            origins, dirs, target = batch[:3]
            o = self.cfg.optim
            settings = self.settings()
            use_distortion = self._uses_distortion()
            surface = isinstance(self.field, SurfaceField)
            sample_losses = use_distortion or o.rgb_per_sample_weight > 0 or surface
            out = self.render_batch(origins, dirs, settings, sample_losses)
            mse = torch.mean((out["rgb"] - target) ** 2)
            loss = mse
            if surface:
                loss = loss + self._surface_terms(out, origins, dirs, settings, target)
            if sample_losses and len(out["samples"]) > 0:
                s, w = out["samples"], out["weights"]
                n = origins.shape[0]
                if use_distortion:
                    loss = loss + self._distortion_term(w, s, settings, n)
                if o.rgb_per_sample_weight > 0:
                    err = ((out["values"][:, :3] - target[s.ray_idx]) ** 2).sum(-1)
                    loss = loss + o.rgb_per_sample_weight * (w * err).sum() / n
            return loss, mse, out
        origins, dirs, target, image = batch
        settings = self.settings()
        use_distortion = self._uses_distortion()
        out = render_rays_personal(self.field, self.personal, self.occ, origins, dirs, image, settings,
                                   jitter=True, keep_samples=use_distortion)
        err = (out["rgb"] - target) ** 2
        beta = out["beta"]
        pc = self.cfg.personal
        sparsity = out["sigma_personal"].mean() if out["sigma_personal"].numel() else err.new_zeros(())
        loss = (err / (2 * beta[:, None] ** 2)).mean() + 3.0 + torch.log(beta).mean() + pc.lambda_u * sparsity
        if use_distortion and len(out["samples"]) > 0:
            # on the global field's weights only: a person in front of the object is two modes along the ray
            # by nature, and penalising that spread would push the people into the object
            loss = loss + self._distortion_term(out["weights_global"], out["samples"], settings, origins.shape[0])
        return loss, err.mean(), out

    def render_batch(self, origins: torch.Tensor, dirs: torch.Tensor, settings: RenderSettings,
                     keep_samples: bool) -> dict[str, torch.Tensor]:
        """Render a training batch (without a personal field) for :meth:`compute_loss`: ``render_rays`` with
        jitter. A subclass may choose the samples differently (HG3's depth-guided band sampling,
        :class:`privnerf.sparse.guidance.HG3Trainer`); the loss terms stay the same."""
        return render_rays(self.field, self.occ, origins, dirs, settings, jitter=True, keep_samples=keep_samples)

    def _surface_terms(self, out: dict, origins: torch.Tensor, dirs: torch.Tensor, settings,
                       target: torch.Tensor | None = None) -> torch.Tensor:
        """The surface field's extra loss (:mod:`privnerf.fields.surface_field`): in ``dual`` mode the SDF
        branch rendered from the same samples against the density branch's view-independent colour
        (stopped gradient), then eikonal and curvature terms. Each term lands in ``out["terms"]``."""
        f = self.field
        if not f.sdf_active:
            return torch.zeros((), device=origins.device)
        n = origins.shape[0]
        s, values = out["samples"], out["values"]
        terms: dict[str, torch.Tensor] = {}
        if f.scfg.mode == "dual" and len(s) > 0:
            bg = settings.background.to(values)
            w_d = out["weights"].detach()
            c = values[:, :3].detach()
            op_d = accumulate(w_d, None, s.ray_idx, n)
            w_s, _ = weights_from_density(f.sdf_density(values[:, -1]), s.delta, s.ray_idx, n)
            op_s = accumulate(w_s, None, s.ray_idx, n)
            if f.scfg.coupling_weight > 0 and self.progress() < f.scfg.coupling_until:
                label = composite(accumulate(w_d, c, s.ray_idx, n), op_d, bg)
                pred = composite(accumulate(w_s, c, s.ray_idx, n), op_s, bg)
                err = ((pred - label) ** 2).mean(-1)
                conf = f.scfg.coupling_confidence
                if conf > 0:
                    err = err * ((op_d < conf) | (op_d > 1 - conf)).to(err)
                terms["coupling"] = f.scfg.coupling_weight * err.mean()
            out["opacity_sdf"] = op_s
            if f.scfg.photo_weight > 0 and target is not None:
                reach = f.scfg.photo_reaches_colours  # off: colours and shading are constants, the SDF's weights move
                with contextlib.nullcontext() if reach else frozen(f):
                    share = 1.0 if reach else f.scfg.photo_colour_share
                    v = values.detach()
                    if share >= 1.0:
                        v = values
                    elif share > 0:  # the value is the same; the gradient reaching the colours is scaled by share
                        v = v + share * (values - v)
                    full = composite(f.finish(accumulate(w_s, v, s.ray_idx, n), op_s, dirs), op_s, bg)
                terms["photo_sdf"] = f.scfg.photo_weight * torch.mean((full - target) ** 2)
            if f.scfg.coupling_opacity_weight > 0:
                terms["coupling_opacity"] = f.scfg.coupling_opacity_weight * torch.mean((op_s - op_d) ** 2)
            if f.scfg.coupling_depth_weight > 0:
                d_s = accumulate(w_s, s.t[:, None], s.ray_idx, n)[:, 0] / op_s.clamp(min=1e-6)
                d_d = accumulate(w_d, s.t[:, None], s.ray_idx, n)[:, 0] / op_d.clamp(min=1e-6)
                both = (op_s.detach() > 0.5) & (op_d > 0.5)
                if bool(both.any()):
                    terms["coupling_depth"] = f.scfg.coupling_depth_weight * ((d_s - d_d).abs()[both]).mean() / f.voxel
        xs = f.space(origins[s.ray_idx] + s.t[:, None] * dirs[s.ray_idx]) if len(s) > 0 else origins.new_zeros(0, 3)
        terms.update(f.regularizers(xs, self.generator, self.progress()))
        out["terms"] = {k: float(v.detach()) for k, v in terms.items()}
        return sum(terms.values())

    def _uses_distortion(self) -> bool:
        return self.cfg.optim.distortion_weight > 0 and not self.field.space.contraction

    def _distortion_term(self, weights: torch.Tensor, s, settings, n_rays: int) -> torch.Tensor:
        """``optim.distortion_weight`` times the mean per-ray distortion of ``weights`` ``(m,)`` at samples ``s``,
        distances in render steps (so the weight means the same at every grid size)."""
        dist = distortion_loss(weights, s.t / settings.step, s.delta / settings.step, s.ray_idx, n_rays)
        return self.cfg.optim.distortion_weight * dist.mean()

    def sample_batch(self):
        return self.pixels.sample(self.cfg.optim.batch_rays, self.generator, with_image=self.personal is not None)

    def step(self, batch=None) -> dict[str, float]:
        """One optimisation step on a batch of rays ``(origins, dirs, rgb)`` (sampled if not given)."""
        self.maintenance()
        if batch is None:
            batch = self.sample_batch()
        loss, mse, out = self.compute_loss(batch)
        return self.apply_loss(loss, mse, out, batch[0].shape[0])

    def apply_loss(self, loss: torch.Tensor, mse: torch.Tensor, out: dict, n_rays: int) -> dict[str, float]:
        """The second half of :meth:`step`: backward, learning-rate schedule, optimizer steps. Split learning's
        server calls it with a loss whose gradient is the one the client returned at the cut."""
        o = self.cfg.optim
        if o.tv_weight > 0 and isinstance(self.field, GridField) and self.step_count % o.tv_every == 0:
            loss = loss + o.tv_weight * self.field.density_grid.total_variation()
        if self.sign_loss is not None:
            loss = loss + self.sign_loss(self.field)
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(self)
        self.mlp_opt.zero_grad(set_to_none=True)
        loss.backward()
        scale = self.lr_scale()
        for g in self.mlp_opt.param_groups:
            g["lr"] = g["base_lr"] * scale
        self.mlp_opt.step()
        if self.grid_opt is not None:
            self.grid_opt.step(scale)
        self.step_count += 1
        m = float(mse.detach())
        return {"loss": float(loss.detach()), "psnr": -10 * math.log10(max(m, 1e-10)),
                "samples": float(out["num_samples"]), "rays": float(n_rays)}

    # -- the loop -----------------------------------------------------------------------------------
    def done(self) -> bool:
        if self.step_count >= self.cfg.steps:
            return True
        return bool(self.cfg.max_time and self.train_time >= self.cfg.max_time)

    def train(self, eval_fn=None, quiet: bool = False) -> dict[str, float]:
        """Run steps until the stop rule; checkpoints every ``checkpoint_every_s`` seconds and at the end.

        ``eval_fn(trainer)`` (optional) is called every ``eval_every_s`` training seconds; its dict is
        appended to :attr:`curve` with the time and step.
        """
        cfg = self.cfg
        total = cfg.steps
        bar = tqdm(total=total, initial=self.step_count, disable=quiet, dynamic_ncols=True, desc="train")
        last_ckpt = time.perf_counter()
        next_eval = (len(self.curve) + 1) * cfg.eval_every_s if cfg.eval_every_s else None
        rays = samples = 0.0
        window_t = 0.0
        stats: dict[str, float] = {}
        if not self.timeline:
            self.timeline.append({"time_s": self.train_time, "step": self.step_count})
        next_mark = (math.floor(self.train_time / self.TIMELINE_EVERY_S) + 1) * self.TIMELINE_EVERY_S
        while not self.done():
            t0 = time.perf_counter()
            stats = self.step()
            dt = time.perf_counter() - t0
            self.train_time += dt
            rays += stats["rays"]
            samples += stats["samples"]
            window_t += dt
            if self.step_count % 10 == 0 or self.done():
                bar.set_postfix(psnr=f"{stats['psnr']:.2f}", rays_s=f"{rays / window_t:,.0f}",
                                samples_s=f"{samples / window_t:,.0f}", t=f"{self.train_time:.0f}s")
                self.last_stats = {"rays_per_s": rays / window_t, "samples_per_s": samples / window_t, **stats}
            bar.update(1)
            if self.train_time >= next_mark or self.done():
                self.timeline.append({"time_s": self.train_time, "step": self.step_count})
                next_mark = (math.floor(self.train_time / self.TIMELINE_EVERY_S) + 1) * self.TIMELINE_EVERY_S
            if next_eval is not None and self.train_time >= next_eval and eval_fn is not None:
                point = eval_fn(self)
                self.curve.append({"time_s": self.train_time, "step": self.step_count, **point})
                bar.write(f"[eval] t={self.train_time:.0f}s step={self.step_count} " +
                          " ".join(f"{k}={v:.3f}" for k, v in point.items() if isinstance(v, float)))
                next_eval += cfg.eval_every_s
            if self.run_dir is not None and time.perf_counter() - last_ckpt > cfg.checkpoint_every_s:
                self.save_checkpoint()
                last_ckpt = time.perf_counter()
        bar.close()
        if self.run_dir is not None:
            self.save_checkpoint()
        return self.last_stats

    # -- checkpoints --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "config": config_to_dict(self.cfg),
            "step": self.step_count,
            "train_time": self.train_time,
            "field": self.field.state_dict(),
            "personal": self.personal.state_dict() if self.personal is not None else None,
            "grid_shapes": [tuple(g.data.shape) for g in self.field.grids()],
            "grid_boxes": [g.aabb.cpu() for g in self.field.grids()],
            "occ": self.occ.state_dict(),
            "mlp_opt": self.mlp_opt.state_dict(),
            "grid_opt": self.grid_opt.state_dict() if self.grid_opt else None,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "curve": self.curve,
            "events": self.events,
            "timeline": self.timeline,
            "scene_info": scene_info(self.scene),
        }

    def save_checkpoint(self) -> Path:
        assert self.run_dir is not None
        path = self.run_dir / "checkpoints" / "last.pt"
        atomic_torch_save(self.state(), path)
        return path

    def load_state(self, st: dict[str, Any], with_optim: bool = True) -> None:
        for g, shape, box in zip(self.field.grids(), st["grid_shapes"], st["grid_boxes"]):
            if tuple(g.data.shape) != tuple(shape):
                g.data = torch.nn.Parameter(torch.zeros(shape, device=g.data.device))
            g.aabb.copy_(box)
        self.field.load_state_dict(st["field"])
        if self.personal is not None and st.get("personal") is not None:
            self.personal.load_state_dict(st["personal"])
        self.occ.load_state_dict(st["occ"])
        self.step_count = int(st["step"])
        self.train_time = float(st["train_time"])
        self.curve = list(st.get("curve", []))
        self.events = list(st.get("events", []))
        self.timeline = list(st.get("timeline", []))
        if with_optim:
            self._build_optimizers()
            self.mlp_opt.load_state_dict(st["mlp_opt"])
            if self.grid_opt is not None and st["grid_opt"] is not None:
                self.grid_opt.load_state_dict(st["grid_opt"])
            self.generator.set_state(st["generator"])
            torch.set_rng_state(st["torch_rng"])

    def load_checkpoint(self, path: Path, with_optim: bool = True) -> None:
        st = torch.load(path, map_location=self.device, weights_only=False)
        self.load_state(st, with_optim)


def scene_info(scene: Scene) -> dict[str, Any]:
    """What inference needs from the training scene (bounds, cameras), without the images."""
    return {
        "aabb": scene.aabb.tolist(), "near": scene.near, "far": scene.far, "scene_type": scene.scene_type,
        "background": scene.background, "c2w": scene.c2w.tolist(), "intrinsics": scene.intrinsics.tolist(),
        "hw": [list(scene.hw(i)) for i in range(scene.num_views)], "names": scene.names,
    }


def scene_from_info(info: dict[str, Any]) -> Scene:
    """A camera-only Scene (zero-cost placeholder images) rebuilt from :func:`scene_info`."""
    blank = np.zeros(3, dtype=np.float32)
    return Scene(
        images=[np.broadcast_to(blank, (h, w, 3)) for h, w in info["hw"]],
        c2w=np.asarray(info["c2w"], dtype=np.float32), intrinsics=np.asarray(info["intrinsics"], dtype=np.float32),
        near=info["near"], far=info["far"], aabb=np.asarray(info["aabb"], dtype=np.float32),
        scene_type=info["scene_type"], background=None if info["background"] is None else tuple(info["background"]),
        names=list(info["names"]),
    )


def trainer_from_checkpoint(run_dir: Path, device: str = "cpu") -> Trainer:
    """Rebuild a trainer (field, occupancy grid, settings) from ``run_dir/checkpoints/last.pt`` for inference."""
    from privnerf.train.config import config_from_dict

    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint (is {run_dir} a privnerf run directory?)")
    try:
        st = torch.load(path, map_location="cpu", weights_only=False)
        cfg = config_from_dict(st["config"])
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file gets one clear error
        from privnerf.data.errors import SceneError

        raise SceneError(path, f"not a privnerf checkpoint ({type(e).__name__}: {e})") from e
    cfg.device = device
    cfg.ownership.key = None  # inference needs no signature term (nor the owner's key file)
    trainer = Trainer(cfg, scene_from_info(st["scene_info"]), Path(run_dir))
    trainer.load_state(st, with_optim=False)
    return trainer


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    path = Path(run_dir) / "results.json"
    atomic_write_text(path, json.dumps(results, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o: Any):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
