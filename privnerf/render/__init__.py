"""Rendering: samplers (occupancy grid, ray marching), volume rendering, full-image renders."""
