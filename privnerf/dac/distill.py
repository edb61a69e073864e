"""DaC's distillation: frozen experts (teachers) teach one student field, ray by ray, without pixels.

Every distillation ray is routed to the teacher that owns it (in centralized DaC the expert of the ray's
camera group). The teacher renders the ray without gradient and hands over its colour and its samples
(distance ``t``, length ``delta``, opacity ``alpha`` and colour at each). The student

* renders the same ray with its own sampler and occupancy grid → **ray colour** loss (MSE);
* is queried at the teacher's sample points → **point colour** (MSE on the diffuse colour channels) and
  **point opacity** (its own density turned into ``alpha`` with the teacher's ``delta``; MSE) losses;
* and, from those opacities, its rendering weights on the teacher's samples, which must cover the teacher's
  weights → **histogram** loss (mip-NeRF 360's outer bound on shared bins, see :func:`histogram_loss`).

``L = w_hist L_hist + w_pts_rgb L_pts_rgb + w_pts_alpha L_pts_alpha + w_ray_rgb L_ray_rgb`` with DaC's
weights 0.3 / 0.2 / 0.2 / 0.3 (its code's ``compute_loss``). The student trains through
:meth:`Trainer.apply_loss` (the one optimizer core: TV, schedules, Adam) and runs its own occupancy
maintenance each step. It never reads a ground-truth pixel: :func:`distill` takes rays from a
:data:`RaySource` (cameras only) and swaps the student's scene for :func:`pixel_free` while it runs.

Worked example of the point losses (one ray, two teacher samples, ``delta = 1``): teacher alphas
``[0.5, 0.5]``; a student with densities ``[ln 2, 0]`` has alphas ``[0.5, 0]`` → ``L_pts_alpha = (0 + 0.25)/2
= 0.125``; its weights ``[0.5, 0]`` against the teacher's ``[0.5, 0.25]`` leave an uncovered ``0.25`` in the
second bin → ``L_hist = 0.25**2 / 0.25 = 0.25``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from privnerf.data.cameras import rays_from_pixels
from privnerf.data.scene import Scene
from privnerf.fields.base import RadianceField
from privnerf.render.occupancy import OccupancyGrid
from privnerf.render.renderer import RenderSettings, composite_samples, render_rays, select_samples
from privnerf.render.volume import weights_from_density
from privnerf.train.trainer import Trainer

RaySource = Callable[[int, torch.Generator], tuple[Tensor, Tensor, Tensor]]
"""``(n, generator) -> origins (n, 3), unit directions (n, 3), teacher index (n,) long``."""


@dataclass
class DistillConfig:
    """One distillation phase. ``steps`` and ``max_time`` count from the start of this call."""

    steps: int = 2000
    max_time: float | None = None
    """Seconds of distillation (wall clock), whichever of steps/time comes first."""
    batch_rays: int = 4096
    w_hist: float = 0.3
    w_pts_rgb: float = 0.2
    w_pts_alpha: float = 0.2
    w_ray_rgb: float = 0.3
    checkpoint_every_s: float | None = None
    """Save the student (``student.save_checkpoint``) this often when it has a run directory; None: never."""


class GroundTruthAccess(RuntimeError):
    """Raised when code reads a pixel of a :func:`pixel_free` scene."""


class _NoPixels:
    """Stands in for one image: it has a shape (cameras need the size) but no pixels to read."""

    dtype = np.dtype(np.float32)
    ndim = 3

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(int(s) for s in shape)

    def _refuse(self, *args, **kwargs):
        raise GroundTruthAccess("the student read a ground-truth pixel during distillation; it may only learn "
                                "from its teachers' renders")

    __array__ = __getitem__ = reshape = astype = copy = tobytes = _refuse


def pixel_free(scene: Scene) -> Scene:
    """The same cameras as ``scene`` with images that raise :class:`GroundTruthAccess` when read."""
    from dataclasses import replace

    return replace(scene, images=[_NoPixels(scene.hw(i) + (3,)) for i in range(scene.num_views)])


@dataclass
class Teacher:
    """A frozen expert: what rendering it needs."""

    field: RadianceField
    occ: OccupancyGrid
    settings: RenderSettings

    @classmethod
    def from_trainer(cls, t: Trainer) -> "Teacher":
        """The trainer's field and occupancy grid, rendered with its evaluation settings (as a test view)."""
        return cls(t.field, t.occ, t.settings(inference=True))

    @torch.no_grad()
    def render(self, origins: Tensor, dirs: Tensor) -> dict[str, Tensor]:
        """Rays ``(n, 3)`` → ``rgb (n, 3)``, ``samples`` (packed, m), ``alpha (m,)``, ``weights (m,)`` and
        ``colour (m, 3)`` (the diffuse colour at each sample)."""
        s = select_samples(self.field, self.occ, origins, dirs, self.settings, jitter=False)
        pts = origins[s.ray_idx] + s.t[:, None] * dirs[s.ray_idx]
        sigma, values = self.field(pts, dirs[s.ray_idx])
        out = composite_samples(sigma, values, s, dirs, self.field.finish, self.settings.background, keep_samples=True)
        out["alpha"] = 1.0 - torch.exp(-sigma * s.delta)
        out["colour"] = values[:, :3]
        return out


