"""HG3-NeRF's band sampling (HGG), multi-scale photometric loss (HPG) and semantic loss (HSG), as pure functions.

Worked example (band): a prior depth of 4.0 with ``band_start = 0.05`` at progress 0 gives the band
``[3.8, 4.2]``; with ``global_at = 0.5`` it is ``[3.58, 4.42]`` at progress 0.125 (the radius grows 20-fold by
progress 0.5: ``0.05 * 20 ** (p / 0.5)``), the whole ray ``[0, 8]`` at 0.5, after which prior rays are marched like
any other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from privnerf.render.sampler import Samples


def band_radius(depth: torch.Tensor, progress: float, band_start: float, global_at: float) -> torch.Tensor:
    """Half-width of the sampling band ``(n,)`` around prior depths ``(n,)``: ``depth * band_start`` at the start,
    growing geometrically to ``depth`` (the band then spans the ray from the camera to twice the prior) at
    progress ``global_at``; ``inf`` (the whole ray) after that."""
    if not 0 < band_start <= 1:
        raise ValueError(f"band_start {band_start}: expected a fraction of the prior depth in (0, 1]")
    if global_at <= 0 or progress >= global_at:
        return torch.full_like(depth, float("inf"))
    return depth * band_start * (1.0 / band_start) ** (progress / global_at)


def band_samples(origins: torch.Tensor, dirs: torch.Tensor, depth: torch.Tensor, radius: torch.Tensor,
                 near: float, far: float, box: torch.Tensor, step: float, max_samples: int,
                 jitter: bool = True, generator: torch.Generator | None = None) -> Samples:
    """Stratified samples in ``[depth - radius, depth + radius]`` (clipped to ``[near, far]`` and the box).

    Each ray's band is cut into ``k`` equal strata with ``k = min(max_samples, ceil(width / step))``, one
    sample per stratum (at a random place with ``jitter``, else its middle); the occupancy grid is not read,
    so a band in space the grid calls empty still gets samples (and gradient).

    Args:
        origins, dirs: ``(n, 3)`` rays (unit directions); depth, radius: ``(n,)``.
        box: ``(2, 3)`` the marching box.
    Returns:
        :class:`Samples` sorted by ray then distance, ``delta`` the stratum length.
    """
    from privnerf.render.sampler import ray_aabb

    n = origins.shape[0]
    t0, t1 = ray_aabb(origins, dirs, box)
    lo = torch.maximum(depth - radius, t0.clamp(min=near))
    hi = torch.minimum(depth + radius, t1.clamp(max=far))
    width = (hi - lo).clamp(min=0)
    k = torch.ceil(width / step).clamp(min=1, max=max_samples).long()
    k = torch.where(width > 0, k, torch.zeros_like(k))
    kmax = int(k.max()) if n else 0
    if kmax == 0:
        z = origins.new_zeros(0)
        return Samples(torch.zeros(0, dtype=torch.long, device=origins.device), z, z)
    i = torch.arange(kmax, device=origins.device, dtype=origins.dtype)[None]
    u = (torch.rand((n, kmax), generator=generator, device=origins.device) if jitter
         else torch.full((n, kmax), 0.5, device=origins.device))
    delta = width / k.clamp(min=1)
    t = lo[:, None] + (i + u) * delta[:, None]
    valid = i < k[:, None]
    r, c = valid.nonzero(as_tuple=True)
    return Samples(r, t[r, c], delta[r])


def multiscale_mse(pred: torch.Tensor, target: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    """HPG: sum over ``scales`` of the colour MSE after ``s x s`` average pooling of both ``(b, 3, h, w)`` patches.

    Zero for identical patches; ``h`` and ``w`` must be divisible by every scale.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"expected two (b, c, h, w) patches of equal shape, got {tuple(pred.shape)}, {tuple(target.shape)}")
    total = pred.new_zeros(())
    for s in scales:
        if s < 1 or pred.shape[-1] % s or pred.shape[-2] % s:
            raise ValueError(f"scale {s} does not divide the {pred.shape[-2]}x{pred.shape[-1]} patch")
        a = F.avg_pool2d(pred, s) if s > 1 else pred
        b = F.avg_pool2d(target, s) if s > 1 else target
        total = total + torch.mean((a - b) ** 2)
    return total


def semantic_distance(model, pred: torch.Tensor, target: torch.Tensor, taps: tuple[int, ...] = (0, 1, 2),
                      size: int = 64) -> torch.Tensor:
    """HSG: mean over AlexNet ``taps`` (0-4: conv1-conv5 ReLUs, the LPIPS trunk) of ``1 - cos`` between the
    channel vectors of the rendered and ground-truth ``(b, 3, h, w)`` patches in [0, 1], both resized to
    ``size`` px (conv1 has stride 4); the target's features carry no gradient."""
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"expected two (b, 3, h, w) patches of equal shape, got {tuple(pred.shape)}, {tuple(target.shape)}")

    def feats(x, grad):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) if x.shape[-1] != size else x
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            out = model._taps((2 * x - 1 - model.shift) / model.scale)
        return [out[k] for k in taps]

    fp, ft = feats(pred, True), feats(target, False)
    return sum((1 - F.cosine_similarity(a, b.detach(), dim=1, eps=1e-8)).mean() for a, b in zip(fp, ft)) / len(taps)
