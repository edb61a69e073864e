"""The privacy operator σ of Identity-Obscured NeRF: blurred, quantised grayscale image gradients.

The person's device turns every *sensitive* (frontal) photo ``I`` into ``codes = quantize(spec, σ(gray(I)))``
and keeps only the codes; stage 2 of the reconstruction compares ``apply_operator(spec, rendered_gray)`` with
``dequantize(spec, codes)`` on patches. Both sides run the same function, so they share one scale.

The operator (all steps in :func:`apply_operator`, differentiable in torch)
-------------------------------------------------------------------------
1. ``gray = to_gray(rgb)``: ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` (the image is in [0, 1]).
2. Gaussian blur with standard deviation ``blur_sigma`` pixels: a separable ``2r+1``-tap kernel,
   ``r = ceil(3 sigma)``, normalised to sum 1, with **reflect** padding (``d c b | a b c d``; falls back to
   replicate padding when the image is not larger than ``r`` in a dimension). ``blur_sigma = 0`` skips it.
3. Central differences in pixel units, ``gx[y, x] = (b[y, x+1] - b[y, x-1]) / 2`` and likewise ``gy`` along
   rows (``+y`` points **down** the image), with replicate padding of one pixel (half-sample symmetric, so the
   border difference is half the one-sided difference). :func:`privnerf.privacy.face_attacks.poisson_reconstruct`
   inverts exactly this discretisation in the least-squares sense.
4. Normalisation by the **fixed** constant ``clip`` (grey levels per pixel, image in [0, 1]); never per image,
   so a rendered patch and a stored photo map to the same numbers.

   * ``"gradmag"`` (C = 1): ``sqrt(gx^2 + gy^2 + eps) / clip`` with ``eps = GRAD_EPS`` (1e-8, i.e. 1e-4 grey
     levels per pixel: keeps the derivative finite in flat regions).
   * ``"signed"`` (C = 2): ``(gx / clip, gy / clip)``.

   The continuous output is *not* clipped (a loss on it keeps gradients everywhere); the range is applied by
   :func:`quantize`.

Quantisation (irreversible, :func:`quantize` / :func:`dequantize`)
------------------------------------------------------------------
``levels`` (2..256) uniform levels, stored as uint8 codes ``0 .. levels-1``; both quantisers are mid-tread
(zero, i.e. a flat region or the black background, is represented exactly):

* ``"gradmag"``: range ``[0, 1]`` (i.e. ``[0, clip]`` grey levels per pixel), step ``1 / (levels - 1)``,
  ``code = round(clip01(x) * (levels - 1))``, ``value = code / (levels - 1)``.
* ``"signed"``: per component, ``h = levels // 2``, step ``1 / h``, ``code = h + round(x * h)`` clipped to
  ``0 .. levels-1``, ``value = (code - h) / h``. The range is ``[-1, (levels - 1 - h) / h]``: for even
  ``levels`` it is ``[-1, (h - 1) / h]`` (16 levels: ``[-1, 7/8]``): one step less on the positive side, so
  that zero stays exact.

Within the range the round trip ``dequantize(quantize(x))`` is off by at most half a step; values beyond
saturate. ``clip = 0.05`` lies between the 95th (0.037) and 99th (0.061) percentiles of the blurred (sigma 2)
gradient magnitude inside the head mask of the Ethiopian head (500 px views composited on black, silhouette
edge included; median 0.0054).

The defaults (``blur_sigma = 6``, ``levels = 2``, ``clip = 0.05``) were chosen by the face recognition attack
(docs/face.md, "Choosing σ"): with 2 levels a gradmag code says only whether the blurred gradient exceeds half
of ``clip`` (0.025 grey levels per pixel), a binary edge map of structures wider than the 6 px blur. On the
6 most frontal views of the Ethiopian head, dlib found a face in none of those σ images, where the former
defaults (blur 2, 16 levels) gave a face on 3 and all 3 verified as the subject at 0.6; at blur 4 (the default
until 2026-12-06 night) a learned inverse turned one of them back into a verified face, at blur 6 none.

Patches: the blur and the differences see ``margin(spec) = r + 1`` pixels on each side, so σ of a rendered
patch equals σ of the full image (what the codes hold) only at least ``margin(spec)`` pixels inside the
patch; compare patch interiors (``x[..., m:-m, m:-m]``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "OPERATORS",
    "DEFAULT_LEVELS",
    "GRAD_EPS",
    "OperatorSpec",
    "to_gray",
    "gaussian_kernel",
    "margin",
    "apply_operator",
    "quantize",
    "dequantize",
    "obscure",
    "preview",
]

#: Known operators: gradient magnitude (1 channel) and the signed gradient pair (2 channels).
OPERATORS = ("gradmag", "signed")

#: Quantisation levels when none are given: a binary edge map for gradmag (the default operator, chosen by the
#: face recognition attack, docs/face.md), and -1 / -0.5 / 0 / 0.5 for each signed component.
DEFAULT_LEVELS = {"gradmag": 2, "signed": 4}

#: ``eps`` under the square root of "gradmag", in (grey levels per pixel)^2.
GRAD_EPS = 1e-8

#: BT.601 luma weights.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class OperatorSpec:
    """Parameters of σ.

    Attributes:
        name: one of :data:`OPERATORS`.
        blur_sigma: Gaussian blur standard deviation in pixels (>= 0; 0 = no blur).
        levels: number of quantisation levels (2..256; signed: 3..256, two levels would keep one sign only);
            ``None``: the operator's default, :data:`DEFAULT_LEVELS`.
        clip: gradient (grey levels per pixel, image in [0, 1]) mapped to 1.0; the normalisation constant and
            the quantisation range (see the module docstring).
    """

    name: str = "gradmag"
    blur_sigma: float = 6.0
    levels: int | None = None
    clip: float = 0.05

    def __post_init__(self) -> None:
        if self.name not in OPERATORS:
            raise ValueError(f"unknown operator {self.name!r}; known operators: {', '.join(OPERATORS)}")
        sig = self.blur_sigma
        if isinstance(sig, bool) or not (isinstance(sig, (int, float)) and math.isfinite(sig) and sig >= 0):
            raise ValueError(f"blur_sigma must be a finite number >= 0, got {self.blur_sigma!r}")
        if self.levels is None:
            object.__setattr__(self, "levels", DEFAULT_LEVELS[self.name])
        lv = self.levels
        if self.name == "signed" and isinstance(lv, (int, np.integer)) and lv == 2:
            raise ValueError("signed needs at least 3 levels (with 2 only negative gradients survive)")
        if isinstance(lv, bool) or not isinstance(lv, (int, np.integer)) or not 2 <= lv <= 256:
            raise ValueError(f"levels must be an integer in 2..256, got {self.levels!r}")
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a finite number > 0, got {self.clip!r}")
        object.__setattr__(self, "blur_sigma", float(self.blur_sigma))
        object.__setattr__(self, "levels", int(self.levels))
        object.__setattr__(self, "clip", float(self.clip))

    @property
    def channels(self) -> int:
        """Channels of σ: 1 for gradmag, 2 for signed."""
        return 1 if self.name == "gradmag" else 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OperatorSpec":
        known = {"name", "blur_sigma", "levels", "clip"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown operator fields {sorted(extra)}")
        return cls(**d)


def to_gray(rgb: Any, channel_axis: int = -1, keepdim: bool = False) -> Any:
    """ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``.

    ``rgb`` is a numpy array or torch tensor with 3 channels on ``channel_axis`` (default last, e.g.
    ``(H, W, 3)`` or ``(N, 3)`` rendered rays; use ``channel_axis=1`` for ``(B, 3, H, W)``). The channel axis is
    removed, or kept with size 1 with ``keepdim`` (``to_gray(x, channel_axis=1, keepdim=True)`` turns
    ``(B, 3, H, W)`` into the ``(B, 1, H, W)`` that :func:`apply_operator` takes). A torch input stays
    differentiable. uint8 input is taken as 0..255 and returns float in [0, 1].
    """
    if isinstance(rgb, torch.Tensor):
        x = rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb
        if x.shape[channel_axis] != 3:
            raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {tuple(x.shape)}")
        r, g, b = x.unbind(channel_axis)
        y = LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
        return y.unsqueeze(channel_axis if channel_axis >= 0 else y.ndim + 1 + channel_axis) if keepdim else y
    a = np.asarray(rgb)
    if a.shape[channel_axis] != 3:
        raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {a.shape}")
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a
    r, g, b = (np.take(a, i, axis=channel_axis) for i in range(3))
    y = (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).astype(a.dtype if a.dtype != np.float16 else np.float32)
    return np.expand_dims(y, channel_axis if channel_axis >= 0 else y.ndim + 1 + channel_axis) if keepdim else y


def gaussian_kernel(sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """1-D Gaussian, ``2r+1`` taps with ``r = ceil(3 sigma)``, summing to 1 (``[1.]`` for sigma 0)."""
    if sigma <= 0:
        return torch.ones(1, dtype=dtype, device=device)
    r = int(math.ceil(3.0 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def margin(spec: OperatorSpec) -> int:
    """Pixels at a patch border where σ of the patch differs from σ of the full image: ``r + 1``."""
    return (int(math.ceil(3.0 * spec.blur_sigma)) if spec.blur_sigma > 0 else 0) + 1


def _pad(x: torch.Tensor, pads: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    l_, r_, t_, b_ = pads
    if mode == "reflect" and (max(l_, r_) >= x.shape[-1] or max(t_, b_) >= x.shape[-2]):
        mode = "replicate"
    return F.pad(x, pads, mode=mode)


def _blur(spec: OperatorSpec, x: torch.Tensor) -> torch.Tensor:
    if spec.blur_sigma <= 0:
        return x
    k = gaussian_kernel(spec.blur_sigma, x.dtype, x.device)
    r = (k.numel() - 1) // 2
    x = F.conv2d(_pad(x, (r, r, 0, 0), "reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(_pad(x, (0, 0, r, r), "reflect"), k.view(1, 1, -1, 1))


def _central_gradients(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = F.pad(b, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
    gy = 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])
    return gx, gy


def apply_operator(spec: OperatorSpec, gray: torch.Tensor) -> torch.Tensor:
    """σ before quantisation: blur, central-difference gradients, fixed normalisation by ``spec.clip``.

    Args:
        spec: the operator.
        gray: ``(B, 1, H, W)`` float tensor in [0, 1] (any float dtype and device; gradients flow).
    Returns:
        ``(B, C, H, W)`` continuous, ``C = spec.channels``: gradmag ``sqrt(gx^2+gy^2+GRAD_EPS)/clip``
        (>= 0, ~[0, 1]); signed ``(gx, gy)/clip`` (~[-1, 1]).
    """
    if not isinstance(gray, torch.Tensor):
        raise TypeError(f"gray must be a torch tensor, got {type(gray).__name__}")
    if gray.ndim != 4 or gray.shape[1] != 1:
        raise ValueError(f"gray must be (B, 1, H, W), got shape {tuple(gray.shape)}")
    if not gray.is_floating_point():
        raise TypeError(f"gray must be a float tensor in [0, 1], got {gray.dtype}")
    gx, gy = _central_gradients(_blur(spec, gray))
    if spec.name == "gradmag":
        return torch.sqrt(gx * gx + gy * gy + GRAD_EPS) / spec.clip
    return torch.cat([gx, gy], dim=1) / spec.clip


def _signed_half(spec: OperatorSpec) -> int:
    return spec.levels // 2


def quantize(spec: OperatorSpec, x: Any) -> Any:
    """Continuous σ output → uint8 codes ``0 .. levels-1`` (numpy in → numpy, torch in → torch; no gradient).

    See the module docstring for the ranges; values outside them saturate.
    """
    is_t = isinstance(x, torch.Tensor)
    a = x.detach().double() if is_t else torch.as_tensor(np.asarray(x, dtype=np.float64))
    a = torch.nan_to_num(a, nan=0.0)
    top = spec.levels - 1
    if spec.name == "gradmag":
        q = torch.round(a.clamp(0.0, 1.0) * top)
    else:
        h = _signed_half(spec)
        q = (torch.round(a.clamp(-2.0, 2.0) * h) + h).clamp(0, top)
    q = q.to(torch.uint8)
    return q.to(x.device) if is_t else q.numpy()


def dequantize(spec: OperatorSpec, codes: Any, dtype=torch.float32) -> Any:
    """uint8 codes → float values on σ's scale (numpy in → float32 numpy, torch in → ``dtype`` tensor)."""
    is_t = isinstance(codes, torch.Tensor)
    c = codes if is_t else torch.from_numpy(np.ascontiguousarray(codes))
    if c.dtype != torch.uint8:
        raise TypeError(f"codes must be uint8, got {c.dtype}")
    if c.numel() and int(c.max()) >= spec.levels:
        raise ValueError(f"code {int(c.max())} out of range for {spec.levels} levels")
    c = c.to(torch.float64)
    if spec.name == "gradmag":
        v = c / (spec.levels - 1)
    else:
        h = _signed_half(spec)
        v = (c - h) / h
    return v.to(dtype) if is_t else v.numpy().astype(np.float32)


