"""Engine benchmark: test PSNR against wall-clock training time, our grid field vs the classic NeRF MLP.

Runs, one after another in one process (so both fields see the same machine state):

* ``tiny-lego``: ``../shared/data/tiny_lego/lego_tiny_100.npz`` (views 0-99 train, 100-105 test, black
  background), 180 s of training per field.
* ``lego400``: ``../shared/data/nerf_synthetic/lego`` at 400x400, white background, 1200 s per field,
  scored on the first 20 test views (r_0 .. r_19, as the nerfacto peer row). The classic MLP renders a
  400x400 frame in minutes on two cores, so it is scored on the first 4 test views; the grid field's score
  on those same 4 views is reported beside it.

Both fields use the same sampler, renderer, loop and stop rule (``--max-time``); only the field (and the
batch size: the classic NeRF's 1024 rays) differs. Training time excludes the PSNR-curve evaluations.

Usage: ``python benchmarks/engine.py [--only tiny-lego|lego400] [--scale 0.1]`` (``--scale`` shortens every
time budget, for a smoke run). Results: ``benchmarks/results/engine-<case>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from privnerf.cli.train import train_and_evaluate  # noqa: E402
from privnerf.data.paths import data_root  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402
from privnerf.train.config import TrainConfig  # noqa: E402

DATA = data_root()


def git_commit() -> str:
    """The repository's short HEAD commit, recorded with every benchmark result."""
    import subprocess

    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True).stdout.strip()


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


DEVICE = "cpu"
"""Where both fields train and render (``--device``; CUDA runs the pure-PyTorch grid kernels)."""

GRID_OVERRIDES: list[str] = []
"""``section.key=value`` settings applied to the grid field's config (``--set``; check runs only)."""


