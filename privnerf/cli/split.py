"""``privnerf split train|serve|attack``: split learning (SplitNeRF / S²NeRF), its attacks and defenses.

* ``privnerf split train --data D --defense {none,s2nerf,s2nerf-light,gaussian,prune} [--c ..] [--r ..]
  [--transport inproc|grpc] [--server HOST:PORT]`` — every field of :class:`privnerf.split.config.SplitConfig`
  is a flag (``privnerf split train --help``).
* ``privnerf split serve --address HOST:PORT --run-dir DIR [--attack]`` — the server role on its own.
* ``privnerf split attack --run DIR [--leaked N]`` — score the attacker's NeRF of a run (SA-SMA with N
  leaked training images when N > 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

USAGE = ("usage: privnerf split train --data D [--defense ...] [--c C] [--r R] ...\n"
         "       privnerf split serve --address HOST:PORT --run-dir DIR [--attack]\n"
         "       privnerf split attack --run DIR [--leaked N]")


def attack_line(r: dict) -> str:
    parts = [f"attacker PSNR (leaked images: {r['leaked']})"]
    for k in ("sma", "replay", "direction", "direction_colour"):
        if k in r:
            parts.append(f"{k} {r[k]['psnr']:.2f} dB")
    parts.append(f"| geometry only {r['geometry_only']['psnr']:.2f} dB, constant colour {r['constant_colour_psnr']:.2f} dB")
    cal = {k: v["calibrated_psnr"] for k, v in r.items() if isinstance(v, dict) and "calibrated_psnr" in v}
    if cal:  # what each render holds up to the best affine colour map (floor: the constant colour)
        parts.append("\ncolour-calibrated: " + ", ".join(f"{k} {v:.2f} dB" for k, v in cal.items()))
    return " ".join(parts)


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        import tyro

        from privnerf.split.config import SplitConfig
        from privnerf.split.run import run_split

        cfg = tyro.cli(SplitConfig, args=rest, prog="privnerf split train",
                       description="Split training: the server holds poses and grids, the client its photos.")
        r = run_split(cfg)
        print(f"utility PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.3f}  (constant colour "
              f"{r['constant_colour_psnr']:.2f} dB)")
        if "attack" in r:
            print(attack_line(r["attack"]))
        print(f"traffic per step: up {r['bytes_up_per_step'] / 1e6:.2f} MB, down {r['bytes_down_per_step'] / 1e6:.2f} MB")
        print(f"results: {r['run_dir']}/results.json  figure: {r['run_dir']}/figure.png")
        return 0
    if cmd == "serve":
        from privnerf.privacy.split_attack import AttackConfig
        from privnerf.split.run import serve

        p = argparse.ArgumentParser(prog="privnerf split serve")
        p.add_argument("--address", default="127.0.0.1:50071")
        p.add_argument("--run-dir", type=Path, required=True)
        p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--attack", action="store_true", help="run the surrogate model attack (a curious server)")
        p.add_argument("--attack-json", default=None, help="full attack configuration as JSON")
        p.add_argument("--resume", action="store_true")
        a = p.parse_args(rest)
        attack = AttackConfig(**json.loads(a.attack_json)) if a.attack_json else AttackConfig(enabled=a.attack)
        serve(a.address, a.run_dir, a.device, a.threads, attack, a.resume)
        return 0
    if cmd == "attack":
        from privnerf.split.run import evaluate_attack

        p = argparse.ArgumentParser(prog="privnerf split attack")
        p.add_argument("--run", type=Path, required=True, help="a split run directory")
        p.add_argument("--leaked", type=int, default=0, help="leaked training images for SA-SMA (0 = plain SMA)")
        p.add_argument("--finetune-steps", type=int, default=None)
        a = p.parse_args(rest)
        if not (a.run / "config.json").exists():
            print(f"error: {a.run}: not a split run directory (no config.json)", file=sys.stderr)
            return 2
        acfg = None
        if a.finetune_steps is not None:
            from privnerf.privacy.split_attack import AttackConfig

            cfg = json.loads((a.run / "config.json").read_text())
            acfg = AttackConfig(**{**cfg.get("attack", {}), "finetune_steps": a.finetune_steps})
        r = evaluate_attack(a.run, leaked=a.leaked, attack_cfg=acfg)
        print(attack_line(r))
        print(f"results: {a.run}/attack/attack-leaked-{a.leaked}.json")
        return 0
    print(f"error: unknown split command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2
