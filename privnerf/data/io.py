"""File reading and writing shared by the parsers.

Every reader turns OS, PIL, numpy and JSON errors into :class:`~privnerf.data.errors.SceneError` naming the
file and the problem, so a parser never lets a bare traceback escape for bad input. The writers are atomic:
data goes to a temporary file (or directory) next to the target and is renamed into place only once it is
complete, so an interrupted write never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from privnerf.data.errors import SceneError

#: File suffixes the image readers accept (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# --------------------------------------------------------------------------------------------- reading


def _open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, mapping every failure to SceneError."""
    p = Path(path)
    if not p.is_file():
        raise SceneError(p, "image file not found" if not p.exists() else "not a regular file")
    try:
        img = Image.open(p)
        img.load()
    except _PIL_ERRORS as exc:
        raise SceneError(p, f"unreadable or corrupt image ({type(exc).__name__}: {exc})") from exc
    return img


def read_rgba(path: str | Path) -> tuple[np.ndarray, bool]:
    """Read any 8/16-bit grey, palette, RGB or RGBA image.

    Returns:
        ``(H, W, 4)`` float32 RGBA in [0, 1] (alpha is 1 when the file has none, colours are straight, i.e. not
        premultiplied) and whether the file carried an alpha channel.
    """
    img = _open_image(path)
    mode = img.mode
    try:
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            grey = np.asarray(img, dtype=np.float32) / 65535.0
            rgb = np.repeat(grey[..., None], 3, axis=-1)
            return np.concatenate([rgb, np.ones_like(grey)[..., None]], -1), False
        if mode == "F":
            grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
            rgb = np.repeat(grey[..., None], 3, axis=-1)
            return np.concatenate([rgb, np.ones_like(grey)[..., None]], -1), False
        has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
        arr = np.asarray(img.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    except _PIL_ERRORS as exc:
        raise SceneError(path, f"cannot convert image of mode {mode} to RGB ({exc})") from exc
    if not has_alpha:
        arr = np.concatenate([arr, np.ones(arr.shape[:2] + (1,), np.float32)], -1)
    return arr, has_alpha


def box_downscale(arr: np.ndarray, factor: int, path: str | Path = "<array>") -> np.ndarray:
    """Average non-overlapping ``factor x factor`` blocks of an ``(H, W)`` or ``(H, W, C)`` array.

    Rows / columns beyond the last full block are dropped, so the result is ``(H // factor, W // factor, ...)``.
    With pixel centres at ``u + 0.5`` a continuous image coordinate ``x`` maps to ``x / factor`` exactly, so
    intrinsics scale by ``1 / factor`` (fx, fy, cx, cy alike) when ``H`` and ``W`` are multiples of ``factor``.
    """
    factor = int(factor)
    if factor < 1:
        raise SceneError(path, f"downscale factor must be a positive integer, got {factor}")
    if factor == 1:
        return arr
    h, w = arr.shape[0] // factor, arr.shape[1] // factor
    if h == 0 or w == 0:
        raise SceneError(path, f"image of size {arr.shape[1]}x{arr.shape[0]} is smaller than downscale {factor}")
    crop = arr[: h * factor, : w * factor]
    blocks = crop.reshape((h, factor, w, factor) + arr.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(arr.dtype)


def read_image(
    path: str | Path,
    background: tuple[float, float, float] | None = None,
    downscale: int = 1,
) -> np.ndarray:
    """Read an image as float32 RGB.

    Args:
        path: image file (PNG, JPEG, ...).
        background: when the file has alpha, composite straight alpha on this colour
            (``rgb * a + bg * (1 - a)``); with ``None`` the alpha channel is dropped.
        downscale: integer box-filter factor, applied *after* compositing (so the result is the area average
            of the composited image).
    Returns:
        ``(H // downscale, W // downscale, 3)`` float32 in [0, 1].
    """
    rgba, has_alpha = read_rgba(path)
    rgb = composite(rgba, background) if has_alpha else rgba[..., :3]
    return np.ascontiguousarray(box_downscale(rgb, downscale, path), dtype=np.float32)


def composite(rgba: np.ndarray, background: tuple[float, float, float] | None) -> np.ndarray:
    """``(H, W, 4)`` straight-alpha RGBA → ``(H, W, 3)`` RGB on ``background`` (alpha dropped if ``None``)."""
    rgb = rgba[..., :3]
    if background is None:
        return rgb
    a = rgba[..., 3:4]
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
    return rgb * a + bg * (1.0 - a)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file, reading only its header."""
    p = Path(path)
    if not p.is_file():
        raise SceneError(p, "image file not found")
    try:
        with Image.open(p) as img:
            w, h = img.size
    except _PIL_ERRORS as exc:
        raise SceneError(p, f"unreadable or corrupt image ({type(exc).__name__}: {exc})") from exc
    return h, w


def read_mask(
    path: str | Path, expected_hw: tuple[int, int] | None = None, downscale: int = 1
) -> np.ndarray:
    """Read a single-channel mask / label image keeping its raw values.

    Grey (``L``) and palette (``P``, the palette *indices*) images keep their values; 1-bit images become
    0 / 255; colour images are converted to grey luminance; 16-bit images are accepted when all values fit in
    8 bits.

    Args:
        path: image file.
        expected_hw: if given, the mask's ``(H, W)`` *before* downscaling must equal it.
        downscale: integer factor; each output pixel takes the **maximum** of its block, so a block with any
            masked (nonzero) pixel stays masked.
    Returns:
        ``(H // downscale, W // downscale)`` uint8.
    """
    img = _open_image(path)
    try:
        if img.mode in ("L", "P"):
            arr = np.asarray(img, dtype=np.uint8)
        elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
            raw = np.asarray(img)
            if raw.size and (raw.max() > 255 or raw.min() < 0):
                raise SceneError(path, "16-bit mask has values outside 0..255; expected an 8-bit label image")
            arr = raw.astype(np.uint8)
        else:
            arr = np.asarray(img.convert("L"), dtype=np.uint8)
    except _PIL_ERRORS as exc:
        raise SceneError(path, f"cannot read mask of mode {img.mode} ({exc})") from exc
    if expected_hw is not None and tuple(arr.shape) != tuple(expected_hw):
        raise SceneError(
            path,
            f"mask size {arr.shape[1]}x{arr.shape[0]} differs from its image size "
            f"{expected_hw[1]}x{expected_hw[0]} (WxH)",
        )
    if downscale > 1:
        h, w = arr.shape[0] // downscale, arr.shape[1] // downscale
        if h == 0 or w == 0:
            raise SceneError(path, f"mask smaller than downscale {downscale}")
        arr = arr[: h * downscale, : w * downscale].reshape(h, downscale, w, downscale).max(axis=(1, 3))
    return np.ascontiguousarray(arr)


def read_depth(
    path: str | Path,
    unit_scale: float = 1e-3,
    expected_hw: tuple[int, int] | None = None,
    downscale: int = 1,
) -> np.ndarray:
    """Read a metric depth map.

    * ``.npy``: float metres, ``(H, W)`` or ``(H, W, 1)``.
    * image (16-bit PNG usually): integer units multiplied by ``unit_scale`` (default millimetres → metres).

    Zero, negative and non-finite values mean "no depth" and become ``inf``.

    Args:
        expected_hw: if given, the depth's ``(H, W)`` before downscaling must equal it.
        downscale: integer factor; each output pixel is the mean of the valid (finite) depths in its block,
            ``inf`` when none is valid.
    Returns:
        ``(H // downscale, W // downscale)`` float32 metres.
    """
    p = Path(path)
    if p.suffix.lower() == ".npy":
        arr = load_npy(p).astype(np.float32)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise SceneError(p, f"depth array must be (H, W), got shape {arr.shape}")
    else:
        img = _open_image(p)
        if img.mode not in ("I;16", "I;16B", "I;16L", "I", "L", "F"):
            raise SceneError(p, f"depth image must be single-channel 16-bit (got mode {img.mode})")
        arr = np.asarray(img).astype(np.float32) * np.float32(unit_scale)
    arr = np.where(np.isfinite(arr) & (arr > 0), arr, np.inf).astype(np.float32)
    if expected_hw is not None and tuple(arr.shape) != tuple(expected_hw):
        raise SceneError(
            p,
            f"depth size {arr.shape[1]}x{arr.shape[0]} differs from its image size "
            f"{expected_hw[1]}x{expected_hw[0]} (WxH)",
        )
    if downscale > 1:
        h, w = arr.shape[0] // downscale, arr.shape[1] // downscale
        if h == 0 or w == 0:
            raise SceneError(p, f"depth map smaller than downscale {downscale}")
        blocks = arr[: h * downscale, : w * downscale].reshape(h, downscale, w, downscale)
        valid = np.isfinite(blocks)
        count = valid.sum(axis=(1, 3))
        total = np.where(valid, blocks, 0.0).sum(axis=(1, 3), dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            arr = np.where(count > 0, total / np.maximum(count, 1), np.inf).astype(np.float32)
    return np.ascontiguousarray(arr)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; malformed JSON gives a SceneError with the line and column."""
    p = Path(path)
    if not p.is_file():
        raise SceneError(p, "file not found" if not p.exists() else "not a regular file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(p, f"cannot read file ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SceneError(p, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc


def load_npy(path: str | Path) -> np.ndarray:
    """``np.load`` of a ``.npy`` file (no pickles), errors as SceneError."""
    p = Path(path)
    if not p.is_file():
        raise SceneError(p, "file not found")
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise SceneError(p, f"cannot read .npy array ({exc})") from exc
    if not isinstance(arr, np.ndarray):
        raise SceneError(p, "expected a single .npy array")
    return arr


def as_matrix44(value: Any, path: str | Path, where: str) -> np.ndarray:
    """Validate a 4x4 camera-to-world matrix from a parsed file.

    Checks shape, finiteness and that the last row is ``[0, 0, 0, 1]``; ``where`` names the frame in the error.
    Returns ``(4, 4)`` float64.
    """
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SceneError(path, f"{where}: transform_matrix is not a numeric 4x4 matrix") from exc
    if m.shape != (4, 4):
        raise SceneError(path, f"{where}: transform_matrix must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise SceneError(path, f"{where}: transform_matrix contains NaN or Inf")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-4):
        raise SceneError(path, f"{where}: last row of transform_matrix must be [0, 0, 0, 1], got {m[3].tolist()}")
    return m


def check_finite_number(value: Any, path: str | Path, what: str, positive: bool = False) -> float:
    """A finite float (optionally > 0) or SceneError."""
    try:
        x = float(value)
    except (TypeError, ValueError) as exc:
        raise SceneError(path, f"{what} must be a number, got {value!r}") from exc
    if not math.isfinite(x) or (positive and x <= 0):
        raise SceneError(path, f"{what} must be a finite{' positive' if positive else ''} number, got {value!r}")
    return x


# --------------------------------------------------------------------------------------------- writing


def _fsync_file(f) -> None:
    f.flush()
    with contextlib.suppress(OSError):
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            _fsync_file(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomic UTF-8 text write."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Atomic JSON write (NaN/Inf are refused, as JSON has no such values)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def to_uint8_image(img: np.ndarray) -> np.ndarray:
    """Float [0, 1] image → uint8 with rounding (``round(x * 255)``)."""
    return np.clip(np.rint(np.asarray(img, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def write_image(path: str | Path, arr: np.ndarray, quality: int = 95) -> Path:
    """Write an image atomically (encoded in memory, then :func:`atomic_write_bytes`).

    ``arr`` is float RGB in [0, 1] ``(H, W, 3)`` (quantised to 8 bits), uint8 ``(H, W)`` / ``(H, W, 3)``, or
    uint16 ``(H, W)`` (16-bit grey PNG). The format follows the suffix.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(arr)
    if a.dtype == np.uint16:
        if a.ndim != 2:
            raise ValueError("16-bit images must be single-channel (H, W)")
        im = Image.fromarray(np.ascontiguousarray(a))
    elif a.dtype == np.uint8:
        im = Image.fromarray(np.ascontiguousarray(a))
    else:
        im = Image.fromarray(to_uint8_image(a))
    fmt = Image.registered_extensions().get(p.suffix.lower())
    if fmt is None:
        raise ValueError(f"{p}: unknown image suffix {p.suffix!r}")
    kwargs: dict[str, Any] = {"format": fmt}
    if fmt == "JPEG":
        kwargs["quality"] = quality
    buf = io.BytesIO()
    im.save(buf, **kwargs)
    return atomic_write_bytes(p, buf.getvalue())


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically (the format follows the suffix)."""
    p = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=p.suffix.lstrip(".").lower() or "png")
    return atomic_write_bytes(p, buf.getvalue())


@contextlib.contextmanager
def atomic_directory(out_dir: str | Path, overwrite_if: str | None = None) -> Iterator[Path]:
    """Build a directory atomically.

    Yields a fresh temporary directory next to ``out_dir``; when the ``with`` body finishes without an error
    the temporary directory is renamed to ``out_dir``. On an error it is deleted and ``out_dir`` is untouched.

    An existing ``out_dir`` is replaced only if it is empty or contains the file named ``overwrite_if``
    (i.e. it looks like an earlier output of the same writer); otherwise ``FileExistsError`` is raised before
    anything is written.
    """
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a directory")
        empty = not any(out.iterdir())
        if not empty and not (overwrite_if and (out / overwrite_if).exists()):
            raise FileExistsError(f"{out}: exists and is not empty; refusing to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        old.rmdir()
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
