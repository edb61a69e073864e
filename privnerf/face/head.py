"""The Ethiopian head (or any masked LLFF capture of one object) as a *bounded* scene.

:func:`load_head` loads every view of an LLFF folder (``poses_bounds.npy``, ``images_{factor}/``,
``masks_{factor}/``) with :func:`privnerf.data.llff.load_llff` (``scene_type="bounded"``, no holdout: all views),
composites each image on black with its mask as alpha (``rgb * mask / 255``; background ``(0, 0, 0)``), keeps
the masks, and replaces the loader's loose box by a tight one from the visual hull (:func:`visual_hull_aabb`).
``near`` / ``far`` then come from that box (:func:`aabb_near_far`), since the loader's depth-bound rule cuts
close to the back of the head for off-axis rays; the loader's values stay in ``meta["loader_near_far"]``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from privnerf.data.errors import SceneError
from privnerf.data.llff import load_llff
from privnerf.data.scene import Scene

__all__ = ["load_head", "project", "visual_hull_aabb", "aabb_near_far", "MaskHull", "MASK_THRESHOLD"]

#: Mask value (0..255) from which a pixel counts as the object.
MASK_THRESHOLD = 128


def project(points: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project world points into one OpenGL camera.

    Args:
        points: ``(P, 3)`` world points.
        c2w: ``(4, 4)`` camera-to-world (camera looks down -Z, +Y up).
        intrinsics: ``(fx, fy, cx, cy)``, pixel centres at ``(u + 0.5, v + 0.5)``.
    Returns:
        ``u``, ``v`` continuous pixel coordinates (``(P,)``; pixel index = floor) and the depth ``(P,)`` along
        the viewing axis (> 0 in front of the camera).
    """
    r, t = c2w[:3, :3].astype(np.float64), c2w[:3, 3].astype(np.float64)
    cam = (points - t) @ r  # R^T (X - t), row-wise
    depth = -cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = intrinsics[0] * cam[:, 0] / depth + intrinsics[2]
        v = -intrinsics[1] * cam[:, 1] / depth + intrinsics[3]
    return u, v, depth


def _carve(points: np.ndarray, scene: Scene, min_seen: int) -> np.ndarray:
    """Boolean ``(P,)``: inside the silhouette of every view that sees the point, and seen by >= min_seen."""
    hull = MaskHull([(scene.c2w[i], scene.intrinsics[i], scene.masks[i]) for i in range(scene.num_views)], 0.0, 1)
    outside, seen = hull.votes(points)
    return (outside == 0) & (seen >= min_seen)


