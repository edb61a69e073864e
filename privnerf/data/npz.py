"""tiny-NeRF ``.npz`` files: ``images (N, H, W, 3)``, ``poses (N, 4, 4)`` OpenGL camera-to-world, ``focal``.

Optional keys: ``names (N,)`` (view names), ``alphas (N, H, W)`` (coverage, used only to tell the
background), ``background (3,)``. The background a tiny-NeRF file was composited on is not stored in the
format, so it is recorded only when it can be told (see :func:`load_npz`); otherwise ``Scene.background`` is
``None`` and ``meta["background_known"]`` is False.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from privnerf.data.errors import SceneError
from privnerf.data.scene import Scene

NPZ_AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
#: the first this many views are train when a file has more (tiny_nerf_data.npz: 100 train + 6 test)
TINY_NERF_TRAIN = 100


def _guess_background(z, images: np.ndarray, focal: float, path: Path) -> tuple[float, float, float] | None:
    if "background" in z.files:
        bg = np.asarray(z["background"], dtype=np.float64).reshape(-1)
        if bg.shape != (3,) or not np.all(np.isfinite(bg)):
            raise SceneError(path, f"'background' must hold 3 finite numbers, got shape {bg.shape}")
        return tuple(float(c) for c in bg)
    if "alphas" in z.files:
        alphas = np.asarray(z["alphas"])
        if alphas.shape != images.shape[:3]:
            raise SceneError(path, f"'alphas' shape {alphas.shape} does not match images {images.shape[:3]}")
        empty = alphas <= 1e-3
        if not empty.any():
            return None
        px = images[empty]  # (M, 3) pixels where nothing was rendered: they show the background
        for bg in ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)):
            if np.abs(px - np.asarray(bg, np.float32)).max() < 2.0 / 255.0:
                return bg
        return None
    n, h, w = images.shape[:3]
    if (n, h, w) == (106, 100, 100) and abs(focal - 138.88887889922103) < 1e-3:
        return (0.0, 0.0, 0.0)  # the original tiny_nerf_data.npz: lego rendered on black
    return None


def load_npz(
    path: Path,
    split: str,
    test_indices: Sequence[int] | None = None,
    near: float = 2.0,
    far: float = 6.0,
) -> Scene:
    """Load one split of a tiny-NeRF ``.npz``.

    Args:
        path: the ``.npz`` file.
        split: ``"train"``, ``"val"`` or ``"test"`` (val and test are the same views).
        test_indices: views to hold out as val/test; the rest are train. Default: if N > 100, views 0..99
            train and the rest val/test (tiny_nerf_data.npz and ``lego_tiny_100.npz``: 100 train / 6 test),
            else every 8th view (0, 8, 16, ...) val/test.
        near, far: ray bounds (2 and 6 for the NeRF-synthetic scenes).

    Background: the file's ``background`` key if any; else, with an ``alphas`` key, black or white when the
    pixels with zero coverage are that colour (``lego_tiny_100.npz``: black); else black for the original
    tiny_nerf_data.npz (106 views of 100x100, focal 138.889, lego on black); else unknown (``None``).

    Returns:
        Scene with N ``(H, W, 3)`` float32 images (uint8 files are divided by 255), ``c2w (N, 4, 4)``,
        intrinsics ``(focal, focal, W / 2, H / 2)``, aabb ``[-1.5, 1.5]^3``, ``"bounded"``.
    """
    path = Path(path)
    if not path.is_file():
        raise SceneError(path, "file not found")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SceneError(path, f"cannot read .npz ({exc})") from exc
    if not hasattr(z, "files"):
        raise SceneError(path, "expected an .npz archive, got a single array")
    try:
        with z:
            for key in ("images", "poses", "focal"):
                if key not in z.files:
                    raise SceneError(path, f"missing key '{key}' (has: {', '.join(z.files)})")
            images = np.asarray(z["images"])
            poses = np.asarray(z["poses"])
            focal_arr = np.asarray(z["focal"])
            if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
                raise SceneError(path, f"'images' must be (N, H, W, 3) with N > 0, got shape {images.shape}")
            n, h, w = images.shape[:3]
            if poses.shape != (n, 4, 4):
                raise SceneError(path, f"'poses' must be ({n}, 4, 4) to match images, got shape {poses.shape}")
            if focal_arr.size != 1:
                raise SceneError(path, f"'focal' must be a scalar, got shape {focal_arr.shape}")
            try:
                focal = float(focal_arr.reshape(()))
                poses = poses.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise SceneError(path, "'poses' and 'focal' must be numeric") from exc
            if not np.isfinite(focal) or focal <= 0:
                raise SceneError(path, f"'focal' must be finite and positive, got {focal}")
            if not np.all(np.isfinite(poses)):
                bad = int(np.argwhere(~np.all(np.isfinite(poses), axis=(1, 2)))[0, 0])
                raise SceneError(path, f"NaN or Inf in 'poses' (first in view {bad})")
            if images.dtype == np.uint8:
                images = images.astype(np.float32) / 255.0
            elif np.issubdtype(images.dtype, np.floating):
                images = images.astype(np.float32)
                if not np.all(np.isfinite(images)):
                    raise SceneError(path, "NaN or Inf in 'images'")
            else:
                raise SceneError(path, f"'images' must be float or uint8, got {images.dtype}")
            names = None
            if "names" in z.files:
                raw = np.asarray(z["names"]).reshape(-1)
                if raw.shape[0] != n:
                    raise SceneError(path, f"'names' has {raw.shape[0]} entries for {n} images")
                names = [str(x) for x in raw]
            background = _guess_background(z, images, focal, path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, SceneError):
            raise
        raise SceneError(path, f"corrupt .npz member ({exc})") from exc

    if test_indices is not None:
        test = sorted({int(i) for i in test_indices})
        if any(i < 0 or i >= n for i in test):
            raise SceneError(path, f"test_indices out of range for {n} views: {list(test_indices)}")
        is_test = np.zeros(n, bool)
        is_test[test] = True
        rule = "test_indices"
    elif n > TINY_NERF_TRAIN:
        is_test = np.arange(n) >= TINY_NERF_TRAIN
        rule = f"first {TINY_NERF_TRAIN} train"
    else:
        is_test = np.arange(n) % 8 == 0
        rule = "every 8th test"
    idx = np.flatnonzero(~is_test if split == "train" else is_test)
    if len(idx) == 0:
        raise SceneError(path, f"empty split: no views for '{split}' ({rule}, {n} views)")

    return Scene(
        images=[np.ascontiguousarray(images[i]) for i in idx],
        c2w=poses[idx].astype(np.float32),
        intrinsics=np.tile(np.asarray([[focal, focal, w / 2.0, h / 2.0]], np.float32), (len(idx), 1)),
        near=float(near),
        far=float(far),
        aabb=np.asarray(NPZ_AABB, np.float32),
        scene_type="bounded",
        background=background,
        names=[names[i] for i in idx] if names is not None else [f"view_{i:04d}" for i in idx],
        frame_meta=[{"index": int(i)} for i in idx],
        meta={
            "format": "npz",
            "source": str(path),
            "split": split,
            "split_rule": rule,
            "indices": [int(i) for i in idx],
            "background_known": background is not None,
        },
    )
