"""Render a split with a trained field and score it (PSNR, SSIM, LPIPS-Alex on 8-bit images).

Dataset scores are the mean of per-image scores (nerfbaselines' protocol). LPIPS needs the converted
weights from ``make setup``; without them it is reported as ``null`` with a warning, never downloaded.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from privnerf.data.io import write_image
from privnerf.data.scene import Scene
from privnerf.eval.metrics import mean_metrics, psnr, ssim, to_uint8
from privnerf.render.renderer import RenderSettings, render_image

log = logging.getLogger(__name__)


def _lpips_fn():
    from privnerf.eval.lpips import lpips, lpips_available

    if lpips_available():
        return lpips
    warnings.warn("LPIPS weights are not cached: run `make setup`; LPIPS is reported as null")
    return None


def depth_to_image(depth: np.ndarray) -> np.ndarray:
    """``(h, w)`` depth (``inf`` = empty) → ``(h, w, 3)`` uint8 (near = bright, empty = black)."""
    finite = np.isfinite(depth)
    out = np.zeros(depth.shape, dtype=np.float32)
    if finite.any():
        lo, hi = np.percentile(depth[finite], [1, 99])
        out[finite] = 1.0 - np.clip((depth[finite] - lo) / max(hi - lo, 1e-6), 0, 1) * 0.85
    return np.repeat((out * 255).astype(np.uint8)[..., None], 3, axis=-1)


def evaluate_split(
    field,
    occ,
    settings: RenderSettings,
    scene: Scene,
    out_dir: Path | None = None,
    max_images: int | None = None,
    with_lpips: bool = True,
    chunk: int = 16384,
    quiet: bool = False,
) -> dict[str, Any]:
    """Render every view of ``scene`` (or the first ``max_images``) and score it.

    Writes ``out_dir/<name>.png`` (render), ``<name>_gt.png`` and ``<name>_depth.png`` when ``out_dir`` is set.
    Returns the mean metrics plus ``num_images``, ``per_image`` and ``render_time_per_image_s``.
    """
    n = scene.num_views if max_images is None else min(max_images, scene.num_views)
    lp = _lpips_fn() if with_lpips else None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    per_image = []
    render_time = 0.0
    for i in tqdm(range(n), desc="eval", disable=quiet, leave=False):
        h, w = scene.hw(i)
        t0 = time.perf_counter()
        out = render_image(field, occ, torch.from_numpy(scene.c2w[i]), torch.from_numpy(scene.intrinsics[i]),
                           h, w, settings, chunk=chunk)
        render_time += time.perf_counter() - t0
        pred = out["rgb"].cpu().numpy()
        gt = scene.images[i]
        row = {"name": scene.names[i], "psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
        row["lpips"] = lp(pred, gt) if lp is not None else None
        per_image.append(row)
        if out_dir is not None:
            stem = Path(scene.names[i]).name.replace(".png", "").replace(".jpg", "") or f"view_{i:04d}"
            stem = f"{i:04d}_{stem}"
            write_image(Path(out_dir) / f"{stem}.png", to_uint8(pred))
            write_image(Path(out_dir) / f"{stem}_gt.png", to_uint8(gt))
            write_image(Path(out_dir) / f"{stem}_depth.png", depth_to_image(out["depth"].cpu().numpy()))
    result = mean_metrics(per_image)
    result.update({"num_images": n, "per_image": per_image, "render_time_per_image_s": render_time / max(n, 1)})
    return result
