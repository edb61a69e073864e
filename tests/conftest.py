"""Shared pytest fixtures. Keep additive: other test modules may add fixtures here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder: ``$PRIVNERF_DATA``, default ``<repo>/../shared/data``; skips when absent."""
    path = Path(os.environ.get("PRIVNERF_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}; set PRIVNERF_DATA")
    return path