class MaskHull:
    """The visual hull of a set of masked views, with a tolerance for mask and pose error.

    A point is *outside* when at least ``min_views`` views see it (in front of the camera, inside the image)
    more than ``tolerance_px`` pixels away from their mask (``>= MASK_THRESHOLD``); a view that does not see
    a point says nothing about it. The distance is each mask's Euclidean distance transform (scipy.ndimage),
    computed once.

    Example::

        >>> import numpy as np
        >>> c2w = np.eye(4); c2w[2, 3] = 3.0                        # a camera at z = 3 looking down -z
        >>> mask = np.zeros((64, 64), np.uint8); mask[24:40, 24:40] = 255
        >>> hull = MaskHull([(c2w, np.array([64., 64., 32., 32.]), mask)], tolerance_px=1)
        >>> hull.outside(np.array([[0., 0., 0.], [1., 0., 0.], [0., 0., 9.]])).tolist()  # centre, beside, behind
        [False, True, False]
    """

    def __init__(self, views: list, tolerance_px: float = 2.0, min_views: int = 1):
        from scipy.ndimage import distance_transform_edt

        if not (np.isfinite(tolerance_px) and tolerance_px >= 0):
            raise ValueError(f"hull tolerance must be >= 0 pixels, got {tolerance_px!r}")
        if int(min_views) < 1:
            raise ValueError(f"hull min views must be >= 1, got {min_views!r}")
        self.tolerance_px, self.min_views = float(tolerance_px), int(min_views)
        self.views = []
        for c2w, intrinsics, mask in views:
            m = np.asarray(mask)
            fg = m >= (MASK_THRESHOLD if m.dtype == np.uint8 or m.max() > 1 else MASK_THRESHOLD / 255.0)
            self.views.append((np.asarray(c2w, np.float64), np.asarray(intrinsics, np.float64),
                               distance_transform_edt(~fg).astype(np.float32)))

    def outside(self, points: np.ndarray) -> np.ndarray:
        """Boolean ``(P,)`` for world points ``(P, 3)``."""
        return self.votes(points)[0] >= self.min_views

    def votes(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per world point ``(P, 3)``: how many views see it beyond the tolerance outside their mask, and how
        many views see it at all (``(P,)`` int32 each)."""
        points = np.asarray(points, np.float64)
        votes = np.zeros(len(points), np.int32)
        seen_by = np.zeros(len(points), np.int32)
        for c2w, intr, dist in self.views:
            h, w = dist.shape
            u, v, d = project(points, c2w, intr)
            seen = (d > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
            ui = np.clip(np.floor(np.nan_to_num(u)), 0, w - 1).astype(np.int64)
            vi = np.clip(np.floor(np.nan_to_num(v)), 0, h - 1).astype(np.int64)
            votes += seen & (dist[vi, ui] > self.tolerance_px)
            seen_by += seen
        return votes, seen_by

    def signed_distance(self, points: np.ndarray, shape: tuple[int, int, int], spacing) -> np.ndarray:
        """For ``points`` ``(X*Y*Z, 3)`` on a regular lattice of ``shape`` with ``spacing`` (world units per
        step along each axis): the signed distance to the hull (positive outside, negative inside), by
        distance transforms of the lattice's outside and inside sets. ``(X, Y, Z)`` float32."""
        from scipy import ndimage

        out = self.outside(points).reshape(shape)
        if not out.any():
            return np.full(shape, -np.inf, np.float32)
        d_out = ndimage.distance_transform_edt(out, sampling=spacing)
        d_in = ndimage.distance_transform_edt(~out, sampling=spacing)
        return np.where(out, d_out, -d_in).astype(np.float32)


def _grid(lo: np.ndarray, hi: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    cell = (hi - lo) / n
    axes = [lo[k] + (np.arange(n) + 0.5) * cell[k] for k in range(3)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return g, cell


def visual_hull_aabb(scene: Scene, resolution: int = 64, pad: float = 0.10, min_seen_frac: float = 0.5) -> np.ndarray:
    """Tight ``(2, 3)`` box of the visual hull of the masks.

    A ``resolution``\\ :sup:`3` grid of cell centres in ``scene.aabb`` is projected into every view; a point is
    kept when it projects inside the mask (``>= MASK_THRESHOLD``) of **every** view where it lands inside the
    image in front of the camera, and lands inside the image in at least ``min_seen_frac`` of the views (points
    almost nobody sees are unconstrained). A second pass at the same resolution refines the box of the first
    (grown by one coarse cell). The result is the box of the kept cell centres grown by half a cell, then by
    ``pad`` (10 %) of its extent on each side.
    """
    if scene.masks is None:
        raise ValueError("visual_hull_aabb needs masks")
    min_seen = max(1, int(np.ceil(min_seen_frac * scene.num_views)))
    lo, hi = scene.aabb[0].astype(np.float64), scene.aabb[1].astype(np.float64)
    for _ in range(2):
        pts, cell = _grid(lo, hi, resolution)
        kept = pts[_carve(pts, scene, min_seen)]
        if len(kept) == 0:
            raise SceneError(scene.meta.get("source", "<scene>"),
                             "visual hull is empty: no point lies inside the masks of all views that see it")
        new_lo, new_hi = kept.min(0) - cell, kept.max(0) + cell
        lo, hi = np.maximum(new_lo, lo), np.minimum(new_hi, hi)
    lo, hi = kept.min(0) - cell / 2, kept.max(0) + cell / 2
    ext = hi - lo
    return np.stack([lo - pad * ext, hi + pad * ext]).astype(np.float32)


def aabb_near_far(c2w: np.ndarray, aabb: np.ndarray) -> tuple[float, float]:
    """Ray-distance bounds covering the box from every camera: ``near`` = 0.9 x the smallest camera-to-box
    distance (at least 1e-3), ``far`` = 1.05 x the largest camera-to-corner distance."""
    pos = c2w[:, :3, 3].astype(np.float64)
    lo, hi = aabb[0].astype(np.float64), aabb[1].astype(np.float64)
    closest = np.clip(pos, lo, hi)
    near = max(1e-3, 0.9 * float(np.linalg.norm(pos - closest, axis=-1).min()))
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    far = 1.05 * float(np.linalg.norm(pos[:, None] - corners[None], axis=-1).max())
    return near, far


def load_head(root: str | Path, factor: int = 8) -> Scene:
    """The masked capture as a bounded scene (all views; see the module docstring).

    Raises:
        SceneError: naming the folder when ``poses_bounds.npy`` or ``masks_{factor}/`` is missing, or any
            loader error (bad image, mask size, ...).
    """
    root = Path(root)
    if not root.is_dir():
        raise SceneError(root, "head data folder not found")
    if not (root / "poses_bounds.npy").is_file():
        raise SceneError(root, "poses_bounds.npy is missing: the head needs LLFF camera poses")
    mask_dir = root / ("masks" if int(factor) == 1 else f"masks_{int(factor)}")
    if not mask_dir.is_dir():
        raise SceneError(root, f"foreground masks folder {mask_dir.name}/ is missing: the head needs masks")
    scene = load_llff(root, "train", factor=factor, holdout=0, scene_type="bounded")
    if scene.masks is None:  # pragma: no cover - load_llff reads the folder checked above
        raise SceneError(mask_dir, "no masks loaded")
    images = []
    for img, m in zip(scene.images, scene.masks):
        alpha = (m.astype(np.float32) / 255.0)[..., None]
        images.append(np.ascontiguousarray(img * alpha, dtype=np.float32))
    scene = replace(scene, images=images, background=(0.0, 0.0, 0.0), meta=dict(scene.meta))
    loose = scene.aabb.copy()
    aabb = visual_hull_aabb(scene)
    near, far = aabb_near_far(scene.c2w, aabb)
    loader_nf = [scene.near, scene.far]
    scene = replace(scene, aabb=aabb, near=near, far=far)
    scene.meta.update({"format": "head", "loader_aabb": loose.tolist(), "aabb_from": "visual hull + 10%",
                       "loader_near_far": loader_nf, "near_far_from": "aabb"})
    return scene
