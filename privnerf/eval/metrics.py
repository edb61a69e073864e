"""Full-reference image-quality metrics for NeRF evaluation: PSNR and SSIM.

Conventions (shared with :mod:`privnerf.eval.lpips`):

* Inputs are one image pair, ``(H, W, 3)`` (``(H, W)`` and ``(H, W, C)`` also work),
  either ``torch.Tensor`` (any device) or ``numpy.ndarray``. Float images are taken
  to be in ``[0, 1]``; ``uint8`` images are taken as already quantised.
* Following nerfbaselines, every metric is computed on **8-bit images**: both
  images go through :func:`to_uint8` first (``floor(clip(x, 0, 1) * 255 + 0.5)``,
  i.e. round half up), and the metric then sees ``x8 / 255`` with data range 1.
* Metrics are per image. A dataset score is the **mean of the per-image scores**
  (:func:`mean_metrics`), not e.g. the PSNR of the pooled MSE.

PSNR of identical images
    Mathematically ``+inf``. We cap it at :data:`PSNR_MAX_DB` = 100 dB so that
    per-dataset means stay finite and results stay valid JSON. (nerfbaselines returns
    ``inf`` here; with 8-bit images a finite PSNR only exceeds 100 dB when fewer than
    about one pixel value in 6.5e5 differs by one step, so the cap changes nothing in
    practice except the degenerate identical case.)

SSIM
    Wang et al. 2004 with the usual constants: 11-tap Gaussian window, sigma 1.5,
    K1 = 0.01, K2 = 0.03, data range 1, population (not sample) covariances,
    'valid' filtering (only windows fully inside the image), computed per channel and
    averaged over channels and pixels. This is what dm-pix computes and what
    ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0, channel_axis=-1)`` computes
    (scikit-image filters with mode 'reflect' and then crops the 5-pixel border, which
    is the same as 'valid' filtering). ``tests/test_metrics.py`` checks the agreement
    when scikit-image is installed (measured max abs difference 1.0e-14 in float64 on
    random and smooth test images; the test asserts < 1e-10).
    Images must be at least 11x11.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PSNR_MAX_DB", "to_uint8", "psnr", "ssim", "mean_metrics"]

#: PSNR reported for identical images (and the cap for any larger value), in dB.
PSNR_MAX_DB = 100.0

_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def to_uint8(img: Any) -> Any:
    """Quantise a float image in [0, 1] to 8 bit: ``floor(clip(x, 0, 1) * 255 + 0.5)``.

    Returns the same kind of array it was given (``torch.uint8`` tensor on the same
    device, or ``np.uint8`` array). ``uint8`` input is returned unchanged. NaNs map to 0.
    """
    if isinstance(img, torch.Tensor):
        if img.dtype == torch.uint8:
            return img
        if not (img.is_floating_point()):
            raise TypeError(f"expected a float or uint8 image, got {img.dtype}")
        x = torch.nan_to_num(img.detach(), nan=0.0).clamp(0.0, 1.0)
        return torch.floor(x * 255.0 + 0.5).to(torch.uint8)
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"expected a float or uint8 image, got {arr.dtype}")
    x = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)
    return np.floor(x * 255.0 + 0.5).astype(np.uint8)


def uint8_tensor(q: Any) -> torch.Tensor:
    """A ``uint8`` array or tensor as a tensor (copying read-only numpy arrays)."""
    if isinstance(q, torch.Tensor):
        return q
    arr = np.ascontiguousarray(q)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def _device_of(*imgs: Any) -> torch.device:
    for im in imgs:
        if isinstance(im, torch.Tensor):
            return im.device
    return torch.device("cpu")


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 for exactness where supported (MPS has no float64).
    return torch.float32 if device.type == "mps" else torch.float64


def _as_unit_tensor(img: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """8-bit quantise, then return ``x8 / 255`` as a tensor on ``device``."""
    t = uint8_tensor(to_uint8(img))
    return t.to(device=device, dtype=dtype) / 255.0


def _check_pair(pred: Any, gt: Any) -> None:
    ps, gs = tuple(pred.shape), tuple(gt.shape)
    if ps != gs:
        raise ValueError(f"pred and gt shapes differ: {ps} vs {gs}")
    if len(ps) not in (2, 3):
        raise ValueError(f"expected one image (H, W) or (H, W, C), got shape {ps}")


def psnr(pred: Any, gt: Any) -> float:
    """PSNR in dB of one image pair, on 8-bit-quantised images, data range 1.

    Identical images give :data:`PSNR_MAX_DB` (see the module docstring).
    """
    _check_pair(pred, gt)
    device = _device_of(pred, gt)
    dtype = _work_dtype(device)
    a = _as_unit_tensor(pred, device, dtype)
    b = _as_unit_tensor(gt, device, dtype)
    mse = float(torch.mean((a - b) ** 2))
    if mse <= 0.0:
        return PSNR_MAX_DB
    return min(PSNR_MAX_DB, -10.0 * math.log10(mse))


def _gaussian_1d(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    r = (_SSIM_WIN - 1) // 2
    x = torch.arange(-r, r + 1, device=device, dtype=dtype)
    g = torch.exp(-(x**2) / (2.0 * _SSIM_SIGMA**2))
    return g / g.sum()


def _ssim_per_channel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM for (C, H, W) images in [0, 1]; returns the (C,) per-channel means."""
    c = a.shape[0]
    g = _gaussian_1d(a.device, a.dtype)
    kh = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def filt(x: torch.Tensor) -> torch.Tensor:  # separable 'valid' Gaussian filter
        x = F.conv2d(x.unsqueeze(0), kh, groups=c)
        return F.conv2d(x, kw, groups=c).squeeze(0)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a * mu_a
    var_b = filt(b * b) - mu_b * mu_b
    cov = filt(a * b) - mu_a * mu_b
    c1 = (_SSIM_K1 * 1.0) ** 2
    c2 = (_SSIM_K2 * 1.0) ** 2
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (num / den).mean(dim=(1, 2))


