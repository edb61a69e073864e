"""Ray marching: where along each ray to evaluate the field.

Bounded scenes march with a fixed step inside the box and keep samples in occupied cells (compiled kernel
on the CPU, vectorised PyTorch elsewhere). Contracted scenes (forward-facing, unbounded) take samples
uniform in distance inside the foreground box and uniform in inverse distance (disparity) beyond it, then
keep those in occupied cells of the contracted grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from privnerf.fields.base import SceneSpace
from privnerf.fields.ext import load_grid_ext
from privnerf.render.occupancy import OccupancyGrid


@dataclass
class Samples:
    """Packed samples, sorted by ray then distance.

    Attributes:
        ray_idx: ``(m,)`` long.
        t: ``(m,)`` distance of each sample along its unit ray.
        delta: ``(m,)`` length of ray each sample stands for.
    """

    ray_idx: torch.Tensor
    t: torch.Tensor
    delta: torch.Tensor

    def select(self, keep: torch.Tensor) -> "Samples":
        return Samples(self.ray_idx[keep], self.t[keep], self.delta[keep])

    def __len__(self) -> int:
        return int(self.t.shape[0])


def ray_aabb(origins: torch.Tensor, dirs: torch.Tensor, aabb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab test. ``(n, 3)`` rays and ``(2, 3)`` box → entry and exit distances ``(n,)`` (exit < entry: miss)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (aabb[0] - origins) * inv
    t1 = (aabb[1] - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


def march(
    origins: torch.Tensor,
    dirs: torch.Tensor,
    near: float,
    far: float,
    space: SceneSpace,
    occ: OccupancyGrid,
    step: float,
    jitter: bool,
    n_far_samples: int = 64,
) -> Samples:
    """Occupied samples along rays.

    Args:
        origins, dirs: ``(n, 3)`` rays (unit directions).
        near, far: distance bounds.
        space: the field's coordinate map (decides bounded vs contracted marching).
        occ: occupancy grid in the field's working coordinates.
        step: world step length inside the box.
        jitter: random offset of the first sample per ray (training) instead of half a step.
    """
    n = origins.shape[0]
    offset = torch.rand(n, device=origins.device) if jitter else torch.full((n,), 0.5, device=origins.device)
    if not space.contraction:
        t0, t1 = ray_aabb(origins, dirs, occ.box)
        t0 = t0.clamp(min=near)
        t1 = t1.clamp(max=far)
        # the device test first: a CUDA run never needs (nor compiles) the CPU kernels
        ext = load_grid_ext() if origins.device.type == "cpu" else None
        if ext is not None:
            ray_idx, t = ext.march_rays(
                origins.float().contiguous(), dirs.float().contiguous(), t0.float().contiguous(), t1.float().contiguous(),
                offset.float().contiguous(), float(step), occ.binary.contiguous(), occ.box.float().contiguous(),
            )
            return Samples(ray_idx, t, torch.full_like(t, step))
        return _march_torch(origins, dirs, t0, t1, offset, step, space, occ)
    # contracted: linear inside the foreground box, disparity-linear beyond it
    _, t_mid = ray_aabb(origins, dirs, space.aabb)
    t_mid = t_mid.clamp(min=near + step, max=far)
    return _march_torch(origins, dirs, torch.full_like(t_mid, near), t_mid, offset, step, space, occ,
                        far=far, n_far=n_far_samples)


def march_culled(origins, dirs, near, far, field, occ: OccupancyGrid, step: float, jitter: bool,
                 weight_threshold: float, min_transmittance: float = 1e-4, extra=None) -> Samples | None:
    """Fused march + density + culling for bounded grid fields on the CPU, or ``None`` if not applicable.

    Returns the samples whose rendering weight (under the current density, without gradient) exceeds
    ``weight_threshold``, stopping each ray once its transmittance drops below ``min_transmittance``.
    ``extra`` (optional): a second field with ``density_grid`` and ``shift`` over the same space whose
    density adds to the first (a personal field's bound). Not applicable when ``extra`` carries an ``exclusion``
    (the kernel reads its density grid directly and would count density the exclusion removes).

    A field whose density is not its density grid's alone applies only if it offers ``sdf_branch()``: a
    surface field's signed distance grid, box, Laplace scale, mode (``dual``: a second branch with its own
    transmittance, a sample kept when either branch weights it, as :meth:`SurfaceField.branch_densities`
    culls; ``sdf``: that branch alone) and that branch's own weight threshold (the larger of it and
    ``weight_threshold`` applies).
    """
    grid = getattr(field, "density_grid", None)
    ext = load_grid_ext() if origins.device.type == "cpu" else None
    sdf = field.sdf_branch() if hasattr(field, "sdf_branch") else None
    if (grid is None or ext is None or field.space.contraction or origins.device.type != "cpu" or not grid.sparse
            or (not getattr(field, "density_is_grid", True) and sdf is None)
            or getattr(extra, "exclusion", None) is not None):
        return None
    if sdf is None:
        sdf = (torch.empty(0), torch.empty(0), 1.0, "none", weight_threshold)
    sdf_data, sdf_box, beta, mode, sdf_threshold = sdf
    n = origins.shape[0]
    offset = torch.rand(n) if jitter else torch.full((n,), 0.5)
    t0, t1 = ray_aabb(origins, dirs, occ.box)
    ray_idx, t = ext.march_and_cull(
        origins.float().contiguous(), dirs.float().contiguous(), t0.clamp(min=near).contiguous(),
        t1.clamp(max=far).contiguous(), offset, float(step), occ.binary.contiguous(), occ.box.contiguous(),
        grid.data.detach().contiguous(), grid.aabb.contiguous(), float(field.shift), float(weight_threshold),
        float(min_transmittance), *_second_density(extra), sdf_data.detach().contiguous(), sdf_box.contiguous(),
        float(beta), {"none": 0, "dual": 1, "sdf": 2}[mode], float(max(sdf_threshold, weight_threshold)),
    )
    return Samples(ray_idx, t, torch.full_like(t, step))


def _second_density(extra) -> tuple[torch.Tensor, torch.Tensor, float]:
    if extra is None:
        return torch.empty(0), torch.empty(0), 0.0
    g = extra.density_grid
    return g.data.detach().contiguous(), g.aabb.contiguous(), float(extra.shift)


def _march_torch(origins, dirs, t0, t1, offset, step, space, occ, far=None, n_far=0, chunk_rays=1024) -> Samples:
    out_idx, out_t, out_d = [], [], []
    for start in range(0, origins.shape[0], chunk_rays):
        sl = slice(start, start + chunk_rays)
        o, d, a, b, off = origins[sl], dirs[sl], t0[sl], t1[sl], offset[sl]
        span = (b - a).clamp(min=0)
        n_steps = int(torch.ceil(span.max() / step).item()) if span.numel() else 0
        i = torch.arange(max(n_steps, 1), device=o.device, dtype=o.dtype)
        t = a[:, None] + (i[None] + off[:, None]) * step
        delta = torch.full_like(t, step)
        valid = t < b[:, None]
        if far is not None and n_far > 0:
            # n_far samples uniform in disparity (1/t) between the box exit b and `far`
            j = torch.arange(n_far + 1, device=o.device, dtype=o.dtype)[None] / n_far
            edges = 1 / ((1 / b)[:, None] * (1 - j) + (1 / far) * j)
            s = (torch.arange(n_far, device=o.device, dtype=o.dtype)[None] + off[:, None]) / n_far
            tf = 1 / ((1 / b)[:, None] * (1 - s) + (1 / far) * s)
            t = torch.cat([t, tf], dim=1)
            delta = torch.cat([delta, torch.diff(edges, dim=1).clamp(min=1e-6)], dim=1)
            valid = torch.cat([valid, torch.ones_like(tf, dtype=torch.bool)], dim=1)
        pts = o[:, None] + t[..., None] * d[:, None]
        occupied = occ.query(space(pts.reshape(-1, 3))).reshape(t.shape)
        keep = valid & occupied
        r, k = keep.nonzero(as_tuple=True)
        out_idx.append(r + start)
        out_t.append(t[r, k])
        out_d.append(delta[r, k])
    return Samples(torch.cat(out_idx), torch.cat(out_t), torch.cat(out_d))
