"""HG3-NeRF sparse-view guidance against the plain engine (issue 30, item 3): lego 400 with 8 training views,
fern with 3.

Arms, each trained for the same wall-clock ``--seconds`` on the same views and scored on the same test views,
one after another in one process (run it under ``flock /tmp/privnerf-heavy.lock``):

* ``plain``: the engine's default grid field on the chosen views (no guidance).
* ``hg3``: HGG (band sampling around the sparse prior) + HPG (multi-scale colour on a patch) + HSG (AlexNet
  features of the LPIPS weights on the patch; not CLIP), :class:`privnerf.sparse.guidance.HG3Config` defaults.
* ablations (``--arms``): ``hgg`` (band sampling only), ``depth-loss`` (the prior as an L1 depth loss on
  normally sampled prior rays, no band), ``hpg-hsg`` (the patch terms only).

Views: lego: 8 of the 100 training views spread over the cameras by farthest-point order on their centres
from view 0 (:func:`privnerf.sparse.points.spread_views`); fern: 3 of its 17 training views the same way. Test
views as the full protocol: lego the first 20 test views (r_0 .. r_19, white background), fern its LLFF
hold-out (every 8th photo: 0, 8, 16). Prior: lego SIFT matches (pycolmap) triangulated with the known poses,
confirmed in a third view; fern the shipped COLMAP model's points whose tracks hold >= 2 of the 3 views.

Results: ``benchmarks/results/sparse-lego8.json`` / ``sparse-fern3.json`` (every arm, the commit of each, the
machine, the command) and a PNG of one test view (GT | plain | hg3 | ...). A rerun skips arms already in the
file with the same budget (``--fresh`` starts over). ``--steps N``: equal steps instead of equal time.

Usage (2026-12-07): ``flock /tmp/privnerf-heavy.lock .venv/bin/python benchmarks/sparse.py --scene lego
--seconds 240`` (about 5 minutes an arm on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import DATA, git_commit, machine  # noqa: E402

from privnerf.train.checkpoint import atomic_write_text  # noqa: E402

SCENES = {
    "lego": {"data": DATA / "nerf_synthetic" / "lego", "views": 8, "eval": 20, "background": "white",
             "name": "sparse-lego8"},
    "fern": {"data": DATA / "nerf_llff_data" / "fern", "views": 3, "eval": None, "background": None,
             "name": "sparse-fern3"},
}
ARMS = {
    "plain": {"depth": False, "photometric": False, "semantic": False},
    "hg3": {},
    "hgg": {"photometric": False, "semantic": False},
    "depth-loss": {"depth": False, "depth_loss": 0.1, "photometric": False, "semantic": False},
    "hpg-hsg": {"depth": False},
}


def main() -> int:
    from privnerf.cli.sparse import SparseTrainConfig, make_trainer_factory, train_config
    from privnerf.cli.train import train_and_evaluate
    from privnerf.sparse.guidance import HG3Config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", choices=sorted(SCENES), required=True)
    p.add_argument("--seconds", type=float, default=240.0, help="training wall clock per arm")
    p.add_argument("--steps", type=int, default=None, help="equal steps per arm instead of equal wall clock "
                   "(robust to other jobs on the machine; the times are still recorded)")
    p.add_argument("--arms", default="plain,hg3", help=f"comma-separated, from {','.join(ARMS)}")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--tag", default="", help="write <name>-TAG.json instead (trial settings)")
    p.add_argument("--eval-views", type=int, default=None, help="override the number of test views (trials)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an HG3Config field for the guided arms (e.g. semantic_weight=0.05)")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--check-prior", action="store_true", help="lego: also measure the triangulated prior's depth "
                   "error on 8 spread test views against their depth renders (the prior never reads them in training)")
    a = p.parse_args()
    sc = SCENES[a.scene]
    if not Path(sc["data"]).exists():
        raise SystemExit(f"{sc['data']}: not here (set PRIVNERF_DATA or put ../shared/data beside the repo)")
    arms = [x for x in a.arms.split(",") if x]
    bad = [x for x in arms if x not in ARMS]
    if bad:
        raise SystemExit(f"--arms: unknown {bad}; choose from {list(ARMS)}")
    overrides = {}
    for item in a.set:
        k, _, v = item.partition("=")
        if not hasattr(HG3Config, k):
            raise SystemExit(f"--set {item}: HG3Config has no field {k!r}")
        cur = getattr(HG3Config(), k)
        overrides[k] = (tuple(int(x) for x in v.split(",")) if isinstance(cur, tuple)
                        else v.lower() in ("1", "true") if isinstance(cur, bool) else type(cur)(v))
    name = sc["name"] + (f"-{a.tag}" if a.tag else "")
    results = ROOT / "benchmarks" / "results" / f"{name}.json"
    png = results.with_suffix(".png")
    doc = {} if a.fresh or not results.exists() else json.loads(results.read_text())
    budget = {"steps": a.steps} if a.steps else {"seconds": a.seconds}
    if doc.get("budget") not in (None, budget):
        raise SystemExit(f"{results} holds arms of another budget {doc['budget']}; pass --fresh to replace it")
    eval_views = a.eval_views if a.eval_views is not None else sc["eval"]
    doc.update({"study": "HG3-NeRF sparse-view guidance vs the plain engine (issue 30 item 3)", "scene": a.scene,
                "data": str(sc["data"]), "num_views": sc["views"], "budget": budget, "machine": machine(),
                "eval_views": eval_views if eval_views is not None else "all (LLFF hold-out: photos 0, 8, 16)",
                "semantic_features": "AlexNet conv features of the LPIPS weights (privnerf.eval.lpips), not CLIP",
                "target": "hg3 >= plain + 2 dB test PSNR at <= 1.5x its time",
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    doc.setdefault("command", [])
    doc["command"].append("benchmarks/sparse.py " + " ".join(sys.argv[1:]))
    doc.setdefault("arms", {})
    out_root = ROOT / "outputs" / "bench-sparse" / name

    def save() -> None:
        atomic_write_text(results, json.dumps(doc, indent=1, default=str) + "\n")

    for arm in arms:
        if arm in doc["arms"]:
            print(f"{arm}: already in {results.name}, skipped", flush=True)
            continue
        out = out_root / arm
        if out.exists():
            shutil.rmtree(out)
        hg3 = HG3Config(**{**(overrides if arm != "plain" else {}), **ARMS[arm]})
        cfg = SparseTrainConfig(data=str(sc["data"]), output=out, max_time=None if a.steps else a.seconds,
                                steps=a.steps or 10**9, device=a.device,
                                background=sc["background"], eval_max_images=eval_views, threads=2,
                                num_views=sc["views"], hg3=hg3, checkpoint_every_s=10**6)
        record: dict = {}
        res = train_and_evaluate(train_config(cfg), quiet=a.quiet, make_trainer=make_trainer_factory(cfg, record))
        atomic_write_text(out / "sparse.json", json.dumps(record, indent=2, default=str) + "\n")
        doc["arms"][arm] = {
            "psnr": res["psnr"], "ssim": res["ssim"], "lpips": res["lpips"], "num_images": res["num_images"],
            "steps": res["steps"], "train_time_s": res["train_time_s"], "eval_time_s": res["eval_time_s"],
            "per_image_psnr": [r.get("psnr") for r in res["per_image"]],
            "views": record.get("views"), "view_names": record.get("view_names"), "prior": record.get("prior"),
            "hg3": record.get("hg3"), "run": str(out.relative_to(ROOT)), "commit": git_commit(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        save()
        print(f"{arm}: PSNR {res['psnr']:.2f} dB SSIM {res['ssim']:.3f} after {res['steps']} steps "
              f"({res['train_time_s']:.0f} s)", flush=True)
    if a.check_prior and a.scene == "lego":
        doc["prior_check"] = prior_check(sc["data"], sc["views"])
        save()
        print(json.dumps(doc["prior_check"]), flush=True)
    if "plain" in doc["arms"]:
        base = doc["arms"]["plain"]
        doc["vs_plain"] = {k: {"psnr_gain_db": v["psnr"] - base["psnr"],
                               "time_ratio": v["train_time_s"] / base["train_time_s"],
                               "steps_ratio": v["steps"] / base["steps"]} for k, v in doc["arms"].items()}
    save()
    figure(doc, out_root, png)
    print(json.dumps(doc.get("vs_plain", {}), indent=1))
    return 0


def prior_check(data: Path, k: int) -> dict:
    """The lego prior's recipe on ``k`` spread *test* views, scored against their depth renders: how many prior
    pixels and how far off (distance along the ray). Two-view matches alone and with the third-view check."""
    import torch

    from privnerf.data.blender import decode_blender_depth
    from privnerf.data.cameras import rays_from_pixels
    from privnerf.data.loader import load_scene
    from privnerf.sparse.points import spread_views, subset_views, triangulated_prior

    test = load_scene(data, "test", background=(1.0, 1.0, 1.0))
    views = spread_views(test, k)
    sub = subset_views(test, views)
    depth = [decode_blender_depth(Path(sub.frame_meta[i]["depth_path"]), sub.intrinsics[i]) for i in range(k)]
    out = {"test_views": views, "note": "depth renders decode to within ~0.02 (privnerf.data.blender); lego spans "
           "~4 units from the cameras"}
    for name, kw in (("two_view", {}), ("third_view_confirmed", {"min_views": 3, "confirm_cos": 0.9})):
        q = triangulated_prior(sub, **kw)
        gt = np.array([depth[a][b, c] for a, b, c in zip(q.view, q.v, q.u)])
        _, _, zs = rays_from_pixels(torch.from_numpy(sub.c2w[q.view]), torch.from_numpy(sub.intrinsics[q.view]),
                                    torch.from_numpy(q.u), torch.from_numpy(q.v))
        err = np.abs(q.depth - gt * zs.numpy())
        fin = np.isfinite(gt)
        e = err[fin]
        out[name] = {"pixels": len(q), "on_surface": float(fin.mean()), "median_error": float(np.median(e)),
                     "within_0.05": float(np.mean(e < 0.05)), "within_0.2": float(np.mean(e < 0.2))}
    return out


def figure(doc: dict, out_root: Path, png: Path) -> None:
    """One test view: ground truth, then each arm's render, with its PSNR on that view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    arms = [k for k in ("plain", "hg3", "hgg", "depth-loss", "hpg-hsg") if k in doc["arms"]]
    if not arms:
        return
    renders = sorted(p for p in (out_root / arms[0] / "renders" / "test").glob("*.png")
                     if not p.stem.endswith(("_gt", "_depth")))
    if not renders:
        return
    view = renders[0]
    panels = [("ground truth", view.with_name(view.stem + "_gt.png"))]
    for arm in arms:
        psnr = doc["arms"][arm]["per_image_psnr"][0]
        panels.append((f"{arm}: {psnr:.2f} dB (mean {doc['arms'][arm]['psnr']:.2f})",
                       out_root / arm / "renders" / "test" / view.name))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (title, path) in zip(np.atleast_1d(axes), panels):
        if path.is_file():
            ax.imshow(np.asarray(Image.open(path)))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    b = doc["budget"]
    per = f"{b['steps']} steps" if "steps" in b else f"{b['seconds']:.0f} s"
    fig.suptitle(f"{doc['scene']}, {doc['num_views']} training views, {per} per arm: test view {view.stem}", fontsize=9)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png)


if __name__ == "__main__":
    raise SystemExit(main())