def apply_override(cfg: TrainConfig, item: str) -> None:
    key, _, value = item.partition("=")
    *path, leaf = key.split(".")
    target = cfg
    for part in path:
        target = getattr(target, part)
    if not hasattr(target, leaf) or not value:
        raise SystemExit(f"--set {item}: no such setting (use e.g. render.step_ratio=0.75)")
    old = getattr(target, leaf)
    try:
        if isinstance(old, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            new = value.lower() in ("true", "1")
        elif isinstance(old, (int, float, str)):
            new = type(old)(value)
        else:
            raise SystemExit(f"--set {item}: only numbers, strings and booleans can be set here")
    except ValueError:
        raise SystemExit(f"--set {item}: {value!r} is not a valid {type(old).__name__}") from None
    setattr(target, leaf, new)


def grid_config(data: str, max_time: float, out: Path, **kw) -> TrainConfig:
    cfg = TrainConfig(data=data, output=out, max_time=max_time, steps=10**9, device=DEVICE, **kw)
    for item in GRID_OVERRIDES:
        apply_override(cfg, item)
    return cfg


def vanilla_config(data: str, max_time: float, out: Path, **kw) -> TrainConfig:
    cfg = TrainConfig(data=data, output=out, max_time=max_time, steps=10**9, device=DEVICE, **kw)
    cfg.field.kind = "vanilla"
    cfg.optim.batch_rays = 1024
    cfg.render.samples_per_ray = 192
    # the MLP's density is as costly as its colour: refresh a random 5% of a 64^3 occupancy grid per update
    cfg.render.occ_resolution = 64
    cfg.render.occ_fraction = 0.05
    cfg.render.chunk = 4096
    return cfg


def run_case(name: str, data: str, seconds: float, eval_grid: int | None, eval_vanilla: int | None,
             curve_every: float, vanilla_curve: bool, out_root: Path, background=None, fields=("grid", "vanilla")) -> dict:
    rows = {}
    makers = {"grid": grid_config, "vanilla": vanilla_config}
    for field, make in ((f, makers[f]) for f in fields):
        out = out_root / name / field
        if out.exists():
            import shutil

            shutil.rmtree(out)
        kw = dict(background=background, eval_max_images=eval_grid if field == "grid" else eval_vanilla,
                  eval_every_s=curve_every if (field == "grid" or vanilla_curve) else None, eval_curve_images=4)
        cfg = make(data, seconds, out, **kw)
        print(f"\n=== {name}: {field} for {seconds:.0f}s ===", flush=True)
        t0 = time.perf_counter()
        res = train_and_evaluate(cfg)
        res["wall_s"] = time.perf_counter() - t0
        rows[field] = res
    if "vanilla" not in rows:  # grid-only check run
        g = rows["grid"]
        g.pop("per_image", None)
        return {"summary": {"grid_psnr": g["psnr"], "grid_ssim": g["ssim"], "grid_lpips": g["lpips"],
                            "grid_views": g["num_images"], "grid_steps": g["steps"]}, "runs": rows}
    g, v = rows["grid"], rows["vanilla"]
    n_v = v["num_images"]
    same_views = [r["psnr"] for r in g["per_image"][:n_v]]
    summary = {
        "grid_psnr": g["psnr"], "grid_ssim": g["ssim"], "grid_lpips": g["lpips"], "grid_views": g["num_images"],
        "vanilla_psnr": v["psnr"], "vanilla_ssim": v["ssim"], "vanilla_lpips": v["lpips"], "vanilla_views": n_v,
        "grid_psnr_on_vanilla_views": sum(same_views) / len(same_views),
        "grid_samples_per_s": g["samples_per_s"], "vanilla_samples_per_s": v["samples_per_s"],
        "grid_rays_per_s": g["rays_per_s"], "vanilla_rays_per_s": v["rays_per_s"],
        "grid_steps": g["steps"], "vanilla_steps": v["steps"],
        "grid_render_s_per_frame": g["render_time_per_image_s"],
        "vanilla_render_s_per_frame": v["render_time_per_image_s"],
    }
    for r in rows.values():
        r.pop("per_image", None)
    return {"summary": summary, "runs": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["tiny-lego", "lego400"])
    p.add_argument("--scale", type=float, default=1.0, help="multiply every time budget (smoke runs)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench")
    p.add_argument("--fields", choices=["both", "grid"], default="both",
                   help="'grid' skips the classic-MLP baseline (a check run, not a benchmark row)")
    p.add_argument("--tag", default="", help="suffix for the results file name")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the GPU rows of BENCHMARKS.md (tag them, e.g. --tag h100)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="grid config override for a check run, e.g. render.step_ratio=0.75 (with --fields grid)")
    a = p.parse_args()
    if a.set and a.fields != "grid":
        raise SystemExit("--set changes only the grid run: use it with --fields grid (a check run, not a benchmark row)")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    GRID_OVERRIDES.extend(a.set)
    global DEVICE
    DEVICE = a.device
    tiny = DATA / "tiny_lego" / "lego_tiny_100.npz"
    lego = DATA / "nerf_synthetic" / "lego"
    cases = []
    if a.only in (None, "tiny-lego"):
        cases.append(("tiny-lego", tiny, dict(seconds=180 * a.scale, eval_grid=None, eval_vanilla=None,
                                              curve_every=15 * a.scale, vanilla_curve=True)))
    if a.only in (None, "lego400"):
        cases.append(("lego400", lego, dict(seconds=1200 * a.scale, eval_grid=20, eval_vanilla=4,
                                            curve_every=60 * a.scale, vanilla_curve=False, background="white")))
    for name, path, kw in cases:
        if not path.exists():
            print(f"skipping {name}: {path} not found (set PRIVNERF_DATA)")
            continue
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        fields = ("grid", "vanilla") if a.fields == "both" else ("grid",)
        result = run_case(name, str(path), out_root=a.out, fields=fields, **kw)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        result.update({
            "case": name, "data": str(path.relative_to(DATA.parent)) if DATA.parent in path.parents else str(path),
            "started": started, "machine": machine(), "commit": commit.stdout.strip(),
            "command": "python benchmarks/engine.py" + (f" --only {a.only}" if a.only else "")
            + (f" --scale {a.scale}" if a.scale != 1.0 else "") + (f" --fields {a.fields}" if a.fields != "both" else "")
            + (f" --tag {a.tag}" if a.tag else "") + (f" --device {a.device}" if a.device != "cpu" else "") + "".join(f" --set {x}" for x in a.set),
        })
        out = a.results_dir / f"engine-{name}{'-' + a.tag if a.tag else ''}.json"
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        print(f"\n{name}: {json.dumps(result['summary'], indent=2)}\n-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
