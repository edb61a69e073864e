"""Crowd datasets: many users' photos of one scene, each with their own people in them, and the ground truth
(per-pixel owner masks) to measure what a shared model leaks. See :mod:`privnerf.data.crowd.generate`."""

from privnerf.data.crowd.generate import CrowdConfig, generate_crowd, write_crowd
from privnerf.data.crowd.presets import PRESETS, preset_variants
from privnerf.data.crowd.source import CrowdSource, load_crowd_source

__all__ = ["CrowdConfig", "CrowdSource", "PRESETS", "generate_crowd", "load_crowd_source",
           "preset_variants", "write_crowd"]
