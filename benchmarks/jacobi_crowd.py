"""JacobiNeRF on the crowds: find my person (one click → the user's person in all its photos) and what the
masks are worth to DecentNeRF's leakage (issue 28, parts 6-7).

Stages (one process each; results merge into ``benchmarks/results/jacobi-crowd.json``):

* ``--stage find --crowd lego-20`` (default): for each user of ``decentnerf-lego-20`` (lego 400 px, 10 photos
  per user), on its own photos only: a device field trained ``--train-time`` seconds, scored unshaped, then
  shaped ``--shaping-steps`` steps (:mod:`privnerf.semantics.find_person`) and scored again, from the simulated
  interior click on the person in its first photo that shows it; IoU against the crowd's mask of the person
  (label ``user + 1``), per photo, averaged per user, then over users. Each user's responses are kept
  (``outputs/bench-jacobi-crowd/<crowd>/user-XXX.npz``), so an interrupted run resumes with the next user and
  ``--rescore`` re-applies the mask rule without training.
* ``--stage find --crowd demo`` does the same on the built-in demo crowd (5 users, 100 px photos) and writes
  each user's masks (``outputs/bench-jacobi-crowd/demo/masks/user-XXX/``) for the next stage.
* ``--stage fed``: DecentNeRF (learned, ``--rounds`` x 1 epoch) on the demo crowd three times: without masks,
  with the found masks, and with the crowd's true masks (what perfect masks are worth); PSNR on the clean test
  views and the personal-content leakage (docs/decentnerf.md).

``--jacobian-view ray|zero`` (default: the config's, ``zero``) picks where the colour head is evaluated for the
Jacobians; a zero-view run keeps its dumps and results apart (``lego-20-zero``, ``find-lego-20-zero``,
``fed-demo-zero[-N-rounds]``).

Usage (the 2026-12-07 figures): ``python benchmarks/jacobi_crowd.py --stage find --crowd lego-20 --jacobian-view
zero [--users 0-19]``, ``... --stage find --crowd demo --train-time 30 --jacobian-view zero``, ``... --stage fed
--rounds 8 --jacobian-view zero [--rows found]`` (and ``--rounds 4``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import git_commit as commit  # noqa: E402
from engine import machine  # noqa: E402

from privnerf.train.checkpoint import atomic_write_text  # noqa: E402

OUT = ROOT / "outputs" / "bench-jacobi-crowd"
RESULTS = ROOT / "benchmarks" / "results" / "jacobi-crowd.json"
TUNED_ON = (0, 1, 2)
"""lego-20 users whose responses chose the mask rule's thresholds (the demo crowd's persons, 5x12 px, carry
no signal to tune on); the others are held out and reported separately."""



def suffix(a) -> str:
    """``-zero`` for runs whose Jacobians are taken at a zero view direction (their dumps and results are kept
    apart from the ray-direction ones)."""
    return ("" if a.jacobian_view == "ray" else f"-{a.jacobian_view}") + (f"-{a.tag}" if a.tag else "")


def crowd_dir(name: str) -> Path:
    from privnerf.data.crowd import CrowdConfig, generate_crowd, load_crowd_source, preset_variants, write_crowd

    d = OUT / "crowd" / name
    if not (d / "transforms.json").exists():
        if name == "demo":  # the Makefile's demo crowd
            write_crowd(generate_crowd(CrowdConfig(scene="builtin", users=5, personal="static"), quiet=True), d)
        else:
            (_, cfg), = preset_variants("decentnerf-" + name)
            write_crowd(generate_crowd(cfg, load_crowd_source(cfg.scene), quiet=True), d)
    return d


def user_list(spec: str | None, n: int) -> list[int]:
    if not spec:
        return list(range(n))
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def find_user(data: Path, user: int, cfg, dump: Path) -> dict:
    """Train, score unshaped and shaped; keep the responses in ``dump`` (npz)."""
    from privnerf.fed.local import load_user_scene
    from privnerf.semantics.find_person import (click_point, click_response, interior_click, project, raw_response,
                                                train_device_field)
    from privnerf.semantics.shaping import ShapingTrainer

    scene = load_user_scene(str(data), user)
    click = interior_click(scene, user)
    t0 = time.perf_counter()
    trainer = train_device_field(scene, cfg)
    times = {"field_s": time.perf_counter() - t0}
    arrays: dict[str, np.ndarray] = {}
    for stage in ("unshaped", "shaped"):
        if stage == "shaped":
            t1 = time.perf_counter()
            ShapingTrainer(trainer, cfg.shaping).train()
            times["shaping_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        G, unit = click_response(trainer, click, cfg.shaping.jacobian_view)
        point = click_point(trainer, click)
        anchors = [project(point, scene.c2w[i], scene.intrinsics[i]) if point is not None else None
                   for i in range(scene.num_views)]
        arrays[f"{stage}_anchor"] = np.array([a if a is not None else (np.nan, np.nan) for a in anchors])
        arrays[f"{stage}_point"] = np.asarray(point if point is not None else (np.nan,) * 3, np.float64)
        rs, ops, deps = [], [], []
        for i in range(scene.num_views):
            r, op, dep = raw_response(trainer, G, scene.c2w[i], scene.intrinsics[i], *scene.hw(i), t=cfg.t,
                                      with_depth=True, view=cfg.shaping.jacobian_view)
            rs.append((r / max(unit, 1e-12)).numpy().astype(np.float16))
            ops.append(op.numpy().astype(np.float16))
            deps.append(dep.numpy().astype(np.float32))
        times[f"propagation_{stage}_s"] = time.perf_counter() - t2
        arrays[f"{stage}_r"], arrays[f"{stage}_o"], arrays[f"{stage}_depth"] = np.stack(rs), np.stack(ops), np.stack(deps)
    arrays["gt"] = np.stack([np.asarray(m) == user + 1 for m in scene.masks])
    arrays["click"] = np.array([click.view, click.u, click.v])
    dump.parent.mkdir(parents=True, exist_ok=True)
    tmp = dump.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.rename(dump)
    info = {"user": user, "jacobian_view": cfg.shaping.jacobian_view, "photos": scene.num_views, "field_steps": trainer.step_count, **times,
            "names": list(scene.names), "person_pixels": int(arrays["gt"].sum())}
    atomic_write_text(dump.with_suffix(".json"), json.dumps(info, indent=1) + "\n")
    return info


def user_masks(d, stage: str, cfg, scene, anchored: bool = True) -> list[np.ndarray]:
    """The masks of one user's photos from its kept responses ``d`` (npz) under the rule ``cfg``."""
    from privnerf.semantics.find_person import near_click, person_mask

    diag = float(np.linalg.norm(np.ptp(scene.aabb, axis=0)))
    point = d[f"{stage}_point"]
    out = []
    for i, (r, o, anc) in enumerate(zip(d[f"{stage}_r"], d[f"{stage}_o"], d[f"{stage}_anchor"])):
        anchor = None if np.isnan(anc).any() else (float(anc[0]), float(anc[1]))
        near = None
        if cfg.object_radius is not None and not np.isnan(point).any():
            near = near_click(d[f"{stage}_depth"][i], scene.c2w[i], scene.intrinsics[i], point, cfg.object_radius * diag)
        out.append(person_mask(r.astype(np.float32), o.astype(np.float32), cfg, anchor, anchored=anchored, near=near))
    return out


