"""``privnerf split train`` / ``split serve`` / ``split attack``: wire the roles together and score them.

Run layout (``outputs/<experiment>/split-<defense>/<time>/``)::

    config.json        the SplitConfig
    server/            the server's checkpoint (checkpoints/last.pt) and its attack state (attack/sma.pt)
    client/            the client's state (state.pt) and its renders of the test views
    attack/            the attacker's renders, its dummy reconstructions of training photos, attack-*.json
    figure.png         per test view: ground truth | client (utility) | uninformed head | SMA | replay
    results.json       utility, attack, constant-colour reference, bytes per step

With ``--transport grpc`` the server is a separate process (``python -m privnerf split serve``) that the
client reaches over loopback gRPC; the attacker then runs in that process, as it would on a real server.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privnerf.data.io import write_image
from privnerf.privacy.gradient_defense import GradientDefense
from privnerf.privacy.split_attack import (
    AttackConfig,
    attack_factory,
    colour_calibrated_psnr,
    constant_colour_psnr,
    direction_head,
    finetune_head,
    finetune_on_leaked,
    orient_by_depth,
    grid_directions,
    local_direction_head,
    make_attacks,
    psnr_over,
    render_with_head,
)
from privnerf.split.client import SplitClient
from privnerf.split.config import SplitConfig
from privnerf.split.server import SplitServer
from privnerf.split.transport import GrpcTransport, InProcessTransport, free_port, wait_for_port
from privnerf.train.checkpoint import atomic_write_text
from privnerf.train.trainer import config_to_dict, set_threads, trainer_from_checkpoint, write_results

log = logging.getLogger(__name__)


def default_run_dir(cfg: SplitConfig) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d_%H%M%S")
    return Path("outputs") / cfg.experiment / f"split-{cfg.defense}" / stamp


def start_server_process(run_dir: Path, attack: AttackConfig, threads: int | None, device: str,
                         resume: bool) -> tuple[subprocess.Popen, str]:
    """Start ``python -m privnerf split serve`` on a free loopback port; returns the process and address."""
    port = free_port()
    cmd = [sys.executable, "-m", "privnerf", "split", "serve", "--address", f"127.0.0.1:{port}",
           "--run-dir", str(run_dir), "--device", device, "--attack-json", json.dumps(asdict(attack))]
    if threads:
        cmd += ["--threads", str(threads)]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_path = run_dir / "server.log"
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=120)
    except Exception:
        proc.kill()
        raise RuntimeError(f"the split server process did not start; see {log_path}") from None
    return proc, f"127.0.0.1:{port}"


def run_split(cfg: SplitConfig, quiet: bool = False) -> dict[str, Any]:
    """Split training end to end: train, score the client's model, run the attacker's evaluation."""
    from privnerf.cli.train import load_split
    from privnerf.train.checkpoint import latest_checkpoint

    threads = set_threads(cfg.threads)
    tcfg = cfg.train_config()
    run_dir = Path(cfg.output) if cfg.output is not None else default_run_dir(cfg)
    if latest_checkpoint(run_dir / "server") is not None and not cfg.resume:
        raise FileExistsError(f"{run_dir} already holds a split run; pass --resume or choose another --output")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")

    train_scene = load_split(tcfg, "train")
    test_scene = load_split(tcfg, tcfg.eval_split)
    if cfg.eval_max_images is not None:
        test_scene = test_scene.subset(list(range(min(cfg.eval_max_images, test_scene.num_views))))
    defense = GradientDefense(cfg.defense_config(), tcfg.steps)

    proc = None
    server = None
    if cfg.server or cfg.transport == "grpc":
        if cfg.server:
            address = cfg.server
        else:
            proc, address = start_server_process(run_dir / "server", cfg.attack, cfg.threads, cfg.device, cfg.resume)
        transport = GrpcTransport(address)
    else:
        server = SplitServer(run_dir / "server", device=cfg.device, threads=cfg.threads,
                             observer_factory=attack_factory(cfg.attack, resume=cfg.resume))
        transport = InProcessTransport(server)
    try:
        client = SplitClient(tcfg, train_scene, transport, defense, render_scene=test_scene,
                             run_dir=run_dir / "client", private_head=cfg.private_head)
        client.setup(resume=cfg.resume)
        stats = client.train(quiet=quiet)
        t0 = time.perf_counter()
        utility = client.evaluate(out_dir=run_dir / "client" / "renders", quiet=quiet)
        eval_time = time.perf_counter() - t0
    finally:
        transport.close()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    results: dict[str, Any] = {
        "psnr": utility["psnr"], "ssim": utility["ssim"], "lpips": utility["lpips"],
        "num_images": utility["num_images"], "split": tcfg.eval_split, "data": str(cfg.data),
        "defense": asdict(cfg.defense_config()), "transport": "grpc" if (cfg.server or cfg.transport == "grpc")
        else "inproc", "threads": threads, "eval_time_s": eval_time, **stats,
        "constant_colour_psnr": constant_colour_psnr(list(test_scene.images)),
    }
    if cfg.attack.enabled:
        results["attack"] = evaluate_attack(run_dir, leaked=0, quiet=quiet, test_scene=test_scene,
                                            train_scene=train_scene)
    write_figure(run_dir, test_scene, results.get("attack") is not None)
    write_results(run_dir, results)
    return {**results, "run_dir": str(run_dir)}


def load_attacks(run_dir: Path, cfg: AttackConfig | None = None):
    """The server's trainer and the states of the attacks it ran, from a split run directory."""
    server_dir = Path(run_dir) / "server"
    trainer = trainer_from_checkpoint(server_dir)
    cfg = cfg or AttackConfig()
    attacks = []
    for attack in make_attacks(cfg, trainer):
        path = server_dir / "attack" / f"{attack.name}.pt"
        if path.exists():
            attack.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
            attacks.append(attack)
    if not attacks:
        raise FileNotFoundError(f"{server_dir / 'attack'}: no attack state (was the run trained with the attack on?)")
    return trainer, attacks


