"""Radiance fields: ``grid`` (default, dense voxel grids + small MLP), ``surface`` (the grid field plus an SDF
grid: Du-NeRF's dual field, or the SDF alone) and ``vanilla`` (the classic NeRF MLP)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Literal

import torch

from privnerf.fields.base import RadianceField, SceneSpace
from privnerf.fields.grid_field import GridField, GridFieldConfig
from privnerf.fields.surface_field import SurfaceField, SurfaceFieldConfig
from privnerf.fields.vanilla import VanillaField, VanillaFieldConfig


@dataclass
class FieldConfig:
    kind: Literal["grid", "surface", "vanilla"] = "grid"
    grid: GridFieldConfig = dc_field(default_factory=GridFieldConfig)
    """The grids (also the surface field's)."""
    surface: SurfaceFieldConfig = dc_field(default_factory=SurfaceFieldConfig)
    """The surface field's SDF, sharpness and regularisers (``--field.kind surface``)."""
    vanilla: VanillaFieldConfig = dc_field(default_factory=VanillaFieldConfig)


def make_field(cfg: FieldConfig, aabb: torch.Tensor, contraction: bool, step_size: float,
               pixel_footprint: float | None = None) -> RadianceField:
    """Build the configured field; ``pixel_footprint`` (world size of a pixel at the scene centre) sizes grids."""
    if cfg.kind == "grid":
        return GridField(cfg.grid, aabb, contraction, step_size, pixel_footprint)
    if cfg.kind == "surface":
        return SurfaceField(cfg.grid, cfg.surface, aabb, contraction, step_size, pixel_footprint)
    if cfg.kind == "vanilla":
        return VanillaField(cfg.vanilla, aabb, contraction)
    raise ValueError(f"unknown field kind {cfg.kind!r}")


__all__ = ["FieldConfig", "GridField", "GridFieldConfig", "RadianceField", "SceneSpace", "SurfaceField",
           "SurfaceFieldConfig", "VanillaField",
           "VanillaFieldConfig", "make_field"]
