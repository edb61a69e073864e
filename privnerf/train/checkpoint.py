"""Atomic checkpoints: serialise in memory, then write a temporary file beside the target and rename it.

The atomic writers themselves live in :mod:`privnerf.data.io`; this module adds the torch-specific part.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from privnerf.data.io import atomic_write_bytes, atomic_write_text

__all__ = ["atomic_torch_save", "atomic_write_text", "latest_checkpoint"]


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` that never leaves a half-written file: a crash keeps the previous checkpoint intact."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getbuffer())


def latest_checkpoint(run_dir: Path) -> Path | None:
    p = Path(run_dir) / "checkpoints" / "last.pt"
    return p if p.exists() else None