def score(dump: Path, cfg, scene) -> dict:
    """IoU per photo and per user with the mask rule (the region at the click's projection, within
    ``cfg.object_radius`` of its 3D point) and, as ablations, without the 3D limit and with the largest region
    kept instead of the click's."""
    from dataclasses import replace

    from privnerf.semantics.find_person import mask_iou

    d = np.load(dump)
    out = {}
    rules = {"": (cfg, True), "-no-3d-limit": (replace(cfg, object_radius=None), True),
             "-largest-region": (replace(cfg, object_radius=None), False)}
    for stage in ("unshaped", "shaped"):
        for suffix, (c, anchored) in rules.items():
            ious = [mask_iou(m, g) for m, g in zip(user_masks(d, stage, c, scene, anchored), d["gt"])]
            kept = [x for x in ious if x is not None]
            out[stage + suffix] = {"iou": float(np.mean(kept)) if kept else None, "iou_per_photo": ious}
    return out


def stage_find(a, cfg) -> dict:
    from privnerf.fed.local import load_dataset, load_user_scene
    from privnerf.fed.run import user_ids

    data = crowd_dir(a.crowd)
    users = user_list(a.users, len(user_ids(load_dataset(str(data), "train"))))
    rows = {}
    for k in users:
        dump = OUT / (a.crowd + suffix(a)) / f"user-{k:03d}.npz"
        if not dump.exists():
            if a.rescore:
                continue
            t0 = time.perf_counter()
            find_user(data, k, cfg, dump)
            print(f"user {k}: {time.perf_counter() - t0:.0f} s", flush=True)
        info = json.loads(dump.with_suffix(".json").read_text())
        scene = load_user_scene(str(data), k)
        rows[str(k)] = {**{x: info[x] for x in ("photos", "field_steps", "field_s", "shaping_s", "person_pixels")},
                        **score(dump, cfg, scene)}
        s = rows[str(k)]
        print(f"user {k}: IoU unshaped {s['unshaped']['iou']:.3f}, shaped {s['shaped']['iou']:.3f}", flush=True)
        if a.crowd == "demo":
            write_masks(scene, k, dump, cfg, OUT / ("demo" + suffix(a)) / "masks")
    keys = tuple(f"{st}{x}" for st in ("unshaped", "shaped") for x in ("", "-no-3d-limit", "-largest-region"))
    mean = {st: float(np.mean([r[st]["iou"] for r in rows.values()])) for st in keys} if rows else {}
    held = [r for k, r in rows.items() if int(k) not in TUNED_ON]
    return {"crowd": a.crowd, "users_done": len(rows), "users_total": len(users), "mean_iou": mean,
            "mean_iou_held_out": ({st: float(np.mean([r[st]["iou"] for r in held])) for st in keys}
                                  if held and a.crowd != "demo" else None),
            "tuned_on_users": list(TUNED_ON) if a.crowd != "demo" else [], "per_user": rows,
            "meets_target": (mean.get("shaped", 0) >= 0.6) if a.crowd == "lego-20" else None}


