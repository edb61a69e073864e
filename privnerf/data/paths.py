"""Where the shared real datasets live (they are never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """The shared real-data folder: ``$PRIVNERF_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("PRIVNERF_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"
