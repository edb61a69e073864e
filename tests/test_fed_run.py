"""End to end on Flower's Simulation Engine with SecAgg+: a small DecentNeRF run through the CLI, killed after
round 1 and resumed. Checks what leaves a client (the audited outgoing messages: masked vectors shaped
exactly like the global field's arrays, no pixels, no personal weights, no embeddings), that the restarted
server resumes with the identical global weights, and the run's outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

REPO = Path(__file__).resolve().parents[1]
ALLOWED_METRICS = {"clipped", "train_time_s", "local_steps", "samples", "rays"}
from flwr.common.secure_aggregation.secaggplus_constants import Key  # noqa: E402

# what SecAgg+ itself sends: public keys, encrypted shares, node ids, masked vectors, shares of secrets
SECAGG_PAYLOAD = {Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2, Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST,
                  Key.MASKED_PARAMETERS, Key.NODE_ID_LIST, Key.SHARE_LIST}


def _cli(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "privnerf", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


@pytest.mark.slow
def test_decentnerf_run_is_private_resumable_and_complete(tiny_crowd, tmp_path):
    run = tmp_path / "run"
    audit = tmp_path / "audit"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "FLWR_TELEMETRY_ENABLED": "0",
           "PRIVNERF_AUDIT_DIR": str(audit), "PYTHONPATH": str(REPO)}
    args = ["fed", "run", "--data", str(tiny_crowd), "--aggregator", "learned", "--rounds", "3", "--local-epochs", "0.5",
            "--train.optim.batch-rays", "512", "--eval-max-images", "1", "--leakage-views", "1",
            "--train.field.grid.num-voxels-start", "8000", "--train.field.grid.max-voxels", "8000",
            "--output", str(run)]
    p = _cli(args, env)
    state = run / "server" / "state.pt"
    deadline = time.time() + 600
    killed_digest = None
    while time.time() < deadline and p.poll() is None:
        if state.exists():
            st = torch.load(state, weights_only=False)
            if st["round"] >= 1:
                os.killpg(p.pid, signal.SIGKILL)  # the server (and its simulation workers) die mid-run
                p.wait()
                killed_round = st["round"]
                killed_digest = torch.load(run / "server" / "global.pt", weights_only=False)["digest"]
                break
        time.sleep(0.5)
    assert killed_digest is not None, "the run never completed round 1: " + (p.stdout.read() if p.stdout else "")
    # restarting without --resume refuses to overwrite; with --resume it continues from the last round
    r = subprocess.run([sys.executable, "-m", "privnerf", *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr
    p = _cli(args + ["--resume"], env)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-4000:]
    assert f"resumed after round {killed_round}, global weights {killed_digest}" in out

    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert [h["round"] for h in rounds] == [1, 2, 3]
    assert rounds[killed_round - 1]["global_digest"] == killed_digest
    assert all(h["users"] == 3 and not h.get("rejected") for h in rounds)
    assert "loss_sum" in rounds[-1] and len(rounds[-1]["alpha"]) == 3
    res = json.loads((run / "results.json").read_text())
    for key in ("psnr", "ssim", "lpips", "leakage_psnr", "leakage_reference_psnr", "leakage_scene_psnr",
                "server_flops", "bytes_up_per_client_per_round"):
        assert res[key] is not None and np.isfinite(res[key]), key
    assert (run / "renders" / "global" / "round-003.png").exists()
    assert "secure aggregation: Flower SecAgg+" in (run / "report.html").read_text()
    # private state persisted on the "device", never in the server's folder
    assert sorted(p.name for p in (run / "state" / "clients").iterdir()) == [f"user-00{k}.pt" for k in range(3)]

    # what left the clients: only SecAgg+ protocol data; every masked vector is laid out exactly as the global
    # field's arrays (+ coverage map, + the weight or loss scalar), after SecAgg+'s own weight factor
    from privnerf.fed import messages

    g = torch.load(run / "server" / "global.pt", weights_only=False)["field"]
    # each user kept the coverage map it sent last round (the alpha update's mask), on the device
    for f in (run / "state" / "clients").iterdir():
        mask = torch.load(f, weights_only=False)["previous_mask"]
        assert mask is not None and mask.shape == tuple(g["density_grid.data"].shape[:3]) and mask.max() > 0, f.name
    keys = [k for k in g if k.startswith(messages.GLOBAL_PREFIXES)]
    mlp_shapes = [tuple(g[k].shape) for k in keys if not messages.is_grid_key(k)]
    feat = g["feature_grid.data"].shape[-1]
    seen = {"weights": 0, "grads": 0}
    for f in audit.glob("node-*.jsonl"):
        for line in f.read_text().splitlines():
            c = json.loads(line).get("content")
            if c is None:
                continue
            assert all(len(rec) == 0 for rec in c["arrays"].values()), "arrays left a client in the clear"
            for name, rec in c["metrics"].items():
                assert name == "fitres.num_examples" and rec == {"num_examples": 1}, (name, rec)  # weights are masked
            for name, rec in c["configs"].items():
                if name == "fitres.metrics":
                    assert set(rec) <= ALLOWED_METRICS, rec
                    assert all(v["type"] in ("int", "float") for v in rec.values()), rec
                    continue
                assert name in ("secaggplus_configs", "fitres.status"), name
                for key, v in rec.items():
                    assert v["type"] != "bytes" and v["type"] != "list" or key in SECAGG_PAYLOAD, key
                if Key.MASKED_PARAMETERS not in rec:
                    continue
                items = rec[Key.MASKED_PARAMETERS]["items"]
                assert all(i["array"]["dtype"] == "int64" for i in items)
                got = [tuple(i["array"]["shape"]) for i in items]
                xyz = got[1][:3]
                head = [(1,), (*xyz, 1), (*xyz, feat), *mlp_shapes]
                assert got[: len(head)] == head, got
                tail = got[len(head):]
                assert tail in ([(1,)], [xyz, (1,)]), tail  # loss scalar | coverage + alpha
                seen["weights" if len(tail) == 2 else "grads"] += 1
    # rounds 2-3 (after the restart) alone give 3 users x 2 weight sums and 3 x 2 gradient sums
    assert seen["weights"] >= 6 and seen["grads"] >= 6, seen


def test_centralized_baseline_checkpoints_and_resumes(tiny_crowd, tmp_path, monkeypatch):
    """The centralized baseline is a long single job: killed mid-way it resumes from its checkpoint (weights,
    optimizer, sampler state and the sample counts behind its FLOPs) and ends where an uninterrupted run
    ends; a finished run is not overwritten without --resume."""
    from privnerf.fed.config import FedConfig
    from privnerf.fed.run import run_federated
    from privnerf.train.trainer import Trainer

    def cfg(out: Path, resume: bool = False) -> FedConfig:
        c = FedConfig(data=str(tiny_crowd), aggregator="centralized", rounds=1, local_epochs=1.0, output=out,
                      eval_max_images=1, leakage_views=1, resume=resume)
        c.train.optim.batch_rays = 512
        c.train.checkpoint_every_s = 0.0  # a checkpoint after every step
        return c

    whole = run_federated(cfg(tmp_path / "whole"), quiet=True)
    step = Trainer.step
    calls = {"n": 0}

    def dies_at_step_4(self, batch=None):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return step(self, batch)

    monkeypatch.setattr(Trainer, "step", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_federated(cfg(tmp_path / "cut"), quiet=True)
    monkeypatch.setattr(Trainer, "step", step)
    with pytest.raises(FileExistsError):
        run_federated(cfg(tmp_path / "cut"), quiet=True)
    resumed = run_federated(cfg(tmp_path / "cut", resume=True), quiet=True)
    assert resumed["client_steps"] == whole["client_steps"] > 4
    assert resumed["client_training_flops"] == pytest.approx(whole["client_training_flops"], rel=1e-6)
    assert resumed["psnr"] == pytest.approx(whole["psnr"], abs=1e-4)


def test_a_fresh_run_refuses_a_directory_with_users_left_state(tiny_crowd, tmp_path):
    """A run killed in its first round leaves the users' private state but no server state; a new run in that
    directory must not start from it silently (it did: a different round 1), only with --resume."""
    from privnerf.fed.config import FedConfig
    from privnerf.fed.run import prepare_run

    out = tmp_path / "run"
    (out / "state" / "clients").mkdir(parents=True)
    (out / "state" / "clients" / "user-000.pt").write_bytes(b"left by a killed run")
    with pytest.raises(FileExistsError, match="user-000.pt"):
        prepare_run(FedConfig(data=str(tiny_crowd), aggregator="fedavg", rounds=1, output=out))
    assert not (out / "config.json").exists()
    assert prepare_run(FedConfig(data=str(tiny_crowd), aggregator="fedavg", rounds=1, output=out, resume=True)) == out


def test_secure_aggregators_refuse_a_single_user(tmp_path):
    """SecAgg+ needs two parties and a sum of one update is that update: learned/fedavg on a one-user crowd
    stop before anything is written, with the reason and the alternative."""
    from privnerf.fed.config import FedConfig
    from privnerf.fed.run import prepare_run

    data = tmp_path / "one"
    r = subprocess.run([sys.executable, "-m", "privnerf", "data", "crowd", "--scene", "builtin:size=32,n_train=6,n_test=1",
                        "--users", "1", "--personal", "static", "--out", str(data), "--quiet"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for agg in ("learned", "fedavg"):
        with pytest.raises(ValueError, match="1 user.*at least 2.*fednerf"):
            prepare_run(FedConfig(data=str(data), aggregator=agg, output=tmp_path / agg))
        assert not (tmp_path / agg).exists()
    assert prepare_run(FedConfig(data=str(data), aggregator="fednerf", output=tmp_path / "f")).exists()


def test_oracle_trains_on_the_person_free_copies_with_the_same_budget(tiny_crowd, tmp_path, monkeypatch):
    """The oracle baseline's one trainer gets the crowd's clean copies (not the photos with people), the global
    field alone, and the step budget of the centralized run; a crowd missing a clean copy is refused before
    anything is written, naming the file."""
    import shutil

    from privnerf.data.errors import SceneError
    from privnerf.fed.config import FedConfig
    from privnerf.fed.local import load_dataset
    from privnerf.fed.run import prepare_run, run_federated
    from privnerf.privacy.leakage import clean_view
    from privnerf.train.trainer import Trainer

    seen = []
    init = Trainer.__init__

    def spy(self, cfg, scene, *a, **kw):
        seen.append((cfg.personal.enabled, scene))
        return init(self, cfg, scene, *a, **kw)

    monkeypatch.setattr(Trainer, "__init__", spy)

    def cfg(agg: str) -> FedConfig:
        c = FedConfig(data=str(tiny_crowd), aggregator=agg, rounds=1, local_epochs=0.5, output=tmp_path / agg,
                      eval_max_images=1, leakage_views=1)
        c.train.optim.batch_rays = 512
        return c

    oracle = run_federated(cfg("oracle"), quiet=True)
    personal, scene = next((p, s) for p, s in seen if s.num_views > 2)  # the trainer, not the server's reference
    assert personal is False
    photos = load_dataset(str(tiny_crowd), "train")
    changed = 0
    for i in range(photos.num_views):
        np.testing.assert_array_equal(scene.images[i], clean_view(photos, i))
        changed += not np.array_equal(photos.images[i], scene.images[i])
    assert changed >= photos.num_views // 2, "the clean copies should differ from most photos with people"
    central = run_federated(cfg("centralized"), quiet=True)
    assert oracle["client_steps"] == central["client_steps"] > 0
    assert oracle["aggregator"] == "oracle" and oracle["psnr"] is not None

    broken = tmp_path / "broken"
    shutil.copytree(tiny_crowd, broken)
    victim = sorted((broken / "clean").iterdir())[0]
    victim.unlink()
    with pytest.raises(SceneError, match=victim.name):
        prepare_run(FedConfig(data=str(broken), aggregator="oracle", output=tmp_path / "never"))
    assert not (tmp_path / "never").exists()

    # --person-free: the federated counterpart (a diagnostic): each user trains on its own views' clean copies
    from privnerf.fed.local import LocalUser, user_views

    fc = FedConfig(data=str(tiny_crowd), aggregator="fedavg", person_free=True)
    assert fc.trains_person_free and not FedConfig(data=str(tiny_crowd), aggregator="fedavg").trains_person_free
    user = LocalUser(1, str(tiny_crowd), fc.client_train_config(), tmp_path / "u", 1, 0.5,
                     person_free=fc.trains_person_free)
    views = user_views(photos, 1)
    assert user.scene.num_views == len(views) > 0
    for j, i in enumerate(views):
        np.testing.assert_array_equal(user.scene.images[j], clean_view(photos, i))
    assert any(not np.array_equal(user.scene.images[j], photos.images[i]) for j, i in enumerate(views))
    with pytest.raises(SceneError, match=victim.name):
        prepare_run(FedConfig(data=str(broken), aggregator="fedavg", person_free=True, output=tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_personal_warmup_waits_for_the_second_round_then_freezes_the_global_field(tiny_crowd, tmp_path):
    """--personal-warmup: in a user's first round(s) the personal field is frozen (a personal field trained
    alone on the empty first aggregate takes the scene itself); afterwards the warm-up share of the steps trains
    only the personal field, so with a warm-up of the whole round the upload is exactly what was received."""
    from privnerf.fed import messages
    from privnerf.fed.config import FedConfig
    from privnerf.fed.local import LocalUser
    from privnerf.train.trainer import Trainer

    fc = FedConfig(data=str(tiny_crowd), aggregator="learned", personal_warmup=1.0, personal_warmup_after=1)
    tc = fc.client_train_config()
    user = LocalUser(0, str(tiny_crowd), tc, tmp_path / "u", 3, 0.5)
    start = messages.global_arrays(Trainer(tc, user.scene).field)
    fresh = {k: v.clone() for k, v in user.trainer(start).personal.state_dict().items()}

    up1, _ = user.train(start, 0.5, fc.personal_warmup, fc.personal_warmup_after)  # round 1: global only
    assert user.state.rounds == 1
    assert any(not np.array_equal(a, b) for a, b in zip(up1, start))
    for k, v in user.state.personal.items():
        torch.testing.assert_close(v, fresh[k], rtol=0, atol=0, msg=f"personal {k} trained in the first round")

    up2, _ = user.train(up1, 0.5, fc.personal_warmup, fc.personal_warmup_after)  # round 2: all warm-up
    for a, b in zip(up2, up1):
        np.testing.assert_array_equal(a, b)
    assert any(not torch.equal(v, fresh[k]) for k, v in user.state.personal.items() if k.startswith("density"))

    # --personal-warmup-extra: the warm-up comes on top, so the global field still trains the round's steps
    steps = user.steps_per_round(0.5)
    before = user.state.steps
    up3, stats = user.train(up2, 0.5, 0.5, 1, warmup_extra=True)
    assert stats["local_steps"] == steps + round(0.5 * steps)
    assert user.state.steps == before + steps  # the decay follows the round's steps
    assert any(not np.array_equal(a, b) for a, b in zip(up3, up2))


def test_federated_clients_add_the_distortion_term_only_when_set(tiny_crowd, tmp_path):
    """The NeRF-W loss of a client takes ``optim.distortion_weight`` times the distortion of the global field's
    own weights (not of both fields': a person in front of the object is two modes along a ray by nature). The
    federated default keeps it 0, so the loss is then NeRF-W's alone."""
    from privnerf.fed import messages
    from privnerf.fed.config import FedConfig
    from privnerf.fed.local import LocalUser
    from privnerf.render.volume import distortion_loss
    from privnerf.train.trainer import Trainer

    tc = FedConfig(data=str(tiny_crowd), aggregator="fedavg").client_train_config()
    assert tc.optim.distortion_weight == 0.0
    user = LocalUser(0, str(tiny_crowd), tc, tmp_path / "u", 1, 0.5)
    start = messages.global_arrays(Trainer(tc, user.scene).field)
    up, _ = user.train(start, 0.5)  # a trained aggregate: rays carry several weighted samples
    t = user.trainer(up)
    batch = t.sample_batch()
    torch.manual_seed(3)
    base, _, out0 = t.compute_loss(batch)
    assert "samples" not in out0
    t.cfg.optim.distortion_weight = 0.02
    torch.manual_seed(3)  # the same jitter, so the same samples
    loss, _, out = t.compute_loss(batch)
    s, step = out["samples"], t.settings().step
    expected = distortion_loss(out["weights_global"], s.t / step, s.delta / step, s.ray_idx, batch[0].shape[0]).mean()
    assert float(expected) > 0
    torch.testing.assert_close(loss - base, 0.02 * expected, rtol=1e-4, atol=1e-7)
    # the global weights are the global field's share of the composite: they sum to at most the joint opacity
    per_ray = torch.zeros(batch[0].shape[0]).index_add_(0, s.ray_idx, out["weights_global"].detach())
    assert bool((per_ray <= out["opacity"].detach() + 1e-5).all())


def test_private_masks_keep_the_masked_pixels_out_of_what_leaves(tiny_crowd, tmp_path):
    """FedConfig.private_masks: the user's masked pixels (its own person) never enter its training, so what
    crosses (the upload, and the alpha phase's gradient) is bit-identical whatever those pixels hold; without
    the masks the same change moves the upload. Masks read from find-person's layout are checked by name."""
    import imageio.v3 as iio

    from privnerf.data.errors import SceneError
    from privnerf.fed import messages
    from privnerf.fed.config import FedConfig
    from privnerf.fed.local import LocalUser
    from privnerf.train.trainer import Trainer

    fc = FedConfig(data=str(tiny_crowd), aggregator="learned")
    tc = fc.client_train_config()

    def uploads(masks, scribble: bool, d):
        user = LocalUser(1, str(tiny_crowd), tc, d, 2, 0.3, private_masks=masks)
        person = [np.asarray(m) == 2 for m in user.scene.masks]
        assert sum(int(p.sum()) for p in person) > 0
        if scribble:  # a different person: noise inside the person's pixels only
            rng = np.random.default_rng(0)
            for im, p in zip(user.scene.images, person):
                im[p] = rng.random((int(p.sum()), 3)).astype(np.float32)
        start = messages.global_arrays(Trainer(tc, user.scene).field)
        up, _ = user.train(start, 0.3)
        grad, loss = user.loss_gradient(start, 1)
        return up, grad, loss

    from privnerf.fed import local

    local._SCENE_CACHE.clear()
    a = uploads("truth", False, tmp_path / "a")
    local._SCENE_CACHE.clear()
    b = uploads("truth", True, tmp_path / "b")
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        np.testing.assert_array_equal(x, y)
    assert a[2] == b[2]
    local._SCENE_CACHE.clear()
    c = uploads(None, False, tmp_path / "c")
    local._SCENE_CACHE.clear()
    e = uploads(None, True, tmp_path / "e")
    assert any(not np.array_equal(x, y) for x, y in zip(c[0], e[0]))
    local._SCENE_CACHE.clear()

    # masks in find-person's layout: a missing photo's mask is named
    user = LocalUser(1, str(tiny_crowd), tc, tmp_path / "f", 1, 0.3)
    folder = tmp_path / "masks" / "user-001" / "masks"
    folder.mkdir(parents=True)
    for name, m in zip(user.scene.names[1:], user.scene.masks[1:]):
        iio.imwrite(folder / f"{Path(name).stem}.png", ((np.asarray(m) == 2) * 255).astype(np.uint8))
    with pytest.raises(SceneError, match="no private mask"):
        LocalUser(1, str(tiny_crowd), tc, tmp_path / "g", 1, 0.3, private_masks=str(tmp_path / "masks"))


def test_a_simulation_refuses_missing_private_masks_before_any_round(tiny_crowd, tmp_path):
    """Without the check, a client failing to read its masks inside its actor left Flower with too few nodes
    and the run finished untrained. Now the launcher names the file and writes nothing; the one-model
    aggregators refuse the option."""
    from privnerf.data.errors import SceneError
    from privnerf.fed.config import FedConfig
    from privnerf.fed.run import run_federated

    out = tmp_path / "run"
    with pytest.raises(SceneError, match="user-000.*no private mask"):
        run_federated(FedConfig(data=str(tiny_crowd), aggregator="learned", rounds=1,
                                private_masks=str(tmp_path / "nowhere"), output=out), quiet=True)
    with pytest.raises(ValueError, match="one model on every photo"):
        run_federated(FedConfig(data=str(tiny_crowd), aggregator="centralized", rounds=1, private_masks="truth",
                                output=out), quiet=True)
    assert not out.exists()
