"""Scaling values for Flower's SecAgg+ so that its secure sum is exact up to quantization.

SecAgg+ (``secaggplus_mod``) multiplies a client's arrays by ``num_examples / max_weight``, clips them to
``+-clipping_range`` **silently**, quantizes them stochastically to ``quantization_range`` levels and sums them
modulo ``modulus_range``; the server dequantizes and divides by the summed weight.

Why the 0.8 % bias appeared (measured, ``benchmarks/secagg_bias.py``): the quantizer computes
``(clip(x) + c) * Q / 2c`` in the *array's* dtype. For float32 arrays, ``x + 8`` rounds to float32 before the
stochastic rounding: near 8.0 float32 steps are 9.5e-7 above and 4.8e-7 below (a binade boundary), so small
values round asymmetrically and the error does not average out. In ``benchmarks/secagg_bias.py`` (5 users,
1 M values of scale 1e-4, weights 1..19 of ``max_weight = 1000``) the mean comes out 6.6 % low; float64
arrays alone remove the bias.
A second, unbiased but large, error came from the same small ratio: values shrunk by 1/1000 sit far below
one quantization step.

The fix, here: every array goes to Flower as **float64**, scaled so its agreed bound ``B_j`` maps to the
clipping range (``v = x * c / B_j``, so quantization steps are ``2 B_j / Q`` in the array's own units), with
``num_examples = 1 = max_weight`` (ratio 1). Values beyond ``B_j`` are clipped *by us*, counted and reported
(never silently). The server multiplies the dequantized mean by ``n B_j / c`` to get the plain sum. Error
bound per element: ``n * 2 B_j / Q`` (each client's stochastic rounding is off by < 1 step).

Weights (DecentNeRF's ``alpha_k``) ride inside the masked vector as an extra scalar, never in the plain
``num_examples`` field, so the server learns only ``sum_k alpha_k`` and ``sum_k alpha_k g_k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 1 << 22
MODULUS_RANGE = 1 << 32


@dataclass
class SecAggSettings:
    """Flower SecAgg+ parameters (``SecAggPlusWorkflow``) as this project uses them."""

    num_shares: float = 1.0
    """Shares per client: an int > 2, or a fraction of the sampled clients (1.0 = everyone)."""
    reconstruction_threshold: float = 0.6
    """Shares needed to reconstruct a dropped client's mask: an int, or a fraction of ``num_shares``."""
    clipping_range: float = CLIPPING_RANGE
    quantization_range: int = QUANTIZATION_RANGE
    modulus_range: int = MODULUS_RANGE
    timeout: float | None = None

    def workflow_kwargs(self) -> dict:
        ns = int(self.num_shares) if float(self.num_shares).is_integer() and self.num_shares > 2 else float(self.num_shares)
        rt = self.reconstruction_threshold
        rt = int(rt) if float(rt).is_integer() and rt >= 2 else float(rt)
        return dict(num_shares=ns, reconstruction_threshold=rt, max_weight=1.0, clipping_range=self.clipping_range,
                    quantization_range=self.quantization_range, modulus_range=self.modulus_range,
                    timeout=self.timeout)


def scale_for_secagg(arrays: list[np.ndarray], bounds: list[float], clipping_range: float = CLIPPING_RANGE
                     ) -> tuple[list[np.ndarray], int]:
    """Client side: float64 arrays scaled so ``+-bounds[j]`` maps to ``+-clipping_range``.

    Returns the scaled arrays and how many values lay beyond their bound (clipped here, and reported).
    Raises ``ValueError`` on NaN/Inf (an update that cannot be aggregated must not be sent).
    """
    if len(arrays) != len(bounds):
        raise ValueError(f"{len(arrays)} arrays but {len(bounds)} bounds")
    out, clipped = [], 0
    for j, (a, b) in enumerate(zip(arrays, bounds)):
        a = np.asarray(a, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"array {j} of the update has {int(np.sum(~np.isfinite(a)))} NaN/Inf values")
        if not b > 0:
            raise ValueError(f"bound {j} must be > 0, got {b}")
        over = np.abs(a) > b
        clipped += int(over.sum())
        out.append(np.clip(a, -b, b) * (clipping_range / b))
    return out, clipped


def unscale_sum(mean_arrays: list[np.ndarray], bounds: list[float], num_clients: int,
                clipping_range: float = CLIPPING_RANGE) -> list[np.ndarray]:
    """Server side: the dequantized SecAgg+ mean (weights all 1) → the plain sum over ``num_clients``."""
    return [np.asarray(a, dtype=np.float64) * (num_clients * b / clipping_range) for a, b in zip(mean_arrays, bounds)]


def quantization_bound(bounds: list[float], num_clients: int, quantization_range: int = QUANTIZATION_RANGE) -> list[float]:
    """Largest error per element of the recovered sum: each client's stochastic rounding is off by < 1 step."""
    return [num_clients * 2.0 * b / quantization_range for b in bounds]


def next_bounds(previous: list[np.ndarray] | None, floors: list[float], headroom: float) -> list[float]:
    """Bounds for the next secure sum: ``headroom`` times the largest magnitude seen in ``previous`` (a value
    the server already holds, e.g. the last aggregate), never below ``floors``."""
    if previous is None:
        return [float(f) for f in floors]
    return [float(max(f, headroom * float(np.max(np.abs(p))) if np.size(p) else f)) for p, f in zip(previous, floors)]
