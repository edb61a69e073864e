"""Scenes and the parsers that make them. See :mod:`privnerf.data.scene` for the conventions."""

from privnerf.data.errors import SceneError
from privnerf.data.loader import load_scene
from privnerf.data.scene import Scene

__all__ = ["Scene", "SceneError", "load_scene"]
