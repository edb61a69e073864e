"""Volume rendering as small pure functions on *packed* samples.

Samples of many rays are stored flat, sorted by ray and then by distance: ``ray_idx: (m,)`` says which
ray each sample belongs to (as nerfacc's packed layout). Every function here is differentiable.

Worked example (one ray, two samples, ``delta = 1``): densities ``[ln 2, ln 2]`` give opacities
``alpha = 1 - exp(-sigma * delta) = [0.5, 0.5]``, transmittance ``T = [1, 0.5]``, weights
``w = T * alpha = [0.5, 0.25]``, accumulated opacity ``0.75``; on a white background the pixel colour is
``0.5 c0 + 0.25 c1 + 0.25 * 1``.
"""

from __future__ import annotations

import torch


def ray_starts(ray_idx: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Index of the first sample of each sample's ray.

    Args:
        ray_idx: ``(m,)`` sorted ray index per sample.
        n_rays: number of rays.
    Returns:
        ``(m,)`` long: for sample ``k``, the packed index where its ray's samples begin.
    """
    counts = torch.bincount(ray_idx, minlength=n_rays)
    offsets = torch.cumsum(counts, 0) - counts
    return offsets[ray_idx]


def exclusive_cumsum_per_ray(x: torch.Tensor, ray_idx: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Sum of ``x`` ``(m,)`` over the earlier samples of the same ray (``ray_idx`` ``(m,)`` sorted), as float64.

    One running sum over the whole batch minus its value at each ray's first sample; in float64 because a
    float32 batch-wide sum loses the precision that the differences (and ``exp(-x)`` of them) need.
    """
    cs = torch.cumsum(x.double(), 0)
    excl = cs - x.double()
    return excl - excl[ray_starts(ray_idx, n_rays)]


def weights_from_density(
    sigma: torch.Tensor, delta: torch.Tensor, ray_idx: torch.Tensor, n_rays: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendering weights ``w_k = T_k (1 - exp(-sigma_k delta_k))`` with ``T_k = exp(-sum_{j<k} sigma_j delta_j)``.

    Args:
        sigma: ``(m,)`` densities.
        delta: ``(m,)`` sample lengths along the ray.
        ray_idx: ``(m,)`` sorted ray index per sample.
        n_rays: number of rays.
    Returns:
        weights ``(m,)`` and transmittance before each sample ``(m,)``.
    """
    sd = sigma * delta
    trans = torch.exp(-exclusive_cumsum_per_ray(sd, ray_idx, n_rays)).float()
    alpha = 1.0 - torch.exp(-sd)
    return trans * alpha, trans


def accumulate(weights: torch.Tensor, values: torch.Tensor | None, ray_idx: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Weighted sum per ray.

    Args:
        weights: ``(m,)``.
        values: ``(m, c)`` or ``None`` (then the weights themselves are summed: accumulated opacity).
        ray_idx: ``(m,)``.
    Returns:
        ``(n_rays, c)``, or ``(n_rays,)`` when ``values`` is ``None``.
    """
    if values is None:
        return torch.zeros(n_rays, dtype=weights.dtype, device=weights.device).index_add(0, ray_idx, weights)
    out = torch.zeros(n_rays, values.shape[-1], dtype=values.dtype, device=values.device)
    return out.index_add(0, ray_idx, weights[:, None] * values)


def composite(rgb: torch.Tensor, opacity: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Put the accumulated colour ``(n, 3)`` over ``background`` (``(3,)`` or ``(n, 3)``) given opacity ``(n,)``."""
    return rgb + (1.0 - opacity)[:, None] * background


def expected_depth(weights: torch.Tensor, t: torch.Tensor, ray_idx: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Weight-normalised mean sample distance per ray ``(n_rays,)`` (``inf`` where the ray hits nothing)."""
    acc = accumulate(weights, None, ray_idx, n_rays)
    d = accumulate(weights, t[:, None], ray_idx, n_rays)[:, 0]
    return torch.where(acc > 1e-4, d / acc.clamp(min=1e-10), torch.full_like(d, float("inf")))


def distortion_loss(weights: torch.Tensor, t: torch.Tensor, delta: torch.Tensor, ray_idx: torch.Tensor,
                    n_rays: int) -> torch.Tensor:
    """mip-NeRF 360's distortion loss per ray ``(n_rays,)``, on packed samples.

    ``sum_ij w_i w_j |t_i - t_j| + 1/3 sum_i w_i^2 delta_i``: small when a ray's weight sits in one short
    interval. The double sum is ``2 sum_i w_i (t_i W_i - S_i)`` with ``W_i``, ``S_i`` the sums of ``w`` and
    ``w t`` over the ray's earlier samples (samples are sorted by ``t``), so it costs O(m).

    Args:
        weights, t, delta: ``(m,)`` rendering weights, sample centres and lengths; ray_idx: ``(m,)`` sorted.
    """
    w_before = exclusive_cumsum_per_ray(weights, ray_idx, n_rays)
    wt_before = exclusive_cumsum_per_ray(weights * t, ray_idx, n_rays)
    # t W - S is a difference of two running sums: taken in float64, cast after
    between = (t.double() * w_before - wt_before).to(weights.dtype)
    per_sample = 2 * weights * between + weights**2 * delta / 3
    return torch.zeros(n_rays, dtype=weights.dtype, device=weights.device).index_add(0, ray_idx, per_sample)
