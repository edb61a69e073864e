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


def test_content_box_ignores_specks_but_keeps_thin_parts_of_the_object():
    g = OccupancyGrid(torch.tensor([[0.0] * 3, [32.0] * 3]), 32)
    g.density.zero_()
    g.density[4:28, 4:28, 2:4] = 50.0  # a wide ground slab holding most of the mass
    g.density[15:17, 15:17, 4:20] = 50.0  # a thin pillar standing on it: little mass, but connected
    g.density[30, 30, 30] = 50.0  # a floater speck near the wall
    box = g.occupied_box(0.05, margin_cells=0)
    assert box.tolist() == [[4.0, 4.0, 2.0], [28.0, 28.0, 20.0]]


def test_connected_components_labels_26_connected_groups():
    from privnerf.render.occupancy import connected_components

    m = torch.zeros(6, 6, 6, dtype=torch.bool)
    m[0, 0, 0] = m[1, 1, 1] = True  # diagonal neighbours: one component
    m[4:6, 0, 0] = True
    m[0, 5, 5] = True
    labels = connected_components(m)
    assert labels[~m].eq(0).all()
    assert labels[0, 0, 0] == labels[1, 1, 1]
    assert len(torch.unique(labels[m])) == 3
    # a long snake needs many propagation steps; all of it must end with one label
    s = torch.zeros(8, 8, 8, dtype=torch.bool)
    for x in range(8):
        s[x, :, 0 if x % 2 == 0 else 7] = True
        s[x, 7 if x % 2 == 0 else 0, :] = True
    labels = connected_components(s)
    assert len(torch.unique(labels[s])) == 1