UNINFORMED_HEADS = 3
UNINFORMED_SEED = 7_000_000
"""Seeds of the guessed heads behind "geometry only" (fixed, so runs compare; no client draws these)."""
LOCAL_BLOCKS = (4, 8)
"""Partitions (blocks per axis) of the local principal-direction attack."""
DIRECTIONS_SCORED = 3
"""Principal directions of the server's grids the direction attack renders as density (the first is its pick)."""


def evaluate_attack(run_dir: Path, leaked: int = 0, quiet: bool = False, test_scene=None, train_scene=None,
                    attack_cfg: AttackConfig | None = None) -> dict[str, Any]:
    """Score each attacker's NeRF (the server's grids + the attack's head) on the test views, after SA-SMA
    fine-tuning on ``leaked`` training images when ``leaked > 0``. Also scores two references: the constant
    colour image, and the server's grids with an uninformed head (what the geometry the server holds gives
    without any appearance leak). Writes ``attack/attack-leaked-N.json`` and renders."""
    from privnerf.cli.train import load_split
    from privnerf.eval.evaluate import _lpips_fn
    from privnerf.eval.metrics import mean_metrics, psnr, ssim, to_uint8
    from privnerf.split.cut import ClientHead

    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    acfg = attack_cfg or AttackConfig(**cfg.get("attack", {}))
    trainer, attacks = load_attacks(run_dir, acfg)
    tcfg = SplitConfig(data=cfg["data"], background=cfg.get("background")).train_config()
    if test_scene is None:
        test_scene = load_split(tcfg, "test")
        n = cfg.get("eval_max_images")
        if n is not None:
            test_scene = test_scene.subset(list(range(min(n, test_scene.num_views))))
    if train_scene is None:
        train_scene = load_split(tcfg, "train")
    leaked_scene = None
    if leaked > 0:
        if leaked > train_scene.num_views:
            raise ValueError(f"--leaked {leaked}: the training split has only {train_scene.num_views} views")
        leaked_scene = train_scene.subset(list(range(leaked)))
    lp = _lpips_fn()
    shift = float(trainer.field.shift)

    def score(head, tag: str) -> dict[str, Any]:
        rows, preds = [], []
        out_dir = run_dir / "attack" / f"renders-leaked-{leaked}" / tag
        out_dir.mkdir(parents=True, exist_ok=True)
        for i in range(test_scene.num_views):
            h, w = test_scene.hw(i)
            pred = render_with_head(trainer, head, shift, test_scene.c2w[i], test_scene.intrinsics[i], h, w,
                                    chunk=trainer.cfg.render.chunk)
            gt = test_scene.images[i]
            rows.append({"psnr": psnr(pred, gt), "ssim": ssim(pred, gt), "lpips": lp(pred, gt) if lp else None})
            preds.append(pred)
            write_image(out_dir / f"view_{i:04d}.png", to_uint8(pred))
        calibrated = colour_calibrated_psnr(preds, list(test_scene.images))
        return {**mean_metrics(rows), "calibrated_psnr": calibrated, "num_images": test_scene.num_views}

    # Heads the attacker cannot know anything about: what the server's grids show with a guessed head. One
    # guess scores anywhere in a wide range (lego, full decoder: 5.3 to 16.3 dB), so report the mean of a few.
    guesses = []
    for k in range(UNINFORMED_HEADS):
        torch.manual_seed(UNINFORMED_SEED + k)
        guesses.append(score(ClientHead(trainer.cfg.field.grid), "geometry-only" if k == 0 else f"geometry-only-{k}"))
    geometry = {key: float(np.mean([g[key] for g in guesses])) for key in ("psnr", "ssim", "lpips", "calibrated_psnr")
                if all(g.get(key) is not None for g in guesses)}
    geometry.update({"num_images": test_scene.num_views, "heads": len(guesses),
                     "psnr_per_head": [g["psnr"] for g in guesses]})
    out: dict[str, Any] = {"leaked": leaked, "constant_colour_psnr": constant_colour_psnr(list(test_scene.images)),
                           "geometry_only": geometry}
    if trainer.cfg.field.grid.decoder == "full" and leaked == 0:
        # the density read off the grids' principal direction (grey), then in false colour; the next
        # directions are scored too, to show whether the first one is the density. It uses no photos, so it
        # is scored once, with the leaked-0 scores.
        directions, singular = grid_directions(trainer.field)
        grid_cfg = trainer.cfg.field.grid
        per = [score(direction_head(grid_cfg, directions, k), f"direction-{k}") for k in range(DIRECTIONS_SCORED)]
        # The sign rule (grid_directions) is a guess with a thin margin on small runs, so the other sign of
        # the first direction is scored too: the grids give the scene away up to this one bit, which an
        # attacker settles by looking at the two renders.
        flipped = score(direction_head(grid_cfg, -directions, 0), "direction-0-other-sign")
        # a second sign rule that uses a training pose and no photo: the sign under which rays stop later
        sign, stop_kept, stop_other = orient_by_depth(trainer, grid_cfg, directions, shift, train_scene.c2w[0],
                                                      train_scene.intrinsics[0], *train_scene.hw(0))
        out["direction"] = {**per[0], "psnr_per_direction": [d["psnr"] for d in per],
                            "calibrated_per_direction": [d["calibrated_psnr"] for d in per],
                            "psnr_other_sign": flipped["psnr"], "calibrated_other_sign": flipped["calibrated_psnr"],
                            "depth_rule_sign": sign, "depth_rule_psnr": per[0]["psnr"] if sign > 0 else flipped["psnr"],
                            "depth_rule_stops": [stop_kept, stop_other],
                            "singular_values": [float(x) for x in singular]}
        out["direction_colour"] = score(direction_head(grid_cfg, directions, 0, colour=True), "direction-0-colour")
        # the same per block of the box: what a key that varies slowly through space leaves to a local analysis
        local = {b: score(local_direction_head(grid_cfg, trainer.field, b, directions), f"local-direction-{b}")
                 for b in LOCAL_BLOCKS}
        best = max(local, key=lambda b: local[b]["psnr"])
        out["local_direction"] = {**local[best], "blocks": best,
                                  "psnr_per_blocks": {str(b): v["psnr"] for b, v in local.items()}}
    key_cells = int(cfg.get("key_cells", 0))
    if leaked_scene is not None and key_cells:
        # The client's head is keyed: the attacker, knowing the architecture, fits a keyed head of its own (its
        # key's angles trained with the rest) to the leaked photos; its online attacks' heads are key-less.
        torch.manual_seed(UNINFORMED_SEED + 100)
        keyed = ClientHead(replace(trainer.cfg.field.grid, key_cells=key_cells), trainer.field.space.box)
        keyed.key.make_trainable()
        losses = finetune_head(keyed, shift, trainer.background.cpu(), trainer, leaked_scene, acfg, quiet)
        out["sa_sma_keyed"] = {**score(keyed, "sa-sma-keyed"), "finetune_final_loss": losses[-1]}
    for attack in attacks:
        row: dict[str, Any] = {"attack_steps": attack.steps}
        if leaked_scene is not None:
            losses = finetune_on_leaked(attack, trainer, leaked_scene, acfg, quiet=quiet)
            row["finetune_final_loss"] = losses[-1] if losses else None
        row.update(score(attack.head, attack.name))
        # the attacker's reconstruction of the client's training photos, over the pixels the protocol let
        # it see (the pixels the client asked for)
        dummy = []
        for i in range(min(train_scene.num_views, 4)):
            d = attack.dummy_image(i)
            mask = attack.touched[attack.offsets[i] : attack.offsets[i + 1]].reshape(d.shape[:2]).numpy()
            dummy.append(psnr_over(d, train_scene.images[i], mask))
            write_image(run_dir / "attack" / f"{attack.name}_train_view_{i:04d}.png", to_uint8(d))
        row["train_pixels_psnr"] = float(np.nanmean(dummy)) if dummy else None
        row["train_pixels_seen"] = float(attack.touched.float().mean())
        if attack.name == "sma":
            row["rho"] = attack.rho
        out[attack.name] = row
    write_results_to(run_dir / "attack" / f"attack-leaked-{leaked}.json", out)
    return out


