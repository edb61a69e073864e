"""The person's side of Identity-Obscured NeRF: split the views, keep σ of the sensitive ones only.

``privnerf face obscure --data HEAD --out DIR`` loads a masked head capture (:func:`privnerf.face.head.load_head`),
finds the direction the face looks at, calls every view whose yaw to it is at most ``--neutral-angle`` degrees
*sensitive* (it sees the face) and the others *neutral* (rear / side), and writes DIR:

Face direction and yaw
----------------------
* ``up`` is the normalised mean of the cameras' up vectors (``c2w[:, :3, 1]``, OpenGL +Y), the orbit's axis
  for a turntable-like capture; ``centre`` is the centre of the head's box (``scene.aabb``).
* ``--face-direction X,Y,Z`` gives the direction in the loaded scene's world frame (the one of ``c2w`` below).
  ``auto`` (the default) runs dlib's face detector on every view, on the device that owns the photos
  (:func:`privnerf.privacy.face_attacks.detect_faces_in_head`: the MMOD CNN on the head crop at heights 128,
  160 and 200 px with upsample 1; dlib's HOG detector when the CNN finds no face in any view). The direction is
  the normalised mean of the unit vectors from ``centre`` to the cameras of the views with a face. No face
  anywhere is an error asking for ``--face-direction``.
* On the Ethiopian head, ``auto`` takes about a minute on 2 CPU cores and finds a face on DSC_0071, DSC_0072
  and DSC_0073 only (a bronze sculpture is a hard case for dlib): direction ``[-0.768, 0.612, 0.191]``; with the
  default neutral angle 27 views are sensitive (yaw 0-89 degrees) and 39 neutral.
* The yaw of a view is the angle (0..180 degrees) between the face direction and the direction from ``centre``
  to its camera, both projected on the plane orthogonal to ``up``. ``yaw <= neutral_angle`` → sensitive.

DIR layout (format ``privnerf-obscured``, version 1)
----------------------------------------------------
``DIR/obscured.json``::

    {"format": "privnerf-obscured", "version": 1,
     "operator": {"name", "blur_sigma", "levels", "clip"},      # privnerf.face.operators.OperatorSpec
     "face_direction": [x, y, z], "face_direction_source": "auto" | "given",
     "face_detections": [{"name", "score", "method"}],          # auto only: the views that had a face
     "up": [x, y, z], "centre": [x, y, z], "neutral_angle_deg": 90.0,
     "background": [0, 0, 0], "scene_type": "bounded",
     "aabb": [[xmin, ymin, zmin], [xmax, ymax, zmax]], "near": n, "far": f,
     "world_transform": 4x4,                  # original COLMAP world -> this world (x_new = M x_old)
     "source": "<data folder>", "factor": 8, "counts": {"neutral": n, "sensitive": s},
     "frames": [{"name": "DSC_0007", "kind": "neutral" | "sensitive",
                 "c2w": 4x4 (OpenGL camera-to-world), "intrinsics": [fx, fy, cx, cy] (pixels, centres at +0.5),
                 "hw": [H, W], "yaw_deg": y,
                 "file": "neutral/DSC_0007.png" | "sensitive/DSC_0007.npz", "mask": "masks/DSC_0007.png"}]}

* ``DIR/neutral/<name>.png``: the neutral view's RGB composited on black by its mask (8-bit).
* ``DIR/sensitive/<name>.npz``: ``codes``, the quantised σ ``(C, H, W)`` uint8
  (:func:`~privnerf.face.operators.quantize` of :func:`~privnerf.face.operators.apply_operator` of the BT.601
  grey of the composited photo); decode with :func:`~privnerf.face.operators.dequantize` and the ``operator``
  above.
* ``DIR/sensitive/<name>.png``: a preview of the codes for people (:func:`~privnerf.face.operators.preview`),
  not used by training.
* ``DIR/masks/<name>.png``: every view's foreground mask (uint8, 255 = head, soft edges). The masks of sensitive
  views are needed by stage 2 (silhouette supervision); the silhouette is therefore shared with whoever
  receives DIR, just as the σ codes show the outline (its edge is the strongest gradient).

Raw pixels of sensitive views are never written anywhere (not even temporary files): their σ is computed in
memory. Everything is written into a temporary sibling directory that is renamed to DIR at the end; on any
error nothing is left. An existing non-empty DIR is refused, unless ``overwrite`` and it holds an
``obscured.json`` (an earlier output).

:func:`load_obscured` reads DIR back as :class:`ObscuredData` (the neutral views as a :class:`Scene` and the
sensitive views' cameras, codes and masks).
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from privnerf.data.errors import SceneError
from privnerf.data.io import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    read_image,
    read_json,
    read_mask,
    write_image,
)
from privnerf.data.scene import Scene
from privnerf.face.operators import OperatorSpec, obscure, preview

__all__ = [
    "FORMAT",
    "VERSION",
    "SensitiveView",
    "ObscuredData",
    "scene_up",
    "yaw_degrees",
    "parse_direction",
    "auto_face_direction",
    "obscure_head",
    "load_obscured",
]

FORMAT = "privnerf-obscured"
VERSION = 1


class SensitiveView(NamedTuple):
    """A sensitive view as the reconstruction sees it (a tuple: ``c2w, intrinsics, codes, mask, name``)."""

    c2w: np.ndarray  # (4, 4) float32, OpenGL camera-to-world
    intrinsics: np.ndarray  # (4,) float32 fx, fy, cx, cy
    codes: np.ndarray  # (C, H, W) uint8 quantised σ
    mask: np.ndarray  # (H, W) uint8, 255 = head
    name: str


@dataclass
class ObscuredData:
    """What :func:`load_obscured` returns."""

    neutral: Scene  # RGB composited on black, masks, bounded, background (0, 0, 0)
    sensitive: list[SensitiveView]
    spec: OperatorSpec
    meta: dict[str, Any] = field(default_factory=dict)  # obscured.json as parsed


# ---------------------------------------------------------------------------------------------- geometry


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(v, np.float64)
    n = float(np.linalg.norm(v))
    if not math.isfinite(n) or n < 1e-9:
        raise ValueError(f"{what} must be a finite non-zero vector, got {v.tolist()}")
    return v / n


def scene_up(c2w: np.ndarray) -> np.ndarray:
    """Normalised mean camera up vector (OpenGL +Y column of ``c2w``)."""
    return _unit(np.asarray(c2w)[:, :3, 1].mean(0), "mean camera up vector")


def _horizontal(v: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Rows of ``v`` projected on the plane orthogonal to ``up``, normalised (zero rows stay zero)."""
    v = np.atleast_2d(np.asarray(v, np.float64))
    p = v - (v @ up)[:, None] * up[None]
    n = np.linalg.norm(p, axis=-1, keepdims=True)
    return np.where(n > 1e-12, p / np.maximum(n, 1e-12), 0.0)


