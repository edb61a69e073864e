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


@pytest.fixture(scope="session")
def tiny_crowd(tmp_path_factory) -> Path:
    """A 3-user crowd dataset from a small built-in scene (48 px, 18 photos): for federated runs in tests."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("crowd") / "c3"
    r = subprocess.run([sys.executable, "-m", "privnerf", "data", "crowd", "--scene",
                        "builtin:size=48,n_train=18,n_test=2", "--users", "3", "--personal", "static",
                        "--out", str(out), "--quiet"], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return out
