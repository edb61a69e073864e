"""What a trained provenance field answers: visibility from a new camera, triangulation uncertainty, who saw it.

All three read the field's samples at a point (:meth:`ProvenanceField.draw`): direction vectors ``D_j`` whose
length stands for the transmittance from where the point was seen.
"""

from __future__ import annotations

import torch

from privnerf.provenance.field import ProvenanceField


def _unit(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = v.norm(dim=-1)
    return v / n[..., None].clamp_min(1e-9), n


@torch.no_grad()
def visibility_scores(pf: ProvenanceField, x: torch.Tensor, origins: torch.Tensor, kappa: float = 20.0,
                      draws: int = 4, reduce: str = "max") -> torch.Tensor:
    """How strongly the provenance of each point supports being seen from each camera position.

    ``score(x, o) = max_j |D_j(x)| exp(kappa (cos(D_j(x), x - o) - 1))``: the transmittance of the nearest-pointing
    provenance sample, discounted by its angle to the camera's ray (a von Mises kernel of concentration ``kappa``).
    It says nothing about the camera's frustum; combine with :func:`in_frustum` for a camera with a finite image.

    Args:
        x: ``(n, 3)`` points; origins: ``(c, 3)`` camera centres.
    Returns:
        ``(c, n)`` in ``[0, ~1]``. Example: a point seen only from +x scores ~1 from a camera on +x and ~0 from -x.
    """
    D, _ = pf.draw(x, draws)
    Dh, mag = _unit(D)  # (S, n, 3), (S, n)
    Dbar, bmag = _unit(D.mean(0))
    out = torch.empty(len(origins), len(x))
    for c, o in enumerate(origins):
        v, _ = _unit(x - o)
        cos = (Dh * v[None]).sum(-1)
        if reduce == "resultant":
            cos = (Dbar * v).sum(-1)
            out[c] = bmag * torch.exp(kappa * (cos - 1))
            continue
        k = mag * torch.exp(kappa * (cos - 1))
        out[c] = k.amax(0) if reduce == "max" else k.mean(0)
    return out


@torch.no_grad()
def triangulation_uncertainty(pf: ProvenanceField, x: torch.Tensor, v: torch.Tensor, draws: int = 4,
                              eps: float = 0.05) -> torch.Tensor:
    """Uncertainty of the depth of points ``x`` ``(n, 3)`` along viewing directions ``v`` ``(n, 3)``, in scene units per
    radian of image resolution.

    A view at distance ``t`` whose ray meets ``v`` at angle ``theta`` pins ``x`` sideways to within ``t`` times its
    angular resolution, which is ``t / sin(theta)`` along ``v`` (nearly parallel rays triangulate badly); the best
    provenance sample, weighted by its transmittance, sets the bound:
    ``u = min_j t_j / (eps + |D_j| sin(D_j, v))``. A point seen only along ``v`` (or not at all) gets ``t / eps``.
    Returns ``(n,)``.
    """
    D, t = pf.draw(x, draws)
    Dh, mag = _unit(D)
    vh, _ = _unit(v)
    cos = (Dh * vh[None]).sum(-1).clamp(-1, 1)
    sin = (1 - cos ** 2).clamp_min(0).sqrt() * (cos > 0)  # a view from the other side saw another surface
    return (t / (eps + mag * sin)).amin(0)


@torch.no_grad()
def seen_strength(pf: ProvenanceField, x: torch.Tensor, draws: int = 4) -> torch.Tensor:
    """``(n,)``: the largest provenance transmittance at each point (~1: seen clearly from somewhere, ~0: never)."""
    D, _ = pf.draw(x, draws)
    return D.norm(dim=-1).amax(0)


@torch.no_grad()
def contributor_shares(pf: ProvenanceField, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """``(n, users)``: each contributor's share of the visible observations of ``x`` (rows sum to 1)."""
    return torch.cat([pf.user_shares(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def in_frustum(points: torch.Tensor, c2w: torch.Tensor, intrinsics: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(n,)`` bool: points that project inside a camera's image, in front of it."""
    from privnerf.data.cameras import project_points

    u, v, depth = project_points(c2w, intrinsics, points)
    h, w = hw
    return (depth > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)


TRIANGULATION_WEIGHT = 0.0
"""Weight of the triangulation term in the depth uncertainty; chosen on the built-in scene's val cameras
(``benchmarks/provenance.py``: 0 of 0, 0.1, 0.3, 1 in both settings; on those scenes the field's depth errors
come from unobserved space and grazing-angle blur, not from narrow baselines; docs/provenance.md)."""


@torch.no_grad()
def provenance_maps(pf: ProvenanceField, field, occ, settings, c2w, intrinsics, h: int, w: int, draws: int = 1,
                    min_weight: float = 0.02, free_samples: int = 32, chunk: int = 8192,
                    triangulation_weight: float = TRIANGULATION_WEIGHT) -> dict[str, torch.Tensor]:
    """Per-pixel provenance of one camera's view: the field is rendered, and the provenance queries are averaged
    over each ray's samples by their rendering weight (samples below ``min_weight`` left out).

    Returns ``(h, w)`` maps ``depth`` (camera z), ``opacity``, ``triangulation`` (:func:`triangulation_uncertainty`
    along the ray times the pixel's angle: scene units), ``unobserved`` (the length of ray in front of the rendered
    depth that no training camera observed: ``sum (1 - seen) ds`` over ``free_samples`` points, scene units: the
    true surface could hide anywhere in it), ``uncertainty`` (the depth uncertainty: ``unobserved +
    triangulation_weight * triangulation``), ``seen``
    (:func:`seen_strength`) and ``(h, w, users)`` ``shares`` (:func:`contributor_shares`). Pixels with no kept sample
    get ``nan``.
    """
    from privnerf.data.cameras import image_rays
    from privnerf.render.renderer import render_rays

    origins, dirs, z_scale = image_rays(torch.as_tensor(c2w).float(), torch.as_tensor(intrinsics).float(), h, w)
    n = len(origins)
    out = {k: torch.full((n,), float("nan")) for k in ("triangulation", "seen")}
    out["unobserved"] = torch.zeros(n)
    pixel_angle = 1.0 / float(intrinsics[0])
    out["depth"], out["opacity"] = torch.full((n,), float("inf")), torch.zeros(n)
    out["shares"] = torch.full((n, pf.users), float("nan"))
    for i in range(0, n, chunk):
        o, d = origins[i:i + chunk], dirs[i:i + chunk]
        r = render_rays(field, occ, o, d, settings, keep_samples=True)
        out["depth"][i:i + chunk] = r["depth"] / z_scale[i:i + chunk]
        out["opacity"][i:i + chunk] = r["opacity"]
        s, wts = r["samples"], r["weights"]
        keep = wts > min_weight
        if not keep.any():
            continue
        ri, wk = s.ray_idx[keep], wts[keep]
        x = o[ri] + s.t[keep][:, None] * d[ri]
        norm = torch.zeros(len(o)).index_add(0, ri, wk)
        has = norm > 0

        def avg(vals: torch.Tensor) -> torch.Tensor:
            acc = torch.zeros(len(o), *vals.shape[1:]).index_add(0, ri, wk.view(-1, *([1] * (vals.dim() - 1))) * vals)
            return acc / norm.view(-1, *([1] * (vals.dim() - 1))).clamp_min(1e-12)

        sl = slice(i, i + len(o))
        for key, vals in (("triangulation", triangulation_uncertainty(pf, x, d[ri], draws) * pixel_angle),
                          ("seen", seen_strength(pf, x, draws)), ("shares", contributor_shares(pf, x))):
            cur = out[key][sl]
            cur[has] = avg(vals)[has]
            out[key][sl] = cur
        out["unobserved"][sl] = _unobserved_length(pf, o, d, r["depth"], settings, free_samples, draws)
    out["uncertainty"] = out["unobserved"] + triangulation_weight * out["triangulation"]
    return {k: v.reshape(h, w, *v.shape[1:]) for k, v in out.items()}


def _unobserved_length(pf: ProvenanceField, o, d, depth, settings, k: int, draws: int) -> torch.Tensor:
    """``(n,)``: length of each ray from where it enters the box to its rendered ``depth`` (or leaving the box)
    that no training camera observed, ``sum (1 - seen) ds`` over ``k`` midpoints."""
    from privnerf.render.sampler import ray_aabb

    t0, t1 = ray_aabb(o, d, pf.aabb)
    t0 = t0.clamp_min(settings.near)
    t1 = torch.minimum(t1, torch.where(torch.isfinite(depth), depth, t1))
    span = (t1 - t0).clamp_min(0)
    ts = t0[:, None] + (torch.arange(k) + 0.5)[None] / k * span[:, None]
    x = (o[:, None] + ts[..., None] * d[:, None]).reshape(-1, 3)
    seen = seen_strength(pf, x, draws).clamp(0, 1).reshape(len(o), k)
    return (1 - seen).mean(1) * span
