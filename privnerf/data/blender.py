"""NeRF-synthetic ("Blender") datasets: ``transforms_{train,val,test}.json`` + RGBA PNGs.

Format: top-level ``camera_angle_x`` (horizontal field of view, radians) and ``frames``; each frame has
``file_path`` (usually without extension, e.g. ``./train/r_0``), a 4x4 OpenGL camera-to-world
``transform_matrix`` and optional extras such as ``rotation``. Cameras are already in the OpenGL convention
used by :class:`~privnerf.data.scene.Scene`, so matrices are taken as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from privnerf.data.errors import SceneError
from privnerf.data.io import IMAGE_SUFFIXES, as_matrix44, check_finite_number, read_image, read_json
from privnerf.data.scene import Scene

#: Blender scenes fit in this cube (the NeRF-synthetic objects lie within about +-1.3).
BLENDER_AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
BLENDER_NEAR = 2.0
BLENDER_FAR = 6.0

_RESERVED = ("file_path", "transform_matrix")


def _image_path(root: Path, file_path: str) -> Path:
    p = root / file_path
    return p if p.suffix.lower() in IMAGE_SUFFIXES else p.with_name(p.name + ".png")


def _relname(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def load_blender(
    root: Path,
    split: str,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    downscale: int = 1,
    indices: Sequence[int] | None = None,
) -> Scene:
    """Load one split of a Blender / NeRF-synthetic scene.

    Args:
        root: folder holding ``transforms_{split}.json``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        background: RGB the RGBA images are composited on (straight alpha: ``rgb * a + bg * (1 - a)``).
        downscale: integer box-filter factor (e.g. 2 turns 800x800 into 400x400).
        indices: optional subset of frame indices (in json order) to load, e.g. for quick tests.
    Returns:
        Scene with N ``(H, W, 3)`` images, ``c2w (N, 4, 4)``, ``intrinsics (N, 4)`` where
        ``fx = fy = 0.5 * W / tan(0.5 * camera_angle_x)`` for the width ``W`` actually loaded (``fy`` uses
        ``camera_angle_y`` instead when the file has it), ``cx = W / 2``, ``cy = H / 2``; near 2, far 6,
        aabb ``[-1.5, 1.5]^3``, ``scene_type = "bounded"``.

        ``frame_meta[i]`` holds every extra frame key (e.g. ``rotation``) and, when a Blender depth render
        ``<image stem>_depth_0001.png`` exists beside the image (the test split of NeRF-synthetic),
        ``"depth_path"``: its path. Those 8-bit renders use Blender's normalised depth encoding and are *not*
        decoded here.
    """
    root = Path(root)
    jpath = root / f"transforms_{split}.json"
    data = read_json(jpath)
    if not isinstance(data, dict):
        raise SceneError(jpath, "top level must be a JSON object")
    if "camera_angle_x" not in data:
        raise SceneError(jpath, "missing key 'camera_angle_x'")
    angle_x = check_finite_number(data["camera_angle_x"], jpath, "camera_angle_x", positive=True)
    if angle_x >= math.pi:
        raise SceneError(jpath, f"camera_angle_x must be below pi radians, got {angle_x}")
    angle_y = None
    if "camera_angle_y" in data:
        angle_y = check_finite_number(data["camera_angle_y"], jpath, "camera_angle_y", positive=True)
    if "frames" not in data:
        raise SceneError(jpath, "missing key 'frames'")
    frames = data["frames"]
    if not isinstance(frames, list):
        raise SceneError(jpath, "'frames' must be a list")
    if not frames:
        raise SceneError(jpath, f"empty split: '{split}' has no frames")
    if indices is not None:
        indices = [int(i) for i in indices]
        if any(i < 0 or i >= len(frames) for i in indices):
            raise SceneError(jpath, f"frame index out of range in {indices} (split has {len(frames)} frames)")
        frames = [frames[i] for i in indices]
        if not frames:
            raise SceneError(jpath, "empty split: no frame indices selected")

    images, c2ws, intr, names, metas = [], [], [], [], []
    first_hw: tuple[int, int] | None = None
    first_name = ""
    for k, frame in enumerate(frames):
        where = f"frame {k}"
        if not isinstance(frame, dict):
            raise SceneError(jpath, f"{where} must be a JSON object")
        for key in _RESERVED:
            if key not in frame:
                raise SceneError(jpath, f"{where}: missing key '{key}'")
        if not isinstance(frame["file_path"], str):
            raise SceneError(jpath, f"{where}: file_path must be a string")
        c2w = as_matrix44(frame["transform_matrix"], jpath, where)
        ipath = _image_path(root, frame["file_path"])
        img = read_image(ipath, background=background, downscale=downscale)
        hw = img.shape[:2]
        name = _relname(ipath, root)
        if first_hw is None:
            first_hw, first_name = hw, name
        elif hw != first_hw:
            raise SceneError(
                ipath,
                f"image size {hw[1]}x{hw[0]} differs from {first_hw[1]}x{first_hw[0]} of {first_name} "
                f"(all images of a Blender split must have one size)",
            )
        h, w = hw
        fx = 0.5 * w / math.tan(0.5 * angle_x)
        fy = 0.5 * h / math.tan(0.5 * angle_y) if angle_y is not None else fx
        meta = {k2: v for k2, v in frame.items() if k2 not in _RESERVED}
        depth = ipath.with_name(ipath.stem + "_depth_0001.png")
        if depth.is_file():
            meta["depth_path"] = str(depth)
        images.append(img)
        c2ws.append(c2w)
        intr.append((fx, fy, w / 2.0, h / 2.0))
        names.append(name)
        metas.append(meta)

    return Scene(
        images=images,
        c2w=np.stack(c2ws).astype(np.float32),
        intrinsics=np.asarray(intr, dtype=np.float32),
        near=BLENDER_NEAR,
        far=BLENDER_FAR,
        aabb=np.asarray(BLENDER_AABB, dtype=np.float32),
        scene_type="bounded",
        background=tuple(float(c) for c in background),
        names=names,
        frame_meta=metas,
        meta={
            "format": "blender",
            "source": str(root),
            "split": split,
            "camera_angle_x": angle_x,
            "num_frames_in_file": len(data["frames"]),
            "indices": list(range(len(frames))) if indices is None else indices,
            "downscale": int(downscale),
        },
    )