def camera_rays(scene: Scene, owner: np.ndarray) -> RaySource:
    """Rays through uniformly drawn pixels of ``scene``'s cameras (never their colours), each routed to
    ``owner[view]``.

    Args:
        scene: only ``c2w``, ``intrinsics`` and the image sizes are read.
        owner: ``(num_views,)`` int, the teacher of each view.
    """
    owner = np.asarray(owner)
    if owner.shape != (scene.num_views,) or not np.issubdtype(owner.dtype, np.integer) or (owner < 0).any():
        raise ValueError(f"owner must hold one non-negative teacher index per view ({scene.num_views}), "
                         f"got shape {owner.shape} dtype {owner.dtype}")
    hw = torch.tensor([scene.hw(i) for i in range(scene.num_views)], dtype=torch.long)
    offsets = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), hw[:, 0] * hw[:, 1]]), 0)
    c2w = torch.from_numpy(scene.c2w).float()
    intr = torch.from_numpy(scene.intrinsics).float()
    own = torch.from_numpy(owner.astype(np.int64))

    def source(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        flat = torch.randint(0, int(offsets[-1]), (n,), generator=generator)
        view = torch.searchsorted(offsets, flat, right=True) - 1
        rem = flat - offsets[view]
        w = hw[view, 1]
        o, d, _ = rays_from_pixels(c2w[view], intr[view], rem % w, rem // w)
        return o, d, own[view]

    return source


def histogram_loss(w_student: Tensor, w_teacher: Tensor, ray_idx: Tensor, n_rays: int, eps: float = 1e-7) -> Tensor:
    """Mean over rays of ``sum_k max(w_t - w_s, 0)^2 / (w_t + eps)``: mip-NeRF 360's outer-bound penalty on
    shared bins (the teacher's samples), so the student's weights must cover the teacher's mass.

    Args:
        w_student, w_teacher: ``(m,)`` weights at the same packed samples; ray_idx ``(m,)``.
    """
    excess = torch.clamp(w_teacher - w_student, min=0) ** 2 / (w_teacher + eps)
    return excess.sum() / max(n_rays, 1)


def distill_loss(student: Trainer, teachers: list[Teacher], origins: Tensor, dirs: Tensor, owner: Tensor,
                 cfg: DistillConfig) -> tuple[Tensor, Tensor, dict, dict[str, float]]:
    """The weighted DaC loss on one batch: ``(loss, ray-colour mse, student render, per-term values)``."""
    n = origins.shape[0]
    order = torch.argsort(owner, stable=True)  # teachers' samples become contiguous and stay sorted by ray
    origins, dirs, owner = origins[order], dirs[order], owner[order]
    parts, start = [], 0
    rgb_t = torch.empty(n, 3, device=origins.device)
    for k in torch.unique(owner).tolist():
        if not 0 <= k < len(teachers):
            raise ValueError(f"ray source routed rays to teacher {k}; there are {len(teachers)} teachers")
        m = int((owner == k).sum())
        out = teachers[k].render(origins[start:start + m], dirs[start:start + m])
        rgb_t[start:start + m] = out["rgb"]
        s = out["samples"]
        parts.append((s.ray_idx + start, s.t, s.delta, out["alpha"], out["weights"], out["colour"]))
        start += m
    ray_idx, t, delta, alpha_t, w_t, col_t = (torch.cat(x) for x in zip(*parts))
    terms: dict[str, Tensor] = {}
    settings = student.settings()
    use_dist = student._uses_distortion()
    own = render_rays(student.field, student.occ, origins, dirs, settings, jitter=True, keep_samples=use_dist)
    mse = torch.mean((own["rgb"] - rgb_t) ** 2)
    terms["ray_rgb"] = mse
    need_points = cfg.w_pts_rgb > 0 or cfg.w_pts_alpha > 0 or cfg.w_hist > 0
    if need_points and len(ray_idx) > 0:
        pts = origins[ray_idx] + t[:, None] * dirs[ray_idx]
        sigma_s, values_s = student.field(pts, dirs[ray_idx])
        alpha_s = 1.0 - torch.exp(-sigma_s * delta)
        terms["pts_rgb"] = torch.mean((values_s[:, :3] - col_t) ** 2)
        terms["pts_alpha"] = torch.mean((alpha_s - alpha_t) ** 2)
        w_s, _ = weights_from_density(sigma_s, delta, ray_idx, n)
        terms["hist"] = histogram_loss(w_s, w_t, ray_idx, n)
        own["teacher_samples"] = len(ray_idx)
    weights = {"ray_rgb": cfg.w_ray_rgb, "pts_rgb": cfg.w_pts_rgb, "pts_alpha": cfg.w_pts_alpha, "hist": cfg.w_hist}
    loss = sum(weights[k] * v for k, v in terms.items() if weights[k] > 0)
    if use_dist and len(own["samples"]) > 0:
        terms["distortion"] = student._distortion_term(own["weights"], own["samples"], settings, n)
        loss = loss + terms["distortion"]
    return loss, mse, own, {k: float(v.detach()) for k, v in terms.items()}


def field_flops(field: RadianceField) -> tuple[float, float]:
    """Rough forward FLOPs of a grid field per shaded sample (trilinear reads of density + features) and per
    ray (the deferred colour MLP); (0, 0) for fields without a feature grid."""
    grid = getattr(field, "feature_grid", None)
    if grid is None:
        return 0.0, 0.0
    per_sample = 2 * 8 * (1 + grid.data.shape[-1])  # grids are (x, y, z, channels)
    per_ray = sum(2 * m.in_features * m.out_features for m in field.rgb_net.modules()
                  if isinstance(m, torch.nn.Linear)) if hasattr(field, "rgb_net") else 0
    return float(per_sample), float(per_ray)


@contextlib.contextmanager
def _without_pixels(student: Trainer):
    scene, pixels = student.scene, student._pixels
    student.scene, student._pixels = pixel_free(scene), None
    try:
        yield
    finally:
        student.scene, student._pixels = scene, pixels


def distill(student: Trainer, teachers: list[Teacher], rays: RaySource, cfg: DistillConfig,
            quiet: bool = True) -> dict:
    """Train ``student`` in place on its teachers' renders until ``cfg.steps`` steps or ``cfg.max_time``
    seconds (counted from this call). The student's ``train_time`` and ``step_count`` advance as in
    :meth:`Trainer.train` (so its schedules run on). Teachers' fields are frozen while it runs.

    Returns ``steps``, ``time_s``, the mean of each loss term (``loss_ray_rgb``, ``loss_pts_rgb``,
    ``loss_pts_alpha``, ``loss_hist``, ``loss_distortion``), ``teacher_psnr`` (student's own render vs the
    teachers' colours over the last 10% of steps) and a rough ``flops`` estimate (teacher forward + student
    forward/backward at ~3x forward, from the shaded samples and rays).
    """
    if not teachers:
        raise ValueError("distill needs at least one teacher")
    tf = [field_flops(t.field) for t in teachers]
    sf = field_flops(student.field)
    sums: dict[str, float] = {}
    tail: list[float] = []
    steps, elapsed, flops = 0, 0.0, 0.0
    last_ckpt = time.perf_counter()
    bar = tqdm(total=cfg.steps, disable=quiet, dynamic_ncols=True, desc="distill")
    with contextlib.ExitStack() as stack:
        stack.enter_context(_without_pixels(student))
        from privnerf.train.trainer import frozen

        for t in teachers:
            stack.enter_context(frozen(t.field))
        while steps < cfg.steps and not (cfg.max_time is not None and elapsed >= cfg.max_time):
            t0 = time.perf_counter()
            student.maintenance()
            o, d, owner = rays(cfg.batch_rays, student.generator)
            o, d, owner = o.to(student.device), d.to(student.device), owner.to(student.device)
            loss, mse, out, terms = distill_loss(student, teachers, o, d, owner, cfg)
            stats = student.apply_loss(loss, mse, out, cfg.batch_rays)
            dt = time.perf_counter() - t0
            elapsed += dt
            student.train_time += dt
            steps += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            tail.append(float(mse.detach()))
            ts = float(out.get("teacher_samples", 0))
            per_t = tf[0]  # teachers share a configuration
            flops += ts * per_t[0] + cfg.batch_rays * per_t[1]  # teacher forward
            flops += 3 * ((ts + stats["samples"]) * sf[0] + cfg.batch_rays * sf[1])  # student fwd + bwd
            if steps % 10 == 0:
                bar.set_postfix(teacher_psnr=f"{stats['psnr']:.2f}", t=f"{elapsed:.0f}s")
            bar.update(1)
            if (cfg.checkpoint_every_s and student.run_dir is not None
                    and time.perf_counter() - last_ckpt > cfg.checkpoint_every_s):
                student.save_checkpoint()
                last_ckpt = time.perf_counter()
    bar.close()
    k = max(1, len(tail) // 10)
    recent = tail[-k:] if tail else [float("nan")]
    m = sum(recent) / len(recent)
    return {"steps": steps, "time_s": elapsed, "batch_rays": cfg.batch_rays,
            **{f"loss_{k_}": v / max(steps, 1) for k_, v in sums.items()},
            "teacher_psnr": -10 * math.log10(max(m, 1e-10)) if m == m else None, "flops": flops}

