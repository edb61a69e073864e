"""The compiled CPU kernels agree with the pure-PyTorch reference paths."""

import pytest
import torch

from privnerf.fields.encoding import DenseGrid, read_grids, trilinear_torch
from privnerf.fields.ext import load_grid_ext
from privnerf.render.occupancy import OccupancyGrid
from privnerf.render.sampler import _march_torch, march_culled, ray_aabb
from privnerf.fields.base import SceneSpace
from privnerf.train.optim import GridAdam

ext = load_grid_ext()
pytestmark = pytest.mark.skipif(ext is None, reason="compiled CPU kernels unavailable (no compiler?)")


def _grid_and_points(seed=0, n=2000):
    g = torch.Generator().manual_seed(seed)
    aabb = torch.tensor([[-1.0, -0.5, -2.0], [1.0, 1.5, 0.0]])
    grid = DenseGrid((9, 7, 11), 5, aabb)
    with torch.no_grad():
        grid.data.copy_(torch.randn(grid.data.shape, generator=g))
    x = aabb[0] + torch.rand(n, 3, generator=g) * (aabb[1] - aabb[0]) * 1.1 - 0.05  # a few outside: clamped
    return grid, x


def test_trilinear_forward_and_backward_match_torch():
    grid, x = _grid_and_points()
    idx = grid.world_to_index(x)
    ref = trilinear_torch(grid.data, idx)
    out = grid(x)
    assert torch.allclose(out, ref, atol=1e-5)
    gout = torch.randn_like(out)
    (out * gout).sum().backward()
    ref_grad = torch.autograd.grad((trilinear_torch(grid.data, idx) * gout).sum(), grid.data)[0]
    assert torch.allclose(grid.grad_buffer(), ref_grad, atol=1e-4)
    touched = grid.touched_mask().reshape(grid.resolution).bool()
    assert torch.equal(touched, (ref_grad.abs().sum(-1) > 0) | touched)  # every voxel with gradient is marked


def test_grids_read_together_match_their_own_reads_values_and_gradients():
    """read_grids' one pass over grids on one lattice == each grid's own read; a grid whose values need no
    gradient gets none (and no touched voxels), and grids on other lattices fall back to their own reads."""
    a, x = _grid_and_points(3, 30000)  # past 4096 points a slab: the parallel backward
    b, c = DenseGrid(a.resolution, 1, a.aabb), DenseGrid(a.resolution, 12, a.aabb)
    frozen = DenseGrid(a.resolution, 2, a.aabb)
    other = DenseGrid((5, 5, 5), 1, a.aabb)
    g = torch.Generator().manual_seed(4)
    for grid in (b, c, frozen, other):
        with torch.no_grad():
            grid.data.copy_(torch.randn(grid.data.shape, generator=g))
    frozen.data.requires_grad_(False)
    grids = [a, b, c, frozen]
    outs = read_grids(grids, x)
    weights = [torch.randn(o.shape, generator=g) for o in outs]
    sum((o * w).sum() for o, w in zip(outs, weights)).backward()
    for grid, out, w in zip(grids, outs, weights):
        idx = grid.world_to_index(x)
        assert torch.allclose(out, trilinear_torch(grid.data, idx), atol=1e-5)
        if grid is frozen:
            assert grid.touched_mask().sum() == 0 and grid.grad_buffer().abs().sum() == 0
            continue
        data = grid.data.detach().requires_grad_(True)
        ref = torch.autograd.grad((trilinear_torch(data, idx) * w).sum(), data)[0]
        assert torch.allclose(grid.grad_buffer(), ref, atol=1e-3)
        touched = grid.touched_mask().reshape(grid.resolution).bool()
        assert torch.equal(touched, (ref.abs().sum(-1) > 0) | touched) and touched.any()
    with torch.no_grad():
        assert all(torch.equal(o, r) for o, r in zip(read_grids(grids, x), outs))
        assert all(torch.equal(o, g(x)) for o, g in zip(read_grids([a, other], x), [a, other]))


def test_parallel_backward_equals_the_serial_one_bitwise():
    grid, x = _grid_and_points(2, 40000)  # enough points for the per-slab parallel path
    idx = grid.world_to_index(x).contiguous()
    gout = torch.randn(len(x), 5)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            buf = torch.zeros_like(grid.data)
            touched = torch.zeros(grid.data.shape[:3].numel(), dtype=torch.uint8)
            ext.trilinear_backward(buf, idx, gout, touched)
            results.append((buf, touched))
    finally:
        torch.set_num_threads(threads)
    for buf, touched in results[1:]:
        assert torch.equal(buf, results[0][0]) and torch.equal(touched, results[0][1])
    ref = torch.autograd.grad((trilinear_torch(grid.data, idx) * gout).sum(), grid.data)[0]
    assert torch.allclose(results[0][0], ref, atol=1e-3)


def test_sparse_adam_equals_dense_adam_on_touched_voxels():
    grid, x = _grid_and_points(1, 50)  # few points: most voxels untouched
    start = grid.data.detach().clone()
    (grid(x) ** 2).sum().backward()
    grad = grid.grad_buffer().clone()
    touched = grid.touched_mask().clone().bool()
    GridAdam([grid], [0.1]).step()
    # one Adam step from zero moments moves each touched entry by lr * g / (|g| + eps)
    expect = start - 0.1 * grad / (grad.abs() + 1e-15)
    moved = grid.data.detach()
    mask = touched.reshape(*grid.resolution, 1).expand_as(moved)
    assert torch.allclose(moved[mask], expect[mask], atol=1e-5)
    assert torch.equal(moved[~mask], start[~mask])
    assert grid.grad_buffer().abs().sum() == 0 and grid.touched_mask().sum() == 0


class _Field(torch.nn.Module):
    """Just enough of a grid field for the fused sampler."""

    def __init__(self, box):
        super().__init__()
        self.space = SceneSpace(box, contraction=False)
        self.density_grid = DenseGrid((17, 17, 17), 1, box, init=-10.0)
        self.shift = 0.0
        with torch.no_grad():  # a dense slab in the middle
            self.density_grid.data[:, :, 7:10] = 6.0

    def density(self, x):
        raw = self.density_grid(x)[:, 0]
        return torch.nn.functional.softplus(raw + self.shift)


def test_fused_march_and_cull_matches_reference():
    box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    field = _Field(box)
    occ = OccupancyGrid(box, 16)
    g = torch.Generator().manual_seed(0)
    origins = torch.tensor([0.0, 0.0, 3.0]) + torch.randn(300, 3, generator=g) * 0.3
    target = torch.randn(300, 3, generator=g) * 0.2
    dirs = torch.nn.functional.normalize(target - origins, dim=-1)
    step = 0.02
    s = march_culled(origins, dirs, 0.1, 10.0, field, occ, step, jitter=False, weight_threshold=1e-4)
    # reference: march every step, weight with the same density, cull the same way
    t0, t1 = ray_aabb(origins, dirs, box)
    ref = _march_torch(origins, dirs, t0.clamp(min=0.1), t1.clamp(max=10.0), torch.full((300,), 0.5), step,
                       field.space, occ)
    from privnerf.render.volume import weights_from_density

    pts = origins[ref.ray_idx] + ref.t[:, None] * dirs[ref.ray_idx]
    w, trans = weights_from_density(field.density(pts), ref.delta, ref.ray_idx, 300)
    keep = (w > 1e-4) & (trans >= 1e-4)
    assert len(s) > 300  # the slab is hit
    assert torch.equal(s.ray_idx, ref.ray_idx[keep])
    assert torch.allclose(s.t, ref.t[keep], atol=1e-4)