def yaw_degrees(face_direction: np.ndarray, camera_positions: np.ndarray, centre: np.ndarray,
                up: np.ndarray) -> np.ndarray:
    """Yaw (0..180 degrees) of each camera: angle between the face direction and centre→camera, both projected
    on the plane orthogonal to ``up``."""
    f = _horizontal(face_direction, up)[0]
    if np.linalg.norm(f) < 0.5:
        raise ValueError("face direction is parallel to the up axis: it has no yaw")
    c = _horizontal(np.asarray(camera_positions, np.float64) - np.asarray(centre, np.float64)[None], up)
    return np.degrees(np.arccos(np.clip(c @ f, -1.0, 1.0)))


def parse_direction(text: str) -> np.ndarray | None:
    """``"auto"`` → ``None``; ``"X,Y,Z"`` → unit ``(3,)``; anything else → ValueError."""
    if str(text).strip().lower() == "auto":
        return None
    parts = [p for p in str(text).replace(" ", "").split(",") if p != ""]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"--face-direction must be 'auto' or three numbers X,Y,Z, got {text!r}")
    return _unit(np.array(vals), "--face-direction")


def auto_face_direction(scene: Scene, centre: np.ndarray, heights: Sequence[int] | None = None,
                        quiet: bool = False) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Detect faces on every view (CNN, HOG fallback) and average the centre→camera directions of the views
    with a face. Returns the unit direction and ``[{"name", "score", "method", "index"}]`` of those views."""
    from tqdm.auto import tqdm

    from privnerf.privacy.face_attacks import HEAD_HEIGHTS, detect_faces_in_head

    heights = tuple(heights or HEAD_HEIGHTS)
    if scene.masks is None:
        raise ValueError("automatic face direction needs the head masks")
    found: list[dict[str, Any]] = []
    for method in ("cnn", "hog"):
        for i in tqdm(range(scene.num_views), desc=f"face detection ({method})", disable=quiet, leave=False):
            img = np.floor(np.clip(scene.images[i], 0, 1) * 255 + 0.5).astype(np.uint8)
            dets = detect_faces_in_head(img, scene.masks[i], heights=heights, method=method, upsample=1)
            if dets:
                found.append({"name": _stem(scene.names[i]), "index": i, "score": max(d.score for d in dets),
                              "method": method})
        if found:
            break
    if not found:
        raise ValueError("no face detected in any view (dlib CNN and HOG); give the direction the face looks at "
                         "with --face-direction X,Y,Z (world frame of the loaded scene)")
    pos = scene.c2w[[f["index"] for f in found], :3, 3].astype(np.float64)
    dirs = pos - np.asarray(centre, np.float64)[None]
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    return _unit(dirs.mean(0), "mean direction to the cameras with a face"), found


# ------------------------------------------------------------------------------------------------ writer


def _stem(name: str) -> str:
    return Path(name).stem


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{out}: exists and is not empty; pass --overwrite to replace it")
            if not (out / "obscured.json").is_file():
                raise FileExistsError(f"{out}: not empty and holds no obscured.json; refusing to overwrite it")


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def obscure_head(
    data: str | Path,
    out: str | Path,
    spec: OperatorSpec,
    face_direction: str | Sequence[float] | np.ndarray | None = "auto",
    neutral_angle: float = 90.0,
    factor: int = 8,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Write the obscured dataset DIR (see the module docstring); returns ``obscured.json``'s content.

    Args:
        data: masked LLFF head folder (``poses_bounds.npy``, ``images_{factor}/``, ``masks_{factor}/``).
        out: DIR.
        spec: the operator σ.
        face_direction: ``"auto"`` / ``None`` (detect), ``"X,Y,Z"`` or a 3-vector in the scene's world frame.
        neutral_angle: views with yaw <= this many degrees are sensitive (0..180).
    Raises:
        SceneError (bad data), ValueError (bad option, no neutral view, no face found), FileExistsError (DIR).
    """
    from privnerf.face.head import load_head

    if not isinstance(spec, OperatorSpec):
        raise TypeError("spec must be an OperatorSpec")
    neutral_angle = float(neutral_angle)
    if not (math.isfinite(neutral_angle) and 0.0 <= neutral_angle <= 180.0):
        raise ValueError(f"--neutral-angle must be in 0..180 degrees, got {neutral_angle}")
    if face_direction is None or isinstance(face_direction, str):
        given = parse_direction(face_direction or "auto")
    else:
        given = _unit(np.asarray(face_direction, np.float64).reshape(-1), "face direction")
        if given.shape != (3,):
            raise ValueError("face direction must have 3 components")
    out = Path(out)
    _check_out(out, overwrite)

    scene = load_head(data, factor=factor)
    stems = [_stem(n) for n in scene.names]
    if len(set(stems)) != len(stems):
        raise SceneError(data, "two images share a file name stem; cannot name the outputs")
    up = scene_up(scene.c2w)
    centre = scene.aabb.astype(np.float64).mean(0)
    detections: list[dict[str, Any]] = []
    if given is None:
        fdir, detections = auto_face_direction(scene, centre, quiet=quiet)
    else:
        fdir = given
    yaw = yaw_degrees(fdir, scene.c2w[:, :3, 3], centre, up)
    sensitive = yaw <= neutral_angle
    if sensitive.all():
        raise ValueError(f"no neutral view: every view is within {neutral_angle:g} degrees of the face direction "
                         f"(yaws {yaw.min():.1f}..{yaw.max():.1f}); lower --neutral-angle")

    frames = []
    for i, stem in enumerate(stems):
        kind = "sensitive" if sensitive[i] else "neutral"
        h, w = scene.hw(i)
        frames.append({
            "name": stem, "kind": kind,
            "c2w": scene.c2w[i].astype(np.float64).tolist(),
            "intrinsics": scene.intrinsics[i].astype(np.float64).tolist(),
            "hw": [h, w], "yaw_deg": float(yaw[i]),
            "file": f"{kind}/{stem}.{'npz' if sensitive[i] else 'png'}",
            "mask": f"masks/{stem}.png",
        })
    doc = {
        "format": FORMAT, "version": VERSION,
        "operator": spec.to_dict(),
        "face_direction": fdir.tolist(), "face_direction_source": "auto" if given is None else "given",
        "face_detections": [{k: d[k] for k in ("name", "score", "method")} for d in detections],
        "up": up.tolist(), "centre": centre.tolist(), "neutral_angle_deg": neutral_angle,
        "background": [0.0, 0.0, 0.0], "scene_type": "bounded",
        "aabb": scene.aabb.astype(np.float64).tolist(), "near": float(scene.near), "far": float(scene.far),
        "world_transform": scene.meta.get("world_transform"),
        "source": str(Path(data)), "factor": int(factor),
        "counts": {"neutral": int((~sensitive).sum()), "sensitive": int(sensitive.sum())},
        "frames": frames,
    }
    with atomic_directory(out, overwrite_if="obscured.json" if overwrite else None) as tmp:
        for i, fr in enumerate(frames):
            write_image(tmp / fr["mask"], np.asarray(scene.masks[i], np.uint8))
            if fr["kind"] == "neutral":
                write_image(tmp / fr["file"], scene.images[i])
            else:
                codes = obscure(spec, scene.images[i])  # raw pixels stay in memory
                atomic_write_bytes(tmp / fr["file"], _npz_bytes(codes=codes))
                write_image(tmp / "sensitive" / f"{fr['name']}.png", preview(spec, codes))
        atomic_write_json(tmp / "obscured.json", doc)
    return doc


