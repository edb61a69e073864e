"""Render time and test PSNR of a trained run at several inference step lengths, in one process.

Usage: ``python benchmarks/render_speed.py [RUN_DIR] [--views 20]`` (default: the lego 400 grid run of
``benchmarks/engine.py``) -> ``benchmarks/results/render-speed.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privnerf.cli.train import load_split  # noqa: E402
from privnerf.data.io import atomic_write_text  # noqa: E402
from privnerf.eval.evaluate import evaluate_split  # noqa: E402
from privnerf.train.trainer import set_threads, trainer_from_checkpoint  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run", nargs="?", type=Path, default=ROOT / "outputs" / "bench" / "lego400" / "grid")
    p.add_argument("--views", type=int, default=20)
    a = p.parse_args()
    if not (a.run / "checkpoints" / "last.pt").exists():
        print(f"skipping: no run at {a.run} (run benchmarks/engine.py first)")
        return 0
    trainer = trainer_from_checkpoint(a.run)
    threads = set_threads(None)
    scene = load_split(trainer.cfg, "test")
    train_step = trainer.settings().step
    rows = []
    for scale in (1.0, 1.5, 2.0):
        s = dataclasses.replace(trainer.settings(), step=train_step * scale)
        r = evaluate_split(trainer.field, trainer.occ, s, scene, max_images=a.views, with_lpips=False, quiet=True)
        rows.append({"step_scale": scale, "psnr": r["psnr"], "ssim": r["ssim"],
                     "render_s_per_frame": r["render_time_per_image_s"]})
        print(f"step x{scale}: {r['psnr']:.3f} dB, SSIM {r['ssim']:.4f}, {r['render_time_per_image_s']:.2f} s/frame")
    out = ROOT / "benchmarks" / "results" / "render-speed.json"
    atomic_write_text(out, json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                       "run": str(a.run.relative_to(ROOT) if ROOT in a.run.resolve().parents else a.run),
                                       "threads": threads, "views": a.views,
                                       "default_inference_step_scale": trainer.cfg.render.inference_step_scale,
                                       "rows": rows}, indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
