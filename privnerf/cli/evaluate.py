"""``privnerf eval --checkpoint DIR --split S``: score a trained run; writes ``DIR/eval-<split>.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run(argv: list[str]) -> int:
    from privnerf.cli.main import add_common
    from privnerf.cli.train import load_split
    from privnerf.eval.evaluate import evaluate_split
    from privnerf.train.checkpoint import atomic_write_text
    from privnerf.train.trainer import set_threads, trainer_from_checkpoint

    p = argparse.ArgumentParser(prog="privnerf eval", description=__doc__)
    p.add_argument("--checkpoint", required=True, type=Path, help="run directory (holds checkpoints/last.pt)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--no-renders", action="store_true", help="do not write the rendered images")
    add_common(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    trainer = trainer_from_checkpoint(a.checkpoint, a.device)
    scene = load_split(trainer.cfg, a.split)
    out_dir = None if a.no_renders else Path(a.checkpoint) / "renders" / a.split
    r = evaluate_split(trainer.field, trainer.occ, trainer.settings(inference=True), scene, out_dir=out_dir,
                       max_images=a.max_images, chunk=trainer.cfg.render.chunk)
    r.update({"split": a.split, "steps": trainer.step_count, "train_time_s": trainer.train_time})
    path = Path(a.checkpoint) / f"eval-{a.split}.json"
    atomic_write_text(path, json.dumps(r, indent=2) + "\n")
    print(f"PSNR {r['psnr']:.2f}  SSIM {r['ssim']:.4f}  LPIPS {r['lpips']}  ({r['num_images']} views) -> {path}")
    return 0