def write_results_to(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=float) + "\n")


def write_figure(run_dir: Path, test_scene, with_attack: bool, views: int = 3) -> Path | None:
    """``figure.png``: one row per test view — ground truth | client render | the server's grids with an
    uninformed head | SMA attacker | replay attacker."""
    import imageio.v3 as iio

    from privnerf.eval.metrics import to_uint8

    rows = []
    for i in range(min(views, test_scene.num_views)):
        cols = [to_uint8(test_scene.images[i])]
        client = run_dir / "client" / "renders" / f"view_{i:04d}.png"
        attacks = [run_dir / "attack" / "renders-leaked-0" / k / f"view_{i:04d}.png"
                   for k in ("geometry-only", "sma", "replay")]
        for p in [client] + (attacks if with_attack else []):
            if p.exists():
                cols.append(iio.imread(p)[..., :3])
        rows.append(np.concatenate(cols, axis=1))
    if not rows:
        return None
    path = run_dir / "figure.png"
    write_image(path, np.concatenate(rows, axis=0))
    return path


def serve(address: str, run_dir: Path, device: str = "cpu", threads: int | None = None,
          attack: AttackConfig | None = None, resume: bool = False) -> None:
    """Run a split server until interrupted (``privnerf split serve``)."""
    from privnerf.split.transport import serve_grpc

    set_threads(threads)
    attack = attack or AttackConfig(enabled=False)
    server = SplitServer(run_dir, device=device, threads=threads, observer_factory=attack_factory(attack, resume))
    g, port = serve_grpc(server, address)
    print(f"split server on port {port}, state in {run_dir}", flush=True)
    try:
        g.wait_for_termination()
    except KeyboardInterrupt:
        g.stop(grace=2)
