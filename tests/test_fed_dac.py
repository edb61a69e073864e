"""The DaC aggregator (``privnerf fed run --aggregator dac``): sectors and groups, the server's camera-free rays,
one SecAgg+ sum per group equal to the plain group mean within the quantization bound, groups below their
minimum refused, and a small end-to-end run on Flower's simulation whose clients send only masked vectors and
their sector id."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from privnerf.fed.dac import (DacSettings, camera_sector, form_groups, routing_table, sector_of, server_scene,
                              sphere_rays)

REPO = Path(__file__).resolve().parents[1]


def _ring(azimuths_deg, radius=4.0, z=1.0) -> np.ndarray:
    c2w = np.tile(np.eye(4, dtype=np.float32), (len(azimuths_deg), 1, 1))
    a = np.radians(np.asarray(azimuths_deg, np.float64))
    c2w[:, 0, 3], c2w[:, 1, 3], c2w[:, 2, 3] = radius * np.cos(a), radius * np.sin(a), z
    return c2w


def test_sectors_groups_and_routing():
    assert sector_of(100, 4) == 1 and sector_of(-10, 4) == 3 and sector_of(359.9, 4) == 3 and sector_of(0, 4) == 0
    assert list(sector_of([45, 135, 225, 315], 4)) == [0, 1, 2, 3]  # DaC's sector centres
    # the circular mean: a user whose cameras straddle 0 degrees sits in the first sector, not the middle one
    assert camera_sector(_ring([350, 355, 5, 20]), np.zeros(3), 4) == 0
    assert camera_sector(_ring([350, 355, 340]), np.zeros(3), 4) == 3
    # twenty users in 18-degree slices from 0 degrees form four groups of five (the decentnerf-lego-20 crowd)
    users = {k: camera_sector(_ring([18 * k + 4, 18 * k + 14]), np.zeros(3), 4) for k in range(20)}
    groups = form_groups(users, 4, 3)
    assert groups == {s: list(range(5 * s, 5 * s + 5)) for s in range(4)}
    # a group below its minimum is refused with its name, its size and the setting
    with pytest.raises(ValueError, match=r"group 1 \(azimuth 90-180 deg\) has 2 users, fewer than --dac.min-group 3"):
        form_groups({"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}, 4, 3)
    with pytest.raises(ValueError, match="sector 7"):
        form_groups({"a": 7}, 4, 1)
    # empty sectors route to the nearest sector with an expert
    assert list(routing_table([0, 2], 4)) == [0, 0, 1, 0]
    with pytest.raises(ValueError, match="min-group"):
        DacSettings(min_group=1).check()


def test_server_rays_need_no_camera_and_route_by_origin_azimuth():
    box = torch.tensor([[-1.0, -1.0, -0.5], [1.0, 1.0, 1.5]])
    table = routing_table([0, 1, 3], 4)  # sector 2 has no users: nearest is 1 (tie -> lower)
    rays = sphere_rays(box, table, radius=1.6, elevation_min=0.0, elevation_max=90.0)
    o, d, who = rays(4000, torch.Generator().manual_seed(0))
    centre = (box[0] + box[1]) / 2
    r = 1.6 * float((box[1] - box[0]).norm()) / 2
    assert torch.allclose((o - centre).norm(dim=-1), torch.full((4000,), r), atol=1e-4)
    assert float((o - centre)[:, 2].min()) >= -1e-5  # the upper part of the sphere only
    assert torch.allclose(d.norm(dim=-1), torch.ones(4000), atol=1e-5)
    az = torch.rad2deg(torch.atan2(o[:, 1] - centre[1], o[:, 0] - centre[0])).numpy()
    assert np.array_equal(who.numpy(), table[sector_of(az, 4)])
    assert set(who.tolist()) == {0, 1, 2}
    # every ray passes through the box (it aims at a point inside it)
    from privnerf.render.sampler import ray_aabb

    t0, t1 = ray_aabb(o, d, box)
    assert bool((t1 > t0).all())
    # the student's scene: no image, no camera, near/far covering the box from the sphere
    sc = server_scene(box.numpy(), (1.0, 1.0, 1.0), "bounded", 1.6)
    assert sc.num_views == 0 and len(sc.c2w) == 0 and sc.far > float((o - centre).norm(dim=-1).max()) + 2 * r / 1.6


def test_a_group_below_its_minimum_is_refused_before_the_run(tiny_crowd, tmp_path):
    from privnerf.fed.config import FedConfig
    from privnerf.fed.run import run_federated

    # three users in 120-degree slices centred on 60, 180, 300 degrees: two sectors give groups of 1 and 2
    cfg = FedConfig(data=str(tiny_crowd), aggregator="dac", rounds=1, output=tmp_path / "run")
    cfg.dac.groups = 2
    with pytest.raises(ValueError, match=r"group 0 \(azimuth 0-180 deg\) has 1 user; group 1 .* has 2 users, fewer "
                                         r"than --dac.min-group 3"):
        run_federated(cfg, quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_per_group_secure_sums_equal_the_plain_group_means(tmp_path, monkeypatch):
    flwr = pytest.importorskip("flwr")  # noqa: F841
    from flwr.server import ServerApp
    from flwr.simulation import run_simulation

    sys.path.insert(0, str(Path(__file__).parent / "fedapps"))
    import dac_apps as apps

    from privnerf.fed.dac import group_sums, report
    from privnerf.fed.secure import SecAggSettings, quantization_bound
    from privnerf.fed.server import legacy_session

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(apps.__file__).parent), str(REPO),
                                                      os.environ.get("PYTHONPATH", "")]))
    got: dict = {}
    errors: list = []
    app = ServerApp()

    @app.main()
    def main(grid, context):
        try:
            with legacy_session(grid, context, apps.USERS, 1) as legacy:
                replies = report(grid, legacy, {"phase": "sector", "groups": apps.GROUPS})
                groups = form_groups({nid: m["sector"] for nid, m in replies.items()}, apps.GROUPS, 3)
                got["users"] = {s: sorted(int(replies[n]["user"]) for n in nodes) for s, nodes in groups.items()}
                params = {s: [np.zeros(1, np.float32)] for s in groups}
                got["sums"] = group_sums(grid, legacy, 1, groups, params, {"round": 1, "phase": "test"},
                                         {s: apps.BOUNDS for s in groups}, SecAggSettings(), 3)
        except BaseException as e:  # Flower swallows ServerApp errors
            errors.append(e)
            raise

    run_simulation(server_app=app, client_app=apps.client_app, num_supernodes=apps.USERS,
                   backend_config={"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})
    assert not errors, errors
    assert got["users"] == {0: [0, 2, 4], 1: [1, 3, 5]}
    for s, users in got["users"].items():
        sums, n = got["sums"][s]
        assert n == 3  # the group's nodes only
        xs = [apps.user_data(k) for k in users]
        alpha_sum = sum(a for _, a in xs)
        expected = sum(a * x.astype(np.float64) for x, a in xs) / alpha_sum
        qb = quantization_bound(apps.BOUNDS, n)
        assert abs(float(sums[-1][0]) - alpha_sum) <= qb[-1]
        mean = sums[0] / float(sums[-1][0])
        bound = (qb[0] + np.abs(expected) * qb[-1]) / alpha_sum
        assert np.all(np.abs(mean - expected) <= bound * 1.001 + 1e-12), float((np.abs(mean - expected) / bound).max())
        # and it is this group's mean, not the other's (their means differ by ~2e-4, far above the bound)
        other = [apps.user_data(k) for k in range(apps.USERS) if k not in users]
        other_mean = sum(a * x.astype(np.float64) for x, a in other) / sum(a for _, a in other)
        assert abs(float(mean.mean()) - float(other_mean.mean())) > 50 * float(bound.max())


@pytest.fixture(scope="module")
def crowd6(tmp_path_factory) -> Path:
    """Six users in 60-degree slices of a small built-in scene: two sectors of three."""
    out = tmp_path_factory.mktemp("crowd") / "c6"
    r = subprocess.run([sys.executable, "-m", "privnerf", "data", "crowd", "--scene",
                        "builtin:size=32,n_train=24,n_test=2", "--users", "6", "--personal", "static",
                        "--out", str(out), "--quiet"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.mark.slow
def test_dac_run_end_to_end_sends_only_masked_sums_and_a_sector(crowd6, tmp_path, monkeypatch):
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    from privnerf.fed.config import FedConfig
    from privnerf.fed.run import run_federated

    audit = tmp_path / "audit"
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("PRIVNERF_AUDIT_DIR", str(audit))
    run = tmp_path / "run"
    cfg = FedConfig(data=str(crowd6), aggregator="dac", rounds=2, local_epochs=0.25, output=run, eval_max_images=1,
                    leakage_views=1)
    cfg.dac.groups, cfg.dac.steps, cfg.dac.final_steps, cfg.dac.batch_rays = 2, 8, 8, 256
    cfg.train.optim.batch_rays = 512
    cfg.train.field.grid.num_voxels_start = cfg.train.field.grid.max_voxels = 8000
    res = run_federated(cfg, quiet=True)

    rounds = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines()]
    assert [h["round"] for h in rounds] == [1, 2]
    for h in rounds:
        assert h["group_users"] == {"0": 3, "1": 3} and h["users"] == 6 and not h.get("rejected")
        assert len(h["local_steps"]) == 6 and min(h["local_steps"]) > 0  # every group's clients are recorded
        assert set(h["groups"]) == {"0", "1"} and h["distill"]["steps"] == 8
        assert set(h["expert_leakage_psnr"]) == {"0", "1"}
    for key in ("psnr", "leakage_psnr", "expert_leakage_psnr_max", "experts_psnr", "server_flops"):
        assert res[key] is not None and math.isfinite(res[key]), key
    assert res["server_flops_detail"]["distill"] > 0
    assert (run / "renders" / "global" / "round-002.png").exists()
    assert "one sum per group" in (run / "report.html").read_text()
    # the server's state holds one expert per group (resumable), each with the global field's layout
    st = torch.load(run / "server" / "state.pt", weights_only=False)
    assert sorted(st["dac"]["experts"]) == [0, 1]

    # what left the clients: the sector id once per node (an evaluate reply), and masked int64 vectors
    from privnerf.privacy.message_audit import read_audit

    sectors, masked = [], 0
    for c in read_audit(audit):  # raises if any array left a client in the clear
        for name, rec in c["configs"].items():
            if name == "evaluateres.metrics":
                assert set(rec) == {"sector"}, rec
                sectors.append(rec["sector"]["value"])
            elif name == "secaggplus_configs" and Key.MASKED_PARAMETERS in rec:
                assert all(i["array"]["dtype"] == "int64" for i in rec[Key.MASKED_PARAMETERS]["items"])
                masked += 1
    assert sorted(sectors) == [0, 0, 0, 1, 1, 1]
    assert masked == 6 * 2  # one masked upload per user per round: its group's sum
