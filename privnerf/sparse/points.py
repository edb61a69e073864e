"""Sparse depth priors for HG3-NeRF's geometric guidance: SfM points seen from the training views.

A :class:`SparsePrior` is a list of prior pixels of a (training) scene: view index, pixel column / row, and the
prior distance along that pixel's unit ray. Two sources:

* :func:`colmap_prior`: a COLMAP model's ``points3D.bin`` (fern ships one), keeping the points whose track
  holds at least ``min_views`` of the chosen training views (points triangulated with the help of held-out
  views are dropped, so the prior uses nothing the sparse-view setting would not have).
* :func:`triangulated_prior`: SIFT keypoints (pycolmap's CPU SIFT) matched between the training views,
  filtered by the epipolar geometry of the known poses and triangulated by DLT (lego: the Blender scenes
  ship no SfM model). The dataset's ground-truth depth is never read.

Worked example: a point at world ``(0, 0, -2)`` seen by an identity camera (looking down -Z) with ``fx = fy =
2``, ``cx = cy = 2`` on a 4x4 image projects to ``(u, v) = (2, 2)``, i.e. pixel ``(2, 2)`` whose centre ray
``(0.25, -0.25, -1)`` reaches camera depth 2 at distance ``2 * |(0.25, -0.25, -1)| = 2.12``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from privnerf.data.cameras import project_points, rays_from_pixels
from privnerf.data.errors import SceneError
from privnerf.data.scene import Scene


@dataclass
class SparsePrior:
    """Prior pixels of a scene.

    Attributes:
        view: ``(m,)`` int64 view index into the scene.
        u, v: ``(m,)`` int64 pixel column and row.
        depth: ``(m,)`` float32 prior distance along the pixel's unit ray (through its centre).
        source: where the points came from (for results files).
    """

    view: np.ndarray
    u: np.ndarray
    v: np.ndarray
    depth: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return int(self.depth.shape[0])

    def check(self, scene: Scene, name: str = "sparse prior") -> "SparsePrior":
        """Raise ``ValueError`` naming ``name`` unless every entry lies in ``scene``'s views and images."""
        m = len(self)
        for attr in ("view", "u", "v"):
            if getattr(self, attr).shape != (m,):
                raise ValueError(f"{name}: {attr} has shape {getattr(self, attr).shape}, expected ({m},)")
        if m == 0:
            raise ValueError(f"{name}: no prior pixels (no point is seen by enough training views; more views or another --prior)")
        if not np.all(np.isfinite(self.depth)) or np.any(self.depth <= 0):
            raise ValueError(f"{name}: depths must be finite and positive")
        if self.view.min() < 0 or self.view.max() >= scene.num_views:
            raise ValueError(f"{name}: view index out of range 0..{scene.num_views - 1}")
        hw = np.array([scene.hw(i) for i in range(scene.num_views)])
        h, w = hw[self.view, 0], hw[self.view, 1]
        if np.any((self.u < 0) | (self.u >= w) | (self.v < 0) | (self.v >= h)):
            raise ValueError(f"{name}: pixel outside its image")
        return self

    def per_view(self) -> np.ndarray:
        """``(V,)`` count of prior pixels per view (V = largest view index + 1)."""
        return np.bincount(self.view, minlength=int(self.view.max()) + 1 if len(self) else 0)


def prior_from_points(scene: Scene, points: np.ndarray, seen: np.ndarray, source: str = "") -> SparsePrior:
    """Project world points into the views that saw them.

    Args:
        points: ``(P, 3)`` world points (the scene's coordinates).
        seen: ``(P, V)`` bool, which views' tracks hold each point.
    Returns:
        one prior pixel per (point, view) pair that projects inside the image in front of the camera; two
        points in one pixel keep the nearer.
    """
    points = np.asarray(points, np.float64)
    seen = np.asarray(seen, bool)
    if points.ndim != 2 or points.shape[1] != 3 or seen.shape != (points.shape[0], scene.num_views):
        raise ValueError(f"points {points.shape} and seen {seen.shape} must be (P, 3) and (P, {scene.num_views})")
    views, us, vs, ds = [], [], [], []
    for i in range(scene.num_views):
        p = points[seen[:, i]]
        if len(p) == 0:
            continue
        h, w = scene.hw(i)
        c2w = torch.from_numpy(scene.c2w[i]).double()
        pu, pv, pz = (x.numpy() for x in project_points(c2w, scene.intrinsics[i], torch.from_numpy(p)))
        ok = (pz > 0) & (pu >= 0) & (pu < w) & (pv >= 0) & (pv < h)
        u, v, z = np.floor(pu[ok]).astype(np.int64), np.floor(pv[ok]).astype(np.int64), pz[ok]
        _, _, zs = rays_from_pixels(c2w.float(), torch.from_numpy(scene.intrinsics[i]).float(),
                                    torch.from_numpy(u), torch.from_numpy(v))
        t = z * zs.double().numpy()
        order = np.lexsort((t, v * w + u))  # per pixel, nearest first
        _, first = np.unique((v * w + u)[order], return_index=True)
        keep = order[first]
        views.append(np.full(len(keep), i, np.int64))
        us.append(u[keep])
        vs.append(v[keep])
        ds.append(t[keep].astype(np.float32))
    if not views:
        return SparsePrior(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                           np.zeros(0, np.float32), source)
    return SparsePrior(np.concatenate(views), np.concatenate(us), np.concatenate(vs), np.concatenate(ds), source)


