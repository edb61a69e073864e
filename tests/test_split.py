"""Split learning: the cut is the same math, nothing pixel-valued crosses, defenses follow their schedule,
the transport round-trips and refuses bad messages, the attack learns from undefended gradients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from privnerf.cli.train import load_split
from privnerf.privacy.gradient_defense import DefenseConfig, GradientDefense
from privnerf.privacy.split_attack import AttackConfig, attack_factory, constant_colour_psnr, render_with_head
from privnerf.split.client import ServerRefused, SplitClient
from privnerf.split.config import SplitConfig
from privnerf.split.protocol import CLIENT_KINDS, ProtocolError, decode, encode
from privnerf.split.server import SplitServer
from privnerf.split.transport import GrpcTransport, InProcessTransport, TransportError, serve_grpc
from privnerf.train.trainer import Trainer

DATA = "builtin:size=40,n_train=12,n_val=1,n_test=2"
ROOT = Path(__file__).resolve().parents[1]


def split_cfg(steps: int = 20, rays: int = 512, **kw) -> SplitConfig:
    """The test posture: the linear decoder, the announced seed, no defense unless asked (split == centralized)."""
    kw = {"decoder": "linear", "private_head": False, "defense": "none", **kw}
    cfg = SplitConfig(data=DATA, steps=steps, threads=2, eval_max_images=1, **kw)
    cfg.train.optim.batch_rays = rays
    return cfg


class Recorder:
    """A transport wrapper that keeps every client message (as a network tap would)."""

    def __init__(self, inner):
        self.inner, self.sent, self.received = inner, [], []

    def request(self, data: bytes) -> bytes:
        self.sent.append(bytes(data))
        reply = self.inner.request(data)
        self.received.append(bytes(reply))
        return reply

    def close(self):
        self.inner.close()


def make_pair(cfg: SplitConfig, scene=None, observers=None, defense=None, head_seed: int | None = 11):
    tcfg = cfg.train_config()
    scene = scene if scene is not None else load_split(tcfg, "train")
    server = SplitServer(None, threads=2, observer_factory=observers)
    transport = Recorder(InProcessTransport(server))
    client = SplitClient(tcfg, scene, transport, defense or GradientDefense(cfg.defense_config(), tcfg.steps),
                         render_scene=load_split(tcfg, "test"), private_head=cfg.private_head,
                         head_seed=head_seed)
    client.setup()
    return server, client, transport


def noise_twin(scene, seed: int):
    """The same cameras with uniform-noise photos: what the server sees must not tell the two apart."""
    twin = scene.subset(list(range(scene.num_views)))
    rng = np.random.default_rng(seed)
    twin.images = [rng.random(im.shape, dtype=np.float32) for im in scene.images]
    return twin


def tapped_runs(cfg: SplitConfig, scenes, steps: int, seed: int, render: bool = False) -> list[Recorder]:
    """Train ``steps`` steps on each scene with the same ray jitter; the taps of the runs, in scene order."""
    taps = []
    for scene in scenes:
        _, client, tap = make_pair(cfg, scene)
        for _ in range(steps):
            torch.manual_seed(seed)
            client.step()
        if render:
            client.render_view(0)
        taps.append(tap)
    return taps


@pytest.mark.parametrize("decoder,skip_empty,key", [("linear", True, 0), ("full", True, 0), ("relu", True, 0),
                                                     ("none", True, 0), ("linear", False, 0), ("full", True, 5)])
def test_undefended_cut_gradient_equals_centralized(decoder, skip_empty, key):
    cfg = split_cfg(decoder=decoder, key_cells=key)
    cfg.train.render.skip_empty = skip_empty  # (linear, off): a client may ask for uniform samples itself
    tcfg = cfg.train_config()
    scene = load_split(tcfg, "train")
    central = Trainer(tcfg, scene)
    captured = {}
    encode_space = central.field.encode_space

    def keep(xs):
        h = encode_space(xs)
        h.retain_grad()
        captured["h"] = h
        return h

    central.field.encode_space = keep
    server, client, tap = make_pair(cfg, scene)
    central_head = {k: v for k, v in central.field.state_dict().items()
                    if k.startswith(("rgb_net.", "feature_out.", "key."))}
    assert set(client.head.state_dict()) == set(central_head)
    for k, v in client.head.state_dict().items():
        assert torch.equal(v, central_head[k]), f"the client head must start as the centralized field's head ({k})"
    assert (server.trainer.field.key is None) and (client.head.key is None) == (key == 0)  # the key is the client's
    for step in range(3):
        torch.manual_seed(100 + step)  # the same ray jitter on both sides
        central.step()
        torch.manual_seed(100 + step)
        client.step()
        _, _, arrays = decode(tap.sent[-1])
        g_split = torch.from_numpy(arrays["grad"].copy())
        g_central = captured["h"].grad
        assert g_split.shape == g_central.shape
        assert torch.allclose(g_split, g_central, rtol=1e-4, atol=1e-9 + 1e-4 * float(g_central.abs().max()))
    if decoder == "full" or not skip_empty:  # the server never skipped empty space (could not / was asked not to)
        assert not server.trainer.cfg.render.skip_empty and bool(server.trainer.occ.binary.all())
    for gs, gc in zip(server.trainer.field.grids(), central.field.grids()):
        assert torch.allclose(gs.data, gc.data, atol=1e-5)
    for k, v in client.head.state_dict().items():
        assert torch.allclose(v, central.field.state_dict()[k], atol=1e-6), k
    for k, v in central.field.state_dict().items():
        if k.startswith("feature_in."):
            assert torch.allclose(v, server.trainer.field.state_dict()[k], atol=1e-6), k


def test_no_pixel_value_crosses_to_the_server():
    cfg = split_cfg(steps=3)
    tcfg = cfg.train_config()
    real = load_split(tcfg, "train")
    runs = [[decode(m) for m in tap.sent]
            for tap in tapped_runs(cfg, (real, noise_twin(real, 0)), steps=3, seed=5, render=True)]
    for (k1, m1, a1), (k2, m2, a2) in zip(*runs):
        assert k1 in CLIENT_KINDS and k1 == k2
        if k1 == "backward":
            assert set(a1) == {"grad"}  # the one value that depends on pixels: the protocol's gradient
            continue
        # everything else is identical whatever the photos show
        assert json.dumps(m1, sort_keys=True) == json.dumps(m2, sort_keys=True)
        assert set(a1) == set(a2) and all(np.array_equal(a1[k], a2[k]) for k in a1)
        assert all(a.dtype == np.int32 for a in a1.values())
    setup = runs[0][0]
    assert setup[0] == "setup"
    assert all(n.startswith("view_") for n in setup[1]["cameras"]["train"]["names"])
    assert setup[1]["config"]["data"] == "client"
    assert any(k == "backward" for k, _, _ in runs[0])
    # and the gradients do differ: the attack surface is exactly that message
    grads = [a["grad"] for k, _, a in runs[0] if k == "backward"], [a["grad"] for k, _, a in runs[1] if k == "backward"]
    assert not np.array_equal(grads[0][0], grads[1][0])


def test_defense_noise_follows_its_schedule():
    g = torch.zeros(20000, 13)
    g[0, 0] = 3.0  # the largest per-sample norm is 3
    d = GradientDefense(DefenseConfig(name="s2nerf", c=2.0, r=0.01), total_steps=100)
    for t in (0, 50, 100, 300):
        want = 2.0 * 3.0 * 0.01 ** min(t / 100, 1.0)
        noise = d(g, None, t) - g
        assert abs(float(noise[1:].std()) / want - 1) < 0.03, t
        assert d.last_sigma == pytest.approx(want)
    light = GradientDefense(DefenseConfig(name="s2nerf-light", c=1.0, r=1.0, light_fraction=0.25), 100)
    changed = ((light(g, None, 0) - g).abs().sum(dim=1) > 0).float().mean()
    assert abs(float(changed) - 0.25) < 0.02
    fixed = GradientDefense(DefenseConfig(name="gaussian", c=1.0), 100)
    fixed(g, None, 0)
    assert fixed(g * 10, None, 50) is not None and fixed.last_sigma == pytest.approx(3.0)  # set once, kept
    pruned = GradientDefense(DefenseConfig(name="prune", prune_ratio=0.9), 100)(torch.randn(1000, 13), None, 0)
    assert abs(float((pruned == 0).float().mean()) - 0.9) < 0.01
    mix = GradientDefense(DefenseConfig(name="s2nerf", c=1.0, r=1.0, mix=True), 100)
    with pytest.raises(ValueError, match="ReLU"):
        mix(g, torch.ones_like(g), 0)
    act = torch.ones_like(g)
    act[:, 5] = 0.0
    out = mix(g, act, 0)
    assert float((out - g)[:, 5].std()) > 1000 * float((out - g)[:, 4].std())
    nan = torch.full((4, 13), float("nan"))
    assert torch.isfinite(GradientDefense(DefenseConfig(name="s2nerf", c=1.0), 10)(nan, None, 0)).all()


def test_protocol_refuses_malformed_messages():
    ok = encode("forward", {"elapsed": 0.0, "train": 1}, {"view": np.zeros(2, np.int32), "u": np.zeros(2, np.int32),
                                                           "v": np.zeros(2, np.int32)})
    assert decode(ok)[0] == "forward"
    with pytest.raises(ProtocolError, match="bad magic"):
        decode(b"GARBAGE" * 4)
    with pytest.raises(ProtocolError, match="only"):
        decode(ok[:-3])
    with pytest.raises(ProtocolError, match="over the"):
        decode(ok, max_bytes=10)
    with pytest.raises(ProtocolError, match="expected int32"):
        encode("forward", {"elapsed": 0.0, "train": 1}, {"view": np.zeros(2, np.float32),
                                                         "u": np.zeros(2, np.int32), "v": np.zeros(2, np.int32)})
    with pytest.raises(ProtocolError, match="NaN"):
        decode(encode("backward", {"step": 0}, {"grad": np.full((2, 13), np.nan, np.float32)}))
    with pytest.raises(ProtocolError, match="unknown message kind"):
        encode("pixels", {}, {})
    with pytest.raises(ProtocolError, match="was expected"):
        decode(ok, expect=("backward",))

    server, client, _ = make_pair(split_cfg(steps=2))
    reply = decode(server.handle(encode("backward", {"step": 0}, {"grad": np.zeros((3, 13), np.float32)})))
    assert reply[0] == "error" and "no training forward" in reply[1]["message"]
    client._exchange("forward", {"elapsed": 0.0, "train": 1}, {"view": np.zeros(4, np.int32),
                                                                "u": np.zeros(4, np.int32), "v": np.zeros(4, np.int32)})
    with pytest.raises(ServerRefused, match="does not match the activation"):
        client._exchange("backward", {"step": 0}, {"grad": np.zeros((1, 7), np.float32)})
    with pytest.raises(ServerRefused, match="outside its image"):
        client._exchange("forward", {"elapsed": 0.0, "train": 0}, {
            "view": np.zeros(1, np.int32), "u": np.full(1, 10_000, np.int32), "v": np.zeros(1, np.int32)})
    assert decode(server.handle(b"not a message"))[0] == "error"


def test_grpc_round_trip_and_size_limit(tmp_path):
    cfg = split_cfg(steps=2)
    tcfg = cfg.train_config()
    server = SplitServer(tmp_path / "server", threads=2)
    g, port = serve_grpc(server, "127.0.0.1:0", max_bytes=64 << 20)
    try:
        transport = GrpcTransport(f"127.0.0.1:{port}")
        client = SplitClient(tcfg, load_split(tcfg, "train"), transport,
                             GradientDefense(cfg.defense_config(), 2), render_scene=load_split(tcfg, "test"),
                             run_dir=tmp_path / "client")
        client.setup()
        client.train(quiet=True)
        assert server.trainer.step_count == 2 and client.step_count == 2
        assert (tmp_path / "server" / "checkpoints" / "last.pt").exists() and (tmp_path / "client" / "state.pt").exists()
        img = client.render_view(0)
        assert img.shape == (40, 40, 3) and np.isfinite(img).all()
        assert client.bytes_up > 0 and server.bytes_in == client.bytes_up  # the wire carries exactly our bytes
        small, sport = serve_grpc(SplitServer(None), "127.0.0.1:0", max_bytes=1000)
        try:
            big = GrpcTransport(f"127.0.0.1:{sport}")
            with pytest.raises(TransportError, match="RESOURCE_EXHAUSTED"):
                big.request(encode("backward", {"step": 0}, {"grad": np.zeros((100, 13), np.float32)}))
            big.close()
        finally:
            small.stop(0)
        transport.close()
    finally:
        g.stop(0)


def test_replay_attack_recovers_undefended_pixels_and_noise_stops_it():
    """On the small built-in scene: from undefended cut gradients the server recovers the requested training
    pixels and a head as good as the client's; S²NeRF noise (c=1, no decay) breaks both."""
    from privnerf.eval.metrics import psnr
    from privnerf.privacy.split_attack import psnr_over

    scores = {}
    for name in ("none", "s2nerf"):
        cfg = split_cfg(steps=120, rays=1024, defense=name, c=1.0, r=1.0)
        server, client, _ = make_pair(cfg, observers=attack_factory(AttackConfig(kinds=("sma", "replay"))))
        client.train(quiet=True)
        replay, tr, test, train = server.attacks["replay"], server.trainer, client.render_scene, client.scene
        assert server.attacks["sma"].steps == 120
        attacker = psnr(render_with_head(tr, replay.head, replay.shift, test.c2w[0], test.intrinsics[0],
                                         *test.hw(0)), test.images[0])
        mask = replay.touched[: replay.offsets[1]].reshape(train.hw(0)).numpy()
        scores[name] = {"utility": psnr(client.render_view(0), test.images[0]), "attacker": attacker,
                        "pixels": psnr_over(replay.dummy_image(0), train.images[0], mask)}
    none, noisy = scores["none"], scores["s2nerf"]
    assert none["pixels"] > 20.0, scores  # the photos, from the gradients
    assert none["attacker"] > none["utility"] - 1.5, scores  # the attacker's NeRF is the client's
    assert none["attacker"] > constant_colour_psnr([test.images[0]]) + 3.0, scores
    assert noisy["pixels"] < 10.0 and noisy["attacker"] < none["attacker"] - 2.0, scores


