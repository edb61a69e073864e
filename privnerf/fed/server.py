"""The DecentNeRF server as a Flower ``ServerApp``: two secure sums per round and nothing else.

Per round ``m`` (Algorithm 1 of the paper, with the decisions documented in :mod:`privnerf.fed.local`):

1. (learned, ``m >= 2``) SecAgg+ over ``[dL_k/dg, L_k]`` at the last aggregate -> ``sum_k dL_k/dg``, ``sum_k L_k``;
2. SecAgg+ over ``[alpha_k g_k, alpha_k]`` after local training (the clients receive the last aggregate and,
   for learned aggregation, the gradient sum for their alpha update) -> ``g = sum alpha_k g_k / sum alpha_k``.

The server never holds an individual update: both sums run through Flower's ``SecAggPlusWorkflow``, whose
unmasking yields only the sum. ``fednerf`` (the paper's FedNeRF baseline) is plain FedAvg on a single field,
in which the server does see each update; it is there to be compared against.

The server grows the global grids between rounds (clients take the shape they receive), saves the global
model and its own state atomically after every round, and resumes from the last completed round. A
``hooks.on_round(round, field, info)`` callback (the experiment harness: evaluation, leakage) sees what the
server sees: the aggregate, and for ``fednerf`` each user's uploaded model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.app import ConfigRecord, Context
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import default_fit_workflow
import flwr.compat.common.recorddict_compat as compat

from privnerf.fed import messages
from privnerf.fed.config import FedConfig
from privnerf.fed.secure import quantization_bound, unscale_sum
from privnerf.fed.server_opt import ServerOptimizer
from privnerf.fields.grid_field import GridField
from privnerf.train.checkpoint import atomic_torch_save, atomic_write_text

log = logging.getLogger(__name__)


class RoundStrategy(FedAvg):
    """Sends one phase's instructions to every user and keeps what comes back (for a secure sum, Flower puts
    the unmasked *sum* into every result; for ``fednerf``, the individual updates)."""

    def __init__(self, num_users: int):
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=num_users,
                         min_evaluate_clients=0, min_available_clients=num_users, accept_failures=True)
        self.fit_config: dict[str, Any] = {}
        self.results: list = []
        self.failures: list = []
        self.only_nodes: set[int] | None = None
        """When set, a phase goes to these nodes only (the DaC aggregator's per-group SecAgg+ sums: Flower's
        ``SecAggPlusWorkflow`` takes its participants from :meth:`configure_fit`)."""
        self.evaluate_config: dict[str, Any] = {}
        self.eval_results: list = []

    def configure_fit(self, server_round, parameters, client_manager):
        pairs = super().configure_fit(server_round, parameters, client_manager)
        if self.only_nodes is not None:
            pairs = [(proxy, ins) for proxy, ins in pairs if int(proxy.node_id) in self.only_nodes]
        return [(proxy, FitIns(parameters, dict(self.fit_config))) for proxy, _ in pairs]

    def configure_evaluate(self, server_round, parameters, client_manager):
        """A plain query to every node (only while ``evaluate_config`` is set: the DaC sector report)."""
        if not self.evaluate_config:
            return []
        n = self.min_available_clients
        return [(proxy, EvaluateIns(parameters, dict(self.evaluate_config)))
                for proxy in client_manager.sample(num_clients=n, min_num_clients=n)]

    def aggregate_evaluate(self, server_round, results, failures):
        self.eval_results = list(results)
        return None, {}

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = list(results), list(failures)
        if not results:
            return None, {}
        return results[0][1].parameters, {}


@dataclass
class ServerState:
    """What the server keeps between rounds (``server/state.pt``)."""

    round: int = 0
    arrays: list[np.ndarray] | None = None
    grow_count: int = 0
    alpha_sum: float = 0.0
    grad_max: list[float] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    server_opt: dict[str, Any] | None = None
    """The server optimiser's moments (privnerf.fed.server_opt; None with ``--server-opt.kind none``)."""
    dac: dict[str, Any] | None = None
    """The DaC aggregator's experts and distillation step count (``--aggregator dac``)."""