@torch.no_grad()
def obscure(spec: OperatorSpec, rgb: np.ndarray) -> np.ndarray:
    """The person-side pipeline for one photo: ``(H, W, 3)`` float RGB in [0, 1] (or uint8) → ``(C, H, W)``
    uint8 codes. Only the codes should leave the device."""
    gray = to_gray(np.asarray(rgb))
    t = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    return quantize(spec, apply_operator(spec, t))[0].numpy()


def preview(spec: OperatorSpec, codes: np.ndarray) -> np.ndarray:
    """A viewable uint8 image of codes ``(C, H, W)``: gradmag → ``(H, W)`` grey, code scaled to 0..255;
    signed → ``(H, W, 3)`` with R = gx, G = gy (code scaled to 0..255, 128-ish = zero) and B = 128."""
    c = np.asarray(codes)
    if c.ndim != 3 or c.shape[0] != spec.channels:
        raise ValueError(f"codes must be ({spec.channels}, H, W) for {spec.name}, got shape {c.shape}")
    scaled = np.rint(c.astype(np.float64) * (255.0 / (spec.levels - 1))).astype(np.uint8)
    if spec.name == "gradmag":
        return scaled[0]
    blue = np.full(c.shape[1:], 128, np.uint8)
    return np.stack([scaled[0], scaled[1], blue], axis=-1)
