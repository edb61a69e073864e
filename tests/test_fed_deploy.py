"""Flower's Deployment Engine on loopback: a SuperLink and SuperNodes as separate processes.

1. ``privnerf fed run --engine deployment`` (TLS and SuperNode authentication, the default): 3 SuperNodes,
   2 rounds of DecentNeRF with SecAgg+ (two secure sums in round 2), results and per-round logs, every
   process stopped afterwards.
2. With authentication on, only registered keys join: a SuperNode with an unregistered key, one without a key
   (self-registration is disabled) and one that does not trust the SuperLink's certificate are all refused and
   exit, and the SuperLink lists only the registered node.
3. ``--insecure`` (plain HTTP, self-registering SuperNodes) with a ServerApp that fails: the error names the
   process and carries the ServerApp's traceback, and nothing is left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("cryptography")

REPO = Path(__file__).resolve().parents[1]


def _flower_pids_under(root: Path) -> list[int]:
    """PIDs of live processes whose FLWR_HOME lies under ``root`` (every Flower process the run started)."""
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        home = next((e[len(b"FLWR_HOME="):] for e in env if e.startswith(b"FLWR_HOME=")), None)
        if state != "Z" and home is not None and os.fsdecode(home).startswith(str(root)):
            pids.append(int(d.name))
    return pids


def _kill_leftovers(root: Path) -> None:
    for pid in _flower_pids_under(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process checks read /proc")
def test_deployment_tls_auth_three_supernodes_two_rounds(tiny_crowd, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "FLWR_TELEMETRY_ENABLED": "0",
           "PYTHONPATH": str(REPO)}
    # a small global grid (29x29x11): every SecAgg+ stage is a fresh ClientApp process per SuperNode, and
    # the masked vectors travel through the SuperLink; the run is about the deployment, not the model
    args = [sys.executable, "-m", "privnerf", "fed", "run", "--data", str(tiny_crowd), "--aggregator", "learned",
            "--rounds", "2", "--local-epochs", "0.5", "--train.optim.batch-rays", "512", "--eval-max-images", "1",
            "--leakage-views", "1", "--train.field.grid.num-voxels-start", "8000",
            "--train.field.grid.max-voxels", "8000", "--engine", "deployment", "--output", str(run)]
    p = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)  # run_deployment stops its processes on Ctrl-C
        out, _ = p.communicate(timeout=60)
        pytest.fail("deployment run timed out:\n" + out[-4000:])
    finally:
        if p.poll() is None:
            p.kill()
        time.sleep(1.0)
        leftovers = _flower_pids_under(tmp_path)
        _kill_leftovers(tmp_path)
    assert p.returncode == 0, out[-6000:]
    assert "global PSNR" in out
    assert leftovers == [], "processes left running after the run"

    logs = run / "deploy-logs"
    assert {"superlink.log", "supernode-0.log", "supernode-1.log", "supernode-2.log", "flwr-run.log",
            "flwr-cli.log"} <= {f.name for f in logs.iterdir()}
    # TLS: the SuperLink served HTTPS with the generated certificate; the CLI profile trusts the generated CA
    superlink = (logs / "superlink.log").read_text()
    assert "--ssl-certfile" in superlink and "--enable-supernode-auth" in superlink
    assert "running on https://127.0.0.1" in superlink
    conf = (run / "flwr" / "config.toml").read_text()
    assert "root-certificates" in conf and "insecure" not in conf
    # authentication: three keys registered before the SuperNodes started, each SuperNode signed with its own
    cli = (logs / "flwr-cli.log").read_text()
    assert cli.count("flwr supernode register") == 3
    for k in range(3):
        node_log = (logs / f"supernode-{k}.log").read_text()
        assert f"--auth-supernode-private-key {run / 'certs' / 'supernodes' / f'supernode-{k}'}" in node_log
        assert f"--node-config user-id={k}" in node_log and "--root-certificates" in node_log
    assert (run / "flwr" / "supernode-0" / "apps").is_dir()  # each SuperNode installed the app in its own home

    run_log = (logs / "flwr-run.log").read_text()
    assert run_log.count("Secure aggregation completed") == 3  # round 1: weights; round 2: gradients + weights
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert [h["round"] for h in rounds] == [1, 2]
    assert all(h["users"] == 3 and h["failures"] == 0 and not h.get("rejected") for h in rounds), rounds
    assert rounds[1]["grad_users"] == 3 and "loss_sum" in rounds[1]
    res = json.loads((run / "results.json").read_text())
    assert res["rounds"] == 2 and res["users"] == 3
    assert res["psnr"] is not None and res["leakage_psnr"] is not None
    assert sorted(f.name for f in (run / "state" / "clients").iterdir()) == [f"user-00{k}.pt" for k in range(3)]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process checks read /proc")
def test_supernode_auth_refuses_unregistered_nodes(tmp_path):
    from privnerf.fed.deploy import Deployment, make_tls_certificates

    root = tmp_path / "auth"
    try:
        with Deployment(root, tls=True, auth=True) as dep:
            dep.start_superlink()
            priv, pub = dep.make_key("member")
            member_id = dep.register(pub)
            stranger, _ = dep.make_key("stranger")  # a valid key pair that was never registered
            other_ca = make_tls_certificates(tmp_path / "other-ca")["ca"]
            dep.start_supernode("member", "user-id=0", priv)
            dep.start_supernode("stranger", "user-id=1", stranger)
            dep.start_supernode("keyless", "user-id=2")  # asks the SuperLink to register it: disabled with auth
            dep.start_supernode("wrong-ca", "user-id=3", stranger,
                                extra=["--root-certificates", str(other_ca)])  # later flag wins in argparse
            nodes = dep.wait_online(1, ["member"], timeout=90)
            deadline = time.monotonic() + 90
            refused = ("stranger", "keyless", "wrong-ca")
            while any(dep.procs[n].poll() is None for n in refused) and time.monotonic() < deadline:
                time.sleep(0.5)
            codes = {n: dep.procs[n].poll() for n in refused}
            logs = {n: dep.logs[n].read_text() for n in refused}
            nodes = dep.supernodes()
            dep.check_alive(["superlink", "member"])
            superlink_log = dep.logs["superlink"].read_text()
    finally:
        _kill_leftovers(tmp_path)
    assert all(c is not None and c != 0 for c in codes.values()), (codes, logs)
    # the SuperLink knows one node, the registered one, and it is online; nobody else was ever counted
    assert [(int(n["node-id"]), n["status"]) for n in nodes] == [(member_id, "online")], nodes
    assert "Failed to activate SuperNode" in logs["stranger"]
    assert "No SuperNode found with the given public key" in superlink_log
    assert "All SuperNodes must be registered via the CLI" in logs["keyless"]
    assert "CERTIFICATE_VERIFY_FAILED" in logs["wrong-ca"], logs["wrong-ca"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process checks read /proc")
def test_failing_serverapp_is_reported_and_everything_stopped(tiny_crowd, tmp_path, monkeypatch):
    """--insecure (no TLS, self-registered SuperNodes); the ServerApp cannot read its config: the error names
    the process and carries its log's tail, and no process outlives the call."""
    from privnerf.fed import deploy
    from privnerf.fed.config import FedConfig

    write_app = deploy.write_app
    monkeypatch.setattr(deploy, "write_app", lambda app_dir, _: write_app(app_dir, tmp_path / "missing.json"))
    cfg = FedConfig(data=str(tiny_crowd), rounds=1, engine="deployment", insecure=True, output=tmp_path / "run")
    try:
        with pytest.raises(deploy.DeploymentError) as err:
            deploy.run_deployment(cfg, timeout=300)
        leftovers = _flower_pids_under(tmp_path)
    finally:
        _kill_leftovers(tmp_path)
    msg = str(err.value)
    assert msg.startswith("flwr-run ended") and "without writing" in msg
    assert "FileNotFoundError" in msg and "missing.json" in msg  # the ServerApp's traceback, from the run's log
    assert leftovers == []
    assert not (tmp_path / "run" / "deploy-logs" / "pids").exists()
    conf = (tmp_path / "run" / "flwr" / "config.toml").read_text()
    assert "insecure = true" in conf
    assert "--insecure" in (tmp_path / "run" / "deploy-logs" / "supernode-0.log").read_text()