# -- COLMAP --------------------------------------------------------------------------------------------
def read_points3d_bin(path: str | Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """COLMAP ``points3D.bin`` → xyz ``(P, 3)`` float64 and, per point, the image ids of its track."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(path, "no such file (expected a COLMAP sparse model's points3D.bin)")
    b = path.read_bytes()
    head = struct.Struct("<QdddBBBdQ")
    try:
        (n,) = struct.unpack_from("<Q", b, 0)
        o = 8
        xyz = np.zeros((n, 3))
        tracks = []
        for k in range(n):
            rec = head.unpack_from(b, o)
            o += head.size
            tl = rec[8]
            if o + 8 * tl > len(b):
                raise struct.error("track runs past the end of the file")
            xyz[k] = rec[1:4]
            tracks.append(np.unique(np.frombuffer(b, dtype="<i4", count=2 * tl, offset=o)[0::2]))
            o += 8 * tl
    except struct.error as exc:
        raise SceneError(path, f"not a COLMAP points3D.bin ({exc})") from exc
    if o != len(b):
        raise SceneError(path, f"not a COLMAP points3D.bin ({len(b) - o} trailing bytes after {n} points)")
    if not np.all(np.isfinite(xyz)):
        raise SceneError(path, "NaN or Inf in the point coordinates")
    return xyz, tracks


def colmap_prior(scene: Scene, model: str | Path, min_views: int = 2) -> SparsePrior:
    """Prior from a COLMAP model for an LLFF scene (or a subset of one).

    The model holds no ``images.bin`` in the LLFF release, so image id ``k`` is taken to be the k-th image file
    in name order (COLMAP numbers images in the order it read them; checked on fern: every track's points
    project inside the views that hold them). ``scene.meta["indices"]`` maps the scene's views to files and
    ``scene.meta["world_transform"]`` maps COLMAP's world to the scene's.

    Args:
        model: folder with ``points3D.bin`` (e.g. ``fern/sparse/0``) or the file itself.
        min_views: keep points whose track holds at least this many of the scene's views.
    """
    path = Path(model)
    if path.is_dir():
        path = path / "points3D.bin"
    if "indices" not in scene.meta or "world_transform" not in scene.meta:
        raise ValueError(f"{path}: a COLMAP prior needs an LLFF scene (scene.meta lacks indices / world_transform)")
    xyz, tracks = read_points3d_bin(path)
    if len(scene.meta["indices"]) != scene.num_views:
        raise ValueError(f"{path}: scene.meta['indices'] lists {len(scene.meta['indices'])} files for "
                         f"{scene.num_views} views (take a subset with privnerf.sparse.points.subset_views)")
    ids = np.asarray(scene.meta["indices"], np.int64) + 1  # COLMAP image ids are 1-based
    seen = np.stack([np.isin(ids, tr) for tr in tracks]) if tracks else np.zeros((0, scene.num_views), bool)
    keep = seen.sum(1) >= min_views
    m = np.asarray(scene.meta["world_transform"], np.float64)
    pts = xyz[keep] @ m[:3, :3].T + m[:3, 3]
    return prior_from_points(scene, pts, seen[keep], source=f"{path} (tracks in >= {min_views} training views)")


# -- triangulation from known poses ---------------------------------------------------------------------
def _sift(image: np.ndarray, max_features: int) -> tuple[np.ndarray, np.ndarray]:
    import warnings

    try:
        import pycolmap
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("triangulating a sparse prior needs pycolmap (pip install pycolmap)") from exc
    gray = np.ascontiguousarray((np.asarray(image, np.float32)[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        opts = pycolmap.SiftExtractionOptions()
        opts.max_num_features = int(max_features)
        try:
            sift = pycolmap.Sift(pycolmap.FeatureExtractionOptions(sift=opts)) if hasattr(
                pycolmap, "FeatureExtractionOptions") else pycolmap.Sift(opts)
        except (TypeError, AttributeError):
            sift = pycolmap.Sift()
        kp, desc = sift.extract(gray)
    desc = np.asarray(desc, np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True).clip(min=1e-8)
    return np.asarray(kp[:, :2], np.float64), desc  # x, y with pixel centres at +0.5 (COLMAP and ours agree)


def _projection(scene: Scene, i: int) -> np.ndarray:
    """``(3, 4)`` matrix taking world points to ``(u, v, 1) * z`` (image y down, camera looking down -Z)."""
    fx, fy, cx, cy = (float(x) for x in scene.intrinsics[i])
    k = np.array([[fx, 0, cx], [0, -fy, cy], [0, 0, 1.0]]) @ np.diag([1.0, 1.0, -1.0])
    c2w = scene.c2w[i].astype(np.float64)
    w2c = np.linalg.inv(c2w)[:3]
    return k @ w2c


def _dlt(p1: np.ndarray, p2: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Two-view linear triangulation: ``(3, 4)`` projections, ``(n, 2)`` pixels → ``(n, 3)`` points."""
    a = np.stack([x1[:, 0:1] * p1[2] - p1[0], x1[:, 1:2] * p1[2] - p1[1],
                  x2[:, 0:1] * p2[2] - p2[0], x2[:, 1:2] * p2[2] - p2[1]], axis=1)  # (n, 4, 4)
    _, _, vt = np.linalg.svd(a)
    x = vt[:, -1]
    return x[:, :3] / x[:, 3:4]


def _reproject(p: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = pts @ p[:, :3].T + p[:, 3]
    return h[:, :2] / h[:, 2:3], h[:, 2]


def _epipolar_distance(p1: np.ndarray, p2: np.ndarray, c1: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """``(n1, n2)`` pixel distance of each point of ``x2`` to the epipolar line of each point of ``x1``."""
    e2 = p2 @ np.append(c1, 1.0)  # the epipole: camera 1's centre seen by camera 2
    ex = np.array([[0, -e2[2], e2[1]], [e2[2], 0, -e2[0]], [-e2[1], e2[0], 0]])
    f = ex @ p2 @ np.linalg.pinv(p1)  # (3, 3) fundamental matrix
    lines = np.c_[x1, np.ones(len(x1))] @ f.T  # (n1, 3)
    lines /= np.linalg.norm(lines[:, :2], axis=1, keepdims=True).clip(min=1e-12)
    return np.abs(lines @ np.c_[x2, np.ones(len(x2))].T)


def triangulated_prior(scene: Scene, max_features: int = 4000, ratio: float = 0.9, max_error: float = 1.5,
                       min_angle_deg: float = 2.0, max_epipolar: float = 2.0, min_views: int = 2,
                       confirm_cos: float = 0.8) -> SparsePrior:
    """Prior from SIFT matches between the scene's views, triangulated with the known poses.

    Per pair of views: among the keypoints within ``max_epipolar`` px of the epipolar line (guided matching
    with the known poses), mutual nearest neighbours of unit SIFT descriptors passing Lowe's ratio test, kept
    when the two-view DLT point reprojects within ``max_error`` px in both views, lies in front of both, inside
    ``scene.aabb`` and sees a triangulation angle of at least ``min_angle_deg``. Each kept match gives a prior
    pixel in both views (a pixel matched in several pairs keeps its nearest depth).
    """
    if scene.num_views < 2:
        raise ValueError("triangulating a sparse prior needs at least two views")
    feats = [_sift(scene.images[i], max_features) for i in range(scene.num_views)]
    proj = [_projection(scene, i) for i in range(scene.num_views)]
    centres = scene.c2w[:, :3, 3].astype(np.float64)
    lo, hi = scene.aabb[0] - 1e-3, scene.aabb[1] + 1e-3
    pts_all, seen_all = [], []
    for i in range(scene.num_views):
        for j in range(i + 1, scene.num_views):
            (ki, di), (kj, dj) = feats[i], feats[j]
            if len(ki) < 2 or len(kj) < 2:
                continue
            sim = torch.from_numpy(di) @ torch.from_numpy(dj).T
            # guided matching: only candidates within max_epipolar px of the epipolar line the known poses give
            sim[torch.from_numpy(_epipolar_distance(proj[i], proj[j], centres[i], ki, kj) > max_epipolar)] = -1.0
            top = sim.topk(2, dim=1)
            best_j = top.indices[:, 0]
            dist = (2 - 2 * top.values.clamp(max=1)).clamp(min=0).sqrt()
            ok = (dist[:, 0] < ratio * dist[:, 1]) & (top.values[:, 0] > -1.0)
            back = sim.argmax(dim=0)
            ok &= back[best_j] == torch.arange(len(ki))
            a = ok.nonzero()[:, 0].numpy()
            if len(a) == 0:
                continue
            b = best_j[a].numpy()
            x1, x2 = ki[a], kj[b]
            pts = _dlt(proj[i], proj[j], x1, x2)
            r1, z1 = _reproject(proj[i], pts)
            r2, z2 = _reproject(proj[j], pts)
            err = np.maximum(np.linalg.norm(r1 - x1, axis=1), np.linalg.norm(r2 - x2, axis=1))
            v1, v2 = pts - centres[i], pts - centres[j]
            cosang = (v1 * v2).sum(1) / (np.linalg.norm(v1, axis=1) * np.linalg.norm(v2, axis=1)).clip(min=1e-12)
            good = ((err < max_error) & (z1 > 0) & (z2 > 0) & np.all((pts > lo) & (pts < hi), axis=1)
                    & (cosang < np.cos(np.radians(min_angle_deg))))
            seen = np.zeros((len(pts), scene.num_views), bool)
            seen[:, [i, j]] = True
            if min_views > 2:  # confirm in further views: a keypoint near the projection with a similar descriptor
                for k in range(scene.num_views):
                    if k in (i, j) or len(feats[k][0]) == 0:
                        continue
                    rk, zk = _reproject(proj[k], pts)
                    near = np.linalg.norm(rk[:, None] - feats[k][0][None], axis=2) < max_error  # (n, n_k)
                    cos = di[a] @ feats[k][1].T
                    seen[:, k] = (zk > 0) & np.any(near & (cos > confirm_cos), axis=1)
                good &= seen.sum(1) >= min_views
            seen = seen[good]
            pts_all.append(pts[good])
            seen_all.append(seen)
    if not pts_all:
        pts, seen = np.zeros((0, 3)), np.zeros((0, scene.num_views), bool)
    else:
        pts, seen = np.concatenate(pts_all), np.concatenate(seen_all)
    return prior_from_points(scene, pts, seen, source=f"SIFT (pycolmap) matches triangulated with the known poses "
                                                      f"({len(pts)} points)")


def subset_views(scene: Scene, views: list[int]) -> Scene:
    """``scene.subset(views)`` that also keeps ``meta["indices"]`` (an LLFF scene's file numbers) per view and
    records ``meta["sparse_views"]``, the chosen indices into the full training split."""
    sub = scene.subset(views)
    if "indices" in scene.meta and len(scene.meta["indices"]) == scene.num_views:
        sub.meta["indices"] = [int(scene.meta["indices"][i]) for i in views]
    sub.meta["sparse_views"] = [int(i) for i in views]
    return sub


def spread_views(scene: Scene, k: int, first: int = 0) -> list[int]:
    """``k`` views spread over the cameras: greedy farthest-point order on the camera centres, from ``first``.

    Deterministic; ``k`` must be between 1 and the number of views.
    """
    n = scene.num_views
    if not 1 <= k <= n:
        raise ValueError(f"--num-views {k}: the training split has {n} views")
    pos = scene.c2w[:, :3, 3].astype(np.float64)
    chosen = [int(first)]
    d = np.linalg.norm(pos - pos[first], axis=1)
    while len(chosen) < k:
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, np.linalg.norm(pos - pos[nxt], axis=1))
    return sorted(chosen)


def parse_views(text: str, num_views: int) -> list[int]:
    """``"0,8,16"`` → ``[0, 8, 16]``, refusing an empty list, non-integers, repeats or indices out of range."""
    try:
        views = [int(x) for x in str(text).split(",") if x.strip() != ""]
    except ValueError as exc:
        raise ValueError(f"--views {text!r}: expected comma-separated view indices such as 0,8,16") from exc
    if not views:
        raise ValueError(f"--views {text!r}: no view index given")
    if len(set(views)) != len(views):
        raise ValueError(f"--views {text!r}: a view is listed twice")
    bad = [v for v in views if not 0 <= v < num_views]
    if bad:
        raise ValueError(f"--views {text!r}: {bad} outside the training split's 0..{num_views - 1}")
    return views
