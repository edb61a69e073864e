"""Build and load the compiled CPU kernels in ``privnerf/csrc`` (a torch C++ extension).

The extension is compiled once per torch version and source hash into ``$PRIVNERF_CACHE/ext`` (default
``~/.cache/privnerf/ext``); later imports load the cached library in well under a second. If no compiler is
available or ``PRIVNERF_NO_EXT=1`` is set, :func:`load_grid_ext` returns ``None`` and callers fall back to
pure PyTorch (which is also the path on CUDA).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)
CSRC = Path(__file__).resolve().parent.parent / "csrc"


def cache_root() -> Path:
    return Path(os.environ.get("PRIVNERF_CACHE", Path.home() / ".cache" / "privnerf"))


def _cpu_flags() -> list[str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = []
    if " avx2" in info and " fma" in info:
        flags += ["-mavx2", "-mfma"]
    return flags


@lru_cache(maxsize=1)
def load_grid_ext():
    """The compiled module (``trilinear_forward``, ``trilinear_backward``, ``sparse_adam_step``) or ``None``."""
    if os.environ.get("PRIVNERF_NO_EXT", "") not in ("", "0"):
        return None
    src = CSRC / "grid.cpp"
    flags = ["-O3", "-fopenmp", *_cpu_flags()]
    digest = hashlib.sha1(src.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    build_dir = cache_root() / "ext" / f"torch-{torch.__version__}-{digest}"
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        from torch.utils.cpp_extension import load

        if not any(build_dir.glob("*.so")):
            log.warning("compiling the privnerf CPU kernels once (about 30 s) into %s", build_dir)
        return load(
            name="privnerf_grid",
            sources=[str(src)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, ...: fall back to pure torch
        warnings.warn(f"privnerf: compiled CPU kernels unavailable ({exc}); using the slower pure-PyTorch path")
        return None
