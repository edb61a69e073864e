"""Field components: dense voxel grids, positional encoding, scene contraction.

A :class:`DenseGrid` stores values channel-last, ``(X, Y, Z, C)``, over an axis-aligned box and interpolates
them trilinearly. On the CPU it uses the compiled kernel from :mod:`privnerf.fields.ext` and keeps its own
gradient buffer with a per-voxel "touched" mask, so that the optimizer (:class:`privnerf.train.optim.GridAdam`)
updates only the voxels a batch hit. Elsewhere (CUDA, or no compiler) it is plain autograd.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from privnerf.fields.ext import load_grid_ext


def read_grids(grids: list["DenseGrid"], x: torch.Tensor) -> list[torch.Tensor]:
    """Interpolate several grids at the same world points ``x`` ``(n, 3)`` → one ``(n, C_j)`` per grid.

    On the CPU kernel path, grids on one lattice (:meth:`DenseGrid.same_lattice`) are read in a single pass
    that finds each point's cell once (lego's dual field reads density, features and SDF at ~110k samples a
    step); otherwise each grid is read on its own. Same values and gradients either way.

    Example::

        >>> box = torch.tensor([[-1.] * 3, [1.] * 3])
        >>> a, b = DenseGrid((4, 4, 4), 1, box, init=2.0), DenseGrid((4, 4, 4), 3, box, init=1.0)
        >>> [t.shape for t in read_grids([a, b], torch.zeros(5, 3))]
        [torch.Size([5, 1]), torch.Size([5, 3])]
    """
    first = grids[0]
    if len(grids) == 1 or not all(g.sparse for g in grids) or not all(first.same_lattice(g) for g in grids[1:]):
        return [g(x) for g in grids]
    idx = first.world_to_index(x).contiguous()
    if torch.is_grad_enabled() and any(g.data.requires_grad for g in grids):
        return list(_TrilinearManyCPU.apply(idx, grids, *[g.data for g in grids]))
    return list(first._ext.trilinear_forward_multi([g.data.detach() for g in grids], idx))


def trilinear_torch(grid: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch trilinear interpolation (reference and CUDA path).

    Args:
        grid: ``(X, Y, Z, C)``.
        idx: ``(n, 3)`` points in voxel-index coordinates (``0 .. X-1``), clamped to the grid.
    Returns:
        ``(n, C)``.
    """
    X, Y, Z, C = grid.shape
    size = torch.tensor([X - 1, Y - 1, Z - 1], device=idx.device, dtype=idx.dtype)
    p = torch.minimum(idx.clamp(min=0), size)
    p0 = torch.minimum(p.floor(), size - 1)
    f = p - p0
    p0 = p0.long()
    flat = grid.reshape(-1, C)
    out = 0
    for k in range(8):
        dx, dy, dz = k >> 2, (k >> 1) & 1, k & 1
        lin = ((p0[:, 0] + dx) * Y + (p0[:, 1] + dy)) * Z + (p0[:, 2] + dz)
        w = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]) * (f[:, 2] if dz else 1 - f[:, 2])
        out = out + flat[lin] * w[:, None]
    return out


class _TrilinearCPU(torch.autograd.Function):
    """Compiled forward; the backward scatters straight into the grid's own gradient buffer."""

    @staticmethod
    def forward(ctx, data, idx, owner):  # noqa: D401 - autograd signature
        ctx.owner = owner
        ctx.save_for_backward(idx)
        return owner._ext.trilinear_forward(data, idx)

    @staticmethod
    def backward(ctx, grad_out):
        (idx,) = ctx.saved_tensors
        owner = ctx.owner
        owner._ext.trilinear_backward(owner.grad_buffer(), idx, grad_out.contiguous(), owner.touched_mask())
        return None, None, None


class _TrilinearManyCPU(torch.autograd.Function):
    """Several grids on one lattice read at the same points by one compiled pass (and one backward pass)."""

    @staticmethod
    def forward(ctx, idx, owners, *datas):  # noqa: D401 - autograd signature
        ctx.owners = owners
        ctx.save_for_backward(idx)
        return tuple(owners[0]._ext.trilinear_forward_multi(list(datas), idx))

    @staticmethod
    def backward(ctx, *grads):
        (idx,) = ctx.saved_tensors
        live = [j for j, owner in enumerate(ctx.owners) if ctx.needs_input_grad[2 + j] and grads[j] is not None]
        if live:
            owners = [ctx.owners[j] for j in live]
            owners[0]._ext.trilinear_backward_multi([o.grad_buffer() for o in owners], idx,
                                                    [grads[j].contiguous() for j in live],
                                                    [o.touched_mask() for o in owners])
        return (None, None, *([None] * len(ctx.owners)))


