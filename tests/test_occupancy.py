"""Occupancy grid: queries, updates, and the content box that the grid field shrinks to."""

import torch

from privnerf.render.occupancy import OccupancyGrid


def test_content_box_is_the_opaque_region_plus_margin():
    g = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), 32)
    g.density.zero_()
    g.density[10:20, 12:18, 5:25] = 50.0
    box = g.occupied_box(0.05, margin_cells=0)
    cell = 2 / 32
    expect = torch.tensor([[-1 + 10 * cell, -1 + 12 * cell, -1 + 5 * cell], [-1 + 20 * cell, -1 + 18 * cell, -1 + 25 * cell]])
    assert torch.allclose(box, expect)
    g.density.zero_()
    assert g.occupied_box(0.05) is None


def test_update_marks_dense_cells_and_query_reads_them():
    g = OccupancyGrid(torch.tensor([[0.0] * 3, [1.0] * 3]), 8)
    assert g.query(torch.tensor([[0.5, 0.5, 0.5], [2.0, 0.5, 0.5]])).tolist() == [True, False]  # all occupied at start
    occupied = g.update(lambda x: (x[:, 0] < 0.5).float() * 100.0, step_size=0.1, threshold=0.01)
    assert abs(occupied - 0.5) < 1e-6
    assert g.query(torch.tensor([[0.2, 0.5, 0.5], [0.8, 0.5, 0.5]])).tolist() == [True, False]
