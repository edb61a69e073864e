"""nerfstudio ``transforms.json`` datasets (read and write).

Format (nerfstudio docs, data_conventions): top-level or per-frame pinhole intrinsics ``fl_x``, ``fl_y``,
``cx``, ``cy``, ``w``, ``h`` (a per-frame value overrides the top-level one), ``camera_model``, distortion
``k1..k4``, ``p1``, ``p2``; ``frames[]`` with ``file_path`` (relative to the json's folder), a 4x4 OpenGL
camera-to-world ``transform_matrix``, optional ``mask_path`` and ``depth_file_path``. Everything else a frame
carries (e.g. ``user_id``) is kept verbatim in ``Scene.frame_meta``.

Only pinhole-style camera models are read (``PINHOLE``, ``SIMPLE_PINHOLE``, ``OPENCV``). **Distortion
coefficients are kept in ``meta["distortion"]`` (top-level) or ``frame_meta`` (per-frame) but are NOT
applied**: images are used as they are, as if they were undistorted. Fisheye / equirectangular models are
refused with a SceneError.
"""

from __future__ import annotations

import math
import posixpath
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from privnerf.data.errors import SceneError
from privnerf.data.io import (
    as_matrix44,
    atomic_directory,
    atomic_write_json,
    box_downscale,
    check_finite_number,
    composite,
    read_depth,
    read_json,
    read_mask,
    read_rgba,
    write_image,
)
from privnerf.data.scene import SCENE_TYPES, Scene

INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
SUPPORTED_CAMERA_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "OPENCV")
# Frame keys consumed by the parser; every other frame key goes to frame_meta verbatim.
_FRAME_CONSUMED = ("file_path", "transform_matrix", "mask_path", "depth_file_path") + INTRINSIC_KEYS
# Top-level keys the parser interprets; the rest go to meta["extra"].
_TOP_CONSUMED = (
    ("frames", "camera_model", "aabb", "near", "far", "scene_type", "background", "depth_unit_scale_factor")
    + INTRINSIC_KEYS
    + DISTORTION_KEYS
    + ("train_filenames", "val_filenames", "test_filenames")
)
_SPLIT_LIST_KEYS = ("train_filenames", "val_filenames", "test_filenames")
EVAL_MODES = ("interval", "fraction", "all")


def _norm(p: str) -> str:
    """Normalise a relative file path for comparison (``./images/a.png`` == ``images/a.png``)."""
    return posixpath.normpath(str(p).replace("\\", "/"))


def _json_path(root: Path) -> Path:
    root = Path(root)
    if root.is_dir():
        return root / "transforms.json"
    if root.suffix.lower() == ".json":
        return root
    if not root.exists():
        raise SceneError(root, "no such file or directory")
    raise SceneError(root, "expected a directory holding transforms.json or the .json file itself")


# ------------------------------------------------------------------------------------------------ splits


def _split_indices(
    data: dict, frames: list[dict], split: str, eval_mode: str, eval_interval: int, jpath: Path
) -> tuple[list[int], str]:
    """Indices of the frames in ``split`` and a description of the rule used."""
    n = len(frames)
    other_eval = {"val": "test", "test": "val"}
    if eval_mode not in EVAL_MODES:
        raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}")
    if eval_mode == "all":
        return list(range(n)), "all"
    if any(k in data for k in _SPLIT_LIST_KEYS):
        key = f"{split}_filenames"
        if key not in data and split in other_eval and f"{other_eval[split]}_filenames" in data:
            key = f"{other_eval[split]}_filenames"
        if key not in data:
            raise SceneError(jpath, f"has split file lists but no '{split}_filenames'")
        names = data[key]
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise SceneError(jpath, f"'{key}' must be a list of file paths")
        index = {_norm(f["file_path"]): i for i, f in enumerate(frames)}
        out = []
        for name in names:
            i = index.get(_norm(name))
            if i is None:
                raise SceneError(jpath, f"'{key}' lists {name!r}, which is not the file_path of any frame")
            out.append(i)
        return out, key
    if any("split" in f for f in frames):
        out = [i for i, f in enumerate(frames) if f.get("split") == split]
        if not out and split in other_eval:
            out = [i for i, f in enumerate(frames) if f.get("split") == other_eval[split]]
        return out, "frame 'split' field"
    if eval_mode == "interval":
        if eval_interval < 1:
            raise ValueError("eval_interval must be >= 1")
        is_eval = [i % eval_interval == 0 for i in range(n)]
        rule = f"interval {eval_interval}"
    else:  # fraction, nerfstudio's rule with train_split_fraction 0.9
        num_train = math.ceil(n * 0.9)
        train = set(np.linspace(0, n - 1, num_train, dtype=int).tolist())
        is_eval = [i not in train for i in range(n)]
        rule = "fraction 0.9"
    want_eval = split != "train"
    return [i for i in range(n) if is_eval[i] == want_eval], rule


