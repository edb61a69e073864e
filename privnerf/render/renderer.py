"""Render rays and whole images from a field: march, (cull), shade, composite.

Two passes when the field's density is cheap (grid fields): density at every marched sample without
gradient gives the rendering weights; samples whose weight is below ``weight_threshold`` (empty space in
front, or hidden behind a surface) are dropped, and only the rest are shaded with gradient. Dropped samples
carry a weight below the threshold each, so the rendered colour changes by at most that much per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from privnerf.data.cameras import image_rays
from privnerf.fields.base import RadianceField
from privnerf.render.occupancy import OccupancyGrid
from privnerf.render.sampler import Samples, march, march_culled
from privnerf.render.volume import accumulate, composite, weights_from_density


@dataclass
class RenderSettings:
    near: float
    far: float
    step: float
    background: torch.Tensor  # (3,)
    weight_threshold: float = 1e-4
    skip_empty: bool = True
    """March through occupied cells only and cull low-weight samples; False: every sample in the box (for a
    party that cannot evaluate the density, e.g. a split server with the ``full`` decoder)."""


def render_rays(
    field: RadianceField,
    occ: OccupancyGrid,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    settings: RenderSettings,
    jitter: bool = False,
    background: torch.Tensor | None = None,
    keep_samples: bool = False,
) -> dict[str, torch.Tensor]:
    """Render a batch of rays.

    Args:
        origins, dirs: ``(n, 3)``, unit directions.
        background: optional per-ray ``(n, 3)`` background overriding ``settings.background``.
        keep_samples: also return the per-sample terms that sample-level losses need (see
            :func:`composite_samples`).
    Returns:
        ``rgb (n, 3)``, ``opacity (n,)``, ``depth (n,)`` (distance along the ray; ``inf`` where empty) and
        ``num_samples`` (samples shaded, a 0-d tensor).
    """
    return shade(field, origins, dirs, select_samples(field, occ, origins, dirs, settings, jitter), settings,
                 background, keep_samples)


def select_samples(field: RadianceField, occ: OccupancyGrid, origins: torch.Tensor, dirs: torch.Tensor,
                   settings: RenderSettings, jitter: bool = False) -> Samples:
    """The samples worth shading: marched through occupied space and, for fields with cheap density,
    culled to those whose rendering weight (without gradient) exceeds ``settings.weight_threshold``."""
    if not settings.skip_empty:  # the occupancy grid stays all-occupied: uniform samples in the box
        return march(origins, dirs, settings.near, settings.far, field.space, occ, settings.step, jitter)
    s = march_culled(origins, dirs, settings.near, settings.far, field, occ, settings.step, jitter,
                     settings.weight_threshold)
    if s is not None:
        return s
    s = march(origins, dirs, settings.near, settings.far, field.space, occ, settings.step, jitter)
    return cull_samples(field, origins, dirs, s, settings) if field.cheap_density else s


def cull_samples(field: RadianceField, origins: torch.Tensor, dirs: torch.Tensor, s: Samples,
                 settings: RenderSettings) -> Samples:
    """The samples ``s`` whose rendering weight under the current density (no gradient) exceeds
    ``settings.weight_threshold`` (or a branch's own floor) along ``(n, 3)`` rays."""
    if len(s) == 0:
        return s
    n = origins.shape[0]
    with torch.no_grad():
        pts = origins[s.ray_idx] + s.t[:, None] * dirs[s.ray_idx]
        keep = torch.zeros(len(s), dtype=torch.bool, device=pts.device)
        for sigma, floor in zip(field.branch_densities(pts), field.branch_weight_thresholds(), strict=True):
            w, _ = weights_from_density(sigma, s.delta, s.ray_idx, n)
            keep |= w > max(settings.weight_threshold, floor)
    return s.select(keep)


def shade(field, origins, dirs, s: Samples, settings: RenderSettings, background=None,
          keep_samples: bool = False) -> dict[str, torch.Tensor]:
    """Evaluate the field at the samples and composite (with gradient)."""
    pts = origins[s.ray_idx] + s.t[:, None] * dirs[s.ray_idx]
    sigma, values = field(pts, dirs[s.ray_idx])
    bg = settings.background if background is None else background
    return composite_samples(sigma, values, s, dirs, field.finish, bg, keep_samples)


def composite_samples(sigma: torch.Tensor, values: torch.Tensor, s: Samples, dirs: torch.Tensor, finish,
                      background: torch.Tensor, keep_samples: bool = False) -> dict[str, torch.Tensor]:
    """Volume-render packed samples into ray colours.

    Args:
        sigma: ``(m,)`` density; values: ``(m, c)`` composited per sample; s: the samples (ray index, t, delta).
        dirs: ``(n, 3)`` ray directions; finish: ``(composited (n, c), opacity (n,), dirs) → (n, 3)`` colour.
        background: ``(3,)`` or ``(n, 3)``.
        keep_samples: add ``samples`` (the :class:`Samples`), ``weights (m,)`` and ``values (m, c)``.
    Returns:
        ``rgb (n, 3)``, ``opacity (n,)``, ``depth (n,)`` (``inf`` where empty), ``num_samples`` (0-d).
    """
    n = dirs.shape[0]
    w, _ = weights_from_density(sigma, s.delta, s.ray_idx, n)
    opacity = accumulate(w, None, s.ray_idx, n)
    color = finish(accumulate(w, values, s.ray_idx, n), opacity, dirs)
    dist = accumulate(w, s.t[:, None], s.ray_idx, n)[:, 0]
    depth = torch.where(opacity > 1e-3, dist / opacity.clamp(min=1e-10), torch.full_like(dist, float("inf")))
    out = {
        "rgb": composite(color, opacity, background.to(color)),
        "opacity": opacity,
        "depth": depth,
        "num_samples": torch.tensor(len(s)),
    }
    if keep_samples:
        out.update(samples=s, weights=w, values=values)
    return out


@torch.no_grad()
def render_image_rays(render_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]], c2w: torch.Tensor,
                      intrinsics: torch.Tensor, h: int, w: int, device: torch.device | str,
                      chunk: int = 16384) -> dict[str, torch.Tensor]:
    """Cast every pixel's ray of one camera and render them through ``render_fn`` in chunks.

    Args:
        render_fn: ``(origins (n, 3), dirs (n, 3)) -> {key: (n, ...)}`` on ``device``.
        c2w: ``(4, 4)``; intrinsics: ``(4,)``.
    Returns:
        Each key of ``render_fn``'s output as ``(h, w, ...)``, plus ``z_scale (h, w)`` (ray length per unit
        of camera z, to turn distances along the ray into z-depth).
    """
    origins, dirs, z_scale = image_rays(torch.as_tensor(c2w).float().cpu(), torch.as_tensor(intrinsics).float().cpu(),
                                        h, w)
    origins, dirs = origins.to(device), dirs.to(device)
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, origins.shape[0], chunk):
        for k, v in render_fn(origins[i : i + chunk], dirs[i : i + chunk]).items():
            if v.dim() > 0:  # per-ray outputs; scalars such as num_samples are left out
                parts.setdefault(k, []).append(v)
    out = {k: torch.cat(v).reshape(h, w, *v[0].shape[1:]) for k, v in parts.items()}
    out["z_scale"] = z_scale.reshape(h, w).to(device)
    return out


