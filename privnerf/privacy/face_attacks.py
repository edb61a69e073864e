"""Attacks on identity-obscured face images: detection, recognition and inversion of σ.

Face models
-----------
dlib's models ship in the ``face_recognition_models`` wheel (``models/*.dat``): the MMOD CNN face detector,
the 5- and 68-point landmark predictors and the 128-D ResNet face descriptor. The package's ``__init__``
imports ``pkg_resources`` (absent here), so it is never imported: :func:`models_dir` locates its folder with
``importlib.util.find_spec(...).submodule_search_locations``. Loaded models are cached per process.

* :func:`detect_faces` runs a detector on an image as given (``"cnn"``: MMOD, ``"hog"``: dlib's frontal
  HOG + SVM) and returns :class:`Detection` boxes with a score.
* :func:`detect_faces_in_head` is the protocol used on masked head captures: the image is cropped to the mask's
  box grown by 10 % of its height on each side and resized to a few heights (:data:`HEAD_HEIGHTS`: 128, 160,
  200 px, i.e. the face about 60-100 px tall) where each detector is run with ``upsample`` (1); boxes come
  back in the original image's coordinates, overlapping ones merged (the best score kept). On the Ethiopian head
  (a bronze sculpture, not a person) neither detector finds a face on the full 500 px frame at upsample 0 or 1,
  and on the head crop both are scale-sensitive, so the protocol favours the attacker by trying several
  scales.
* :func:`face_embeddings`: detection (CNN by default), 5- (default, as in ``face_recognition``) or 68-point
  landmarks on the *original* image, and dlib's aligned-chip descriptor (``compute_face_descriptor``).
* :func:`verification`: smallest Euclidean distance from any probe embedding to any subject embedding;
  verified when below ``threshold`` (0.6, dlib's operating point: 99.38 % on LFW).

Inversion
---------
* :func:`poisson_reconstruct` integrates a *signed* gradient field ``(gx, gy)`` in the least-squares sense for
  exactly the central differences (half-sample-symmetric borders) of :func:`privnerf.face.operators.apply_operator`,
  with a DCT/DST solver (Neumann-type boundary), up to a constant (the output has zero mean). Magnitude-only
  gradients (``"gradmag"``) have no Poisson inverse: the orientation and sign of each gradient are gone,
  integrating would need them. There the learned inverse (:class:`LearnedInverse`) is the attack.
* :class:`LearnedInverse`: a 4-level U-Net (16-32-64-64 channels) from dequantised σ codes to the grey image
  (or RGB), trained from scratch by :func:`train_inverse` on (σ(I), I) crops of images available offline that
  are *not* the head (:func:`inverse_training_images`: nerf_synthetic lego train, LLFF fern, the built-in
  scene's renders).

Scores (:func:`masked_psnr`, :func:`masked_ssim`) are computed inside a mask on 8-bit images (the conventions of
:mod:`privnerf.eval.metrics`); :func:`calibrate` gives an attacker the best gain and offset inside the mask
(an oracle: Poisson output is only defined up to a constant), and :func:`constant_grey` is the baseline: the
best constant (the mean of the target inside the mask).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from privnerf.face.operators import OperatorSpec, apply_operator, dequantize, margin, quantize, to_gray

__all__ = [
    "HEAD_HEIGHTS",
    "Detection",
    "models_dir",
    "detect_faces",
    "detect_faces_in_head",
    "head_box",
    "face_embeddings",
    "verification",
    "poisson_reconstruct",
    "codes_to_gradients",
    "masked_psnr",
    "masked_ssim",
    "calibrate",
    "constant_grey",
    "LearnedInverse",
    "inverse_training_images",
    "train_inverse",
    "invert",
    "save_inverse",
    "load_inverse",
]

#: Crop heights (px) tried by :func:`detect_faces_in_head`.
HEAD_HEIGHTS = (128, 160, 200)

_MODEL_FILES = {
    "cnn": "mmod_human_face_detector.dat",
    "sp5": "shape_predictor_5_face_landmarks.dat",
    "sp68": "shape_predictor_68_face_landmarks.dat",
    "rec": "dlib_face_recognition_resnet_model_v1.dat",
}


class Detection(NamedTuple):
    """A face box in pixel coordinates of the image it was found in (right/bottom exclusive-ish, as dlib)."""

    left: int
    top: int
    right: int
    bottom: int
    score: float


# ----------------------------------------------------------------------------------------------- models


def models_dir() -> Path:
    """The ``models`` folder of the installed ``face_recognition_models`` package (never imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locs:
        d = Path(loc) / "models"
        if d.is_dir():
            return d
    raise RuntimeError("dlib face models not found: install the 'face-recognition-models' package")


@functools.lru_cache(maxsize=None)
def _model(kind: str):
    try:
        import dlib
    except ImportError as exc:  # pragma: no cover - dlib-bin is a dependency
        raise RuntimeError("dlib is not installed (package dlib-bin)") from exc
    if kind == "hog":
        return dlib.get_frontal_face_detector()
    path = models_dir() / _MODEL_FILES[kind]
    if not path.is_file():
        raise RuntimeError(f"{path}: dlib model file missing")
    if kind == "cnn":
        return dlib.cnn_face_detection_model_v1(str(path))
    if kind in ("sp5", "sp68"):
        return dlib.shape_predictor(str(path))
    return dlib.face_recognition_model_v1(str(path))


def _as_rgb_uint8(img: Any) -> np.ndarray:
    """``(H, W)`` / ``(H, W, 1|3)`` float in [0, 1] or uint8 → contiguous ``(H, W, 3)`` uint8."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.floor(np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {np.asarray(img).shape}")
    return np.ascontiguousarray(a)


def detect_faces(img_uint8: Any, upsample: int = 1, method: str = "cnn") -> list[Detection]:
    """Faces in an image as given.

    Args:
        img_uint8: ``(H, W, 3)`` or ``(H, W)`` uint8 (float in [0, 1] is converted).
        upsample: times dlib doubles the image first (finds smaller faces; ~4x the time each).
        method: ``"cnn"`` (MMOD; score = its confidence) or ``"hog"`` (score = the SVM margin, threshold 0).
    """
    if method not in ("cnn", "hog"):
        raise ValueError(f"unknown detection method {method!r}; expected 'cnn' or 'hog'")
    img = _as_rgb_uint8(img_uint8)
    if method == "cnn":
        dets = _model("cnn")(img, int(upsample))
        return [Detection(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), float(d.confidence))
                for d in dets]
    rects, scores, _ = _model("hog").run(img, int(upsample), 0.0)
    return [Detection(r.left(), r.top(), r.right(), r.bottom(), float(s)) for r, s in zip(rects, scores)]


def _iou(a: Detection, b: Detection) -> float:
    ix = max(0, min(a.right, b.right) - max(a.left, b.left))
    iy = max(0, min(a.bottom, b.bottom) - max(a.top, b.top))
    inter = ix * iy
    area = lambda d: max(0, d.right - d.left) * max(0, d.bottom - d.top)  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def head_box(mask: np.ndarray, pad: float = 0.10, threshold: int = 128) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of the mask's foreground box grown by ``pad`` x its height on each side, clipped to
    the image; ``None`` for an empty mask."""
    ys, xs = np.nonzero(np.asarray(mask) >= threshold)
    if len(ys) == 0:
        return None
    h, w = mask.shape[:2]
    p = int(round(pad * (ys.max() - ys.min() + 1)))
    return max(0, ys.min() - p), min(h, ys.max() + 1 + p), max(0, xs.min() - p), min(w, xs.max() + 1 + p)


def detect_faces_in_head(
    img: Any,
    mask: np.ndarray,
    heights: Sequence[int] = HEAD_HEIGHTS,
    method: str = "cnn",
    upsample: int = 1,
) -> list[Detection]:
    """Faces on the head crop at several scales (see the module docstring), in original image coordinates."""
    from PIL import Image

    rgb = _as_rgb_uint8(img)
    box = head_box(mask)
    if box is None:
        return []
    y0, y1, x0, x1 = box
    crop = rgb[y0:y1, x0:x1]
    found: list[Detection] = []
    for h in heights:
        s = float(h) / crop.shape[0]
        w = max(1, int(round(crop.shape[1] * s)))
        small = np.asarray(Image.fromarray(crop).resize((w, int(h)), Image.LANCZOS))
        for d in detect_faces(small, upsample, method):
            found.append(Detection(int(round(x0 + d.left / s)), int(round(y0 + d.top / s)),
                                   int(round(x0 + d.right / s)), int(round(y0 + d.bottom / s)), d.score))
    found.sort(key=lambda d: -d.score)
    merged: list[Detection] = []
    for d in found:
        if all(_iou(d, m) <= 0.3 for m in merged):
            merged.append(d)
    return merged


def face_embeddings(
    img: Any,
    mask: np.ndarray | None = None,
    method: str = "cnn",
    upsample: int = 1,
    landmarks: int = 5,
    detections: Sequence[Detection] | None = None,
) -> list[np.ndarray]:
    """128-D dlib descriptors of every face found in ``img``.

    Args:
        img: ``(H, W, 3)`` / ``(H, W)`` uint8 or float in [0, 1] (grey is replicated to RGB).
        mask: when given, faces are searched with :func:`detect_faces_in_head` (the head-crop protocol);
            otherwise :func:`detect_faces` on the whole image with ``upsample``.
        method: detector, ``"cnn"`` or ``"hog"``.
        landmarks: 5 or 68 (the landmark model used to align the face chip).
        detections: skip detection and use these boxes (original image coordinates).
    Returns:
        one ``(128,)`` float64 array per face (empty list: no face).
    """
    import dlib

    if landmarks not in (5, 68):
        raise ValueError(f"landmarks must be 5 or 68, got {landmarks!r}")
    rgb = _as_rgb_uint8(img)
    if detections is None:
        detections = (detect_faces_in_head(rgb, mask, method=method, upsample=upsample) if mask is not None
                      else detect_faces(rgb, upsample, method))
    sp = _model("sp5" if landmarks == 5 else "sp68")
    rec = _model("rec")
    out = []
    for d in detections:
        shape = sp(rgb, dlib.rectangle(int(d.left), int(d.top), int(d.right), int(d.bottom)))
        out.append(np.asarray(rec.compute_face_descriptor(rgb, shape), dtype=np.float64))
    return out


def verification(embeddings_probe: Sequence[np.ndarray], embeddings_subject: Sequence[np.ndarray],
                 threshold: float = 0.6) -> dict[str, Any]:
    """Does any probe face match the subject?

    Returns:
        ``{"min_distance": float or None (no probe or no subject face), "verified": min_distance < threshold,
        "threshold", "n_probe", "n_subject"}``.
    """
    p = [np.asarray(e, np.float64).reshape(-1) for e in embeddings_probe]
    s = [np.asarray(e, np.float64).reshape(-1) for e in embeddings_subject]
    dmin = None
    if p and s:
        d = np.linalg.norm(np.stack(p)[:, None, :] - np.stack(s)[None, :, :], axis=-1)
        dmin = float(d.min())
    return {"min_distance": dmin, "verified": bool(dmin is not None and dmin < threshold),
            "threshold": float(threshold), "n_probe": len(p), "n_subject": len(s)}


# ------------------------------------------------------------------------------------------ inversion


def poisson_reconstruct(gx: np.ndarray, gy: np.ndarray, reg: float = 1e-4) -> np.ndarray:
    """Least-squares integration of a signed gradient field, up to a constant.

    Solves ``min_I ||Dx I - gx||^2 + ||Dy I - gy||^2 + reg ||L I||^2`` where ``Dx``, ``Dy`` are the central
    differences of :func:`~privnerf.face.operators.apply_operator` (``(I[x+1] - I[x-1]) / 2`` with half-sample
    symmetric borders: ``Dx`` maps the DCT-II basis along x onto the DST-II basis with eigenvalue
    ``-sin(pi k / W)``), and ``L`` is the discrete Laplacian: its small weight only matters near the Nyquist
    frequency, where central differences are blind (a pixel checkerboard has zero central difference).

    Args:
        gx, gy: ``(H, W)`` gradients in grey levels per pixel (``+x`` right, ``+y`` down the rows).
        reg: weight of the Laplacian penalty.
    Returns:
        ``(H, W)`` float64 image with zero mean.
    """
    from scipy.fft import dct, dst, idctn

    gx = np.asarray(gx, np.float64)
    gy = np.asarray(gy, np.float64)
    if gx.shape != gy.shape or gx.ndim != 2:
        raise ValueError(f"gx and gy must be equal (H, W) arrays, got {gx.shape} and {gy.shape}")
    h, w = gx.shape
    GX = dst(dct(gx, type=2, axis=0, norm="ortho"), type=2, axis=1, norm="ortho")  # (l, k-1)
    GY = dct(dst(gy, type=2, axis=0, norm="ortho"), type=2, axis=1, norm="ortho")  # (l-1, k)
    ax = np.zeros((h, w))
    ay = np.zeros((h, w))
    ax[:, 1:] = GX[:, : w - 1]
    ay[1:, :] = GY[: h - 1, :]
    wk = np.pi * np.arange(w) / w
    wl = np.pi * np.arange(h) / h
    sk, sl = np.sin(wk)[None, :], np.sin(wl)[:, None]
    lap = 4.0 * np.sin(wk / 2)[None, :] ** 2 + 4.0 * np.sin(wl / 2)[:, None] ** 2
    den = sk**2 + sl**2 + reg * lap**2
    den[0, 0] = 1.0
    a = -(sk * ax + sl * ay) / den
    a[0, 0] = 0.0
    return idctn(a, type=2, norm="ortho")


def codes_to_gradients(spec: OperatorSpec, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed codes ``(2, H, W)`` → ``(gx, gy)`` in grey levels per pixel (dequantised, times ``clip``)."""
    if spec.name != "signed":
        raise ValueError("only signed gradients can be integrated; gradmag has no Poisson inverse "
                         "(orientation and sign are lost): use the learned inverse")
    v = dequantize(spec, np.asarray(codes)).astype(np.float64) * spec.clip
    return v[0], v[1]


# -------------------------------------------------------------------------------------------- metrics


def _u8(x: Any) -> np.ndarray:
    from privnerf.eval.metrics import to_uint8

    return np.asarray(to_uint8(np.asarray(x, dtype=np.float64) if np.asarray(x).dtype != np.uint8 else x))


def masked_psnr(pred: Any, gt: Any, mask: np.ndarray) -> float:
    """PSNR (dB) over the pixels where ``mask`` is true, on 8-bit images (``to_uint8``), data range 1, capped at
    100 dB like :func:`privnerf.eval.metrics.psnr`."""
    a = _u8(pred).astype(np.float64) / 255.0
    b = _u8(gt).astype(np.float64) / 255.0
    if a.shape != b.shape:
        raise ValueError(f"pred and gt shapes differ: {a.shape} vs {b.shape}")
    m = np.asarray(mask, bool)
    if not m.any():
        raise ValueError("empty mask")
    mse = float(np.mean((a - b)[m] ** 2))
    return 100.0 if mse <= 0 else min(100.0, -10.0 * math.log10(mse))


def masked_ssim(pred: Any, gt: Any, mask: np.ndarray) -> float:
    """SSIM of :func:`privnerf.eval.metrics.ssim` (8-bit, 11-tap Gaussian sigma 1.5, K1 0.01, K2 0.03, 'valid'
    windows) averaged over the windows whose centre pixel is inside ``mask`` (the whole image: identical to
    ``metrics.ssim``). Grey ``(H, W)`` or ``(H, W, C)``."""
    a = torch.from_numpy(_u8(pred).astype(np.float64) / 255.0)
    b = torch.from_numpy(_u8(gt).astype(np.float64) / 255.0)
    if a.shape != b.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    a, b = a.permute(2, 0, 1).contiguous(), b.permute(2, 0, 1).contiguous()
    c = a.shape[0]
    win, sig, r = 11, 1.5, 5
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sig**2))
    g = g / g.sum()
    kh, kw = g.view(1, 1, -1, 1).expand(c, 1, -1, 1), g.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def filt(t):
        return F.conv2d(F.conv2d(t.unsqueeze(0), kh, groups=c), kw, groups=c).squeeze(0)

    mu_a, mu_b = filt(a), filt(b)
    va, vb = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    m = torch.from_numpy(np.asarray(mask, bool)[r:-r, r:-r].copy())
    if m.shape != smap.shape[1:] or not m.any():
        raise ValueError("mask must match the image and keep at least one full 11x11 window")
    return float(smap[:, m].mean())


def calibrate(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, gain: bool = True) -> np.ndarray:
    """``pred`` under the least-squares gain and offset (offset only with ``gain=False``) that best match ``gt``
    inside ``mask`` (an oracle favouring the attacker), clipped to [0, 1]; pixels outside the mask set to 0."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(gt, np.float64)
    m = np.asarray(mask, bool)
    pm, tm = p[m], t[m]
    if gain and pm.std() > 1e-12:
        k = float(np.cov(pm, tm, bias=True)[0, 1] / pm.var())
    else:
        k = 1.0
    out = k * p + (tm.mean() - k * pm.mean())
    return np.where(m, np.clip(out, 0.0, 1.0), 0.0)


def constant_grey(gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The baseline: the mean of ``gt`` inside ``mask`` everywhere inside it, 0 outside."""
    m = np.asarray(mask, bool)
    return np.where(m, float(np.asarray(gt, np.float64)[m].mean()), 0.0)


# ------------------------------------------------------------------------------------ learned inverse


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class LearnedInverse(nn.Module):
    """A 4-level U-Net from dequantised σ codes ``(B, C, H, W)`` to a grey (or RGB) image in [0, 1].

    Levels at full, 1/2, 1/4 and 1/8 resolution with ``widths`` channels (default 16, 32, 64, 64), two 3x3
    convolutions per level, max-pool down, bilinear up with skip connections, sigmoid output. ``H`` and ``W``
    must be multiples of 8 (:func:`invert` pads). ``spec`` is the operator it inverts.
    """

    def __init__(self, spec: OperatorSpec, out_channels: int = 1, widths: Sequence[int] = (16, 32, 64, 64)):
        super().__init__()
        if out_channels not in (1, 3):
            raise ValueError("out_channels must be 1 (grey) or 3 (RGB)")
        if len(widths) != 4:
            raise ValueError("widths must give 4 levels")
        self.spec = spec
        self.out_channels = int(out_channels)
        self.widths = tuple(int(w) for w in widths)
        w0, w1, w2, w3 = self.widths
        self.e0, self.e1 = _block(spec.channels, w0), _block(w0, w1)
        self.e2, self.e3 = _block(w1, w2), _block(w2, w3)
        self.d2, self.d1, self.d0 = _block(w3 + w2, w2), _block(w2 + w1, w1), _block(w1 + w0, w0)
        self.head = nn.Conv2d(w0, self.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def up(t, ref):
            return F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)

        x0 = self.e0(x)
        x1 = self.e1(F.max_pool2d(x0, 2))
        x2 = self.e2(F.max_pool2d(x1, 2))
        x3 = self.e3(F.max_pool2d(x2, 2))
        y = self.d2(torch.cat([up(x3, x2), x2], 1))
        y = self.d1(torch.cat([up(y, x1), x1], 1))
        y = self.d0(torch.cat([up(y, x0), x0], 1))
        return torch.sigmoid(self.head(y))


def inverse_training_images(root: str | Path | None = None, per_source: int = 30, builtin_views: int = 24,
                            sources: Sequence[str] = ("lego", "fern", "builtin")) -> list[np.ndarray]:
    """Offline training photos for the learned inverse, none of the head: ``(H, W, 3)`` float32 in [0, 1].

    * ``lego``: ``nerf_synthetic/lego/train`` (400 px), composited on black (like the masked head), every
      k-th image so that at most ``per_source`` are taken;
    * ``fern``: ``nerf_llff_data/fern/images_8`` (504x378), at most ``per_source``;
    * ``builtin``: ``builtin_views`` renders of the built-in scene at 128 px (generated, no files).

    ``root`` defaults to :func:`privnerf.data.paths.data_root`; missing shared sources are skipped (the
    built-in scene is always there).
    """
    from privnerf.data.io import IMAGE_SUFFIXES, read_image
    from privnerf.data.paths import data_root

    root = Path(root) if root is not None else data_root()
    out: list[np.ndarray] = []

    def pick(files):
        files = sorted(files)
        step = max(1, math.ceil(len(files) / max(1, per_source)))
        return files[::step][:per_source]

    if "lego" in sources:
        d = root / "nerf_synthetic" / "lego" / "train"
        if d.is_dir():
            for f in pick(p for p in d.glob("r_*.png") if "_depth" not in p.name and "_normal" not in p.name):
                out.append(read_image(f, background=(0.0, 0.0, 0.0)))
    if "fern" in sources:
        d = root / "nerf_llff_data" / "fern" / "images_8"
        if d.is_dir():
            for f in pick(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                out.append(read_image(f))
    if "builtin" in sources and builtin_views > 0:
        from privnerf.data.builtin import make_builtin_scene

        sc = make_builtin_scene("train", size=128, n_train=int(builtin_views), n_val=0, n_test=0)
        out.extend(np.asarray(im, np.float32) for im in sc.images)
    if not out:
        raise RuntimeError(f"no training images found under {root}")
    return out


def _sample_batch(images: list[np.ndarray], spec: OperatorSpec, batch: int, crop: int, rgb: bool,
                  rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    m = margin(spec)
    big = crop + 2 * m
    grays, targets = [], []
    for _ in range(batch):
        img = images[int(rng.integers(len(images)))]
        h, w = img.shape[:2]
        if h < big or w < big:  # small image: reflect-pad up to the crop
            ph, pw = max(0, big - h), max(0, big - w)
            img = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect")
            h, w = img.shape[:2]
        y, x = int(rng.integers(h - big + 1)), int(rng.integers(w - big + 1))
        c = img[y : y + big, x : x + big]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        c = np.clip(c * rng.uniform(0.6, 1.2), 0.0, 1.0)  # exposure jitter
        grays.append(to_gray(c))
        targets.append(c[m:-m, m:-m] if rgb else to_gray(c[m:-m, m:-m])[..., None])
    g = torch.from_numpy(np.ascontiguousarray(np.stack(grays), dtype=np.float32))[:, None]
    t = torch.from_numpy(np.ascontiguousarray(np.stack(targets), dtype=np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        sig = dequantize(spec, quantize(spec, apply_operator(spec, g)))[:, :, m:-m, m:-m]
    return sig.contiguous(), t.contiguous()


def train_inverse(spec: OperatorSpec, images: list[np.ndarray], steps: int = 1000, seed: int = 0,
                  batch: int = 8, crop_range: tuple[int, int] = (64, 128), lr: float = 2e-3, rgb: bool = False,
                  quiet: bool = False) -> LearnedInverse:
    """Train a :class:`LearnedInverse` from scratch on ``(σ(I), I)`` random crops of ``images``.

    Each step draws ``batch`` crops of one size (a multiple of 16 in ``crop_range``, 64-128 px), random
    horizontal flips and an exposure jitter (x0.6-1.2), computes σ (with its margin, so no border effect),
    quantises and dequantises it, and minimises the L1 error to the grey (``rgb=False``) or RGB crop. Adam,
    ``lr`` with a cosine decay to 5 %. About 0.1-0.2 s a step on 2 idle CPU cores at the defaults (1000 steps:
    2-3 minutes).
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LearnedInverse(spec, out_channels=3 if rgb else 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    sizes = [s for s in range(16 * math.ceil(crop_range[0] / 16), crop_range[1] + 1, 16)] or [64]
    model.train()
    t0 = time.time()
    bar = tqdm(range(int(steps)), desc=f"inverse {spec.name}", disable=quiet, dynamic_ncols=True)
    loss_ema = None
    for _ in bar:
        x, y = _sample_batch(images, spec, batch, sizes[int(rng.integers(len(sizes)))], rgb, rng)
        loss = F.l1_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        lv = float(loss.detach())
        loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
        bar.set_postfix(l1=f"{loss_ema:.4f}")
    model.eval()
    model.train_info = {"steps": int(steps), "seed": int(seed), "batch": int(batch), "final_l1_ema": loss_ema,
                        "seconds": time.time() - t0, "rgb": bool(rgb), "images": len(images)}
    return model


@torch.no_grad()
def invert(model: LearnedInverse, codes: np.ndarray) -> np.ndarray:
    """Codes ``(C, H, W)`` uint8 → the model's image: ``(H, W)`` grey or ``(H, W, 3)`` RGB float in [0, 1]."""
    c = np.asarray(codes)
    if c.ndim != 3 or c.shape[0] != model.spec.channels:
        raise ValueError(f"codes must be ({model.spec.channels}, H, W), got shape {c.shape}")
    x = dequantize(model.spec, torch.from_numpy(np.ascontiguousarray(c)))[None]
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    y = model(x)[0, :, :h, :w].permute(1, 2, 0).numpy()
    return y[..., 0] if y.shape[-1] == 1 else y


def save_inverse(model: LearnedInverse, path: str | Path) -> Path:
    """Save weights and configuration (atomic)."""
    import io as _io

    from privnerf.data.io import atomic_write_bytes

    buf = _io.BytesIO()
    torch.save({"spec": model.spec.to_dict(), "out_channels": model.out_channels, "widths": list(model.widths),
                "state": model.state_dict(), "train_info": getattr(model, "train_info", {})}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_inverse(path: str | Path) -> LearnedInverse:
    ck = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = LearnedInverse(OperatorSpec.from_dict(ck["spec"]), ck["out_channels"], ck["widths"])
    model.load_state_dict(ck["state"])
    model.train_info = ck.get("train_info", {})
    return model.eval()
