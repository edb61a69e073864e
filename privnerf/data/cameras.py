"""Pinhole camera rays in the OpenGL convention (camera looks down -Z, +Y up).

Worked example: a 2x2 image with ``fx = fy = 1``, ``cx = cy = 1`` and an identity pose gives, for pixel
``(u, v) = (0, 0)``, the camera-space direction ``(0.5 - 1, -(0.5 - 1), -1) = (-0.5, 0.5, -1)``, i.e. the
top-left pixel looks left and up.
"""

from __future__ import annotations

import torch


def camera_directions(intrinsics: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Camera-space ray directions with ``z = -1`` (not normalised).

    Args:
        intrinsics: ``(4,)`` ``fx, fy, cx, cy``.
        h, w: image size in pixels.
    Returns:
        ``(h, w, 3)`` directions; pixel centres sit at ``(u + 0.5, v + 0.5)``.
    """
    fx, fy, cx, cy = [float(x) for x in intrinsics]
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    x = (u + 0.5 - cx) / fx
    y = -(v + 0.5 - cy) / fy
    return torch.stack([x, y, -torch.ones_like(x)], dim=-1)


def rays_from_pixels(
    c2w: torch.Tensor, intrinsics: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World-space rays through (possibly fractional) pixel coordinates.

    Args:
        c2w: ``(n, 4, 4)`` or ``(4, 4)`` camera-to-world.
        intrinsics: ``(n, 4)`` or ``(4,)`` ``fx, fy, cx, cy``.
        u, v: ``(n,)`` integer pixel column / row; the ray passes through the pixel centre.
    Returns:
        origins ``(n, 3)``, unit directions ``(n, 3)``, and ``z_scale`` ``(n,)``: the ray distance per unit of
        camera depth (a point at camera depth ``z`` lies at distance ``z * z_scale`` along the unit ray).
    """
    n = u.shape[0]
    if c2w.dim() == 2:
        c2w = c2w.expand(n, 4, 4)
    if intrinsics.dim() == 1:
        intrinsics = intrinsics.expand(n, 4)
    fx, fy, cx, cy = intrinsics.unbind(-1)
    d_cam = torch.stack(
        [(u.float() + 0.5 - cx) / fx, -(v.float() + 0.5 - cy) / fy, -torch.ones_like(fx)], dim=-1
    )
    d_world = torch.einsum("nij,nj->ni", c2w[:, :3, :3], d_cam)
    z_scale = d_world.norm(dim=-1)
    return c2w[:, :3, 3].clone(), d_world / z_scale[:, None], z_scale


def image_rays(c2w: torch.Tensor, intrinsics: torch.Tensor, h: int, w: int):
    """All rays of one image, row-major: origins ``(h*w, 3)``, unit directions ``(h*w, 3)``, z_scale ``(h*w,)``."""
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return rays_from_pixels(c2w, intrinsics, u.reshape(-1), v.reshape(-1))


def project_points(c2w: torch.Tensor, intrinsics: torch.Tensor, pts: torch.Tensor):
    """World points ``(n, 3)`` → continuous pixel coordinates ``u, v`` ``(n,)`` and camera depth ``(n,)``.

    The inverse of :func:`rays_from_pixels`: pixel ``(u, v)``'s centre is at ``(u + 0.5, v + 0.5)``, so
    ``floor(u), floor(v)`` is the pixel a point falls in. Depth is along the camera -Z axis (negative behind
    the camera).
    """
    c2w = torch.as_tensor(c2w, dtype=torch.float64)
    pts = torch.as_tensor(pts, dtype=torch.float64)
    fx, fy, cx, cy = (float(x) for x in intrinsics)
    cam = (pts - c2w[:3, 3]) @ c2w[:3, :3]  # R^T (p - t), row-wise
    depth = -cam[:, 2]
    return fx * cam[:, 0] / depth + cx, -fy * cam[:, 1] / depth + cy, depth
