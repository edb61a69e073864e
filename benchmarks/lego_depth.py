"""Check the decoding of NeRF-synthetic's 8-bit depth renders.

The lego test split ships ``r_*_depth_0001.png`` whose value falls with distance. Two checks:

1. **Multi-view consistency, no model needed.** Pixels of view ``a`` are unprojected with a candidate
   decoding and projected into view ``b`` (6-8 views along the test spiral); a right decoding puts them on
   ``b``'s own decoded surface. This separates ray distance from camera-axis depth, but the value mappings
   (linear, inverse, sRGB-linear) agree about equally well over views this close.
2. **Against a trained NeRF's depth** (only when ``benchmarks/engine.py`` has left its lego 400 grid run in
   ``outputs/bench/lego400/grid``): for 20 test views, up to 15 interior pixels per 8-bit level are rendered,
   and each level's median NeRF ray distance is compared with every candidate. This is what picks the value
   mapping.

It also reports the extent of the unprojected points (the lego's known size) and the depth range for cameras
4.03 from the origin.

Usage: ``python benchmarks/lego_depth.py`` -> ``benchmarks/results/lego-depth.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privnerf.data.blender import DEPTH_RAY_AT_ZERO, DEPTH_RAY_PER_UNIT, load_blender  # noqa: E402
from privnerf.data.cameras import camera_directions, project_points, rays_from_pixels  # noqa: E402
from privnerf.data.io import atomic_write_text  # noqa: E402
from privnerf.data.paths import data_root  # noqa: E402

PAIRS = ((0, 8), (20, 28), (60, 66), (120, 127), (150, 158))
NERF_RUN = ROOT / "outputs" / "bench" / "lego400" / "grid"


def _srgb_to_linear(v):
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


# name -> (what the decoded value measures, decoding of v = value / 255)
CANDIDATES = {
    "linear in value, ray distance (privnerf)": ("ray", lambda v: DEPTH_RAY_AT_ZERO - DEPTH_RAY_PER_UNIT * v),
    "linear in value, camera-axis depth": ("axis", lambda v: DEPTH_RAY_AT_ZERO - DEPTH_RAY_PER_UNIT * v),
    "inverse depth (1.974 / value), ray distance": ("ray", lambda v: 1.974 / v),
    "linear in sRGB-decoded value, ray distance": ("ray", lambda v: 5.53 - 7.25 * _srgb_to_linear(v)),
}


def main() -> int:
    root = data_root() / "nerf_synthetic" / "lego"
    if not root.exists():
        print(f"skipping: {root} not found (set PRIVNERF_DATA)")
        return 0
    scene = load_blender(root, "test")
    h, w = scene.hw(0)
    cam_dirs = camera_directions(scene.intrinsics[0], h, w).numpy()
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

    def unproject(i, val, core, kind, decode):
        t = decode(val[core]) * (1.0 if kind == "ray" else ray_per_axis[core])
        return scene.c2w[i][:3, 3] + (unit[core] @ scene.c2w[i][:3, :3].T) * t[:, None]

    results = {}
    for name, (kind, decode) in CANDIDATES.items():
        errs = []
        for a, b in PAIRS:
            va, ka = load(a)
            vb, kb = load(b)
            pts = unproject(a, va, ka, kind, decode)
            u, v, axis_depth = (x.numpy() for x in project_points(scene.c2w[b], scene.intrinsics[b], pts))
            ui, vi = np.floor(u).astype(int), np.floor(v).astype(int)
            ok = (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
            ok[ok] &= kb[vi[ok], ui[ok]]
            measured = decode(vb[vi[ok], ui[ok]])
            predicted = np.linalg.norm(pts[ok] - scene.c2w[b][:3, 3], axis=1) if kind == "ray" else axis_depth[ok]
            errs.append(float(np.median(np.abs(predicted - measured))))
        pts_all, depths = [], []
        for i in range(0, scene.num_views, 10):
            vi_, ki = load(i)
            pts_all.append(unproject(i, vi_, ki, kind, decode))
            depths.append(decode(vi_[ki]) * (1.0 if kind == "ray" else ray_per_axis[ki]))
        p, d = np.concatenate(pts_all), np.concatenate(depths)
        results[name] = {
            "median_reprojection_error_per_pair": dict(zip([f"{a}->{b}" for a, b in PAIRS], errs)),
            "median_reprojection_error": float(np.median(errs)),
            "extent_p1_p99": np.percentile(p, [1, 99], axis=0).round(3).tolist(),
            "ray_depth_p1_p99": np.percentile(d, [1, 99]).round(3).tolist(),
        }
        print(f"{name:48s} reprojection {np.median(errs):.4f}  extent {results[name]['extent_p1_p99']}")
    nerf = against_nerf(scene, load)
    if nerf:
        for name, row in nerf["candidates"].items():
            results[name]["nerf_level_error"] = row
            print(f"{name:48s} vs NeRF: mean {row['mean']:.3f}, p90 {row['p90']:.3f}, worst {row['max']:.3f}")
    out = ROOT / "benchmarks" / "results" / "lego-depth.json"
    camera_distance = float(np.linalg.norm(scene.c2w[0][:3, 3]))
    atomic_write_text(out, json.dumps({
        "camera_distance": camera_distance, "pairs": PAIRS, "quantisation_step": DEPTH_RAY_PER_UNIT / 255,
        "nerf": None if not nerf else {k: v for k, v in nerf.items() if k != "candidates"},
        "candidates": results}, indent=2) + "\n")
    print(f"-> {out}")
    return 0


def against_nerf(scene, load, per_level: int = 15, min_pixels: int = 20) -> dict | None:
    """Per 8-bit level (v = 100..166 / 255), the median ray distance the trained grid NeRF renders, and how far
    each candidate decoding is from it (mean, 90th percentile and worst over the levels)."""
    if not (NERF_RUN / "checkpoints" / "last.pt").exists():
        print(f"no NeRF comparison: {NERF_RUN} not found (run benchmarks/engine.py first)")
        return None
    from privnerf.render.renderer import render_rays
    from privnerf.train.trainer import trainer_from_checkpoint

    trainer = trainer_from_checkpoint(NERF_RUN)
    rng = np.random.default_rng(0)
    levels, nerf_depth = [], []
    for i in range(0, scene.num_views, 10):
        val, core = load(i)
        q = np.rint(val * 255).astype(int)
        ys, xs = np.nonzero(core)
        pick = []
        for level in np.unique(q[ys, xs]):
            idx = np.nonzero(q[ys, xs] == level)[0]
            pick.extend(rng.choice(idx, min(len(idx), per_level), replace=False))
        ys, xs = ys[pick], xs[pick]
        o, d, _ = rays_from_pixels(torch.from_numpy(scene.c2w[i]), torch.from_numpy(scene.intrinsics[i]),
                                   torch.from_numpy(xs), torch.from_numpy(ys))
        with torch.no_grad():
            t = render_rays(trainer.field, trainer.occ, o, d, trainer.settings(inference=True))["depth"].numpy()
        keep = np.isfinite(t)
        levels.append(q[ys, xs][keep])
        nerf_depth.append(t[keep])
    lv, nd = np.concatenate(levels), np.concatenate(nerf_depth)
    table = [(int(level), float(np.median(nd[lv == level]))) for level in range(100, 167)
             if (lv == level).sum() >= min_pixels]
    out = {"run": str(NERF_RUN.relative_to(ROOT)), "pixels": int(len(lv)), "levels": len(table),
           "median_nerf_ray_distance_per_level": table, "candidates": {}}
    for name, (kind, decode) in CANDIDATES.items():
        if kind != "ray":
            continue
        e = np.array([abs(decode(level / 255) - med) for level, med in table])
        out["candidates"][name] = {"mean": float(e.mean()), "p90": float(np.percentile(e, 90)), "max": float(e.max())}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