def render_image(
    field: RadianceField,
    occ: OccupancyGrid,
    c2w: torch.Tensor,
    intrinsics: torch.Tensor,
    h: int,
    w: int,
    settings: RenderSettings,
    chunk: int = 16384,
) -> dict[str, torch.Tensor]:
    """Render one full image in chunks of rays.

    Args:
        c2w: ``(4, 4)``; intrinsics: ``(4,)``.
    Returns:
        ``rgb (h, w, 3)``, ``opacity (h, w)``, ``depth (h, w)`` (camera z-depth, ``inf`` where empty).
    """
    r = render_image_rays(lambda o, d: render_rays(field, occ, o, d, settings), c2w, intrinsics, h, w,
                          settings.background.device, chunk)
    return {"rgb": r["rgb"].clamp(0, 1), "opacity": r["opacity"], "depth": r["depth"] / r["z_scale"]}


def render_rays_personal(
    field: RadianceField,
    personal,
    occ: OccupancyGrid,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    image: torch.Tensor,
    settings: RenderSettings,
    jitter: bool = False,
    keep_samples: bool = False,
) -> dict[str, torch.Tensor]:
    """Render rays through the global field and a personal field together (NeRF-W compositing).

    Transmittance runs through both fields: ``T_k = exp(-sum_{j<k} (sigma_j + sigma^p_j) delta_j)``; global
    and personal colours are weighted by ``T_k (1 - exp(-sigma_k delta_k))`` and ``T_k (1 - exp(-sigma^p_k
    delta_k))``; the background fills ``1 - sum_k T_k (1 - exp(-(sigma_k + sigma^p_k) delta_k))``. The
    per-image appearance map applies to the radiance, not the background.

    Args:
        personal: a :class:`~privnerf.fields.personal_field.PersonalField` in the same working box.
        origins, dirs: ``(n, 3)``; image: ``(n,)`` long, the image of each ray.
    Returns:
        ``rgb (n, 3)``, ``beta (n,)`` (composited uncertainty + beta_min), ``opacity (n,)`` (both fields),
        ``personal_opacity (n,)``, ``sigma_personal (m,)`` (personal density at the shaded samples) and
        ``num_samples``; with ``keep_samples`` also ``samples`` (the m shaded samples) and ``weights_global``
        ``(m,)``, the global field's rendering weights ``T_k (1 - exp(-sigma_k delta_k))`` (for sample losses).
    """
    n = origins.shape[0]
    s = march_culled(origins, dirs, settings.near, settings.far, field, occ, settings.step, jitter,
                     settings.weight_threshold, extra=personal)
    if s is None:
        s = march(origins, dirs, settings.near, settings.far, field.space, occ, settings.step, jitter)
        if len(s) > 0:
            with torch.no_grad():
                xs = field.space(origins[s.ray_idx] + s.t[:, None] * dirs[s.ray_idx])
                bound = field.density_space(xs) + personal.density_bound(xs)
                w, _ = weights_from_density(bound, s.delta, s.ray_idx, n)
                s = s.select(w > settings.weight_threshold)
    ray = s.ray_idx
    pts = origins[ray] + s.t[:, None] * dirs[ray]
    sigma, values = field(pts, dirs[ray])
    sigma_p, rgb_p, beta = personal(field.space(pts), values, image[ray])
    _, trans = weights_from_density(sigma + sigma_p, s.delta, ray, n)
    w_g = trans * (1.0 - torch.exp(-sigma * s.delta))
    w_p = trans * (1.0 - torch.exp(-sigma_p * s.delta))
    w_joint = trans * (1.0 - torch.exp(-(sigma + sigma_p) * s.delta))
    opacity_g = accumulate(w_g, None, ray, n)
    colour = field.finish(accumulate(w_g, values, ray, n), opacity_g, dirs)
    colour = colour + accumulate(w_p, rgb_p, ray, n)
    colour = personal.apply_appearance(colour, image)
    opacity = accumulate(w_joint, None, ray, n)
    beta_hat = accumulate(w_p, beta[:, None], ray, n)[:, 0] + personal.cfg.beta_min
    out = {
        "rgb": composite(colour, opacity, settings.background.to(colour)),
        "beta": beta_hat,
        "opacity": opacity,
        "personal_opacity": accumulate(w_p, None, ray, n),
        "sigma_personal": sigma_p,
        "num_samples": torch.tensor(len(s)),
    }
    if keep_samples:
        out["samples"], out["weights_global"] = s, w_g
    return out


def render_image_personal(field, personal, occ, c2w, intrinsics, h: int, w: int, image_index: int,
                          settings: RenderSettings, chunk: int = 16384) -> dict[str, torch.Tensor]:
    """Full-image render with the personal field of image ``image_index``: ``rgb (h, w, 3)``, ``personal_opacity (h, w)``."""

    def rays(o: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
        img = torch.full((o.shape[0],), image_index, dtype=torch.long, device=o.device)
        r = render_rays_personal(field, personal, occ, o, d, img, settings)
        return {"rgb": r["rgb"], "personal_opacity": r["personal_opacity"]}

    r = render_image_rays(rays, c2w, intrinsics, h, w, settings.background.device, chunk)
    return {"rgb": r["rgb"].clamp(0, 1), "personal_opacity": r["personal_opacity"]}
