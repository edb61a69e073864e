"""Flower apps for the SecAgg+ test: users hold known arrays and weights; one user drops in rounds 2 and 4.

A module of its own (not the test file) so that the simulation's worker processes can import it.
"""

from __future__ import annotations

import numpy as np
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from privnerf.fed.secure import scale_for_secagg

SIZES = (600_000, 400_000)  # 1 M values in two arrays
BOUNDS = [0.01, 0.01, 1.0]   # |alpha x| < 0.01 by construction; alpha < 1
DROP_USER, DROP_ROUNDS = 3, (2, 4)


def user_data(k: int) -> tuple[list[np.ndarray], float]:
    """User k's arrays (float32, NeRF-like small values with a nonzero mean) and weight."""
    rng = np.random.default_rng(100 + k)
    xs = [rng.normal(2e-4, 1e-3, n).astype(np.float32) for n in SIZES]
    return xs, float(rng.uniform(0.05, 0.4))


class _User(NumPyClient):
    def __init__(self, k: int):
        self.k = k

    def fit(self, parameters, config):
        if self.k == DROP_USER and int(config["round"]) in DROP_ROUNDS:
            raise RuntimeError("this user drops out mid-round")
        xs, alpha = user_data(self.k)
        arrays, clipped = scale_for_secagg([alpha * x for x in xs] + [np.array([alpha])], BOUNDS)
        return arrays, 1, {"clipped": clipped}


def _client_fn(context):
    return _User(int(context.node_config["partition-id"])).to_client()


client_app = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod])
