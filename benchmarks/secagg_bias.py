"""Why Flower's SecAgg+ showed a 0.8 % bias, and what our scaling does about it.

Runs the arithmetic of ``secaggplus_mod`` + ``SecAggPlusWorkflow`` exactly (Flower's own ``quantize`` /
``dequantize``, the weight factor, the offset; the pairwise and self masks cancel exactly modulo 2^32 and are
left out) on 1 M NeRF-like values per user, and compares the result with the plain weighted mean:

* ``flower-default``: float32 arrays, weights as ``num_examples`` (pixel counts in thousands, as a FedAvg
  client might report) with ``max_weight = 1000``;
* ``float64``: the same with float64 arrays;
* ``privnerf``: float64, arrays scaled to the clipping range by an agreed bound, weights inside the vector.

Usage: ``python benchmarks/secagg_bias.py`` -> ``benchmarks/results/secagg-bias.json``.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flwr.common.secure_aggregation.quantization import dequantize, quantize  # noqa: E402

from privnerf.fed.secure import quantization_bound, scale_for_secagg, unscale_sum  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402

C, Q, M = 8.0, 1 << 22, 1 << 32


def flower_weighted_mean(xs, weights, max_weight, dtype):
    """What Flower's SecAgg+ returns for clients holding ``xs`` with ``num_examples = weights``."""
    total, q_total = None, 0
    for x, w in zip(xs, weights):
        q_ratio = round(w / max_weight * Q)
        arr = x.astype(dtype) * (q_ratio / Q)
        q = quantize([arr], C, Q)[0].astype(np.int64)
        total = q if total is None else total + q
        q_total += q_ratio
    total %= M
    agg = dequantize([total], C, Q)[0]
    agg += -(len(xs) - 1) * C
    return agg * (Q / q_total)


def privnerf_weighted_mean(xs, weights, bound):
    alphas = np.asarray(weights, dtype=np.float64) / max(weights)
    scaled = [scale_for_secagg([a * x, np.array([a])], [bound, 1.0])[0] for x, a in zip(xs, alphas)]
    ones = [1] * len(xs)  # num_examples = 1 = max_weight: ratio 1
    parts = [flower_weighted_mean([s[j] for s in scaled], ones, 1.0, np.float64) for j in range(2)]
    num, den = unscale_sum(parts, [bound, 1.0], len(xs))
    return num / den[0]


def stats(got, ref):
    err = got - ref
    return {"relative_bias": float(err.mean() / ref.mean()), "rms_relative": float(np.sqrt((err**2).mean() / (ref**2).mean())),
            "max_abs": float(np.abs(err).max())}


def main() -> int:
    rng = np.random.default_rng(0)
    n, users = 1_000_000, 5
    rows = []
    t0 = time.perf_counter()
    for scale in (1e-4, 1e-2, 1.0):
        xs = [rng.normal(0.3 * scale, scale, n).astype(np.float32) for _ in range(users)]
        weights = [int(w) for w in rng.integers(1, 20, users)]  # e.g. thousands of pixels
        ref = sum(w * x.astype(np.float64) for w, x in zip(weights, xs)) / sum(weights)
        bound = 4.0 * max(float(np.abs(x).max()) for x in xs)
        row = {"value_scale": scale, "weights": weights,
               "flower-default": stats(flower_weighted_mean(xs, weights, 1000.0, np.float32), ref),
               "float64": stats(flower_weighted_mean(xs, weights, 1000.0, np.float64), ref),
               "privnerf": stats(privnerf_weighted_mean(xs, weights, bound), ref),
               "privnerf_bound_max_abs": quantization_bound([bound], users)[0] / (sum(weights) / max(weights))}
        rows.append(row)
        print(f"scale {scale:g}: " + "  ".join(f"{k} bias {row[k]['relative_bias']:+.3%} rms {row[k]['rms_relative']:.3%}"
                                              for k in ("flower-default", "float64", "privnerf")))
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "values_per_user": n, "users": users,
           "rows": rows, "time_s": time.perf_counter() - t0,
           "command": "python benchmarks/secagg_bias.py"}
    path = ROOT / "benchmarks" / "results" / "secagg-bias.json"
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