# ------------------------------------------------------------------------------------------------ reader


def _matrix(value: Any, path: Path, where: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SceneError(path, f"{where}: not numeric") from exc
    if a.shape != shape or not np.all(np.isfinite(a)):
        raise SceneError(path, f"{where}: expected finite numbers of shape {shape}, got shape {a.shape}")
    return a


def load_obscured(dir: str | Path) -> ObscuredData:
    """Read an obscured dataset DIR (see the module docstring).

    Raises:
        SceneError: naming the file, for a missing or invalid ``obscured.json``, a missing or bad image, mask
            or ``.npz``, or when there is no neutral view.
    """
    root = Path(dir)
    jpath = root / "obscured.json"
    doc = read_json(jpath)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise SceneError(jpath, f"not a {FORMAT} file (format {fmt!r})")
    if doc.get("version") != VERSION:
        raise SceneError(jpath, f"unsupported version {doc.get('version')!r} (expected {VERSION})")
    for key in ("operator", "frames", "aabb", "near", "far"):
        if key not in doc:
            raise SceneError(jpath, f"missing key {key!r}")
    try:
        spec = OperatorSpec.from_dict(dict(doc["operator"]))
    except (TypeError, ValueError) as exc:
        raise SceneError(jpath, f"bad operator: {exc}") from exc
    aabb = _matrix(doc["aabb"], jpath, "aabb", (2, 3))
    near, far = (float(_matrix(doc[k], jpath, k, ())) for k in ("near", "far"))
    frames = doc["frames"]
    if not isinstance(frames, list) or not frames:
        raise SceneError(jpath, "frames must be a non-empty list")

    if not any(isinstance(fr, dict) and fr.get("kind") == "neutral" for fr in frames):
        raise SceneError(jpath, "no neutral view: stage 1 needs at least one neutral (RGB) view")
    n_images, n_c2w, n_intr, n_names, n_masks, n_meta = [], [], [], [], [], []
    sens: list[SensitiveView] = []
    for j, fr in enumerate(frames):
        where = f"frame {j}"
        if not isinstance(fr, dict):
            raise SceneError(jpath, f"{where}: not an object")
        for key in ("name", "kind", "c2w", "intrinsics", "hw", "file", "mask"):
            if key not in fr:
                raise SceneError(jpath, f"{where}: missing key {key!r}")
        where = f"frame {j} ({fr['name']})"
        if fr["kind"] not in ("neutral", "sensitive"):
            raise SceneError(jpath, f"{where}: kind must be 'neutral' or 'sensitive', got {fr['kind']!r}")
        c2w = _matrix(fr["c2w"], jpath, f"{where} c2w", (4, 4)).astype(np.float32)
        intr = _matrix(fr["intrinsics"], jpath, f"{where} intrinsics", (4,)).astype(np.float32)
        hw = tuple(int(x) for x in _matrix(fr["hw"], jpath, f"{where} hw", (2,)))
        for key in ("file", "mask"):
            rel = Path(str(fr[key]))
            if rel.is_absolute() or ".." in rel.parts:
                raise SceneError(jpath, f"{where}: {key} must be a relative path inside the folder, got {fr[key]!r}")
        mask = read_mask(root / fr["mask"], expected_hw=hw)
        fpath = root / fr["file"]
        if fr["kind"] == "neutral":
            img = read_image(fpath)
            if img.shape[:2] != hw:
                raise SceneError(fpath, f"image size {img.shape[1]}x{img.shape[0]} differs from hw "
                                        f"{hw[1]}x{hw[0]} (WxH)")
            n_images.append(img)
            n_c2w.append(c2w)
            n_intr.append(intr)
            n_names.append(str(fr["name"]))
            n_masks.append(mask)
            n_meta.append({"yaw_deg": fr.get("yaw_deg"), "kind": "neutral"})
        else:
            if not fpath.is_file():
                raise SceneError(fpath, "σ codes file not found")
            try:
                with np.load(fpath, allow_pickle=False) as z:
                    codes = np.asarray(z["codes"]) if "codes" in z.files else None
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
                raise SceneError(fpath, f"cannot read .npz ({type(exc).__name__}: {exc})") from exc
            if codes is None:
                raise SceneError(fpath, "no 'codes' array in the .npz")
            if codes.dtype != np.uint8 or codes.shape != (spec.channels,) + hw:
                raise SceneError(fpath, f"codes must be uint8 of shape {(spec.channels,) + hw}, "
                                        f"got {codes.dtype} {codes.shape}")
            if codes.size and int(codes.max()) >= spec.levels:
                raise SceneError(fpath, f"code {int(codes.max())} out of range for {spec.levels} levels")
            sens.append(SensitiveView(c2w, intr, codes, mask, str(fr["name"])))
    if not n_images:
        raise SceneError(jpath, "no neutral view: stage 1 needs at least one neutral (RGB) view")
    neutral = Scene(
        images=n_images, c2w=np.stack(n_c2w), intrinsics=np.stack(n_intr), near=near, far=far, aabb=aabb,
        scene_type="bounded", background=(0.0, 0.0, 0.0), names=n_names, masks=n_masks, frame_meta=n_meta,
        meta={k: v for k, v in doc.items() if k != "frames"} | {"source": str(root)},
    )
    return ObscuredData(neutral=neutral, sensitive=sens, spec=spec, meta=doc)
