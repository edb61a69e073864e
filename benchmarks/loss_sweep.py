"""Short lego 400 runs of the grid field with one setting changed each: a triage before a full engine run.

Each run trains for ``--seconds`` (default 300: the growth and learning-rate schedules compress to that
budget, so these runs rank settings, they do not predict the 20-minute figure), evaluates PSNR on the first
4 test views at a third, two thirds and the end of the budget, and records steps, rays/s and samples/s.
Runs go one after another in one process; nothing else should run on the machine meanwhile.

Usage::

    python benchmarks/loss_sweep.py --run base --run dist5e-4:optim.distortion_weight=5e-4 \\
        --run dist1e-3-seed1:optim.distortion_weight=1e-3,seed=1

A run is ``NAME[:KEY=VALUE,...]`` with the keys of ``benchmarks/engine.py --set``. Results are appended to
``benchmarks/results/engine-loss-sweep.json`` (one row per name; a re-run replaces its row).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import DATA, apply_override, machine  # noqa: E402

from privnerf.cli.train import train_and_evaluate  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402
from privnerf.train.config import TrainConfig  # noqa: E402


def run_one(name: str, settings: list[str], seconds: float, out_root: Path) -> dict:
    out = out_root / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(data=str(DATA / "nerf_synthetic" / "lego"), output=out, max_time=seconds, steps=10**9,
                      background="white", eval_max_images=4, eval_every_s=seconds / 3, eval_curve_images=4)
    for item in settings:
        apply_override(cfg, item)
    r = train_and_evaluate(cfg, quiet=True)
    row = {"settings": settings, "psnr": r["psnr"], "ssim": r["ssim"], "steps": r["steps"],
           "rays_per_s": r["rays_per_s"], "samples_per_s": r["samples_per_s"],
           "curve": [{"time_s": c["time_s"], "step": c["step"], "psnr": c["psnr"]} for c in r["curve"]]}
    print(name, json.dumps({k: row[k] for k in ("psnr", "steps", "rays_per_s", "samples_per_s")}), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="NAME[:KEY=VALUE,...]")
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-sweep")
    a = p.parse_args()
    lego = DATA / "nerf_synthetic" / "lego"
    if not lego.exists():
        sys.exit(f"{lego} not found (set PRIVNERF_DATA)")
    res_path = ROOT / "benchmarks" / "results" / "engine-loss-sweep.json"
    result = json.loads(res_path.read_text()) if res_path.exists() else {"runs": {}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    for spec in a.run:
        name, _, rest = spec.partition(":")
        row = run_one(name, [s for s in rest.split(",") if s], a.seconds, a.out)
        row.update(seconds=a.seconds, machine=machine(), commit=commit.stdout.strip(),
                   finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   command=f"python benchmarks/loss_sweep.py --seconds {a.seconds:g} --run {spec}")
        result["runs"][name] = row
        atomic_write_text(res_path, json.dumps(result, indent=2) + "\n")
    print(f"-> {res_path}")


if __name__ == "__main__":
    main()