def test_split_cli_over_grpc_resume_and_sa_sma(tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "privnerf", "split", "train", "--data", DATA, "--transport", "grpc",
            "--eval-max-images", "1", "--threads", "2", "--output", str(out), "--train.optim.batch-rays", "512",
            "--defense", "s2nerf", "--c", "0.1"]
    r = subprocess.run(base + ["--steps", "6"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    r = subprocess.run(base + ["--steps", "10", "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 10 and res["transport"] == "grpc"
    assert res["attack"]["sma"]["attack_steps"] == 10  # the attacker state resumed with the server
    assert res["attack"]["replay"]["attack_steps"] == 10
    assert res["bytes_up_per_step"] > 0 and res["bytes_down_per_step"] > 0
    assert (out / "figure.png").exists()
    r = subprocess.run([sys.executable, "-m", "privnerf", "split", "attack", "--run", str(out), "--leaked", "2",
                        "--finetune-steps", "5"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    sa = json.loads((out / "attack" / "attack-leaked-2.json").read_text())
    assert sa["leaked"] == 2 and np.isfinite(sa["sma"]["psnr"]) and np.isfinite(sa["replay"]["psnr"])
    bad = subprocess.run([sys.executable, "-m", "privnerf", "split", "attack", "--run", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a split run directory" in bad.stderr


def test_server_reports_a_bad_setup_as_an_error_reply():
    cfg = split_cfg(steps=2)
    tcfg = cfg.train_config()
    server, client, _ = make_pair(cfg)
    from privnerf.train.trainer import config_to_dict

    bad = config_to_dict(tcfg)
    bad["field"]["grid"]["feature_dim"] = 2  # the grid field needs >= 4 feature channels
    reply = decode(server.handle(encode("setup", {"config": bad, "cameras": {"train": {}}, "resume": False})))
    assert reply[0] == "error"
    cams = json.loads(json.dumps(decode(client.transport.sent[0])[1]["cameras"]))
    reply = decode(server.handle(encode("setup", {"config": bad, "cameras": cams, "resume": False})))
    assert reply[0] == "error" and "feature_dim" in reply[1]["message"]


def test_full_decoder_and_private_head_blind_the_gradient_attacks():
    """With ``--decoder full`` the server's sampling is the same whatever the photos show (it cannot tell empty
    space from content); with ``--private-head`` as well the replay attack has nothing to replay (no better
    than a constant colour) and no gradient attacker comes near the client's NeRF. (The server's own grids
    still hold the scene: ``test_split_run_scores_the_server_reading_its_own_grids``.) (The SMA on this tiny scene sits
    close to the constant colour + 1 dB, too close to assert; on lego and fern it stays below the constant
    colour, BENCHMARKS.md.) ``make_pair`` pins the secret head seed: over seeds 11-14 utility was 16.0-16.3 dB,
    SMA 10.4-11.9, replay 7.6-9.1, constant 9.7, so a fresh secret seed each run made the test flaky."""
    from privnerf.eval.metrics import psnr
    from privnerf.privacy.split_attack import psnr_over

    cfg = split_cfg(steps=4, decoder="full", private_head=True)
    tcfg = cfg.train_config()
    real = load_split(tcfg, "train")
    packings = [[{k: a[k] for k in ("ray", "t", "delta")} for kind, _, a in map(decode, tap.received)
                 if kind == "activations"]
                for tap in tapped_runs(cfg, (real, noise_twin(real, 1)), steps=4, seed=9)]
    assert len(packings[0]) == 4
    for p1, p2 in zip(*packings):
        assert all(np.array_equal(p1[k], p2[k]) for k in p1)  # blind: same samples for photos and for noise
    cfg = split_cfg(steps=100, rays=512, decoder="full", private_head=True)
    server, client, _ = make_pair(cfg, observers=attack_factory(AttackConfig(kinds=("sma", "replay"))))
    client.train(quiet=True)
    tr, test, train = server.trainer, client.render_scene, client.scene
    const = constant_colour_psnr([test.images[0]])
    utility = psnr(client.render_view(0), test.images[0])
    assert utility > const + 5.0, (utility, const)
    for name in ("sma", "replay"):
        attack = server.attacks[name]
        attacker = psnr(render_with_head(tr, attack.head, attack.shift, test.c2w[0], test.intrinsics[0],
                                         *test.hw(0)), test.images[0])
        assert attacker < utility - 3.0, (name, attacker, const, utility)
        if name == "replay":
            assert attacker < const + 1.0, (attacker, const, utility)
    replay = server.attacks["replay"]
    mask = replay.touched[: replay.offsets[1]].reshape(train.hw(0)).numpy()
    assert psnr_over(replay.dummy_image(0), train.images[0], mask) < 12.0


def test_grid_directions_find_a_hidden_density_direction():
    """The principal-direction attack: voxels whose 13 values are an amount along a secret unit direction
    (most negative and bounded: free space pushed transparent; a few large and positive: surfaces) plus small
    isotropic noise give that direction back, sign included; a grid that never moved is an error."""
    from types import SimpleNamespace

    from privnerf.privacy.split_attack import grid_directions

    g = torch.Generator().manual_seed(0)
    secret = torch.linalg.qr(torch.randn(13, 13, generator=g))[0][0]
    amount = torch.where(torch.rand(20000, generator=g) < 0.05, torch.rand(20000, generator=g) * 8.0,
                         -torch.rand(20000, generator=g) * 0.5)  # few strong surfaces, bounded free space
    values = amount[:, None] * secret + 0.05 * torch.randn(20000, 13, generator=g)
    grid = lambda v: SimpleNamespace(data=v.reshape(20, 20, 50, v.shape[-1]))  # noqa: E731
    field = SimpleNamespace(density_grid=grid(values[:, :1]), feature_grid=grid(values[:, 1:]))
    d, singular = grid_directions(field)
    assert float(d[0] @ secret) > 0.99
    assert bool((singular[:-1] >= singular[1:]).all())  # strongest first
    field = SimpleNamespace(density_grid=grid(-values[:, :1]), feature_grid=grid(-values[:, 1:]))
    assert float(grid_directions(field)[0][0] @ secret) < -0.99  # the bulk (free space) decides the sign
    zero = torch.zeros(20000, 13)
    with pytest.raises(ValueError, match="never moved"):
        grid_directions(SimpleNamespace(density_grid=grid(zero[:, :1]), feature_grid=grid(zero[:, 1:])))


def test_split_run_scores_the_server_reading_its_own_grids(tmp_path):
    """A whole ``split train`` run under the default posture (full decoder, private head) scores the offline
    attacks: every colour-calibrated score sits at or above its floor, the constant colour (one view: the
    floor is exact), and the principal-direction attack recovers the scene well above the constant colour with
    one of the two signs — the default posture does not hide the scene from a server that reads its own grids
    (BENCHMARKS.md). Measured on this configuration over six secret head seeds: 13.0 dB with the sign the median
    rule picks here, 9.5 with the other, constant 9.7; on CI's machine the rule picked the other sign (9.46),
    so which sign the rule picks is not asserted (grid_directions)."""
    from privnerf.split.run import run_split

    cfg = split_cfg(steps=60, rays=1024, decoder="full", private_head=True, output=tmp_path / "run")
    cfg.attack.kinds = ("replay",)
    cfg.train.checkpoint_every_s = 1e9
    attack = run_split(cfg, quiet=True)["attack"]
    const = attack["constant_colour_psnr"]
    scored = {k: v for k, v in attack.items() if isinstance(v, dict) and "calibrated_psnr" in v}
    assert set(scored) == {"geometry_only", "direction", "direction_colour", "local_direction", "replay"}
    for name, v in scored.items():
        assert v["calibrated_psnr"] >= const - 1e-3, (name, v["calibrated_psnr"], const)
    direction = attack["direction"]
    best = max(direction["psnr"], direction["psnr_other_sign"])
    assert best > const + 2.0, (direction["psnr"], direction["psnr_other_sign"], const)
    # the photo-free depth rule names one of the two signs and scores that sign's render
    assert direction["depth_rule_sign"] in (1, -1)
    assert direction["depth_rule_psnr"] == (direction["psnr"] if direction["depth_rule_sign"] > 0
                                            else direction["psnr_other_sign"])
    assert len(attack["direction"]["psnr_per_direction"]) == 3
    saved = json.loads((tmp_path / "run" / "attack" / "attack-leaked-0.json").read_text())
    assert saved["direction"]["psnr"] == attack["direction"]["psnr"]
    assert (tmp_path / "run" / "attack" / "renders-leaked-0" / "direction-0" / "view_0000.png").exists()