class DenseGrid(nn.Module):
    """A dense grid of ``channels`` values over the box ``aabb``.

    Args:
        resolution: ``(X, Y, Z)`` grid points per axis (>= 2).
        channels: values per grid point.
        aabb: ``(2, 3)`` box the grid spans; grid point ``(0,0,0)`` sits at ``aabb[0]``, ``(X-1, ..)`` at ``aabb[1]``.
        init: initial value (a float) or ``"normal"`` for N(0, 1e-4).
    """

    def __init__(self, resolution, channels: int, aabb: torch.Tensor, init: float | str = 0.0):
        super().__init__()
        res = tuple(int(r) for r in resolution)
        if min(res) < 2:
            raise ValueError(f"grid resolution must be >= 2 per axis, got {res}")
        if init == "normal":
            data = torch.randn(*res, channels) * 1e-4
        else:
            data = torch.full((*res, channels), float(init))
        self.data = nn.Parameter(data)
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        self._grad: torch.Tensor | None = None
        self._touched: torch.Tensor | None = None

    # -- gradient bookkeeping for the sparse CPU path ------------------------------------------------
    @property
    def _ext(self):
        return load_grid_ext()

    @property
    def sparse(self) -> bool:
        """True when the compiled CPU kernel is used and gradients go to :meth:`grad_buffer`."""
        return self.data.device.type == "cpu" and self._ext is not None

    def grad_buffer(self) -> torch.Tensor:
        if self._grad is None or self._grad.shape != self.data.shape:
            self._grad = torch.zeros_like(self.data.data)
        return self._grad

    def touched_mask(self) -> torch.Tensor:
        n = self.data.shape[0] * self.data.shape[1] * self.data.shape[2]
        if self._touched is None or self._touched.numel() != n:
            self._touched = torch.zeros(n, dtype=torch.uint8)
        return self._touched

    # -- geometry -----------------------------------------------------------------------------------
    @property
    def resolution(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[:3])

    def world_to_index(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3)`` world points → ``(n, 3)`` voxel-index coordinates."""
        size = torch.tensor(self.resolution, dtype=x.dtype, device=x.device) - 1
        return (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0]) * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Interpolate at world points ``x`` ``(n, 3)`` → ``(n, C)``; points outside are clamped to the box."""
        idx = self.world_to_index(x).contiguous()
        if self.sparse:
            if torch.is_grad_enabled() and self.data.requires_grad:
                return _TrilinearCPU.apply(self.data, idx, self)
            return self._ext.trilinear_forward(self.data.detach(), idx)
        return trilinear_torch(self.data, idx)

    def same_lattice(self, other: "DenseGrid") -> bool:
        """Whether ``other`` has this grid's resolution and box (so both can be read in one pass)."""
        return self.resolution == other.resolution and torch.equal(self.aabb, other.aabb)

    @torch.no_grad()
    def resample(self, resolution, aabb: torch.Tensor | None = None) -> None:
        """Re-grid to a new resolution (and optionally a new box) by trilinear interpolation of the old values."""
        new_aabb = self.aabb if aabb is None else torch.as_tensor(aabb, dtype=torch.float32, device=self.aabb.device)
        res = tuple(int(r) for r in resolution)
        if torch.equal(new_aabb, self.aabb):
            # the same box: the code federated clients regrid their own grids with, so both sides agree exactly
            data = regrid_values(self.data.data, res)
        else:
            axes = [torch.linspace(float(new_aabb[0, i]), float(new_aabb[1, i]), res[i], device=self.data.device)
                    for i in range(3)]
            pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
            data = torch.cat([trilinear_torch(self.data.data, self.world_to_index(chunk)) for chunk in pts.split(1 << 20)])
        self.data = nn.Parameter(data.reshape(*res, -1).contiguous())
        self.aabb.copy_(new_aabb)
        self._grad = None
        self._touched = None

    def total_variation(self, channels: slice = slice(None)) -> torch.Tensor:
        """Mean squared difference between neighbouring grid points (dense autograd; use sparingly)."""
        d = self.data[..., channels]
        return (
            (d[1:] - d[:-1]).pow(2).mean() + (d[:, 1:] - d[:, :-1]).pow(2).mean() + (d[:, :, 1:] - d[:, :, :-1]).pow(2).mean()
        )


@torch.no_grad()
def regrid_values(values: torch.Tensor, resolution) -> torch.Tensor:
    """``(X, Y, Z, C)`` grid values resampled trilinearly to ``resolution`` over the same box (corners on
    corners; :meth:`DenseGrid.resample` calls it when the box is kept): ``(X', Y', Z', C)``. Linear in
    ``values``, so the difference of two regridded grids is the regridded difference."""
    res = tuple(int(r) for r in resolution)
    axes = [torch.linspace(0.0, float(values.shape[i] - 1), res[i], dtype=values.dtype, device=values.device)
            for i in range(3)]
    idx = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    out = torch.cat([trilinear_torch(values, chunk) for chunk in idx.split(1 << 20)])
    return out.reshape(*res, values.shape[-1])


def positional_encoding(x: torch.Tensor, n_freqs: int, include_input: bool = True) -> torch.Tensor:
    """NeRF's sin/cos encoding: ``(n, d)`` → ``(n, d * (2 * n_freqs + include_input))``."""
    if n_freqs == 0:
        return x
    freqs = 2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device) * math.pi
    xb = (x[..., None, :] * freqs[:, None]).reshape(*x.shape[:-1], -1)
    enc = [torch.sin(xb), torch.cos(xb)]
    if include_input:
        enc.insert(0, x)
    return torch.cat(enc, dim=-1)


def contract(x: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360 scene contraction: identity inside the unit ball, ``(2 - 1/|x|) x/|x|`` outside.

    Maps all of R^3 into the ball of radius 2; the grid then spans ``[-2, 2]^3``.
    """
    n = x.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    return torch.where(n <= 1, x, (2 - 1 / n) * x / n)


def softplus_shift_for_alpha(alpha: float, step: float) -> float:
    """Raw density offset so that ``softplus(0 + shift)`` gives opacity ``alpha`` over a step of length ``step``."""
    sigma = -math.log(1 - alpha) / step
    return math.log(math.expm1(sigma))


__all__ = ["DenseGrid", "trilinear_torch", "positional_encoding", "contract", "softplus_shift_for_alpha"]
