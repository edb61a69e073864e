"""``privnerf render --checkpoint DIR --out FILE.mp4|.gif`` (orbit video) or ``--split S`` (per-view PNGs)."""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from tqdm.auto import tqdm

from privnerf.eval.metrics import to_uint8
from privnerf.render.camera_path import orbit_path
from privnerf.render.renderer import render_image


def render_video(trainer, scene, out: Path, n_frames: int = 60, fps: int = 24, size: int | None = None,
                 quiet: bool = False) -> Path:
    """Render an orbit around ``scene``'s training cameras to ``out`` (.mp4 or .gif); returns the path."""
    out = Path(out)
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"{out}: video must end in .mp4 or .gif")
    h, w = scene.hw(0)
    intr = torch.from_numpy(scene.intrinsics[0]).clone()
    if size is not None:
        s = size / max(h, w)
        h, w = int(round(h * s)), int(round(w * s))
        intr = intr * s
    frames = []
    settings = trainer.settings(inference=True)
    for pose in tqdm(orbit_path(scene, n_frames), desc="video", disable=quiet, leave=False):
        img = render_image(trainer.field, trainer.occ, torch.from_numpy(pose), intr, h, w, settings,
                           chunk=trainer.cfg.render.chunk)["rgb"]
        frames.append(to_uint8(img.cpu().numpy()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    if out.suffix.lower() == ".gif":
        iio.imwrite(tmp, np.stack(frames), duration=1000 / fps, loop=0)
    else:
        iio.imwrite(tmp, np.stack(frames), fps=fps, codec="libx264", macro_block_size=1)
    tmp.replace(out)
    return out


def run(argv: list[str]) -> int:
    from privnerf.cli.main import add_common
    from privnerf.train.trainer import set_threads, trainer_from_checkpoint

    p = argparse.ArgumentParser(prog="privnerf render", description=__doc__)
    p.add_argument("--checkpoint", required=True, type=Path, help="run directory (holds checkpoints/last.pt)")
    p.add_argument("--out", type=Path, help="video file (.mp4 or .gif) for an orbit")
    p.add_argument("--split", help="instead render every view of this split as PNGs (with --out-dir)")
    p.add_argument("--out-dir", type=Path, help="folder for --split renders (default RUN/renders/<split>)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--size", type=int, default=None, help="longest side of video frames in pixels")
    add_common(p)
    a = p.parse_args(argv)
    if (a.out is None) == (a.split is None):
        p.error("give exactly one of --out (video) or --split (per-view renders)")
    set_threads(a.threads)
    trainer = trainer_from_checkpoint(a.checkpoint, a.device)
    if a.out is not None:
        path = render_video(trainer, trainer.scene, a.out, a.frames, a.fps, a.size)
        print(f"video: {path}")
        return 0
    from privnerf.cli.train import load_split
    from privnerf.eval.evaluate import evaluate_split

    scene = load_split(trainer.cfg, a.split)
    out_dir = a.out_dir or Path(a.checkpoint) / "renders" / a.split
    r = evaluate_split(trainer.field, trainer.occ, trainer.settings(inference=True), scene, out_dir=out_dir,
                       with_lpips=False)
    print(f"{r['num_images']} views rendered to {out_dir} (PSNR {r['psnr']:.2f} dB)")
    return 0
