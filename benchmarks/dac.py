"""DaC against one model at equal compute (issue 30, item 1): ``benchmarks/results/dac-<scene>.json`` + PNG.

Arms, one after another in one process (same machine state), each the full ``privnerf train`` path:

* ``baseline``: one grid model (``--method plain``) trained ``--seconds`` T on every training view.
* ``dac``: ``--method dac`` with K groups (DaC's azimuth sectors) and the same total T: experts share 4/7 of
  T (one after another), distillation 1/7, fine-tuning 2/7 (the proportions of DaC's released script).
* optional (``--arms``): ``dac-btm`` (branch-train-merge: a shared all-view model trained for half of T is
  the start of every expert (1/20 of T each with K = 4) and of the student; distillation 1/10, fine-tuning 1/5),
  ``dac-rays`` (ray-colour
  distillation only: the ablation of the point and histogram losses), ``dac-similarity`` (Louvain groups).

Every arm is scored on the same views: lego 400 (white background) on the first 20 test views; fern on the
LLFF protocol's test views (every 8th view held out, :mod:`privnerf.data.llff`: views 0, 8, 16). For each DaC
arm each expert is also scored on up to 5 test views of its group (the first of the whole test split whose
most similar training view is in the group), the quality the distillation starts from.

Usage (2026-12-07, under ``flock /tmp/privnerf-heavy.lock``): ``python benchmarks/dac.py --scene lego``
(T = 600 s, K = 4) and ``--scene fern`` (T = 300 s, K = 3). A rerun skips finished arms; ``--fresh`` restarts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import DATA, git_commit, grid_config, machine  # noqa: E402

from privnerf.train.checkpoint import atomic_write_text  # noqa: E402

SCENES = {
    "lego": dict(data=DATA / "nerf_synthetic" / "lego", seconds=600.0, groups=4, views=20, background="white"),
    "fern": dict(data=DATA / "nerf_llff_data" / "fern", seconds=300.0, groups=3, views=None, background=None),
}
ARMS = {
    "baseline": {},
    "dac": {},
    "dac-btm": dict(warm_share=0.5, expert_share=0.2, distill_share=0.1, student_from_warm=True),
    "dac-rays": dict(points=False),
    "dac-similarity": dict(grouping="similarity"),
}


PER_EXPERT = 5
"""Test views scored per expert: the first of the whole test split that fall in its group (lego's first 20
test views all face one sector, so the scored 20 cannot show every expert)."""


def expert_scores(run: Path, train_scene, eval_scene, groups: list[list[int]]) -> list[dict]:
    """Each expert's PSNR on the first :data:`PER_EXPERT` eval views assigned to its group."""
    from privnerf.dac.grouping import assign_views
    from privnerf.eval.evaluate import evaluate_split
    from privnerf.train.trainer import trainer_from_checkpoint

    scene = eval_scene
    rows = []
    for k, own in enumerate(assign_views(train_scene, groups, scene)):
        own = own[:PER_EXPERT]
        row = {"expert": k, "train_views": len(groups[k]), "eval_views": own}
        if own:
            t = trainer_from_checkpoint(run / "experts" / str(k))
            r = evaluate_split(t.field, t.occ, t.settings(inference=True), scene.subset(own), with_lpips=False,
                               quiet=True)
            row["psnr"] = float(r["psnr"])
        rows.append(row)
    return rows


