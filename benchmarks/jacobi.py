"""JacobiNeRF benchmark on the built-in scene: label propagation from one click per class, shaped against
unshaped, and a Semantic-NeRF-style head at the same clicks.

Runs, one after another in one process (2 CPU threads):

* ``plain``: the grid field, ``--max-time`` seconds (default 120) of ordinary training on the 60 training views;
* ``control``: the plain run fine-tuned ``--steps`` more steps exactly as shaping does it (same rays, same
  rates) but with the MI and norm weights at 0: the unshaped field at equal training;
* ``shaped``: the same fine-tune with JacobiNeRF's loss (today's defaults, :class:`ShapingConfig`), and again
  with ``--shaping-seeds`` - 1 other seeds (``shaped-seedK``: other ray draws), whose spread is large;
* ``shaped-mi0.1`` and ``shaped-paper-weights``: the same with the MI weight at 0.1, and with the paper's
  weights (0.01 / 0.01);
* ``shaped-ray`` or ``shaped-zero``: the default shaping with the other Jacobian view
  (:data:`privnerf.semantics.jacobian.VIEWS`); ``control-<view>`` is the control propagated at that view.

Each field propagates labels (:mod:`privnerf.semantics.propagate`) to the 8 test views from one random
click per class (background is void) in training view 0, for ``--click-seeds`` draws, and from every pixel
of that view ("1 dense view": every pixel's Jacobian averaged per class, and the paper's dense setting with
chosen seeds and a learned response aggregator, :mod:`privnerf.semantics.aggregator`); the
Semantic-NeRF-style head is trained on the plain field's features at the same clicks. Metrics: mIoU, total and class-average accuracy (void and unclicked classes ignored).

Usage: ``python benchmarks/jacobi.py [--max-time 120] [--steps 2000] [--click-seeds 3] [--reuse]`` →
``benchmarks/results/jacobi-builtin.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import machine  # noqa: E402

from privnerf.cli.train import train_and_evaluate  # noqa: E402
from privnerf.data.loader import load_scene  # noqa: E402
from privnerf.semantics.propagate import (Click, clicks_from_labels, label_directions, propagate_view,  # noqa: E402
                                          segmentation_metrics, train_semantic_head, view_activations,
                                          view_features)
from privnerf.semantics.aggregator import DensePropagation, clicks_label_map  # noqa: E402
from privnerf.semantics.shaping import ShapingConfig, shape_run  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402
from privnerf.train.config import TrainConfig  # noqa: E402
from privnerf.train.trainer import trainer_from_checkpoint  # noqa: E402


def dense_clicks(scene, view: int = 0, void: int = 0) -> list[Click]:
    sem = np.asarray(scene.semantics[view])
    names = scene.meta["classes"]
    ys, xs = np.nonzero(sem != void)
    return [Click(view, int(x), int(y), names[int(sem[y, x])]) for y, x in zip(ys, xs)]


def evaluate(run: Path, train, test, click_sets: dict, head: bool = False, view: str = "ray") -> tuple[dict, dict]:
    t = trainer_from_checkpoint(run)
    t.scene = train
    out, maps = {}, {}
    names = train.meta["classes"]
    feats = None
    for key, clicks in click_sets.items():
        labels, G = label_directions(t, clicks, view)
        cls = np.array([names.index(lab) for lab in labels])
        preds, hpreds = [], []
        mlp = train_semantic_head(t, clicks, labels) if head else None
        for i in range(test.num_views):
            h, w = test.hw(i)
            a, op = view_activations(t, test.c2w[i], test.intrinsics[i], h, w, view=view)
            lab, _ = propagate_view(a, op, G)
            preds.append(cls[lab.numpy()])
            if mlp is not None:
                if feats is None:
                    feats = [view_features(t, test.c2w[j], test.intrinsics[j], *test.hw(j))[0] for j in range(test.num_views)]
                with torch.no_grad():
                    hpreds.append(cls[mlp(feats[i]).argmax(-1).numpy()])
        out[key] = segmentation_metrics(preds, test.semantics, cls.tolist())
        maps[key] = preds
        if key.startswith("dense"):  # the paper's dense setting: chosen seeds and a learned response aggregator
            dense = DensePropagation(t, view).fit(clicks[0].view, clicks_label_map(clicks, labels, *train.hw(clicks[0].view)),
                                                  len(labels))
            apreds = [cls[dense.predict(test.c2w[i], test.intrinsics[i], *test.hw(i)).numpy()]
                      for i in range(test.num_views)]
            out[key + "-aggregator"] = segmentation_metrics(apreds, test.semantics, cls.tolist())
            out[key + "-aggregator"]["seed_rounds_miou_on_the_labelled_view"] = dense.history
            maps[key + "-aggregator"] = apreds
        if mlp is not None:
            out[key + "/semantic-head"] = segmentation_metrics(hpreds, test.semantics, cls.tolist())
            maps[key + "/semantic-head"] = hpreds
    return out, maps


def summary(scores: dict, head: bool = False) -> dict:
    """Mean over the one-click draws (the semantic head's, or propagation's)."""
    keys = [k for k in scores if k.startswith("click") and k.endswith("/semantic-head") == head]
    return {m: float(np.mean([scores[k][m] for k in keys])) for m in ("miou", "total_accuracy", "class_accuracy")}


def figure(test, maps: dict, path: Path, views=(0, 3)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["image", "ground truth"] + list(maps)
    fig, axes = plt.subplots(len(views), len(cols), figsize=(2.2 * len(cols), 2.3 * len(views)))
    cmap = plt.get_cmap("tab10")
    for r, i in enumerate(views):
        gt = np.asarray(test.semantics[i])
        panels = [np.asarray(test.images[i]), cmap(gt % 10)[..., :3] * (gt[..., None] > 0)]
        panels += [cmap(np.asarray(m[i]) % 10)[..., :3] * (gt[..., None] > 0) for m in maps.values()]
        for c, (name, img) in enumerate(zip(cols, panels)):
            ax = axes[r, c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle("built-in scene, test views: labels propagated from one click per class (void in black)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-time", type=float, default=120.0)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--click-seeds", type=int, default=3)
    p.add_argument("--shaping-seeds", type=int, default=3,
                   help="the default shaping again with other seeds (its ray draws): the spread between runs")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs in --out")
    p.add_argument("--jacobian-view", choices=["ray", "zero"], default=ShapingConfig.jacobian_view,
                   help="the Jacobian view of the default shaping and its seeds (default %(default)s); the other "
                   "view gets one row of its own")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-jacobi")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    a = p.parse_args()
    torch.set_num_threads(2)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    train, test = load_scene("builtin", "train"), load_scene("builtin", "test")
    plain = a.out / "plain"
    if not (a.reuse and (plain / "results.json").exists()):
        shutil.rmtree(plain, ignore_errors=True)
        cfg = TrainConfig()
        cfg.data, cfg.max_time, cfg.output = "builtin", a.max_time, plain
        train_and_evaluate(cfg, quiet=True)
    base = ShapingConfig(steps=a.steps, quiet=True, jacobian_view=a.jacobian_view)
    other = "zero" if a.jacobian_view == "ray" else "ray"
    variants = {"control": replace(base, mi_weight=0.0, norm_weight=0.0), "shaped": base,
                **{f"shaped-seed{k}": replace(base, seed=k) for k in range(1, a.shaping_seeds)},
                "shaped-mi0.1": replace(base, mi_weight=0.1),
                "shaped-paper-weights": replace(base, mi_weight=0.01, norm_weight=0.01),
                f"shaped-{other}": replace(base, jacobian_view=other)}
    runs = {}
    for name, scfg in variants.items():
        out = a.out / name
        done = out / "shaping.json"
        same = done.exists() and json.loads(done.read_text()).get("shaping") == json.loads(json.dumps(asdict(scfg), default=str))
        if not (a.reuse and same):
            shutil.rmtree(out, ignore_errors=True)
            runs[name] = shape_run(plain, out, scfg)
        else:
            runs[name] = json.loads((out / "shaping.json").read_text())
    click_sets = {f"click-seed{s}": clicks_from_labels(train, view=0, seed=s) for s in range(a.click_seeds)}
    click_sets["dense-view0"] = dense_clicks(train)
    rows, maps = {}, {}
    evaluations = [("plain", plain, a.jacobian_view)] + [(n, a.out / n, variants[n].jacobian_view) for n in variants]
    evaluations.append((f"control-{other}", a.out / "control", other))
    for name, run, view in evaluations:
        t0 = time.perf_counter()
        scores, m = evaluate(run, train, test, click_sets, head=(name == "plain"), view=view)
        rows[name] = {"scores": {k: v for k, v in scores.items() if not k.endswith("/semantic-head")},
                      "one_click": summary(scores), "dense_view": scores["dense-view0"],
                      "dense_view_aggregator": scores["dense-view0-aggregator"],
                      "propagate_s": time.perf_counter() - t0, "jacobian_view": view}
        if name == "plain":
            rows["semantic-head"] = {"scores": {k: v for k, v in scores.items() if k.endswith("/semantic-head")},
                                     "one_click": summary(scores, head=True),
                                     "dense_view": scores["dense-view0/semantic-head"]}
        maps[name] = m["click-seed0"]
        if name == "plain":
            maps["semantic-head"] = m["click-seed0/semantic-head"]
        if name in runs:  # (control-<view> is the control's run: its PSNR is the control's)
            rows[name].update(psnr=runs[name]["psnr"], shaping_time_s=runs[name]["shaping_time_s"],
                              shaping_cost=runs[name]["shaping_cost"])
    rows["plain"]["psnr"] = json.loads((plain / "results.json").read_text())["psnr"]
    seeds = [n for n in rows if n == "shaped" or n.startswith("shaped-seed")]
    rows["shaped"]["one_click_over_shaping_seeds"] = {
        "miou_mean": float(np.mean([rows[n]["one_click"]["miou"] for n in seeds])),
        "miou_each": [rows[n]["one_click"]["miou"] for n in seeds],
        "psnr_each": [rows[n]["psnr"] for n in seeds]}
    gain = rows["shaped"]["one_click_over_shaping_seeds"]["miou_mean"] - rows["control"]["one_click"]["miou"]
    res = {"case": "builtin", "started": started, "machine": machine(),
           "commit": __import__("subprocess").run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
           "command": " ".join(sys.argv), "shaping": asdict(base), "rows": rows,
           "clicks": {k: [asdict(c) for c in v] for k, v in click_sets.items() if k != "dense-view0"},
           "shaped_minus_unshaped_miou": gain,
           "meets_target": {"shaped >= unshaped + 0.15 mIoU (mean over shaping seeds)": gain >= 0.15,
                            "shaped >= semantic head": rows["shaped"]["one_click_over_shaping_seeds"]["miou_mean"]
                            >= rows["semantic-head"]["one_click"]["miou"]},
           "paper": "JacobiNeRF's tables were not retrieved (spec B.8); its features are DINO ViT-S/8, ours AlexNet conv2-3"}
    a.results_dir.mkdir(parents=True, exist_ok=True)
    path = a.results_dir / "jacobi-builtin.json"
    atomic_write_text(path, json.dumps(res, indent=1, default=str) + "\n")
    figure(test, {k: maps[k] for k in ("semantic-head", "control", "shaped", f"shaped-{other}")},
           a.results_dir / "jacobi-builtin.png")
    print(json.dumps({k: {"one_click_miou": v["one_click"]["miou"], "dense_view_miou": v["dense_view"]["miou"],
                      "dense_aggregator_miou": v.get("dense_view_aggregator", {}).get("miou"),
                      "psnr": v.get("psnr")} for k, v in rows.items()}, indent=1))
    print("->", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
