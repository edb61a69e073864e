"""Field choice: cost of each candidate encoding's lookup, forward + backward, on the same points.

The hot operation of a grid-based NeRF step is "read features at sample points, then scatter gradients
back". This measures it for the candidates the engine issue names, on 100k ray-coherent points (as a
batch's samples are), with 13 output channels where the layout allows (density + 12 features):

* ``dense-ext``: our channel-last dense grid with the compiled kernel (what the grid field uses);
* ``dense-grid_sample``: the same dense grid through ``torch.nn.functional.grid_sample``;
* ``dense-gather``: the same grid in pure PyTorch gathers (the CUDA / no-compiler path);
* ``hash``: a 16-level multiresolution hash grid (Instant-NGP layout: 2 features per level, 2^19 entries
  per level, base 16, max 2048) in pure PyTorch;
* ``triplane``: three 2D planes (K-Planes / tri-plane style, 13 channels, 512^2) through ``grid_sample``;
* ``mlp-8x256``: the classic NeRF MLP on positional encodings, for scale.

Also the optimizer step each needs. Usage: ``python benchmarks/field_ops.py``; writes
``benchmarks/results/field-ops.json``. Timings are medians of repeated runs in this process.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from privnerf.fields.encoding import DenseGrid, positional_encoding, trilinear_torch  # noqa: E402
from privnerf.fields.ext import load_grid_ext  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402
from privnerf.train.optim import GridAdam  # noqa: E402

N = 100_000
C = 13


def timeit(fn, repeats=7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ray_points(n: int, seed: int = 0) -> torch.Tensor:
    """Points in [-1, 1]^3 along 1000 random rays, 100 consecutive samples each (like a batch)."""
    g = torch.Generator().manual_seed(seed)
    o = torch.rand(n // 100, 1, 3, generator=g) * 0.6 - 0.3
    d = F.normalize(torch.randn(n // 100, 1, 3, generator=g), dim=-1)
    t = torch.linspace(0, 0.6, 100)[None, :, None]
    return (o + d * t).reshape(-1, 3).clamp(-1, 1).contiguous()


def hash_encode(x: torch.Tensor, tables: torch.Tensor, res: list[int]) -> torch.Tensor:
    """Instant-NGP style hash encoding in plain PyTorch. x in [0, 1]^3, tables (L, T, F)."""
    primes = torch.tensor([1, 2654435761, 805459861])
    L, T, Fd = tables.shape
    outs = []
    for level in range(L):
        p = x * (res[level] - 1)
        p0 = p.floor().long()
        f = p - p0
        acc = 0
        for k in range(8):
            off = torch.tensor([k >> 2, (k >> 1) & 1, k & 1])
            c = p0 + off
            h = ((c[:, 0] * primes[0]) ^ (c[:, 1] * primes[1]) ^ (c[:, 2] * primes[2])) % T
            w = torch.where(off.bool(), f, 1 - f).prod(-1)
            acc = acc + tables[level][h] * w[:, None]
        outs.append(acc)
    return torch.cat(outs, -1)


def main() -> int:
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    x = ray_points(N)
    box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    rows = {}

    def record(name, fwd, step=None, params=0, note=""):
        rows[name] = {"fwd_bwd_ms": fwd * 1e3, "optimizer_ms": None if step is None else step * 1e3,
                      "ns_per_point": fwd / N * 1e9, "params": params, "note": note}
        print(f"{name:20s} fwd+bwd {fwd * 1e3:8.1f} ms  ({fwd / N * 1e9:6.0f} ns/point)"
              + ("" if step is None else f"  optimizer {step * 1e3:6.1f} ms") + f"  params {params / 1e6:.1f}M")

    ext = load_grid_ext()
    R = 160
    if ext is not None:
        grid = DenseGrid((R, R, R), C, box, init="normal")
        opt = GridAdam([grid], [0.1])

        def dense_ext():
            grid(x).square().sum().backward()

        record("dense-ext", timeit(dense_ext), timeit(lambda: (dense_ext(), opt.step())) - timeit(dense_ext),
               grid.data.numel(), "compiled channel-last kernel + sparse Adam (the grid field)")
    g5 = torch.randn(1, C, R, R, R) * 1e-2
    g5.requires_grad_()
    opt5 = torch.optim.Adam([g5], lr=0.1, fused=True)
    pts5 = x.flip(-1).reshape(1, N, 1, 1, 3)

    def dense_gs():
        g5.grad = None
        F.grid_sample(g5, pts5, align_corners=True).square().sum().backward()

    record("dense-grid_sample", timeit(dense_gs), timeit(opt5.step), g5.numel(), "torch grid_sample, dense Adam")
    g4 = (torch.randn(R, R, R, C) * 1e-2).requires_grad_()
    idx = (x + 1) / 2 * (R - 1)

    def dense_gather():
        g4.grad = None
        trilinear_torch(g4, idx).square().sum().backward()

    record("dense-gather", timeit(dense_gather), None, g4.numel(), "pure-PyTorch gathers (CUDA path)")
    L, T = 16, 2**19
    res = [int(16 * (2048 / 16) ** (i / (L - 1))) for i in range(L)]
    tables = (torch.rand(L, T, 2) * 2e-4 - 1e-4).requires_grad_()
    opt_h = torch.optim.Adam([tables], lr=1e-2, fused=True)
    xh = (x + 1) / 2

    def hashgrid():
        tables.grad = None
        hash_encode(xh, tables, res).square().sum().backward()

    record("hash", timeit(hashgrid, repeats=3), timeit(opt_h.step), tables.numel(),
           "16 levels x 2 features, 2^19 per level, pure PyTorch")
    P = 512
    planes = (torch.randn(3, C, P, P) * 1e-2).requires_grad_()
    opt_p = torch.optim.Adam([planes], lr=0.1, fused=True)
    coords = torch.stack([x[:, [0, 1]], x[:, [0, 2]], x[:, [1, 2]]])[:, None]  # (3, 1, N, 2)

    def triplane():
        planes.grad = None
        F.grid_sample(planes, coords, align_corners=True).square().sum().backward()

    record("triplane", timeit(triplane), timeit(opt_p.step), planes.numel(), "3 planes 512^2 x 13, grid_sample")
    mlp = torch.nn.Sequential(torch.nn.Linear(63, 256), torch.nn.ReLU(),
                              *[m for _ in range(7) for m in (torch.nn.Linear(256, 256), torch.nn.ReLU())],
                              torch.nn.Linear(256, 4))
    enc = positional_encoding(x, 10)

    def vanilla():
        mlp.zero_grad()
        mlp(enc).square().sum().backward()

    record("mlp-8x256", timeit(vanilla, repeats=3), None, sum(p.numel() for p in mlp.parameters()),
           "classic NeRF trunk on PE(x, 10 freqs)")
    out = {"points": N, "channels": C, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "results": rows, "command": "python benchmarks/field_ops.py",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = ROOT / "benchmarks" / "results" / "field-ops.json"
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
