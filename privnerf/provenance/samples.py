"""Empirical provenance samples from a trained radiance field, and transmittance between cameras and points.

ProvNeRF (Nakayama et al., NeurIPS 2024; spec ``../shared/specs/blog_papers.md`` §7) learns, for every 3D point
``x``, the distribution of places it was seen from. Its training data are the marched samples of the training
rays: a sample ``x = o + t d`` of a ray from camera ``o`` is one observation "``x`` seen from direction ``d`` at
distance ``t``", weighted by the field's transmittance ``T`` there (the probability that nothing hides ``x``
from that camera).

Both functions below march the trained field with its own occupancy grid (empty cells hold no density), so
they cost what rendering costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privnerf.data.cameras import rays_from_pixels
from privnerf.render.renderer import RenderSettings
from privnerf.render.sampler import march
from privnerf.render.volume import weights_from_density


@dataclass
class ProvenanceSamples:
    """Observations ``x seen from (d, t) with transmittance T``, packed.

    Attributes:
        x: ``(m, 3)`` points (world). d: ``(m, 3)`` unit ray directions (camera → point). t: ``(m,)`` distances
        from the camera. trans: ``(m,)`` transmittance from the camera to the point. view: ``(m,)`` long index
        of the training view. user: ``(m,)`` long contributor id (0 when the data has none).
    """

    x: torch.Tensor
    d: torch.Tensor
    t: torch.Tensor
    trans: torch.Tensor
    view: torch.Tensor
    user: torch.Tensor

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def subset(self, idx: torch.Tensor) -> "ProvenanceSamples":
        return ProvenanceSamples(self.x[idx], self.d[idx], self.t[idx], self.trans[idx], self.view[idx], self.user[idx])


@torch.no_grad()
def collect_samples(field, occ, settings: RenderSettings, c2w: np.ndarray, intrinsics: np.ndarray,
                    hw: list[tuple[int, int]], users: np.ndarray | None = None, rays_per_view: int = 2048,
                    per_ray: int = 8, free_per_ray: int = 8, seed: int = 0, chunk: int = 8192) -> ProvenanceSamples:
    """March random pixels of every training view through ``field``; keep ``per_ray`` random marched samples of
    each ray (in occupied cells: near surfaces) and ``free_per_ray`` points uniform along the ray inside the scene
    box (mostly empty space, observed as empty: ``T`` ~ 1 in front of the first surface, ~ 0 behind it), each
    with its transmittance. ProvNeRF's samples cover the whole ray too (stratified plus importance samples).

    Args:
        field, occ, settings: a trained field, its occupancy grid and its (inference) render settings.
        c2w: ``(v, 4, 4)``; intrinsics: ``(v, 4)``; hw: per view ``(h, w)``.
        users: ``(v,)`` contributor id per view (default all 0).
        rays_per_view: pixels drawn per view (without replacement when the view has fewer).
    Returns:
        :class:`ProvenanceSamples` with about ``v * rays_per_view * per_ray`` entries (fewer where rays cross
        little occupied space).

    Example::

        s = collect_samples(trainer.field, trainer.occ, trainer.settings(inference=True), scene.c2w,
                            scene.intrinsics, [scene.hw(i) for i in range(scene.num_views)])
        s.x.shape, s.trans.min() >= 0   # (m, 3), True
    """
    g = torch.Generator().manual_seed(seed)
    users = np.zeros(len(c2w), dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64)
    dev = next(iter(field.parameters())).device
    parts: list[tuple] = []
    for v in range(len(c2w)):
        h, w = hw[v]
        n = min(rays_per_view, h * w)
        pix = torch.randperm(h * w, generator=g)[:n]
        o, d, _ = rays_from_pixels(torch.as_tensor(c2w[v]).float(), torch.as_tensor(intrinsics[v]).float(),
                                   pix % w, pix // w)
        for i in range(0, n, chunk):
            oc, dc = o[i:i + chunk].to(dev), d[i:i + chunk].to(dev)
            s = march(oc, dc, settings.near, settings.far, field.space, occ, settings.step, jitter=True)
            if len(s) == 0:
                continue
            pts = oc[s.ray_idx] + s.t[:, None] * dc[s.ray_idx]
            _, trans = weights_from_density(field.density(pts), s.delta, s.ray_idx, len(oc))
            # keep per_ray random samples per ray: rank samples by a random key within their ray
            key = torch.rand(len(s), generator=g).to(dev) + s.ray_idx.float() * 2.0
            order = torch.argsort(key)
            first = torch.searchsorted(s.ray_idx, s.ray_idx[order])  # start of each sample's ray in packed order
            rank = torch.arange(len(s), device=dev) - first
            keep = order[rank < per_ray]
            parts.append((pts[keep].cpu(), dc[s.ray_idx[keep]].cpu(), s.t[keep].cpu(), trans[keep].cpu(),
                          torch.full((len(keep),), v), torch.full((len(keep),), int(users[v]))))
            if free_per_ray > 0:
                parts.append(_free_samples(field, oc, dc, s, pts, free_per_ray, g, v, int(users[v])))
    if not parts:
        raise ValueError("collect_samples: no ray crossed occupied space (is the field trained?)")
    cols = list(zip(*parts, strict=True))
    return ProvenanceSamples(*(torch.cat(c) for c in cols))


def _free_samples(field, o, d, s, pts, per_ray: int, g: torch.Generator, view: int, user: int) -> tuple:
    """``per_ray`` points uniform along each ray's stretch inside the field's box, with the transmittance there from
    the marched samples ``s`` (empty cells hold no density, so the sum over marched samples in front is it)."""
    from privnerf.render.sampler import ray_aabb

    n = len(o)
    if field.space.contraction:  # contracted scenes: the marched samples' own span
        t0 = torch.full((n,), float("inf")).index_reduce(0, s.ray_idx, s.t, "amin")
        t1 = torch.zeros(n).index_reduce(0, s.ray_idx, s.t, "amax")
    else:
        t0, t1 = ray_aabb(o, d, field.space.aabb)
    t0 = t0.clamp_min(0)
    ok = (t1 > t0) & torch.isfinite(t0)
    u = torch.rand(n, per_ray, generator=g)
    tq = (t0[:, None] + u * (t1 - t0)[:, None])[ok].reshape(-1)  # (k * per_ray,)
    rq = torch.arange(n)[ok].repeat_interleave(per_ray)
    sd = field.density(pts) * s.delta
    cum = torch.cumsum(sd.double(), 0)
    first = torch.searchsorted(s.ray_idx, torch.arange(n))
    base = torch.where(first > 0, cum[(first - 1).clamp_min(0)], torch.zeros_like(first, dtype=torch.float64))
    key = s.ray_idx.double() * 1e6 + s.t.double()
    pos = torch.searchsorted(key, rq.double() * 1e6 + tq.double())  # marched samples before tq (all rays)
    before = pos > first[rq]
    tau = torch.where(before, cum[(pos - 1).clamp_min(0)] - base[rq], torch.zeros_like(tq, dtype=torch.float64))
    x = o[rq] + tq[:, None] * d[rq]
    return (x.cpu(), d[rq].cpu(), tq.cpu(), torch.exp(-tau).float().cpu(), torch.full((len(rq),), view),
            torch.full((len(rq),), user))


@torch.no_grad()
def transmittance_to_points(field, occ, settings: RenderSettings, origin: torch.Tensor, points: torch.Tensor,
                            stop_short: float, chunk: int = 16384) -> torch.Tensor:
    """Transmittance of the field along the segment from ``origin`` ``(3,)`` to each of ``points`` ``(n, 3)``,
    stopping ``stop_short`` before the point (a surface point's own density would otherwise hide it).

    This is the occlusion half of the frustum + occlusion baseline (spec §7): render transmittance from a camera.

    Returns:
        ``(n,)`` in ``[0, 1]``. Example: a point in empty space with nothing in between gives 1.
    """
    out = torch.ones(len(points))
    dev = next(iter(field.parameters())).device
    for i in range(0, len(points), chunk):
        p = points[i:i + chunk].to(dev).float()
        o = origin.to(dev).float().expand_as(p).contiguous()
        to = p - o
        dist = to.norm(dim=-1)
        d = to / dist[:, None].clamp_min(1e-9)
        s = march(o, d, settings.near, settings.far, field.space, occ, settings.step, jitter=False)
        if len(s) == 0:
            continue
        s = s.select(s.t < (dist - stop_short)[s.ray_idx])
        if len(s) == 0:
            continue
        sig = field.density(o[s.ray_idx] + s.t[:, None] * d[s.ray_idx])
        tau = torch.zeros(len(p), device=dev).index_add(0, s.ray_idx, sig * s.delta)
        out[i:i + chunk] = torch.exp(-tau).cpu()
    return out