def figure(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in doc["arms"]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(arms), 3.6))
    for i, name in enumerate(arms):
        row = doc["arms"][name]
        ax.bar(i, row["psnr"], color="0.55" if name == "baseline" else "tab:blue", width=0.6)
        ax.text(i, row["psnr"] + 0.1, f"{row['psnr']:.2f}", ha="center", fontsize=8)
        for e in row.get("experts", []):
            if "psnr" in e:
                ax.plot(i + 0.22, e["psnr"], "o", color="tab:orange", ms=4)
    ax.plot([], [], "o", color="tab:orange", ms=4, label=f"an expert on (up to {PER_EXPERT}) test views of its group")
    ax.set_xticks(range(len(arms)), arms)
    lo = min(min([doc["arms"][a]["psnr"] for a in arms]),
             min([e["psnr"] for a in arms for e in doc["arms"][a].get("experts", []) if "psnr" in e], default=99))
    ax.set_ylim(lo - 1.5, max(doc["arms"][a]["psnr"] for a in arms) + 1.0)
    ax.set_ylabel("test PSNR (dB)")
    ax.set_title(f"DaC vs one model, {doc['scene']}, {doc['seconds']:.0f} s each, K = {doc['groups']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    plt.close(fig)


def main() -> int:
    from privnerf.cli.train import load_split, train_and_evaluate
    from privnerf.train.trainer import set_threads

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", choices=sorted(SCENES), required=True)
    p.add_argument("--seconds", type=float, default=None, help="T, each arm's total training time (default: "
                   "lego 600, fern 300)")
    p.add_argument("--groups", type=int, default=None, help="K (default: lego 4, fern 3)")
    p.add_argument("--arms", default="baseline,dac", help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--tag", default="", help="results in dac-<scene>-<tag>.json")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args()
    s = SCENES[a.scene]
    seconds = a.seconds or s["seconds"]
    groups = a.groups or s["groups"]
    arms = a.arms.split(",")
    bad = [x for x in arms if x not in ARMS]
    if bad:
        raise SystemExit(f"--arms: unknown {bad}; choose from {list(ARMS)}")
    if not Path(s["data"]).is_dir():
        raise SystemExit(f"{s['data']}: not here (set PRIVNERF_DATA or put ../shared/data beside the repo)")
    name = f"dac-{a.scene}" + (f"-{a.tag}" if a.tag else "")
    results = ROOT / "benchmarks" / "results" / f"{name}.json"
    png = results.with_suffix(".png")
    out = ROOT / "outputs" / "bench-dac" / name
    doc = {} if a.fresh or not results.exists() else json.loads(results.read_text())
    if doc and (doc.get("seconds") != seconds or doc.get("groups") != groups):
        raise SystemExit(f"{results} holds a run with another T or K; pass --fresh to replace it")
    set_threads(2)
    doc.update({"scene": a.scene, "data": str(s["data"]), "seconds": seconds, "groups": groups,
                "eval_views": s["views"] or "LLFF test split (views 0, 8, 16)", "machine": machine(),
                "command": "benchmarks/dac.py " + " ".join(sys.argv[1:]),
                "target": "DaC >= baseline + 0.5 dB test PSNR at equal compute (issue 30)"})
    doc.setdefault("started", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    doc.setdefault("arms", {})

    def save() -> None:
        atomic_write_text(results, json.dumps(doc, indent=1, default=str) + "\n")

    for arm, row in doc["arms"].items():
        if "groups" in row and not row.get("experts_per_group"):  # experts scored by an older rule: rescore
            if not all((out / arm / "experts" / str(k) / "checkpoints" / "last.pt").exists()
                       for k in range(len(row["groups"]))):
                print(f"{arm}: its experts' checkpoints are not under {out / arm} (another checkout's run); "
                      "its expert scores stay as recorded", flush=True)
                continue
            cfg = grid_config(str(s["data"]), seconds, out / arm, background=s["background"])
            row["experts"] = expert_scores(out / arm, load_split(cfg, "train"), load_split(cfg, "test"), row["groups"])
            row["experts_per_group"] = PER_EXPERT
            row["experts_rescored"] = {"commit": git_commit(),
                                       "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            save()
            figure(doc, png)
    for arm in arms:
        if arm in doc["arms"]:
            print(f"{arm}: done before, skipped", flush=True)
            continue
        run = out / arm
        if run.exists() and a.fresh:
            shutil.rmtree(run)
        cfg = grid_config(str(s["data"]), seconds, run, background=s["background"], eval_max_images=s["views"],
                          resume=run.exists(), threads=2)
        if arm != "baseline":
            cfg.method = "dac"
            cfg.dac.groups = groups
            for k, v in ARMS[arm].items():
                setattr(cfg.dac, k, v)
        t0 = time.perf_counter()
        res = train_and_evaluate(cfg, quiet=a.quiet)
        row = {k: res[k] for k in ("psnr", "ssim", "lpips", "num_images", "steps", "train_time_s", "eval_time_s",
                                   "method")}
        row["wall_s"] = time.perf_counter() - t0
        row["per_image_psnr"] = [r["psnr"] for r in res["per_image"]]
        if "dac" in res:
            d = res["dac"]
            row["settings"] = {k: getattr(cfg.dac, k) for k in ("grouping", "warm_share", "expert_share",
                                                                 "distill_share", "points", "student_from_warm")}
            row["groups"] = d["groups"]
            row["phases"] = d["phases"]
            row["experts"] = expert_scores(run, load_split(cfg, "train"), load_split(cfg, cfg.eval_split),
                                           d["groups"])
            row["experts_per_group"] = PER_EXPERT
        row["commit"] = git_commit()
        row["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        doc["arms"][arm] = row
        if "baseline" in doc["arms"]:
            base = doc["arms"]["baseline"]["psnr"]
            doc["delta_db"] = {k: v["psnr"] - base for k, v in doc["arms"].items() if k != "baseline"}
        save()
        figure(doc, png)
        print(arm, json.dumps({k: v for k, v in row.items() if k not in ("groups", "phases", "per_image_psnr")},
                              default=str)[:700], flush=True)
    print(json.dumps(doc.get("delta_db", {}), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
