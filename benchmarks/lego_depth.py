"""Check the decoding of NeRF-synthetic's 8-bit depth renders without any trained model.

The lego test split ships ``r_*_depth_0001.png`` whose value falls with distance. This script compares
candidate decodings by multi-view consistency: pixels of view ``a`` are unprojected with a decoding and
projected into view ``b`` (a few views along the test spiral); a right decoding puts them on ``b``'s own
decoded surface. It also reports the extent of the unprojected points (the lego's known size) and the depth
range for cameras 4.03 from the origin.

Usage: ``python benchmarks/lego_depth.py`` -> ``benchmarks/results/lego-depth.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privnerf.data.blender import DEPTH_RAY_AT_ZERO, DEPTH_RAY_PER_UNIT, load_blender  # noqa: E402
from privnerf.data.io import atomic_write_text  # noqa: E402

DATA = Path(os.environ.get("PRIVNERF_DATA", ROOT.parent / "shared" / "data"))
PAIRS = ((0, 8), (20, 28), (60, 66), (120, 127), (150, 158))
CANDIDATES = {
    "linear in value, ray distance (privnerf)": ("ray", lambda v: DEPTH_RAY_AT_ZERO - DEPTH_RAY_PER_UNIT * v),
    "linear in value, camera-axis depth": ("axis", lambda v: DEPTH_RAY_AT_ZERO - DEPTH_RAY_PER_UNIT * v),
    "inverse depth (1.974 / value), ray distance": ("ray", lambda v: 1.974 / v),
    "linear in sRGB-decoded value, ray distance": (
        "ray", lambda v: 5.53 - 7.25 * np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)),
}


def main() -> int:
    root = DATA / "nerf_synthetic" / "lego"
    if not root.exists():
        print(f"skipping: {root} not found (set PRIVNERF_DATA)")
        return 0
    scene = load_blender(root, "test")
    h, w = scene.hw(0)
    fx, fy, cx, cy = scene.intrinsics[0]
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    cam_dirs = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones_like(u)], -1)
    ray_per_axis = np.linalg.norm(cam_dirs, axis=-1)
    unit = cam_dirs / ray_per_axis[..., None]

    def load(i):
        val = np.asarray(Image.open(scene.frame_meta[i]["depth_path"]))[..., 0].astype(np.float64) / 255
        alpha = np.asarray(Image.open(root / scene.names[i]))[..., 3]
        inside = (alpha == 255) & (val > 0)
        core = inside.copy()  # drop pixels next to an edge: their depth mixes surfaces
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                core &= np.roll(np.roll(inside, dy, 0), dx, 1)
        return val, core

    def to_ray(d, kind, mask):
        return d if kind == "ray" else d * ray_per_axis[mask]

    results = {}
    for name, (kind, decode) in CANDIDATES.items():
        errs = []
        for a, b in PAIRS:
            va, ka = load(a)
            vb, kb = load(b)
            t = to_ray(decode(va[ka]), kind, ka)
            pts = scene.c2w[a][:3, 3] + (unit[ka] @ scene.c2w[a][:3, :3].T) * t[:, None]
            w2c = np.linalg.inv(scene.c2w[b])
            pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
            z = -pc[:, 2]
            ui = np.floor(fx * pc[:, 0] / z + cx).astype(int)
            vi = np.floor(-fy * pc[:, 1] / z + cy).astype(int)
            ok = (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
            ok[ok] &= kb[vi[ok], ui[ok]]
            measured = decode(vb[vi[ok], ui[ok]])
            predicted = np.linalg.norm(pc[ok], axis=1) if kind == "ray" else z[ok]
            errs.append(float(np.median(np.abs(predicted - measured))))
        pts_all = []
        depths = []
        for i in range(0, scene.num_views, 10):
            vi_, ki = load(i)
            t = to_ray(decode(vi_[ki]), kind, ki)
            depths.append(t)
            pts_all.append(scene.c2w[i][:3, 3] + (unit[ki] @ scene.c2w[i][:3, :3].T) * t[:, None])
        p = np.concatenate(pts_all)
        d = np.concatenate(depths)
        results[name] = {
            "median_reprojection_error_per_pair": dict(zip([f"{a}->{b}" for a, b in PAIRS], errs)),
            "median_reprojection_error": float(np.median(errs)),
            "extent_p1_p99": np.percentile(p, [1, 99], axis=0).round(3).tolist(),
            "ray_depth_p1_p99": np.percentile(d, [1, 99]).round(3).tolist(),
        }
        print(f"{name:48s} reprojection {np.median(errs):.4f}  extent {results[name]['extent_p1_p99']}")
    out = ROOT / "benchmarks" / "results" / "lego-depth.json"
    camera_distance = float(np.linalg.norm(scene.c2w[0][:3, 3]))
    atomic_write_text(out, json.dumps({"camera_distance": camera_distance, "pairs": PAIRS,
                                       "quantisation_step": DEPTH_RAY_PER_UNIT / 255, "candidates": results},
                                      indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
