"""IPR-NeRF white-box signatures: keys, the sign loss, verification, and the command line's errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from privnerf.data.errors import SceneError
from privnerf.fields.grid_field import GridFieldConfig, make_rgb_net
from privnerf.ownership.signature import (SignLoss, binomial_tail, carrier_size, key_positions, new_key, read_key,
                                          slot_block, verify, write_key)

DATA = "builtin:size=32,n_train=8,n_val=1,n_test=1"


def _head_only() -> nn.Module:
    torch.manual_seed(0)
    field = nn.Module()
    field.rgb_net = make_rgb_net(GridFieldConfig())
    return field


def test_the_default_head_carries_6784_positions_and_keys_fit_twenty_owners():
    field = _head_only()
    assert carrier_size(field) == 6784
    key = new_key("k", bits=64, slot=19, slots=20, carrier_size=6784, seed=0)  # a block of 339 positions
    assert len(slot_block(6784, 19, 20)) == 339 and key_positions(key)[0].size == 64
    with pytest.raises(ValueError, match="do not fit a slot"):
        new_key("k", bits=400, slots=20, carrier_size=6784, seed=0)


def test_owners_in_different_slots_get_disjoint_positions_and_the_secret_decides_the_bits():
    keys = [new_key(f"user-{k}", 64, k, 20, 6784, seed=k) for k in range(20)]
    sets = [set(key_positions(k)[0].tolist()) for k in keys]
    assert all(len(s) == 64 for s in sets)
    assert sum(len(s) for s in sets) == len(set().union(*sets))  # pairwise disjoint
    a, b = new_key("a", 64, seed=1), new_key("a", 64, seed=2)  # same owner name, another secret
    assert not np.array_equal(key_positions(a)[1], key_positions(b)[1])
    assert np.array_equal(key_positions(a)[0], key_positions(new_key("a", 64, seed=1))[0])  # deterministic


def test_the_sign_loss_drives_the_chosen_signs_in_a_few_steps_and_verify_tells_owner_from_stranger():
    field = _head_only()
    owner, stranger = new_key("owner", 64, seed=3), new_key("stranger", 64, seed=4)
    before = verify(field, owner)
    assert 0.3 < before["bit_accuracy"] < 0.7 and not before["verified"]
    loss = SignLoss([owner], field, margin=0.1, weight=1.0)
    opt = torch.optim.Adam(field.parameters(), lr=0.02)
    for _ in range(15):
        opt.zero_grad()
        loss(field).backward()
        opt.step()
    after = verify(field, owner)
    assert after["bit_accuracy"] == 1.0 and after["verified"]
    assert after["false_positive_probability"] == pytest.approx(2.0**-64)
    assert float(loss(field)) < float(SignLoss([owner], _head_only(), weight=1.0)(_head_only()))
    s = verify(field, stranger)
    assert not s["verified"] and s["false_positive_probability"] > 1e-4


def test_binomial_tail_is_the_chance_of_matching_by_luck():
    assert binomial_tail(0, 64) == 1.0
    assert binomial_tail(64, 64) == 2.0**-64
    assert binomial_tail(61, 64) == pytest.approx((math.comb(64, 61) + math.comb(64, 62) + 64 + 1) / 2.0**64)
    assert binomial_tail(58, 64) < 1e-9 < binomial_tail(50, 64)  # 90 % still verifies at 64 bits, 78 % not


def test_key_files_round_trip_and_bad_or_altered_keys_name_the_file(tmp_path):
    key = new_key("alice", 64, seed=5)
    path = write_key(key, tmp_path / "alice.json")
    assert read_key(path) == key and (path.stat().st_mode & 0o777) == 0o600
    doc = json.loads(path.read_text())
    forged = dict(doc, secret=new_key("mallory", 64, seed=6).secret)  # another secret under alice's commitment
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    with pytest.raises(SceneError, match="commitment does not match"):
        read_key(tmp_path / "forged.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(SceneError, match="junk.json: not a JSON key file"):
        read_key(tmp_path / "junk.json")
    (tmp_path / "short.json").write_text(json.dumps(dict(doc, secret="abcd", commitment=None)))
    with pytest.raises(SceneError, match="short.json: bad key: key: secret must be 32 bytes"):
        read_key(tmp_path / "short.json")
    with pytest.raises(SceneError, match="no key file here"):
        read_key(tmp_path / "missing.json")


def test_training_with_a_key_embeds_it_and_verify_accepts_only_the_owner(tmp_path, capsys):
    """``privnerf train --ownership.key`` then ``privnerf ownership verify``: the owner verifies (exit 0), a
    stranger's key does not (exit 1), the run is not the stranger's; bad inputs give one clear error (exit 2)."""
    from privnerf.cli.main import main

    assert main(["ownership", "keygen", "--owner", "alice", "--out", str(tmp_path / "alice.json")]) == 0
    commitment = capsys.readouterr().out.strip().split()[-1]
    assert main(["ownership", "keygen", "--owner", "bob", "--out", str(tmp_path / "bob.json")]) == 0
    assert main(["ownership", "keygen", "--owner", "x", "--out", str(tmp_path / "alice.json")]) == 2  # never overwritten
    run = tmp_path / "run"
    # a short run: the head's learning rate raised so 300 steps carry every weight past the margin (at the default
    # 1e-3 a weight moves about 1e-3 a step and may start 0.16 on the wrong side)
    assert main(["train", "--data", DATA, "--steps", "300", "--output", str(run), "--eval-max-images", "1",
                 "--optim.lr-mlp", "0.005", "--ownership.key", str(tmp_path / "alice.json")]) == 0
    capsys.readouterr()
    assert main(["ownership", "verify", "--checkpoint", str(run), "--key", str(tmp_path / "alice.json"),
                 "--commitment", commitment, "--json", str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out
    assert "alice: 64/64 bits" in out and "commitment matches" in out and "VERIFIED" in out
    assert json.loads((tmp_path / "v.json").read_text())["keys"][0]["verified"] is True
    assert main(["ownership", "verify", "--checkpoint", str(run), "--key", str(tmp_path / "bob.json")]) == 1
    assert "NOT verified" in capsys.readouterr().out
    assert main(["ownership", "verify", "--checkpoint", str(run), "--key", str(tmp_path / "alice.json"),
                 "--commitment", "00" * 32]) == 1
    assert "commitment DOES NOT match" in capsys.readouterr().out

    bad = tmp_path / "bad"
    (bad / "checkpoints").mkdir(parents=True)
    (bad / "checkpoints" / "last.pt").write_bytes(b"truncated")
    assert main(["ownership", "verify", "--checkpoint", str(bad), "--key", str(tmp_path / "alice.json")]) == 2
    assert f"{bad / 'checkpoints' / 'last.pt'}: not a privnerf checkpoint" in capsys.readouterr().err
    assert main(["ownership", "verify", "--checkpoint", str(run), "--key", str(tmp_path / "v.json")]) == 2
    assert f"{tmp_path / 'v.json'}: not a signature key" in capsys.readouterr().err


def test_every_users_signature_survives_secure_aggregation(tiny_crowd, tmp_path, monkeypatch, capsys):
    """DecentNeRF with ``--signature-keys``: each user adds the sign loss for its own slot on its device; the
    SecAgg+ aggregate (``server/global.pt``) verifies for every user, a stranger's key does not, and no key's
    secret appears in anything that left a client. Keys for one slot twice are refused before any round."""
    from privnerf.cli.main import main
    from privnerf.fed.config import FedConfig
    from privnerf.fed.run import run_federated

    keys = tmp_path / "keys"
    assert main(["ownership", "keygen", "--federation", "3", "--out", str(keys)]) == 0
    commitments = json.loads((keys / "commitments.json").read_text())["commitments"]
    assert sorted(commitments) == ["user-000", "user-001", "user-002"]
    audit = tmp_path / "audit"
    monkeypatch.setenv("PRIVNERF_AUDIT_DIR", str(audit))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    cfg = FedConfig(data=str(tiny_crowd), aggregator="learned", rounds=2, local_epochs=1.0, eval_max_images=1,
                    leakage_views=1, output=tmp_path / "run", signature_keys=str(keys))
    cfg.train.optim.batch_rays = 512
    cfg.train.field.grid.num_voxels_start = cfg.train.field.grid.max_voxels = 8000
    run_federated(cfg, quiet=True)
    capsys.readouterr()
    args = ["ownership", "verify", "--checkpoint", str(tmp_path / "run")]
    for k in range(3):
        args += ["--key", str(keys / f"user-{k:03d}.json"), "--commitment", commitments[f"user-{k:03d}"]]
    assert main(args) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.count("VERIFIED") == 3
    assert main(["ownership", "keygen", "--owner", "eve", "--slot", "1", "--slots", "3", "--out",
                 str(tmp_path / "eve.json")]) == 0
    assert main(["ownership", "verify", "--checkpoint", str(tmp_path / "run"), "--key", str(tmp_path / "eve.json")]) == 1
    secrets_ = [json.loads((keys / f"user-{k:03d}.json").read_text())["secret"] for k in range(3)]
    logs = "".join(f.read_text() for f in audit.glob("*.jsonl"))
    assert logs and not any(s in logs for s in secrets_)

    clash = tmp_path / "clash"
    clash.mkdir()
    for k in range(3):
        write_key(new_key(f"user-{k}", 64, slot=min(k, 1), slots=3, seed=k), clash / f"user-{k:03d}.json")
    with pytest.raises(ValueError, match="users 1 and 2 hold keys for the same slot 1"):
        run_federated(FedConfig(data=str(tiny_crowd), aggregator="learned", rounds=1, signature_keys=str(clash),
                                output=tmp_path / "never"), quiet=True)
    assert not (tmp_path / "never").exists()


def test_a_steered_upload_puts_the_weighted_mean_on_the_users_signed_values():
    """LocalUser.steer_signature: with the other users sending the global value back, the server's mean lands
    on the user's weights moved past the margin on its bits' side; every other entry is the user's own."""
    from types import SimpleNamespace

    from privnerf.fed.local import LocalUser
    from privnerf.ownership.signature import carrier_locations, carrier_order

    rng = np.random.default_rng(0)
    head = make_rgb_net(GridFieldConfig())
    names = ["density_grid.data"] + [f"rgb_net.{k}" for k in head.state_dict()]
    g = [rng.normal(size=(4, 4, 4, 1))] + [rng.normal(0, 0.15, size=tuple(v.shape)) for v in head.state_dict().values()]
    w = [a + rng.normal(0, 0.01, size=a.shape) for a in g]
    key = new_key("u", 64, slot=2, slots=5, seed=7)
    me = SimpleNamespace(signature_key=key, user=2, cfg=SimpleNamespace(ownership=SimpleNamespace(margin=0.1)))
    alpha, n = 0.2, 5
    up = LocalUser.steer_signature(me, names, w, g, alpha, 0.0, n)
    mean = [(alpha * u + (n * alpha - alpha) * x) / (n * alpha) for u, x in zip(up, g)]
    order = carrier_order(names, [a.ndim for a in w])
    assert [names[j] for j in order] == ["rgb_net.0.weight", "rgb_net.2.weight", "rgb_net.4.weight"]
    idx, bits = key_positions(key)
    touched = set()
    for (layer, flat), b in zip(carrier_locations(idx, [w[j].size for j in order]), bits):
        j = order[layer]
        target = b * max(b * w[j].reshape(-1)[flat], 0.1)
        assert mean[j].reshape(-1)[flat] == pytest.approx(target) and b * target >= 0.1
        touched.add((j, flat))
    for j, (u, a) in enumerate(zip(up, w)):
        for flat in np.flatnonzero(u.reshape(-1) != a.reshape(-1)):
            assert (j, int(flat)) in touched
    with pytest.raises(ValueError, match="beyond the 6784 weights"):
        carrier_locations(np.array([6784]), [w[j].size for j in order])


def test_bad_ownership_input_is_refused_before_anything_is_written(tiny_crowd, tmp_path, capsys):
    from privnerf.cli.main import main
    from privnerf.fed.config import FedConfig
    from privnerf.fed.run import run_federated

    run = tmp_path / "run"
    assert main(["train", "--data", DATA, "--steps", "5", "--output", str(run), "--ownership.key",
                 str(tmp_path / "nokey.json")]) == 2
    assert f"{tmp_path / 'nokey.json'}: no key file here" in capsys.readouterr().err
    assert not run.exists()
    assert main(["ownership", "keygen", "--federation", "0", "--out", str(tmp_path / "keys")]) == 2
    assert "at least one user" in capsys.readouterr().err and not (tmp_path / "keys").exists()
    write_key(new_key("a", 64, seed=1), tmp_path / "a.json")
    cfg = FedConfig(data=str(tiny_crowd), aggregator="learned", rounds=1, output=tmp_path / "fed")
    cfg.train.ownership.key = str(tmp_path / "a.json")
    with pytest.raises(ValueError, match="each user signs its own slot"):
        run_federated(cfg, quiet=True)
    assert not (tmp_path / "fed").exists()