# ------------------------------------------------------------------------------------------------ bounds


def camera_bounds(c2w: np.ndarray, scene_type: str) -> tuple[np.ndarray, float, float]:
    """Bounds guessed from camera poses alone (used when the json has no ``aabb`` / ``near`` / ``far``).

    Rule: the centre ``c`` is the least-squares point closest to all optical axes (where inward-looking
    cameras converge) when that is well defined and in front of the cameras on average; otherwise the mean
    camera position. ``R`` is the largest camera distance from ``c`` (1 if all cameras coincide). Then
    ``aabb = c +- R`` (the cube enclosing the camera sphere), ``near = 0.05 R`` and
    ``far = (1 + sqrt(3)) R`` (far enough to cross the whole aabb from any camera), or ``far = 1000 R`` for
    ``"unbounded"`` scenes, whose background lies beyond the aabb (nerfacto's far plane of 1000 for poses
    scaled to the unit cube).

    Args:
        c2w: ``(N, 4, 4)`` camera-to-world.
    Returns:
        ``aabb (2, 3)`` float32, near, far.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    pos = c2w[:, :3, 3]
    fwd = -c2w[:, :3, 2]
    fwd = fwd / np.maximum(np.linalg.norm(fwd, axis=-1, keepdims=True), 1e-12)
    proj = np.eye(3)[None] - fwd[:, :, None] * fwd[:, None, :]  # (N, 3, 3) projectors orthogonal to axes
    a = proj.sum(0)
    b = np.einsum("nij,nj->i", proj, pos)
    centre = pos.mean(0)
    eig = np.linalg.eigvalsh(a)
    if len(pos) >= 2 and eig[0] > 1e-2 * eig[-1]:
        cand = np.linalg.solve(a, b)
        if np.mean(np.einsum("ni,ni->n", cand[None] - pos, fwd)) > 0:
            centre = cand
    radius = float(np.linalg.norm(pos - centre, axis=-1).max()) if len(pos) else 0.0
    if not math.isfinite(radius) or radius < 1e-6:
        radius = 1.0
    aabb = np.stack([centre - radius, centre + radius]).astype(np.float32)
    far = 1000.0 * radius if scene_type == "unbounded" else (1.0 + math.sqrt(3.0)) * radius
    return aabb, 0.05 * radius, far


# ------------------------------------------------------------------------------------------------ reading


def load_nerfstudio(
    root: Path,
    split: str,
    downscale: int = 1,
    eval_mode: str = "interval",
    eval_interval: int = 8,
    background: tuple[float, float, float] | None = None,
) -> Scene:
    """Load one split of a nerfstudio ``transforms.json`` dataset.

    Args:
        root: the dataset folder or the ``transforms.json`` file itself.
        split: ``"train"``, ``"val"`` or ``"test"``.
        downscale: integer box-filter factor applied in memory; intrinsics are divided by it (masks take the
            block maximum, depths the mean of valid values).
        eval_mode: used only when the json has neither split file lists nor per-frame ``"split"`` fields:
            ``"interval"`` (frames ``0, k, 2k, ...`` with ``k = eval_interval`` are val/test, the rest train),
            ``"fraction"`` (nerfstudio's 90 % train, evenly spaced) or ``"all"`` (every frame in every split;
            this one also overrides file lists and split fields).
        eval_interval: see ``eval_mode``.
        background: composite RGBA images on this colour; default: the json's ``background`` key, else white.

    Splits: ``train_filenames`` / ``val_filenames`` / ``test_filenames`` win when present (``val`` and ``test``
    fall back to each other's list); else a per-frame ``"split"`` field; else ``eval_mode``.

    Bounds: the json's ``aabb`` (2x3), ``near``, ``far`` and ``scene_type`` keys when present; a missing
    ``scene_type`` means ``"unbounded"`` (real captures have background everywhere), and missing
    aabb/near/far come from :func:`camera_bounds` over *all* frames (so every split gets the same bounds).

    Returns:
        Scene with N ``(H, W, 3)`` images, ``c2w (N, 4, 4)``, per-frame ``intrinsics (N, 4)``;
        ``masks``: N ``(H, W)`` uint8 with the mask files' **raw values** (Scene convention: nonzero = masked;
        note nerfstudio's own tools write black = ignore, so such masks may need inverting), zeros for frames
        without a ``mask_path`` when others have one; ``depths``: N ``(H, W)`` float32 metres (16-bit PNG
        units times ``depth_unit_scale_factor``, default 0.001, or ``.npy`` metres; 0 / missing = ``inf``).
    """
    jpath = _json_path(root)
    base = jpath.parent
    data = read_json(jpath)
    if not isinstance(data, dict):
        raise SceneError(jpath, "top level must be a JSON object")
    if "frames" not in data:
        raise SceneError(jpath, "missing key 'frames'")
    frames = data["frames"]
    if not isinstance(frames, list):
        raise SceneError(jpath, "'frames' must be a list")
    if not frames:
        raise SceneError(jpath, "empty split: 'frames' is empty")
    camera_model = str(data.get("camera_model", "PINHOLE")).upper()
    if camera_model not in SUPPORTED_CAMERA_MODELS:
        raise SceneError(
            jpath, f"unsupported camera_model {camera_model!r}; only {', '.join(SUPPORTED_CAMERA_MODELS)}"
        )

    all_c2w = []
    for k, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise SceneError(jpath, f"frame {k} must be a JSON object")
        for key in ("file_path", "transform_matrix"):
            if key not in frame:
                raise SceneError(jpath, f"frame {k}: missing key '{key}'")
        if not isinstance(frame["file_path"], str):
            raise SceneError(jpath, f"frame {k}: file_path must be a string")
        all_c2w.append(as_matrix44(frame["transform_matrix"], jpath, f"frame {k} ({frame['file_path']})"))
    all_c2w = np.stack(all_c2w)

    idx, split_rule = _split_indices(data, frames, split, eval_mode, int(eval_interval), jpath)
    if not idx:
        raise SceneError(jpath, f"empty split: no frames for '{split}' (rule: {split_rule})")

    # --- bounds
    scene_type = data.get("scene_type", "unbounded")
    if scene_type not in SCENE_TYPES:
        raise SceneError(jpath, f"scene_type must be one of {SCENE_TYPES}, got {scene_type!r}")
    aabb, near, far = camera_bounds(all_c2w, scene_type)
    if "aabb" in data:
        try:
            aabb = np.asarray(data["aabb"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise SceneError(jpath, "aabb must be a 2x3 list of numbers") from exc
        if aabb.shape != (2, 3) or not np.all(np.isfinite(aabb)) or not np.all(aabb[0] < aabb[1]):
            raise SceneError(jpath, f"aabb must be [[xmin, ymin, zmin], [xmax, ymax, zmax]], got {data['aabb']}")
    if "near" in data:
        near = check_finite_number(data["near"], jpath, "near")
    if "far" in data:
        far = check_finite_number(data["far"], jpath, "far", positive=True)
    if not 0 <= near < far:
        raise SceneError(jpath, f"need 0 <= near < far, got near={near}, far={far}")

    # --- background
    bg_json = data.get("background")
    if bg_json is not None:
        try:
            bg_json = tuple(float(c) for c in bg_json)
        except (TypeError, ValueError) as exc:
            raise SceneError(jpath, "background must be a list of 3 numbers or null") from exc
        if len(bg_json) != 3:
            raise SceneError(jpath, "background must be a list of 3 numbers or null")
    comp_bg = tuple(background) if background is not None else (bg_json or (1.0, 1.0, 1.0))
    any_alpha = False

    depth_scale = check_finite_number(data.get("depth_unit_scale_factor", 1e-3), jpath, "depth_unit_scale_factor", True)
    distortion = {k: data[k] for k in DISTORTION_KEYS if k in data}

    images, c2ws, intr, names, metas, masks, depths = [], [], [], [], [], [], []
    for i in idx:
        frame = frames[i]
        where = f"frame {i} ({frame['file_path']})"
        ipath = base / frame["file_path"]
        rgba, has_alpha = read_rgba(ipath)
        any_alpha |= has_alpha
        h0, w0 = rgba.shape[:2]

        def get(key: str, default: Any = None) -> Any:
            return frame.get(key, data.get(key, default))

        if get("fl_x") is None:
            raise SceneError(jpath, f"{where}: missing key 'fl_x' (neither per-frame nor top-level)")
        fx = check_finite_number(get("fl_x"), jpath, f"{where}: fl_x", positive=True)
        fy = check_finite_number(get("fl_y", fx), jpath, f"{where}: fl_y", positive=True)
        w_json, h_json = get("w"), get("h")
        if w_json is not None or h_json is not None:
            w_json = check_finite_number(w_json if w_json is not None else w0, jpath, f"{where}: w", True)
            h_json = check_finite_number(h_json if h_json is not None else h0, jpath, f"{where}: h", True)
            if (int(round(h_json)), int(round(w_json))) != (h0, w0):
                raise SceneError(
                    ipath,
                    f"image size {w0}x{h0} differs from w x h = {w_json:g}x{h_json:g} in {jpath.name}",
                )
        cx = check_finite_number(get("cx", w0 / 2.0), jpath, f"{where}: cx")
        cy = check_finite_number(get("cy", h0 / 2.0), jpath, f"{where}: cy")

        img = box_downscale(composite(rgba, comp_bg) if has_alpha else rgba[..., :3], downscale, ipath)
        images.append(np.ascontiguousarray(img, dtype=np.float32))
        d = float(downscale)
        intr.append((fx / d, fy / d, cx / d, cy / d))
        c2ws.append(all_c2w[i])
        names.append(_norm(frame["file_path"]))
        metas.append({k: v for k, v in frame.items() if k not in _FRAME_CONSUMED})
        if "mask_path" in frame:
            masks.append(read_mask(base / str(frame["mask_path"]), expected_hw=(h0, w0), downscale=downscale))
        else:
            masks.append(None)
        if "depth_file_path" in frame:
            depths.append(
                read_depth(base / str(frame["depth_file_path"]), depth_scale, expected_hw=(h0, w0), downscale=downscale)
            )
        else:
            depths.append(None)

    mask_list = None
    if any(m is not None for m in masks):
        mask_list = [m if m is not None else np.zeros(im.shape[:2], np.uint8) for m, im in zip(masks, images)]
    depth_list = None
    if any(x is not None for x in depths):
        depth_list = [x if x is not None else np.full(im.shape[:2], np.inf, np.float32) for x, im in zip(depths, images)]

    coeffs = list(distortion.values()) + [m[k] for m in metas for k in DISTORTION_KEYS if k in m]
    if any(isinstance(v, (int, float)) and v != 0 for v in coeffs):
        warnings.warn(f"{jpath}: distortion coefficients are kept in meta but not applied", stacklevel=2)

    extra = {k: v for k, v in data.items() if k not in _TOP_CONSUMED}
    return Scene(
        images=images,
        c2w=np.stack(c2ws).astype(np.float32),
        intrinsics=np.asarray(intr, dtype=np.float32),
        near=float(near),
        far=float(far),
        aabb=np.asarray(aabb, dtype=np.float32),
        scene_type=scene_type,
        background=comp_bg if any_alpha else bg_json,
        names=names,
        masks=mask_list,
        depths=depth_list,
        frame_meta=metas,
        meta={
            "format": "nerfstudio",
            "source": str(jpath),
            "split": split,
            "split_rule": split_rule,
            "camera_model": camera_model,
            "distortion": distortion,
            "downscale": int(downscale),
            "extra": extra,
        },
    )


# ------------------------------------------------------------------------------------------------ writing


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_nerfstudio(
    scene: Scene | Mapping[str, Scene], out_dir: Path, image_format: str = "png"
) -> Path:
    """Write a Scene (or a ``{split: Scene}`` mapping) as a nerfstudio dataset.

    Layout: ``out_dir/transforms.json``, ``images/{split}_{i:05d}.{png|jpg}`` (8-bit), ``masks/...png``
    (uint8 raw values; bool masks become 0/255) when the scene has masks, ``depths/...png`` (16-bit
    millimetres, 0 = no depth) when it has depths; a depth map with values beyond 65.535 m is written as
    float32 metres ``.npy`` instead so nothing is clipped.

    ``transforms.json`` holds per-frame intrinsics (``fl_x, fl_y, cx, cy, w, h``) and every ``frame_meta``
    entry, and top-level ``camera_model``, the scene's ``aabb``, ``near``, ``far``, ``scene_type``,
    ``background`` (of the first scene, for a mapping) and a ``{split}_filenames`` list for each scene written
    (a single Scene is written as ``scene.meta["split"]``, default ``"train"``).

    The directory is built in a temporary sibling and renamed into place at the end, so a failure leaves
    nothing half-written. An existing ``out_dir`` is replaced only if it is empty or holds a
    ``transforms.json``.

    Returns:
        the path of the written ``transforms.json``; ``load_nerfstudio`` of it gives back the same cameras,
        intrinsics, masks, frame_meta and, within 8-bit (images) / 1 mm (depth) quantisation, images and depths.
    """
    fmt = image_format.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    scenes = dict(scene) if isinstance(scene, Mapping) else {str(scene.meta.get("split", "train")): scene}
    if not scenes:
        raise ValueError("nothing to write")
    first = next(iter(scenes.values()))
    out_dir = Path(out_dir)

    frames_json: list[dict[str, Any]] = []
    top: dict[str, Any] = {"camera_model": str(first.meta.get("camera_model", "PINHOLE"))}
    top.update(_json_safe(first.meta.get("distortion", {}) or {}))
    top["aabb"] = np.asarray(first.aabb, dtype=np.float64).tolist()
    top["near"] = float(first.near)
    top["far"] = float(first.far)
    top["scene_type"] = first.scene_type
    top["background"] = None if first.background is None else [float(c) for c in first.background]
    top["depth_unit_scale_factor"] = 1e-3

    with atomic_directory(out_dir, overwrite_if="transforms.json") as tmp:
        for split, sc in scenes.items():
            files = []
            for i in range(sc.num_views):
                stem = f"{split}_{i:05d}"
                rel = f"images/{stem}.{fmt}"
                write_image(tmp / rel, sc.images[i])
                h, w = sc.hw(i)
                fx, fy, cx, cy = (float(x) for x in sc.intrinsics[i])
                entry: dict[str, Any] = {k: v for k, v in _json_safe(sc.frame_meta[i]).items()}
                entry.update(
                    {
                        "file_path": rel,
                        "transform_matrix": np.asarray(sc.c2w[i], dtype=np.float64).tolist(),
                        "fl_x": fx,
                        "fl_y": fy,
                        "cx": cx,
                        "cy": cy,
                        "w": w,
                        "h": h,
                    }
                )
                if sc.masks is not None:
                    m = np.asarray(sc.masks[i])
                    if m.dtype == bool:
                        m = m.astype(np.uint8) * 255
                    elif m.size and (m.min() < 0 or m.max() > 255):
                        raise ValueError(f"mask of view {i} has values outside 0..255")
                    entry["mask_path"] = f"masks/{stem}.png"
                    write_image(tmp / entry["mask_path"], m.astype(np.uint8))
                if sc.depths is not None:
                    dep = np.asarray(sc.depths[i], dtype=np.float32)
                    valid = np.isfinite(dep) & (dep > 0)
                    if valid.any() and float(dep[valid].max()) * 1000.0 > 65535.0:
                        entry["depth_file_path"] = f"depths/{stem}.npy"
                        (tmp / "depths").mkdir(exist_ok=True)
                        np.save(tmp / entry["depth_file_path"], np.where(valid, dep, 0.0).astype(np.float32))
                    else:
                        mm = np.where(valid, np.rint(dep * 1000.0), 0).astype(np.uint16)
                        entry["depth_file_path"] = f"depths/{stem}.png"
                        write_image(tmp / entry["depth_file_path"], mm)
                frames_json.append(entry)
                files.append(rel)
            top[f"{split}_filenames"] = files
        top["frames"] = frames_json
        atomic_write_json(tmp / "transforms.json", top)
    return out_dir / "transforms.json"