def ssim(pred: Any, gt: Any) -> float:
    """SSIM of one image pair on 8-bit-quantised images (see the module docstring)."""
    _check_pair(pred, gt)
    h, w = pred.shape[0], pred.shape[1]
    if h < _SSIM_WIN or w < _SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {h}x{w}")
    device = _device_of(pred, gt)
    dtype = _work_dtype(device)
    a = _as_unit_tensor(pred, device, dtype)
    b = _as_unit_tensor(gt, device, dtype)
    if a.ndim == 2:
        a, b = a.unsqueeze(-1), b.unsqueeze(-1)
    a = a.permute(2, 0, 1).contiguous()
    b = b.permute(2, 0, 1).contiguous()
    with torch.no_grad():
        return float(_ssim_per_channel(a, b).mean())


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def mean_metrics(per_image: Iterable[Mapping[str, Any]]) -> dict[str, float | None]:
    """Dataset metrics: the mean over images of each per-image metric.

    ``per_image`` is a list of dicts such as ``{"psnr": 31.2, "ssim": 0.95, "lpips": 0.08}``.
    Keys whose values are numbers in every dict are averaged. A key that is ``None`` (or
    missing) for any image -- e.g. ``lpips`` when the weights are unavailable -- gives
    ``None``: a mean over a subset of the images would not be comparable. Keys holding
    non-numeric values in every dict (image names, ...) are left out. An empty list
    gives ``{}``.
    """
    rows = list(per_image)
    if not rows:
        return {}
    keys: list[str] = []
    for row in rows:
        for k in row:
            if k not in keys:
                keys.append(k)
    out: dict[str, float | None] = {}
    for k in keys:
        vals = [row.get(k) for row in rows]
        if all(v is not None and not _is_number(v) for v in vals):
            continue  # a label column, not a metric
        if any(v is None for v in vals):
            out[k] = None
            continue
        bad = [v for v in vals if not _is_number(v)]
        if bad:
            raise TypeError(f"metric {k!r} mixes numbers with {type(bad[0]).__name__} values")
        out[k] = float(np.mean(np.asarray(vals, dtype=np.float64)))
    return out