def write_masks(scene, user: int, dump: Path, cfg, root: Path) -> None:
    """The demo users' found masks (shaped, dilated) where ``--private-masks`` reads them."""
    import imageio.v3 as iio

    from privnerf.semantics.find_person import dilate

    d = np.load(dump)
    folder = root / f"user-{user:03d}" / "masks"
    folder.mkdir(parents=True, exist_ok=True)
    for name, m in zip(scene.names, user_masks(d, "shaped", cfg, scene)):
        iio.imwrite(folder / f"{Path(name).stem}.png", (dilate(m, cfg.dilate) * 255).astype(np.uint8))


def stage_fed(a, kept: dict) -> dict:
    """DecentNeRF (learned) on the demo crowd without private masks, with the found ones and with the crowd's
    own (``a.rows``: which to run; the others are taken from ``kept``, the previous results)."""
    from privnerf.fed.config import FedConfig
    from privnerf.fed.run import run_federated

    data = crowd_dir("demo")
    masks = OUT / ("demo" + suffix(a)) / "masks"
    if not masks.exists():
        raise SystemExit(f"{masks}: run --stage find --crowd demo --jacobian-view {a.jacobian_view} first")
    rows = {}
    for name, pm in (("none", None), ("found", str(masks)), ("truth", "truth")):
        if name not in a.rows.split(","):
            if name not in kept:
                raise SystemExit(f"--rows: no earlier '{name}' row to keep; run it too")
            rows[name] = kept[name]
            continue
        cfg = FedConfig(data=str(data), aggregator="learned", rounds=a.rounds, local_epochs=1.0,
                        output=OUT / "fed" / datetime.now().strftime("%Y%m%d-%H%M%S") / name, private_masks=pm)
        t0 = time.perf_counter()
        res = run_federated(cfg, quiet=True)
        rows[name] = {k: res.get(k) for k in ("psnr", "ssim", "lpips", "leakage_psnr", "leakage_reference_psnr",
                                              "leakage_scene_psnr")} | {"wall_s": round(time.perf_counter() - t0, 1), "commit": commit()}
        print(name, rows[name], flush=True)
    base = rows["none"]
    for r in rows.values():
        r["leakage_drop_db"] = base["leakage_psnr"] - r["leakage_psnr"]
        r["psnr_cost_db"] = base["psnr"] - r["psnr"]
    f = rows["found"]
    return {"crowd": "demo", "aggregator": "learned", "rounds": a.rounds, "rows": rows,
            "meets_target": f["leakage_drop_db"] >= 2.0 and f["psnr_cost_db"] <= 0.3}


