"""LLFF ``poses_bounds.npy`` datasets (forward-facing captures such as fern, and 360° captures).

``poses_bounds.npy`` is ``(N, 17)``: each row is a flattened 3x5 matrix ``[R | t | hwf]`` (camera-to-world
with rotation columns ``[down, right, backwards]``, translation, and ``(H, W, focal)`` of the *full
resolution* photos) followed by the near and far depth bounds of the view. Rows belong to the sorted image
file names. Images are read from ``images_{factor}`` (``images`` for factor 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privnerf.data.errors import SceneError
from privnerf.data.io import IMAGE_SUFFIXES, load_npy, read_image, read_mask
from privnerf.data.scene import SCENE_TYPES, Scene

#: mean-viewing-direction length below which a capture counts as surrounding its content (360°).
SURROUND_THRESHOLD = 0.8


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """The LLFF "average pose": mean camera centre, summed viewing axis and summed up vector.

    Args:
        c2w: ``(N, 3, 4)`` or ``(N, 4, 4)`` OpenGL camera-to-world.
    Returns:
        ``(4, 4)`` float64 camera-to-world.
    """
    z = _normalize(c2w[:, :3, 2].sum(0))
    up = c2w[:, :3, 1].sum(0)
    x = _normalize(np.cross(up, z))
    y = np.cross(z, x)
    out = np.eye(4)
    out[:3, :4] = np.stack([x, y, z, c2w[:, :3, 3].mean(0)], axis=1)
    return out


def focus_point(c2w: np.ndarray) -> np.ndarray:
    """Least-squares point closest to all optical axes (``(3,)``); the mean camera centre if ill-posed."""
    pos = c2w[:, :3, 3]
    fwd = -c2w[:, :3, 2] / np.linalg.norm(c2w[:, :3, 2], axis=-1, keepdims=True)
    proj = np.eye(3)[None] - fwd[:, :, None] * fwd[:, None, :]
    a = proj.sum(0)
    eig = np.linalg.eigvalsh(a)
    if len(pos) < 2 or eig[0] <= 1e-2 * eig[-1]:
        return pos.mean(0)
    return np.linalg.solve(a, np.einsum("nij,nj->i", proj, pos))


def mean_view_direction_length(c2w: np.ndarray) -> float:
    """Length of the mean unit viewing direction: ~1 when all cameras look the same way, small when they
    look inwards from all sides."""
    fwd = -c2w[:, :3, 2] / np.linalg.norm(c2w[:, :3, 2], axis=-1, keepdims=True)
    return float(np.linalg.norm(fwd.mean(0)))


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_llff(
    root: Path,
    split: str,
    factor: int = 8,
    holdout: int = 8,
    recenter: bool = True,
    bd_factor: float | None = 0.75,
    scene_type: str | None = None,
) -> Scene:
    """Load one split of an LLFF-format scene.

    Args:
        root: folder holding ``poses_bounds.npy`` and ``images_{factor}/``.
        split: ``"train"``, ``"val"`` or ``"test"``. Views ``0, holdout, 2*holdout, ...`` are test **and** val
            (the LLFF / NeRF ``llffhold`` convention), the others train. ``holdout <= 0`` puts every view in
            every split.
        factor: which downscaled folder to read; the hwf column (full-resolution) is rescaled to the size of
            the images actually loaded, which must agree with ``hwf / factor`` within 1 px.
        recenter: move and rotate the world so that the LLFF average pose (mean centre, summed viewing axis
            and up vector) becomes the identity.
        bd_factor: scale the world by ``1 / (min_near * bd_factor)`` so the nearest bound lands at
            ``1 / bd_factor`` (~1.33, NeRF's rule); ``None`` keeps metric COLMAP units.
        scene_type: override the automatic choice below.

    Scene type: ``"unbounded"`` when the cameras surround the content, i.e. the length of the mean of the
    unit viewing directions is below :data:`SURROUND_THRESHOLD` (0.8; fern: 0.99, the 360° Ethiopian head:
    0.48); otherwise ``"forward"``.

    Bounds (after rescaling): ``near = 0.9 * min(near bounds)``, ``far = max(far bounds)`` (NeRF's non-NDC
    rule); ``frame_meta[i]`` holds the view's own ``near_bound`` / ``far_bound``.

    AABB: ``"forward"``: the box around all camera centres and the corners of every view's frustum at its own
    near and far bound, i.e. everything any camera sees within its depth bounds. ``"unbounded"``: the cube
    around the :func:`focus_point` ``c`` with half-size ``max_i max(d_i - near_i, far_i - d_i)`` where ``d_i``
    is camera i's distance to ``c``: the content radius implied by the depth bounds (capped at ``max d_i``).

    Masks: when a ``masks_{factor}`` folder exists, each image ``X.*`` takes ``masks_{factor}/X.png`` as an
    ``(H, W)`` uint8 mask with raw values (the Ethiopian head: 255 = the object, soft edges).

    ``meta["world_transform"]`` is the ``(4, 4)`` map from original COLMAP world coordinates to the
    returned ones (``x_new = M @ x_old``), e.g. for the sparse points.
    """
    root = Path(root)
    pb_path = root / "poses_bounds.npy"
    pb = load_npy(pb_path)
    if pb.ndim != 2 or pb.shape[1] != 17 or pb.shape[0] == 0:
        raise SceneError(pb_path, f"poses_bounds must be an N x 17 array, got shape {pb.shape}")
    try:
        pb = pb.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise SceneError(pb_path, f"poses_bounds is not numeric ({pb.dtype})") from exc
    if not np.all(np.isfinite(pb)):
        bad = int(np.argwhere(~np.all(np.isfinite(pb), axis=1))[0, 0])
        raise SceneError(pb_path, f"NaN or Inf in poses_bounds (first in row {bad})")
    n = pb.shape[0]
    mats = pb[:, :15].reshape(n, 3, 5)
    bounds = pb[:, 15:17].copy()
    hwf = mats[:, :, 4]
    if np.any(hwf <= 0):
        raise SceneError(pb_path, "hwf column must be positive (H, W, focal)")
    if np.any(bounds[:, 0] <= 0) or np.any(bounds[:, 1] <= bounds[:, 0]):
        raise SceneError(pb_path, "bounds must satisfy 0 < near < far in every row")

    folder = root / ("images" if int(factor) == 1 else f"images_{int(factor)}")
    if not folder.is_dir():
        have = sorted(p.name for p in root.glob("images*") if p.is_dir())
        raise SceneError(folder, f"image folder not found for factor {factor} (found: {have or 'none'})")
    files = _list_images(folder)
    if len(files) != n:
        raise SceneError(folder, f"{len(files)} images but poses_bounds.npy has {n} rows")

    # [down, right, backwards] -> [right, up, backwards]
    c2w = np.zeros((n, 4, 4))
    c2w[:, :3, 0] = mats[:, :, 1]
    c2w[:, :3, 1] = -mats[:, :, 0]
    c2w[:, :3, 2] = mats[:, :, 2]
    c2w[:, :3, 3] = mats[:, :, 3]
    c2w[:, 3, 3] = 1.0

    world = np.eye(4)
    if bd_factor is not None:
        sc = 1.0 / (bounds.min() * float(bd_factor))
        c2w[:, :3, 3] *= sc
        bounds *= sc
        world = np.diag([sc, sc, sc, 1.0])
    if recenter:
        inv = np.linalg.inv(average_pose(c2w))
        c2w = inv @ c2w
        world = inv @ world

    if scene_type is None:
        scene_type = "unbounded" if mean_view_direction_length(c2w) < SURROUND_THRESHOLD else "forward"
    if scene_type not in SCENE_TYPES:
        raise ValueError(f"scene_type must be one of {SCENE_TYPES}")

    # --- aabb
    pos = c2w[:, :3, 3]
    if scene_type == "unbounded":
        c = focus_point(c2w)
        d = np.linalg.norm(pos - c, axis=-1)
        r = float(np.max(np.maximum(d - bounds[:, 0], bounds[:, 1] - d)))
        r = min(max(r, 1e-3), float(d.max()))
        aabb = np.stack([c - r, c + r])
    else:
        h_full, w_full, f_full = hwf[:, 0], hwf[:, 1], hwf[:, 2]
        pts = [pos]
        for sx in (-1.0, 1.0):
            for sy in (-1.0, 1.0):
                cam_dir = np.stack(
                    [sx * 0.5 * w_full / f_full, sy * 0.5 * h_full / f_full, -np.ones(n)], axis=-1
                )  # (n, 3) at camera depth 1
                world_dir = np.einsum("nij,nj->ni", c2w[:, :3, :3], cam_dir)
                for k in (0, 1):
                    pts.append(pos + world_dir * bounds[:, k : k + 1])
        allp = np.concatenate(pts)
        aabb = np.stack([allp.min(0), allp.max(0)])

    # --- split
    if holdout > 0:
        is_test = np.arange(n) % int(holdout) == 0
        idx = np.flatnonzero(~is_test if split == "train" else is_test)
    else:
        idx = np.arange(n)
    if len(idx) == 0:
        raise SceneError(pb_path, f"empty split: no views for '{split}' with holdout {holdout} and {n} views")

    mask_dir = root / ("masks" if int(factor) == 1 else f"masks_{int(factor)}")
    use_masks = mask_dir.is_dir()

    images, intr, names, metas, masks = [], [], [], [], []
    for i in idx:
        path = files[i]
        img = read_image(path)
        h, w = img.shape[:2]
        eh, ew = hwf[i, 0] / factor, hwf[i, 1] / factor
        if abs(h - eh) > 1.0 or abs(w - ew) > 1.0:
            raise SceneError(
                path,
                f"image size {w}x{h} disagrees with poses_bounds hwf {hwf[i, 1]:g}x{hwf[i, 0]:g} / factor "
                f"{factor} = {ew:g}x{eh:g}",
            )
        f = hwf[i, 2]
        intr.append((f * w / hwf[i, 1], f * h / hwf[i, 0], w / 2.0, h / 2.0))
        images.append(img)
        names.append(f"{folder.name}/{path.name}")
        metas.append({"near_bound": float(bounds[i, 0]), "far_bound": float(bounds[i, 1])})
        if use_masks:
            mpath = mask_dir / (path.stem + ".png")
            if not mpath.is_file():
                cands = [p for p in mask_dir.glob(path.stem + ".*") if p.suffix.lower() in IMAGE_SUFFIXES]
                if not cands:
                    raise SceneError(mpath, f"mask for {path.name} not found (masks folder {mask_dir.name} exists)")
                mpath = cands[0]
            masks.append(read_mask(mpath, expected_hw=(h, w)))

    return Scene(
        images=images,
        c2w=c2w[idx].astype(np.float32),
        intrinsics=np.asarray(intr, dtype=np.float32),
        near=float(0.9 * bounds[:, 0].min()),
        far=float(bounds[:, 1].max()),
        aabb=aabb.astype(np.float32),
        scene_type=scene_type,
        background=None,
        names=names,
        masks=masks if use_masks else None,
        frame_meta=metas,
        meta={
            "format": "llff",
            "source": str(root),
            "split": split,
            "factor": int(factor),
            "holdout": int(holdout),
            "indices": [int(i) for i in idx],
            "world_transform": world.tolist(),
            "mean_view_direction_length": mean_view_direction_length(c2w),
            "mask_dir": mask_dir.name if use_masks else None,
        },
    )
