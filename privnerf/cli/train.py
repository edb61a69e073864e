"""``privnerf train --data PATH --output DIR [--max-time S] [--steps N] [--device auto|cpu|cuda] [--resume]``."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import tyro

from privnerf.data.loader import detect_format, load_scene
from privnerf.data.scene import Scene
from privnerf.train.checkpoint import atomic_write_text, latest_checkpoint
from privnerf.train.config import TrainConfig
from privnerf.train.trainer import Trainer, config_to_dict, set_threads, write_results

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def load_split(cfg: TrainConfig, split: str) -> Scene:
    opts = {}
    if cfg.background is not None:
        if detect_format(cfg.data) not in ("blender", "nerfstudio"):
            raise ValueError(f"--background applies to Blender/nerfstudio data with alpha, not {cfg.data}")
        opts["background"] = BACKGROUNDS[cfg.background]
    return load_scene(cfg.data, split, **opts)


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d_%H%M%S")
    return Path("outputs") / cfg.experiment / cfg.field.kind / stamp


def train_and_evaluate(cfg: TrainConfig, quiet: bool = False, make_trainer=None) -> dict:
    """Train (or resume), evaluate on ``cfg.eval_split``, write ``results.json``; returns the results.

    ``make_trainer(cfg, train_scene, run_dir) -> Trainer`` (optional) builds the trainer instead of
    :class:`Trainer` (``privnerf sparse train``: a subset of the training views and HG3's guidance)."""
    threads = set_threads(cfg.threads)
    run_dir = Path(cfg.output) if cfg.output is not None else default_run_dir(cfg)
    ckpt = latest_checkpoint(run_dir)
    if (ckpt is not None or (run_dir / "dac.json").exists()) and not cfg.resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --output")
    # everything that can refuse the input (data, field, the owner's key) comes before the run directory
    train_scene = load_split(cfg, "train")
    eval_scene = load_split(cfg, cfg.eval_split)
    trainer = Trainer(cfg, train_scene, run_dir) if make_trainer is None else make_trainer(cfg, train_scene, run_dir)
    train_scene = trainer.scene
    if cfg.method == "dac":
        from privnerf.dac.pipeline import check_dac

        check_dac(cfg, train_scene)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(config_to_dict(cfg), indent=2) + "\n")
    if cfg.resume and ckpt is not None and cfg.method == "plain":
        trainer.load_checkpoint(ckpt)
        print(f"resumed from {ckpt} at step {trainer.step_count} ({trainer.train_time:.0f}s trained)")

    from privnerf.eval.evaluate import evaluate_split

    def curve_point(t: Trainer) -> dict:
        r = evaluate_split(t.field, t.occ, t.settings(inference=True), eval_scene, max_images=cfg.eval_curve_images,
                           with_lpips=False, chunk=cfg.render.chunk, quiet=True)
        return {"psnr": r["psnr"], "ssim": r["ssim"]}

    dac = None
    if cfg.method == "dac":  # experts, distillation, fine-tuning; the student is the run's model
        from privnerf.dac.pipeline import run_dac

        trainer, dac = run_dac(cfg, train_scene, run_dir, curve_point if cfg.eval_every_s else None, quiet)
    else:
        trainer.train(eval_fn=curve_point if cfg.eval_every_s else None, quiet=quiet)
    t0 = time.perf_counter()
    metrics = evaluate_split(trainer.field, trainer.occ, trainer.settings(inference=True), eval_scene,
                             out_dir=run_dir / "renders" / cfg.eval_split, max_images=cfg.eval_max_images,
                             chunk=cfg.render.chunk, quiet=quiet)
    eval_time = time.perf_counter() - t0
    stats = trainer.last_stats
    results = {
        "psnr": metrics["psnr"],
        "ssim": metrics["ssim"],
        "lpips": metrics["lpips"],
        "num_images": metrics["num_images"],
        "split": cfg.eval_split,
        "steps": trainer.step_count,
        "train_time_s": trainer.train_time if dac is None else dac["total_time_s"],
        "eval_time_s": eval_time,
        "render_time_per_image_s": metrics["render_time_per_image_s"],
        "rays_per_s": stats.get("rays_per_s"),
        "samples_per_s": stats.get("samples_per_s"),
        "field": cfg.field.kind,
        "data": str(cfg.data),
        "device": str(trainer.device),
        "threads": threads,
        "curve": trainer.curve,
        "events": trainer.events,
        "timeline": trainer.timeline,
        "curve_images": cfg.eval_curve_images,
        "per_image": metrics["per_image"],
        "method": cfg.method,
    }
    if dac is not None:
        results["dac"] = dac
    if cfg.render_video:
        from privnerf.cli.render import render_video

        results["video"] = str(render_video(trainer, train_scene, run_dir / "renders" / "orbit.mp4", quiet=quiet))
    path = write_results(run_dir, results)
    if not quiet:
        print(f"\nPSNR {results['psnr']:.2f} dB  SSIM {results['ssim']:.4f}  LPIPS "
              f"{results['lpips'] if results['lpips'] is None else round(results['lpips'], 4)}  "
              f"on {results['num_images']} {cfg.eval_split} views after {trainer.step_count} steps "
              f"({trainer.train_time:.0f}s)")
        print(f"results: {path}\nrenders: {run_dir / 'renders'}")
        if "video" in results:
            print(f"video:   {results['video']}")
    return results


def run(argv: list[str]) -> int:
    cfg = tyro.cli(TrainConfig, args=argv, prog="privnerf train")
    train_and_evaluate(cfg)
    return 0
