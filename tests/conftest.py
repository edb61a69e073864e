"""Shared pytest fixtures. Keep additive: other test modules may add fixtures here."""

from __future__ import annotations

from pathlib import Path

import pytest

from privnerf.data.paths import data_root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder: ``$PRIVNERF_DATA``, default ``<repo>/../shared/data``; skips when absent."""
    path = data_root()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}; set PRIVNERF_DATA")
    return path