def main() -> int:
    from privnerf.semantics.find_person import FindPersonConfig
    from privnerf.train.trainer import set_threads

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["find", "fed"], default="find")
    p.add_argument("--crowd", choices=["lego-20", "demo"], default="lego-20")
    p.add_argument("--users", default=None, help="e.g. 0-9 or 0,3,5 (default all)")
    p.add_argument("--train-time", type=float, default=None, help="device field seconds (default: the config's)")
    p.add_argument("--shaping-steps", type=int, default=None)
    p.add_argument("--object-radius", default=None, help="the mask rule's 3D limit (share of the box diagonal; "
                   "'none' for no limit; default: the config's)")
    p.add_argument("--jacobian-view", choices=["ray", "zero"], default=None,
                   help="the colour head's direction for Jacobians (default: the config's); for --stage fed, "
                   "which find run's masks to use")
    p.add_argument("--tag", default="", help="keeps an investigation's dumps and results apart (e.g. device180)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--rows", default="none,found,truth", help="the fed stage's runs to (re)do; the others are kept")
    p.add_argument("--rescore", action="store_true", help="score the kept responses again, train nothing")
    a = p.parse_args()
    set_threads(2)
    cfg = FindPersonConfig()
    if a.train_time is not None:
        cfg.train_time_s = a.train_time
    if a.shaping_steps is not None:
        cfg.shaping.steps = a.shaping_steps
    if a.jacobian_view is None:
        a.jacobian_view = cfg.shaping.jacobian_view
    cfg.shaping.jacobian_view = a.jacobian_view
    if a.object_radius is not None:
        cfg.object_radius = None if a.object_radius == "none" else float(a.object_radius)
    doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    command = "benchmarks/jacobi_crowd.py " + " ".join(sys.argv[1:])
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if a.stage == "find":
        sec = stage_find(a, cfg)
        sec["config"] = asdict(cfg)
        key = f"find-{a.crowd}{suffix(a)}"
    else:
        key = f"fed-demo{suffix(a)}" + (f"-{a.rounds}-rounds" if a.rounds != 4 else "")
        sec = stage_fed(a, doc.get(key, {}).get("rows", {}))
    doc[key] = {"started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "commit": commit(), "command": command, "machine": machine()} | sec
    doc["targets"] = {"lego-20 mean IoU": ">= 0.6", "demo leakage drop": ">= 2 dB at <= 0.3 dB PSNR cost"}
    atomic_write_text(RESULTS, json.dumps(doc, indent=1, default=str) + "\n")
    print(f"-> {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
