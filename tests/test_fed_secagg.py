"""Flower SecAgg+ as privnerf uses it: the secure sum equals the plain weighted mean within the quantization
bound (1 M values, default quantization), and a user dropping mid-round does not corrupt the round - with every
user sharing keys with every other (the default) and with a sparse SecAgg+ graph (3 shares per user)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

sys.path.insert(0, str(Path(__file__).parent / "fedapps"))
import secagg_apps as apps  # noqa: E402

from privnerf.fed.secure import SecAggSettings, quantization_bound  # noqa: E402
from privnerf.fed.server import legacy_session, secure_sum  # noqa: E402


def plain_weighted_mean(users: list[int]) -> tuple[list[np.ndarray], float]:
    num, den = None, 0.0
    for k in users:
        xs, a = apps.user_data(k)
        contrib = [a * x.astype(np.float64) for x in xs]
        num = contrib if num is None else [n + c for n, c in zip(num, contrib)]
        den += a
    return [n / den for n in num], den


@pytest.mark.slow
def test_secure_sum_matches_plain_mean_and_survives_a_dropout(tmp_path, monkeypatch):
    from flwr.server import ServerApp
    from flwr.simulation import run_simulation

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(apps.__file__).parent), str(Path.cwd()),
                                                      os.environ.get("PYTHONPATH", "")]))
    K = 5
    # rounds 1-2: everyone is everyone's neighbour; rounds 3-4: each user has two neighbours (a dropped user's
    # masks must be rebuilt from its neighbours' shares alone)
    settings = {1: SecAggSettings(num_shares=1.0, reconstruction_threshold=0.6),
                2: SecAggSettings(num_shares=1.0, reconstruction_threshold=0.6),
                3: SecAggSettings(num_shares=3, reconstruction_threshold=2),
                4: SecAggSettings(num_shares=3, reconstruction_threshold=2)}
    got: dict[int, tuple] = {}
    errors: list[BaseException] = []
    app = ServerApp()

    @app.main()
    def main(grid, context):
        try:
            with legacy_session(grid, context, K, len(settings)) as legacy:
                for rnd, secagg in settings.items():
                    got[rnd] = secure_sum(grid, legacy, rnd, [np.zeros(1, np.float32)], {"round": rnd, "phase": "test"},
                                          apps.BOUNDS, secagg)
        except BaseException as e:  # Flower swallows ServerApp errors
            errors.append(e)
            raise

    run_simulation(server_app=app, client_app=apps.client_app, num_supernodes=K,
                   backend_config={"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})
    assert not errors, errors
    for rnd in settings:
        users = [k for k in range(K) if k != apps.DROP_USER or rnd not in apps.DROP_ROUNDS]
        sums, n = got[rnd]
        assert n == len(users)
        expected, alpha_sum = plain_weighted_mean(users)
        assert abs(float(sums[-1][0]) - alpha_sum) <= quantization_bound([1.0], n)[0]
        mean = [s / float(sums[-1][0]) for s in sums[:-1]]
        qb = quantization_bound(apps.BOUNDS, n)
        for m, e, b in zip(mean, expected, qb):
            # numerator error <= b, denominator error <= qb[-1]; both divided by sum(alpha)
            bound = (b + np.abs(e) * qb[-1]) / alpha_sum
            err = np.abs(m - e)
            assert np.all(err <= bound * 1.001 + 1e-12), float((err / bound).max())
            # and the error is unbiased: its mean is far below the mean value being aggregated (0.8 % before)
            assert abs(float((m - e).mean())) < 1e-3 * abs(float(e.mean()))