def arrays_digest(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


class DecentServer:
    """The round loop. ``field`` is the server's copy of the global field (the aggregate lives in it)."""

    def __init__(self, cfg: FedConfig, field_: GridField, run_dir: Path, hooks=None):
        self.cfg = cfg
        self.field = field_
        self.run_dir = Path(run_dir)
        self.hooks = hooks
        self.state_path = self.run_dir / "server" / "state.pt"
        self.state = ServerState()
        self.flops = {"sum": 0.0, "unmask": 0.0, "normalise": 0.0, "dot": 0.0, "server_opt": 0.0}
        self.opt = ServerOptimizer(cfg.server_opt)
        self.dac = None
        if cfg.aggregator == "dac":
            from privnerf.fed.dac import DacAggregator, server_scene

            if hooks is None or not hasattr(hooks, "server_scene"):
                raise ValueError("the DaC aggregator needs the render settings' scene (hooks.server_scene)")
            self.dac = DacAggregator(cfg.dac, field_, hooks.server_scene(cfg.dac.radius), cfg.train, cfg.rounds,
                                     cfg.seed)
            self.flops["distill"] = 0.0

    # -- persistence ---------------------------------------------------------------------------------
    def resume(self) -> bool:
        if not self.state_path.exists():
            return False
        st = torch.load(self.state_path, map_location="cpu", weights_only=False)
        self.state = ServerState(**st)
        self.opt.load(self.state.server_opt)
        if self.dac is not None:
            self.dac.load(self.state.dac)
            self.flops.update(self.state.history[-1].get("server_flops", {}) if self.state.history else {})
        self.field.grow_count.fill_(self.state.grow_count)
        messages.load_global(self.field, self.state.arrays)  # takes the saved (grown) grid shapes
        log.info("resumed after round %d, global weights %s", self.state.round,
                 arrays_digest(messages.global_arrays(self.field)))
        return True

    def save(self) -> None:
        self.state.arrays = messages.global_arrays(self.field)
        self.state.grow_count = int(self.field.grow_count)
        self.state.server_opt = self.opt.state() if self.cfg.server_opt.kind != "none" else None
        self.state.dac = self.dac.state() if self.dac is not None else None
        atomic_torch_save(self.state.__dict__, self.state_path)
        atomic_torch_save({"field": self.field.state_dict(), "round": self.state.round,
                           "digest": arrays_digest(self.state.arrays)}, self.run_dir / "server" / "global.pt")

    # -- the run ---------------------------------------------------------------------------------------
    def run(self, grid, context: Context) -> None:
        cfg = self.cfg
        if cfg.resume and self.resume():
            if self.hooks is not None and hasattr(self.hooks, "restore"):
                self.hooks.restore(self.state.history)
        elif self.state.arrays is None:
            self.state.arrays = messages.global_arrays(self.field)
        with legacy_session(grid, context, cfg.num_users, cfg.rounds) as legacy:
            self.legacy = legacy
            if self.dac is not None:
                self.dac.connect(grid, legacy, cfg.num_users)
            for rnd in range(self.state.round + 1, cfg.rounds + 1):
                self._round(grid, legacy.strategy, rnd)

    def _grow_if_due(self, rnd: int) -> None:
        progress = (rnd - 1) / max(self.cfg.rounds, 1)
        while self.field.pending_growth(progress):
            before = tuple(self.field.density_grid.resolution)
            self.field.grow()
            if tuple(self.field.density_grid.resolution) != before:  # a stage past the voxel cap changes nothing
                log.info("round %d: global grids grown to %s", rnd, self.field.density_grid.resolution)

    def _round(self, grid, strategy: RoundStrategy, rnd: int) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        self._grow_if_due(rnd)
        g = messages.global_arrays(self.field)
        n_global = len(g)
        info: dict[str, Any] = {"round": rnd, "aggregator": cfg.aggregator,
                                "grid_resolution": list(self.field.density_grid.resolution)}
        base = {"n_global": n_global, "alpha_rule": json.dumps(cfg.alpha.__dict__)}
        train_params = list(g)
        bytes_down = sum(a.nbytes for a in g)
        bytes_up = 0
        if cfg.aggregator == "learned" and rnd >= 2:
            bounds = messages.grad_bounds(self.field, None if self.state.grad_max is None else
                                          [np.array([m]) for m in self.state.grad_max])
            out = secure_sum(grid, self.legacy, rnd, g, {**base, "phase": "grad", "bounds": messages.encode_bounds(bounds)},
                             bounds, cfg.secagg, self.flops)
            if out is not None:
                sums, n = out
                grad_sum, loss_sum = sums[:-1], float(sums[-1].ravel()[0])
                self.state.grad_max = [float(np.max(np.abs(a))) for a in grad_sum]
                train_params = list(g) + [a.astype(np.float32) for a in grad_sum] + [np.array([loss_sum])]
                info.update(loss_sum=loss_sum, grad_users=n,
                            grad_quantization_bound=max(quantization_bound(bounds[:-1], n)))
                bytes_up += 8 * (sum(int(np.size(a)) for a in sums) + 1)
                bytes_down += sum(a.nbytes for a in g)
        bytes_down += sum(a.nbytes for a in train_params[n_global:])
        config = {**base, "phase": "train", "alpha_sum": float(self.state.alpha_sum)}
        individual = None
        experts = None
        if cfg.aggregator == "dac":
            new, n, experts = self._dac_round(grid, rnd, g, config, info)
            bytes_up += 8 * (sum(int(np.size(a)) for a in g) + int(np.prod(g[0].shape[:3])) + 1)  # one masked upload
        elif cfg.aggregator == "fednerf":
            exchange(grid, self.legacy, rnd, train_params, config)
            new, individual, n = self._plain_mean(strategy, rnd)
            bytes_up += sum(a.nbytes for a in g)
        else:
            coverage = bool(cfg.coverage)
            bounds = (messages.coverage_weighted_bounds if coverage else messages.weight_bounds)(self.field, g)
            config["bounds"] = messages.encode_bounds(bounds)
            config["coverage"] = coverage
            config["coverage_weight"] = cfg.coverage_weight
            out = secure_sum(grid, self.legacy, rnd, train_params, config, bounds, cfg.secagg, self.flops)
            new = None
            if out is not None:
                sums, n = out
                alpha_sum = float(sums[-1].ravel()[0])
                if alpha_sum > 0:
                    new = self._normalise(g, sums, alpha_sum, coverage, info)
                    self.state.alpha_sum = alpha_sum
                    info.update(alpha_sum=alpha_sum, weight_quantization_bound=max(quantization_bound(bounds, n)) / alpha_sum)
                bytes_up += 8 * (sum(int(np.size(a)) for a in sums) + 1)
        if new is not None:
            try:
                messages.check_arrays(self.field, new, f"round {rnd} aggregate")
            except ValueError as e:
                log.error("%s; round rejected, the global model is unchanged", e)
                new = None
        if new is not None and cfg.server_opt.kind != "none":
            new, flops = self.opt.step(g, new)
            self.flops["server_opt"] += flops
            try:  # a server step too large for the field can leave finite aggregates and produce Inf
                messages.check_arrays(self.field, new, f"round {rnd} server step ({cfg.server_opt.kind})")
            except ValueError as e:
                log.error("%s; round rejected, the global model is unchanged", e)
                new = None
        if new is not None:
            # how far the global grids moved this round (RMS over grid values): the scale a server step acts on
            moved = [(a - b).ravel() for k, a, b in zip(messages.global_keys(self.field), new, g)
                     if messages.is_grid_key(k) and a.shape == b.shape]
            if moved:
                info["grid_update_rms"] = float(np.sqrt(np.mean(np.concatenate(moved) ** 2)))
            messages.load_global(self.field, new)
            info["users"] = n
        else:
            info["rejected"] = True
        info["client_train_time_s"] = [float(r.metrics.get("train_time_s", 0.0)) for _, r in strategy.results]
        info["local_steps"] = [int(r.metrics.get("local_steps", 0)) for _, r in strategy.results]
        info["client_samples"] = [float(r.metrics.get("samples", 0.0)) for _, r in strategy.results]
        info["client_rays"] = [float(r.metrics.get("rays", 0.0)) for _, r in strategy.results]
        info["failures"] = len(strategy.failures)
        info["bytes_up_per_client"] = bytes_up
        info["bytes_down_per_client"] = bytes_down
        info["server_flops"] = dict(self.flops)
        info["round_time_s"] = time.perf_counter() - t0
        info["global_digest"] = arrays_digest(messages.global_arrays(self.field))
        if self.hooks is not None:
            extra = {"experts": experts} if experts is not None else {}
            info.update(self.hooks.on_round(rnd, self.field, individual, **extra) or {})
        # the round counts as completed once its weights, state and measurements are saved together; a server
        # killed before this line redoes the round from the previous round's weights
        self.state.history.append(info)
        self.state.round = rnd
        self.save()
        if self.hooks is not None and hasattr(self.hooks, "record"):
            self.hooks.record(info)
        log.info("round %d done in %.1f s", rnd, info["round_time_s"])

    def _dac_round(self, grid, rnd: int, g: list[np.ndarray], config: dict[str, Any], info: dict):
        """DaC: one SecAgg+ sum per group (each group trains from the global model, or its own expert with
        ``--dac.start expert``), each group's coverage-weighted mean its expert, the experts distilled into the
        global field (from their mean with ``--dac.init mean``). Returns ``(new global arrays or None,
        users summed, {group: expert arrays})``."""
        from privnerf.fed.dac import group_sums

        cfg, dac = self.cfg, self.dac
        params, bounds = {}, {}
        for s in dac.groups:
            params[s] = dac.expert_arrays(s, g) if cfg.dac.start == "expert" else [a.copy() for a in g]
            bounds[s] = messages.coverage_weighted_bounds(self.field, params[s])
        config = {**config, "coverage": True, "coverage_weight": cfg.coverage_weight}
        sums = group_sums(grid, self.legacy, rnd, dac.groups, params, config, bounds, cfg.secagg, cfg.dac.min_group,
                          self.flops)
        n_total, group_info = 0, {}
        total: list[np.ndarray] | None = None  # every group's sum added: all users' sum (nothing new to the server)
        for s, (summed, n) in sums.items():
            alpha_sum = float(summed[-1].ravel()[0])
            if alpha_sum <= 0:
                continue
            if cfg.dac.start == "global":  # the same start for every group, so their sums add up
                total = summed if total is None else [a + b for a, b in zip(total, summed)]
            gi: dict[str, Any] = {"users": n}
            expert = self._normalise(params[s], summed, alpha_sum, True, gi)
            try:
                messages.check_arrays(self.field, expert, f"round {rnd} group {s} expert")
            except ValueError as e:
                log.error("%s; the group's expert is unchanged", e)
                continue
            dac.experts[s] = expert
            n_total += n
            group_info[str(s)] = gi
        info["groups"] = group_info
        info["group_users"] = {str(s): len(m) for s, m in dac.groups.items()}
        if not dac.experts or not sums:
            return None, 0, None
        steps = dac.steps_in(rnd, cfg.rounds)
        if steps == 0:  # no distillation this round: the global model stays the last student
            return [a.copy() for a in g], n_total, {s: dac.expert_arrays(s, g) for s in dac.experts}
        start = g
        if cfg.dac.init == "mean" and total is not None:
            start = self._normalise(g, total, float(total[-1].ravel()[0]), True, {})
        elif cfg.dac.init == "mean":  # experts trained from their own starts: the plain mean of the experts
            ex = [dac.expert_arrays(s, g) for s in sorted(dac.experts)]
            start = [np.mean([e[j] for e in ex], axis=0).astype(np.float32) for j in range(len(g))]
        new, stats = dac.distill(start, steps)
        self.flops["distill"] += float(stats["flops"])
        info["distill"] = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
        return new, n_total, {s: dac.expert_arrays(s, new) for s in dac.experts}

    def _normalise(self, g: list[np.ndarray], sums: list[np.ndarray], alpha_sum: float, coverage: bool,
                   info: dict) -> list[np.ndarray]:
        """Secure sums -> the new global arrays: ``sum alpha g / sum alpha``, or per voxel
        ``sum alpha m g / sum alpha m`` (voxels nobody touched keep their value)."""
        keys = messages.global_keys(self.field)
        if not coverage:
            return [(a / alpha_sum).astype(np.float32) for a in sums[:-1]]
        cov = sums[len(keys)]
        # a voxel counts as touched when its summed weight is well above the quantization noise
        touched = cov > 1e-3 * alpha_sum
        info["touched_fraction"] = float(touched.mean())
        out = []
        for k, s, old in zip(keys, sums, g):
            if messages.is_grid_key(k):
                safe = np.where(touched, cov, 1.0)[..., None]
                out.append(np.where(touched[..., None], s / safe, old).astype(np.float32))
            else:
                out.append((s / alpha_sum).astype(np.float32))
        self.flops["normalise"] += 2 * sum(int(np.size(a)) for a in sums)
        return out

    def _plain_mean(self, strategy: RoundStrategy, rnd: int):
        """fednerf: pixel-weighted mean of the individual updates; non-finite or misshapen ones are rejected."""
        kept, weights, individual = [], [], {}
        for proxy, res in strategy.results:
            arrays = parameters_to_ndarrays(res.parameters)
            try:
                messages.check_arrays(self.field, arrays, f"round {rnd} update from node {proxy.node_id}")
            except ValueError as e:
                log.error("%s: rejected", e)
                continue
            kept.append(arrays)
            weights.append(float(res.num_examples))
            individual[int(res.metrics.get("user", proxy.node_id))] = arrays
        if not kept:
            return None, individual, 0
        w = np.asarray(weights) / sum(weights)
        mean = [sum(wi * a[j].astype(np.float64) for wi, a in zip(w, kept)).astype(np.float32) for j in range(len(kept[0]))]
        self.flops["sum"] += len(kept) * sum(int(np.size(a)) for a in mean) * 2
        return mean, individual, len(kept)


@contextlib.contextmanager
def legacy_session(grid, context: Context, num_users: int, rounds: int):
    """A ``LegacyContext`` (what Flower's SecAgg+ workflow requires) with a :class:`RoundStrategy` and a client
    manager kept up to date with the grid's nodes for the duration of the block."""
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=RoundStrategy(num_users))
    thread, f_stop, c_done = start_update_client_manager_thread(grid, legacy.client_manager)
    c_done.wait()
    try:
        yield legacy
    finally:
        f_stop.set()
        thread.join()


