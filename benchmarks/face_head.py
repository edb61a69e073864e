"""Identity-Obscured NeRF on the real head: three reconstructions at one budget, the face region's geometry.

On ``<data>/nerd_ethiopian_head`` (66 photos of a bronze head, 500 px, masks, LLFF poses):

1. ``privnerf face obscure`` (the person's side): the face direction from dlib's detections, views split at
   90 degrees of yaw into neutral (raw RGB) and sensitive (σ codes only), operator ``--operator``.
2. Three runs of the two-stage trainer (:mod:`privnerf.face.train`, the dual surface field), the same number
   of steps each:
   * **full**: every view as raw RGB (the reference; the privacy path never does this);
   * **rear-only**: the neutral views alone (stage 1 for the whole budget);
   * **obscured**: stage 1 on the neutral views, then stage 2 adds the σ loss on the sensitive views.
   Each exports its SDF's zero level set (``mesh.ply``).
3. The **face region**, defined once in the data's frame: points whose direction from the head box's centre
   lies within ``--face-cone`` degrees (60) of the face direction. Rear-only and obscured meshes, cropped to
   it, are scored against the full mesh cropped likewise: Chamfer-L1, normal consistency, F-score at 1 % and
   2 % of the head box diagonal. Gap closed = (Chamfer rear-only - Chamfer obscured) / Chamfer rear-only
   (the full run is the zero of the scale; the issue's bar is 70 %).
4. Shaded renders of the three meshes from the most frontal sensitive views (one figure, and PNGs that the
   privacy study scores with dlib: ``python benchmarks/face_privacy.py --extra <renders>``), and an HTML report.

Usage: ``python benchmarks/face_head.py [--steps 2250] [--stage2-share 1/3]`` →
``benchmarks/results/face-head.json``, ``face-head.png``, and ``outputs/face-head/report.html``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import machine  # noqa: E402

from privnerf.data.paths import data_root  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402


def crop_cone(mesh, centre: np.ndarray, direction: np.ndarray, cone_deg: float):
    """The faces of ``mesh`` whose centroid lies within ``cone_deg`` of ``direction`` seen from ``centre``."""
    v = mesh.triangles_center - centre
    cos = (v @ direction) / np.linalg.norm(v, axis=1).clip(1e-9)
    m = mesh.copy()
    m.update_faces(cos >= np.cos(np.radians(cone_deg)))
    m.remove_unreferenced_vertices()
    return m


#: FaceTrainConfig fields that only stage 2 reads.
STAGE2_ONLY = ("grad_weight", "lipschitz_weight", "patches", "patch", "shading", "relight_every", "light_rays",
               "hull_every")


def same_run(out: Path, cfg, spec) -> bool:
    """Whether ``out`` holds a finished run of ``cfg`` (and, for a run with σ views, of operator ``spec``)."""
    from privnerf.face.train import effective_config
    from privnerf.train.trainer import config_to_dict

    if not all((out / f).exists() for f in ("results.json", "mesh.ply", "config.json")):
        return False
    def comparable(d: dict) -> dict:  # a run without stage 2 does not depend on stage 2's settings
        return {k: v for k, v in d.items() if k not in STAGE2_ONLY} if cfg.stage2_steps == 0 else d

    stored = comparable(json.loads((out / "config.json").read_text()))
    # run_face stores the effective config; before 2026-12-06 it stored the config as given
    if stored not in [comparable(json.loads(json.dumps(config_to_dict(c)))) for c in (effective_config(cfg), cfg)]:
        return False
    if spec is None:
        return True
    op = out / "operator.json"
    return op.exists() and json.loads(op.read_text()) == spec.to_dict()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--steps", type=int, default=2250)
    p.add_argument("--stage2-share", type=float, default=1 / 3)
    p.add_argument("--operator", default="gradmag", choices=["gradmag", "signed"])
    p.add_argument("--face-direction", default="auto")
    p.add_argument("--face-cone", type=float, default=60.0)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--max-voxels", type=int, default=128**3,
                   help="grid size cap (the engine's default, 256^3, makes a head step several times slower)")
    p.add_argument("--runs", nargs="+", default=["full", "rear-only", "obscured"],
                   choices=["full", "rear-only", "obscured", "full-seed1"],
                   help="full-seed1: the full run again with another seed, scored like the others: the floor of "
                        "the face-region scores (two reconstructions from the same photos)")
    p.add_argument("--reuse", nargs="+", default=[], choices=["full", "rear-only", "obscured", "full-seed1"],
                   help="keep these finished runs when their settings (and, for obscured, the operator) are the same")
    p.add_argument("--grad-weight", type=float, default=None, help="stage 2's σ loss weight (default: the trainer's)")
    p.add_argument("--lipschitz-weight", type=float, default=0.1, help="stage 2's Lipschitz weight")
    p.add_argument("--silhouette-weight", type=float, default=None,
                   help="the SDF's silhouette (IDR mask) loss weight, every run (default: the trainer's)")
    p.add_argument("--shading", action=argparse.BooleanOptionalAction, default=None,
                   help="stage 2's σ term on the shaded SDF (default: the trainer's)")
    p.add_argument("--hull-carve", action=argparse.BooleanOptionalAction, default=None,
                   help="intersect each run's SDF with the visual hull of the masks it holds (default: the trainer's)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "face-head")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    a = p.parse_args()

    from privnerf.eval.mesh import mesh_metrics
    from privnerf.face.head import load_head
    from privnerf.face.obscure import load_obscured, obscure_head
    from privnerf.face.operators import OperatorSpec
    from privnerf.face.train import FaceTrainConfig, _default_train_config, run_face

    data = a.data or data_root() / "nerd_ethiopian_head"
    if not data.exists():
        raise SystemExit(f"{data}: not found (set PRIVNERF_DATA)")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    a.out.mkdir(parents=True, exist_ok=True)
    obs_dir = a.out / "obscured-data"
    t0 = time.perf_counter()
    meta = obscure_head(data, obs_dir, OperatorSpec(a.operator), face_direction=a.face_direction, overwrite=True,
                        quiet=True)
    obscure_s = time.perf_counter() - t0
    obs = load_obscured(obs_dir)
    full = load_head(data)
    face_dir = np.asarray(meta["face_direction"], dtype=np.float64)
    centre = np.asarray(meta["centre"], dtype=np.float64) if "centre" in meta else full.aabb.mean(0)
    s2 = int(round(a.steps * a.stage2_share))
    plans = {"full": (full, [], a.steps, 0), "rear-only": (obs.neutral, [], a.steps, 0),
             "obscured": (obs.neutral, obs.sensitive, a.steps - s2, s2), "full-seed1": (full, [], a.steps, 0)}
    runs = {}
    for name in a.runs:
        scene, sens, n1, n2 = plans[name]
        out = a.out / name
        cfg = FaceTrainConfig(stage1_steps=n1, stage2_steps=n2, mesh_resolution=a.resolution, quiet=True,
                              train=_default_train_config())
        if n2 > 0:  # stage 2's weights: runs without it keep the defaults (and stay reusable)
            cfg.lipschitz_weight = a.lipschitz_weight
            if a.grad_weight is not None:
                cfg.grad_weight = a.grad_weight
        cfg.train.field.grid.max_voxels = a.max_voxels
        if name == "full-seed1":
            cfg.train.seed = 1
        if a.silhouette_weight is not None:
            cfg.silhouette_weight = a.silhouette_weight
        if a.hull_carve is not None:
            cfg.hull_carve = a.hull_carve
        if a.shading is not None and n2 > 0:
            cfg.shading = a.shading
        if name in a.reuse:
            if not same_run(out, cfg, obs.spec if sens else None):
                raise SystemExit(f"{out}: no finished run with these settings to reuse (--reuse {name}); "
                                 "drop it from --reuse to train it again")
            print(f"=== {name}: reusing the finished run in {out} ===", flush=True)
            res = json.loads((out / "results.json").read_text())
        else:
            shutil.rmtree(out, ignore_errors=True)
            print(f"=== {name}: {n1} + {n2} steps, {scene.num_views} RGB views, {len(sens)} σ views ===", flush=True)
            res = run_face(cfg, scene, sens, obs.spec, out, name)
            atomic_write_text(out / "operator.json", json.dumps(obs.spec.to_dict()) + "\n")
        res.pop("history", None)
        runs[name] = res
        print(json.dumps({k: v for k, v in res.items() if k not in ("mesh_info", "last")}, default=float), flush=True)

    import trimesh

    meshes = {n: trimesh.load(runs[n]["mesh"], process=False) for n in runs}
    diag = float(np.linalg.norm(full.aabb[1] - full.aabb[0]))
    scores = {}
    if "full" in meshes:
        ref = crop_cone(meshes["full"], centre, face_dir, a.face_cone)
        ref_p, idx = trimesh.sample.sample_surface(ref, 100_000, seed=0)
        ref_n = ref.face_normals[idx]
        for n in ("rear-only", "obscured", "full-seed1"):
            if n in meshes:
                crop = crop_cone(meshes[n], centre, face_dir, a.face_cone)
                scores[n] = {f"tau_{t}": mesh_metrics(crop, ref_p, ref_n, tau=t * diag, diagonal=diag, n_samples=100_000)
                             for t in (0.01, 0.02)}
    gap = None
    if "rear-only" in scores and "obscured" in scores:
        c_rear = scores["rear-only"]["tau_0.01"]["chamfer_l1"]
        c_obs = scores["obscured"]["tau_0.01"]["chamfer_l1"]
        gap = (c_rear - c_obs) / c_rear if c_rear > 0 else None
    gap_floor = None  # the same share, measured from the floor (full vs full-seed1) instead of zero
    if gap is not None and "full-seed1" in scores:
        c_floor = scores["full-seed1"]["tau_0.01"]["chamfer_l1"]
        gap_floor = (c_rear - c_obs) / (c_rear - c_floor) if c_rear > c_floor else None

    iou = {n: silhouette_iou(m, obs.sensitive) for n, m in meshes.items()}

    # renders from the most frontal sensitive views
    from privnerf.data.io import write_image
    from privnerf.eval.mesh_render import render_mesh

    frontal = sorted(obs.sensitive, key=lambda v: next(f["yaw_deg"] for f in meta["frames"] if f["name"] == v.name))[:3]
    render_dir = a.out / "renders"
    render_dir.mkdir(exist_ok=True)
    renders = {}
    for n, m in meshes.items():
        if n == "full-seed1":  # the floor's run: its renders would repeat the full one's
            continue
        for v in frontal:
            h, w = v.mask.shape
            img = render_mesh(m, np.asarray(v.c2w), np.asarray(v.intrinsics), h, w)
            path = render_dir / f"{n}-{Path(v.name).stem}.png"
            write_image(path, img)
            renders.setdefault(n, []).append(str(path))
    a.results_dir.mkdir(parents=True, exist_ok=True)
    figure(renders, a.results_dir / "face-head.png")
    result = {"started": started, "machine": machine(), "data": str(data), "operator": obs.spec.to_dict(),
              "obscure_s": obscure_s, "face_direction": face_dir.tolist(), "face_cone_deg": a.face_cone,
              "neutral_views": obs.neutral.num_views, "sensitive_views": len(obs.sensitive),
              "steps": a.steps, "stage2_steps": s2, "runs": {n: {k: v for k, v in r.items() if k != "mesh_info"}
                                                             for n, r in runs.items()},
              "face_region_vs_full": scores, "gap_closed": gap, "gap_closed_above_floor": gap_floor,
              "sensitive_silhouette_iou": iou, "meets_target": None if gap is None else gap >= 0.7,
              "renders": renders,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=ROOT).stdout.strip(),
              "command": "python benchmarks/face_head.py " + " ".join(sys.argv[1:])}
    a.results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.results_dir / "face-head.json", json.dumps(result, indent=2, default=float) + "\n")
    from privnerf.face.report import write_report

    write_report(a.out / "report.html", result, obs_dir, a.results_dir)
    print(json.dumps({"face_region_vs_full": scores, "gap_closed": gap, "gap_closed_above_floor": gap_floor,
                      "sensitive_silhouette_iou": iou},
                     indent=1, default=float))
    return 0


def silhouette_iou(mesh, views: list, scale: float = 0.25) -> dict:
    """How well ``mesh``'s silhouette matches the masks of ``views`` (the σ views): per view, the IoU of the
    mesh's silhouette (ray cast at ``scale`` of the view's size) with the mask (``>= MASK_THRESHOLD``) sampled
    at the same pixel centres; also the mesh's area outside the mask and the mask's area the mesh misses,
    each as a share of the mask's area. Returns their means and the smallest IoU."""
    from privnerf.eval.mesh_render import render_mesh
    from privnerf.face.head import MASK_THRESHOLD

    ious, extra, missed = [], [], []
    for v in views:
        h, w = v.mask.shape
        hh, ww = max(int(h * scale), 1), max(int(w * scale), 1)
        sil = render_mesh(mesh, np.asarray(v.c2w), np.asarray(v.intrinsics, np.float64) * scale, hh, ww,
                          mode="normals").sum(-1) > 0
        ys = np.minimum(((np.arange(hh) + 0.5) / scale).astype(int), h - 1)
        xs = np.minimum(((np.arange(ww) + 0.5) / scale).astype(int), w - 1)
        m = np.asarray(v.mask)
        gt = (m if m.max() > 1 else m * 255)[np.ix_(ys, xs)] >= MASK_THRESHOLD
        area = max(int(gt.sum()), 1)
        ious.append((sil & gt).sum() / max(int((sil | gt).sum()), 1))
        extra.append((sil & ~gt).sum() / area)
        missed.append((gt & ~sil).sum() / area)
    return {"iou_mean": float(np.mean(ious)), "iou_min": float(np.min(ious)), "outside_mask": float(np.mean(extra)),
            "mask_missed": float(np.mean(missed)), "views": len(views), "scale": scale}


def figure(renders: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from privnerf.data.io import read_image

    names = list(renders)
    cols = max(len(v) for v in renders.values())
    fig, axes = plt.subplots(cols, len(names), figsize=(3 * len(names), 3 * cols), squeeze=False)
    for c, n in enumerate(names):
        for r, f in enumerate(renders[n]):
            img = read_image(Path(f))
            ys, xs = np.nonzero(img.max(-1) > 0.02)
            if len(ys):
                img = img[max(ys.min() - 10, 0):ys.max() + 10, max(xs.min() - 10, 0):xs.max() + 10]
            axes[r, c].imshow(img)
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(n)
    fig.tight_layout()
    from privnerf.data.io import save_figure

    save_figure(fig, path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
