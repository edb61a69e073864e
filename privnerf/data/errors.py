"""The one error type every data parser raises for bad input."""

from __future__ import annotations

from pathlib import Path


class SceneError(ValueError):
    """Bad or unreadable scene input. The message always names the file and the problem.

    The CLI catches it and prints ``error: <path>: <problem>`` instead of a traceback.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
