"""Flower apps for the DaC per-group secure-sum test: six users hold known arrays; user k reports sector k % 2.

A module of its own (not the test file) so that the simulation's worker processes can import it. The test
users also report their id (a real DecentNeRF client reports its sector alone) so that the test can build each
group's plain mean to compare the secure sums with.
"""

from __future__ import annotations

import numpy as np
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from privnerf.fed.secure import scale_for_secagg

SIZE = 50_000
BOUNDS = [0.01, 1.0]  # |alpha x| < 0.01 by construction; alpha < 1
USERS, GROUPS = 6, 2


def user_data(k: int) -> tuple[np.ndarray, float]:
    """User k's array (NeRF-like small values whose mean differs per group) and weight."""
    rng = np.random.default_rng(200 + k)
    return rng.normal(2e-4 * (1 + k % 2), 1e-3, SIZE).astype(np.float32), float(rng.uniform(0.05, 0.4))


class _User(NumPyClient):
    def __init__(self, k: int):
        self.k = k

    def evaluate(self, parameters, config):
        return 0.0, 1, {"sector": self.k % GROUPS, "user": self.k}

    def fit(self, parameters, config):
        x, alpha = user_data(self.k)
        arrays, clipped = scale_for_secagg([alpha * x, np.array([alpha])], BOUNDS)
        return arrays, 1, {"clipped": clipped}


def _client_fn(context):
    return _User(int(context.node_config["partition-id"])).to_client()


client_app = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod])
