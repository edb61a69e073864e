"""The server's optimiser on the aggregate (privnerf.fed.server_opt): the published rule is the identity,
momentum and Adam follow their equations, moments follow grown grids, and the state survives a restart."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from privnerf.fed.server_opt import ServerOptimizer, ServerOptSettings


def arrays(seed, shape=(4, 5, 6, 2)):
    r = np.random.default_rng(seed)
    return [r.normal(size=shape).astype(np.float32), r.normal(size=(3, 7)).astype(np.float32)]


def test_none_takes_the_aggregate():
    g, a = arrays(0), arrays(1)
    out, flops = ServerOptimizer(ServerOptSettings()).step(g, a)
    assert flops == 0 and all(np.array_equal(x, y) for x, y in zip(out, a))


def test_momentum_accumulates_the_pseudo_gradient():
    opt = ServerOptimizer(ServerOptSettings(kind="momentum", lr=0.5, beta1=0.9))
    g = arrays(0)
    d = [np.full_like(x, 0.1) for x in g]
    a = [x + y for x, y in zip(g, d)]
    g1, _ = opt.step(g, a)
    assert np.allclose(g1[0], g[0] + 0.5 * 0.1, atol=1e-6)
    a1 = [x + y for x, y in zip(g1, d)]
    g2, _ = opt.step(g1, a1)
    assert np.allclose(g2[0], g1[0] + 0.5 * (0.9 * 0.1 + 0.1), atol=1e-6)  # m = beta m + delta


def test_momentum_with_no_memory_is_the_identity():
    opt = ServerOptimizer(ServerOptSettings(kind="momentum", lr=1.0, beta1=0.0))
    g, a = arrays(0), arrays(1)
    out, _ = opt.step(g, a)
    assert all(np.allclose(x, y, atol=1e-6) for x, y in zip(out, a))


def test_adam_first_step_is_bias_corrected():
    cfg = ServerOptSettings(kind="adam", lr=0.01, beta1=0.9, beta2=0.99, eps=1e-3)
    opt = ServerOptimizer(cfg)
    g, a = arrays(0), arrays(1)
    out, _ = opt.step(g, a)
    d = a[0] - g[0]
    # m_hat = d, v_hat = d^2: a step of lr * d / (|d| + eps), about lr in the direction of the movement
    assert np.allclose(out[0], g[0] + 0.01 * d / (np.abs(d) + 1e-3), atol=1e-6)


def test_moments_follow_grown_grids_and_survive_a_restart():
    cfg = ServerOptSettings(kind="momentum", lr=1.0, beta1=0.9)
    opt = ServerOptimizer(cfg)
    g = arrays(0)
    opt.step(g, [x + 1.0 for x in g])  # momentum 1 everywhere
    again = ServerOptimizer(cfg)
    again.load(opt.state())
    grown = arrays(2, shape=(8, 10, 12, 2))  # the server grew the grid between rounds
    out, _ = again.step(grown, grown)  # no movement this round: the step is the regridded momentum
    assert out[0].shape == (8, 10, 12, 2)
    assert np.allclose(out[0] - grown[0], 0.9, atol=1e-5)
    assert np.allclose(out[1] - grown[1], 0.9, atol=1e-5)


def test_bad_settings_are_named_even_when_set_after_construction():
    """A misspelt kind once ran Adam silently (every name but none/momentum fell through to it); the benchmark's
    --set changes fields after construction, so the optimiser checks again when it is built, and the benchmark
    refuses a bad --set before it writes anything."""
    with pytest.raises(ValueError, match="server_opt.kind"):
        ServerOptSettings(kind="momentun")
    with pytest.raises(ValueError, match="server_opt.beta1"):
        ServerOptSettings(kind="momentum", beta1=1.0)
    s = ServerOptSettings()
    s.kind = "adma"
    with pytest.raises(ValueError, match="adma"):
        ServerOptimizer(s)

    spec = importlib.util.spec_from_file_location(
        "bench_decentnerf", Path(__file__).resolve().parents[1] / "benchmarks" / "decentnerf.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from privnerf.fed.config import FedConfig

    cfg = bench.apply_sets(FedConfig(), ["server_opt.kind=momentum", "server_opt.lr=2", "alpha.eta=4", "coverage=no"])
    assert (cfg.server_opt.kind, cfg.server_opt.lr, cfg.alpha.eta, cfg.coverage) == ("momentum", 2.0, 4.0, False)
    for bad, what in (("server_opt.kind=momentun", "momentun"), ("alpha.gradient=centered", "centered"),
                      ("alpha.etta=4", "not a FedConfig setting"), ("alpha.eta=fast", "not a float"),
                      ("alpha", "KEY=VALUE")):
        with pytest.raises(ValueError, match=what):
            bench.apply_sets(FedConfig(), [bad])