def exchange(grid, legacy: LegacyContext, rnd: int, parameters: list[np.ndarray], config: dict[str, Any],
             secagg=None) -> None:
    """Send ``parameters`` and ``config`` to every user and collect the replies into ``legacy.strategy``:
    through Flower's SecAgg+ workflow when ``secagg`` (settings) is given, else the plain fit workflow."""
    strategy = legacy.strategy
    strategy.fit_config = config
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(parameters), True)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
    strategy.results, strategy.failures = [], []
    if secagg is not None:
        SecAggPlusWorkflow(**secagg.workflow_kwargs())(grid, legacy)
    else:
        default_fit_workflow(grid, legacy)


def secure_sum(grid, legacy: LegacyContext, rnd: int, parameters: list[np.ndarray], config: dict[str, Any],
               bounds: list[float], secagg, flops: dict[str, float] | None = None) -> tuple[list[np.ndarray], int] | None:
    """One SecAgg+ sum: every user replies with arrays scaled by :func:`privnerf.fed.secure.scale_for_secagg`
    under ``bounds``; returns the plain sum of their unscaled arrays and the number of users in it (``None``
    if the protocol produced no sum)."""
    exchange(grid, legacy, rnd, parameters, config, secagg)
    strategy = legacy.strategy
    if not strategy.results:
        log.error("round %d (%s): secure aggregation produced no sum (%d failures)", rnd, config.get("phase"),
                  len(strategy.failures))
        return None
    n = len(strategy.results)
    mean = parameters_to_ndarrays(strategy.results[0][1].parameters)
    if len(mean) != len(bounds):
        log.error("round %d: secure sum has %d arrays, expected %d; round rejected", rnd, len(mean), len(bounds))
        return None
    clipped = sum(int(r.metrics.get("clipped", 0)) for _, r in strategy.results)
    if clipped:
        log.warning("round %d (%s): users clipped %d values to the agreed bounds", rnd, config.get("phase"), clipped)
    if flops is not None:
        d = sum(int(np.size(a)) for a in mean)
        flops["sum"] += (n - 1) * d
        flops["unmask"] += 2 * n * d  # regenerate each user's self-mask, subtract it
        flops["normalise"] += 4 * d   # dequantize, offset, unscale
    return unscale_sum(mean, bounds, n, secagg.clipping_range), n


def make_server_app(cfg: FedConfig, field_factory: Callable[[], GridField], run_dir: Path, hooks=None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid, context: Context) -> None:
        DecentServer(cfg, field_factory(), run_dir, hooks).run(grid, context)

    return app


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")
