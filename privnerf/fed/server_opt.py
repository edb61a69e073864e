"""Server-side optimisers on the secure aggregate (adaptive federated optimisation, Reddi et al. 2021).

The server never sees an individual update; it sees the new aggregate ``a`` and its own last global weights
``g``. ``delta = a - g`` is then a pseudo-gradient (the users' average movement this round), and the server
can step along it with its own state instead of taking ``a`` as it is:

* ``none``: ``g <- a`` (DecentNeRF and FedAvg as published);
* ``momentum``: ``m <- beta1 m + delta``; ``g <- g + lr m`` (FedAvgM);
* ``adam``: Adam on ``-delta`` with ``eps`` as FedAdam's ``tau``: ``g <- g + lr m_hat / (sqrt(v_hat) + eps)``.

Why it matters here: each round every user restarts its Adam moments on a short run (``keep_optimizer``
on the clients was worse, docs/decentnerf.md), and a voxel's aggregate moves about as far as one user's
short run does. Moments kept on the server give the aggregate the memory across rounds that one trainer's
optimiser has, without the server seeing more than the sum. Nothing here is private: the state is a
function of the aggregates alone.

When the server grows the grids between rounds, the moments of a grid are regridded the same way (trilinear,
same box), as the users do with their own last weights for the alpha update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from privnerf.fed.messages import match_shape


@dataclass
class ServerOptSettings:
    """How the server turns the secure aggregate into the next global weights (``--server-opt.*``)."""

    kind: Literal["none", "momentum", "adam"] = "none"
    """none = take the aggregate (the paper); momentum = FedAvgM; adam = FedAdam (see privnerf.fed.server_opt)."""
    lr: float = 1.0
    """Server step size (with ``none`` unused; ``momentum`` with ``lr`` 1 and ``beta1`` 0 is ``none``)."""
    beta1: float = 0.9
    beta2: float = 0.99
    """Adam's second-moment decay (``adam`` only)."""
    eps: float = 1e-3
    """Adam's denominator floor (FedAdam's tau; ``adam`` only): below it a coordinate's step shrinks."""

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` naming the setting (also called when the optimiser is built, since the benchmark's
        ``--set`` changes fields after construction)."""
        if self.kind not in ("none", "momentum", "adam"):
            raise ValueError(f"server_opt.kind: {self.kind!r} is not one of none, momentum, adam")
        if not self.lr > 0:
            raise ValueError(f"server_opt.lr must be > 0, got {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"server_opt.{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"server_opt.eps must be > 0, got {self.eps}")


class ServerOptimizer:
    """The server's optimiser state over the global arrays (kept in the server's saved state).

    ``step(g, a)``: ``g``, ``a`` lists of arrays of the same shapes (last global weights, new aggregate) ->
    the next global weights (float32). ``state()`` / ``load(state)`` for the server's checkpoint."""

    def __init__(self, cfg: ServerOptSettings):
        cfg.check()
        self.cfg = cfg
        self.t = 0
        self.m: list[np.ndarray] | None = None
        self.v: list[np.ndarray] | None = None

    def state(self) -> dict:
        return {"t": self.t, "m": self.m, "v": self.v}

    def load(self, st: dict | None) -> None:
        if st:
            self.t, self.m, self.v = int(st["t"]), st["m"], st["v"]

    def _moments(self, like: list[np.ndarray], moments: list[np.ndarray] | None) -> list[np.ndarray]:
        if moments is None or len(moments) != len(like):
            return [np.zeros(a.shape, np.float32) for a in like]
        out = []
        for m, a in zip(moments, like):
            r = match_shape(m, a.shape)  # grown grids: the moments follow the weights
            out.append(np.zeros(a.shape, np.float32) if r is None else np.asarray(r, np.float32))
        return out

    def step(self, g: list[np.ndarray], a: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        """Returns the next global arrays and the FLOPs spent (a few per value)."""
        c = self.cfg
        if c.kind == "none":
            return [np.asarray(x, np.float32) for x in a], 0.0
        delta = [np.asarray(x, np.float32) - np.asarray(y, np.float32) for x, y in zip(a, g)]
        n = float(sum(d.size for d in delta))
        self.t += 1
        self.m = self._moments(delta, self.m)
        for m, d in zip(self.m, delta):
            m *= c.beta1
            m += d if c.kind == "momentum" else (1.0 - c.beta1) * d
        if c.kind == "momentum":
            return [(np.asarray(y, np.float32) + c.lr * m).astype(np.float32) for y, m in zip(g, self.m)], 3 * n
        self.v = self._moments(delta, self.v)
        for v, d in zip(self.v, delta):
            v *= c.beta2
            v += (1.0 - c.beta2) * d * d
        b1, b2 = 1.0 - c.beta1**self.t, 1.0 - c.beta2**self.t
        out = [(np.asarray(y, np.float32) + c.lr * (m / b1) / (np.sqrt(v / b2) + c.eps)).astype(np.float32)
               for y, m, v in zip(g, self.m, self.v)]
        return out, 10 * n
