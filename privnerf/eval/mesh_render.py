"""Pictures of meshes: shaded renders from a pinhole camera by ray casting (trimesh + Embree).

Used where a person would rather look than read (the face report's meshes side by side) and by the face
privacy study, which asks whether a render of the reconstructed *geometry* is recognised as the subject.

Example::

    >>> import numpy as np, trimesh
    >>> from privnerf.eval.mesh_render import render_mesh
    >>> c2w = np.eye(4); c2w[2, 3] = 3.0                      # at z = 3, looking down -z (OpenGL)
    >>> img = render_mesh(trimesh.creation.icosphere(), c2w, np.array([50.0, 50.0, 32.0, 32.0]), 64, 64)
    >>> img.shape, bool(img[32, 32].max() > 200), int(img[0, 0].max())
    ((64, 64, 3), True, 0)
"""

from __future__ import annotations

import numpy as np
import torch

from privnerf.data.cameras import image_rays


def render_mesh(mesh, c2w: np.ndarray, intrinsics: np.ndarray, h: int, w: int, mode: str = "shaded",
                background: float = 0.0, albedo: float = 0.85) -> np.ndarray:
    """Render ``mesh`` (a ``trimesh.Trimesh``) seen by camera ``c2w`` ``(4, 4)`` (OpenGL) with ``intrinsics``
    ``(fx, fy, cx, cy)`` at ``h x w``.

    Args:
        mode: ``"shaded"``: grey Lambertian shading under a light at the camera (a plaster cast);
            ``"normals"``: world normals mapped to RGB as ``(n + 1) / 2``.
        background: grey level of pixels that miss the mesh.
    Returns:
        ``(h, w, 3)`` uint8.
    """
    if mode not in ("shaded", "normals"):
        raise ValueError(f"unknown render mode {mode!r} (shaded, normals)")
    origins, dirs, _ = image_rays(torch.as_tensor(c2w, dtype=torch.float32), torch.as_tensor(intrinsics, dtype=torch.float32), h, w)
    o, d = origins.numpy().astype(np.float64), dirs.numpy().astype(np.float64)
    out = np.full((h * w, 3), float(background), dtype=np.float64)
    if len(mesh.faces):
        _, ray_idx, tri_idx = mesh.ray.intersects_location(o, d, multiple_hits=False)
        n = mesh.face_normals[tri_idx]
        if mode == "normals":
            out[ray_idx] = (n + 1) / 2
        else:
            lam = np.abs((n * d[ray_idx]).sum(-1))  # two-sided: a light at the eye
            out[ray_idx] = (0.08 + albedo * lam)[:, None]
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(h, w, 3)


__all__ = ["render_mesh"]
