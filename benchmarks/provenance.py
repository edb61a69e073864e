"""ProvNeRF provenance on the built-in scene (issue 29, items 5-6): visibility from held-out cameras and
triangulation uncertainty, where the scene gives exact answers.

Stages, each kept in ``benchmarks/results/provenance-builtin.json`` as it finishes (``--fresh`` starts over):

* ``field``: the grid field trained ``--seconds`` on the built-in scene (``--views`` training views, 100 px).
* ``provenance``: empirical samples from every training ray (:func:`collect_samples`), then the provenance
  field (K = 16) and its deterministic ablation (K = 1), same samples, same steps.
* ``visibility``: ``--points`` exact surface points (:func:`sample_builtin_surface`, never training samples) x
  the held-out cameras (the test split, 8 views on a ring none of the training views sits on); truth from the
  analytic scene (:func:`builtin_visibility`: in the image, facing the camera, nothing in between). Scores:
  ProvNeRF ``in_frustum x visibility_scores``; the baseline ``in_frustum x`` the trained field's transmittance
  from the camera to the point (the spec's frustum + occlusion check); both methods' one free parameter (the
  kernel concentration, the baseline's stop-short distance) chosen on the val split's cameras. AUC and AP over
  all pairs and over in-frustum pairs; query time.
* ``uncertainty``: test views rendered; per pixel the depth uncertainty (:func:`provenance_maps`: triangulation
  plus unobserved space in front) against the absolute depth error of the field (pixels with true depth and
  opacity > 0.5); Spearman correlation, overall, per view and for each term alone.

Usage (2026-12-07): ``python benchmarks/provenance.py --seconds 150`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import git_commit as commit  # noqa: E402
from engine import machine  # noqa: E402

from privnerf.provenance.metrics import auc_ap  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402

OUT = ROOT / "outputs" / "bench-provenance"



SETTINGS = {
    "full": {"views": 60, "azimuth_range": 360.0},
    "wedge": {"views": 60, "azimuth_range": 120.0},
}
"""``full``: the built-in scene's 60 training views (a hemisphere band all round); ``wedge``: only those of them
whose azimuth lies within 60 degrees of +X (about a third: one side seen, as one contributor's photos are),
held-out cameras still all round the ring."""


def azimuths(c2w: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(c2w[:, 1, 3], c2w[:, 0, 3]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=150.0)
    ap.add_argument("--points", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--settings", default="full,wedge")
    ap.add_argument("--fresh", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    results = ROOT / "benchmarks" / "results" / "provenance-builtin.json"
    doc = {} if a.fresh or not results.exists() else json.loads(results.read_text())
    doc.setdefault("stages", {})
    doc.update(machine=machine(), command=" ".join(["python", "benchmarks/provenance.py", *sys.argv[1:]]),
               settings=SETTINGS, paper="ProvNeRF's provenance AP/AUC table (page 8) was not retrieved "
               "(spec blog_papers.md section 7); the targets are the issue's",
               started=doc.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def save() -> None:
        atomic_write_text(results, json.dumps(doc, indent=1, default=str) + "\n")

    def done(name: str, rec: dict) -> None:
        rec.update(commit=commit(), finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        doc["stages"][name] = rec
        save()
        print(name, {k: v for k, v in rec.items() if not isinstance(v, (list, dict))}, flush=True)

    for name in a.settings.split(","):
        run_setting(name, SETTINGS[name], a, doc, done)
    doc["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    save()


def run_setting(name: str, setting: dict, a, doc: dict, done) -> None:
    from privnerf.data.builtin import builtin_visibility, make_builtin_scene, sample_builtin_surface
    from privnerf.provenance.field import ProvenanceConfig, ProvenanceField, radiance_features, train_provenance
    from privnerf.provenance.queries import in_frustum, provenance_maps, visibility_scores
    from privnerf.provenance.samples import collect_samples, transmittance_to_points
    from privnerf.train.config import TrainConfig
    from privnerf.train.trainer import Trainer, trainer_from_checkpoint

    out = OUT / name
    stages = doc["stages"]
    full = make_builtin_scene("train", n_train=setting["views"])
    az = azimuths(full.c2w)
    keep = np.flatnonzero(np.abs(az) <= setting["azimuth_range"] / 2 + 1e-6)
    train = full.subset(keep)
    val, test = make_builtin_scene("val"), make_builtin_scene("test")
    run = out / "field"
    if f"{name}/field" not in stages or not (run / "checkpoints" / "last.pt").exists():
        cfg = TrainConfig()
        cfg.max_time, cfg.steps, cfg.eval_max_images = a.seconds, 10**9, 0
        t = Trainer(cfg, train, run)
        t.train(quiet=True)
        from privnerf.eval.evaluate import evaluate_split

        r = evaluate_split(t.field, t.occ, t.settings(inference=True), test, with_lpips=False, quiet=True)
        done(f"{name}/field", {"train_views": len(keep), "train_azimuths_deg": [round(float(v), 1) for v in az[keep]],
                               "seconds": a.seconds, "steps": t.step_count, "test_psnr": float(r["psnr"])})
    tr = trainer_from_checkpoint(run)
    field, occ, settings = tr.field, tr.occ, tr.settings(inference=True)
    h = settings.step

    pfs = {}
    for k in (16, 1):
        stage = f"{name}/provenance-k{k}"
        path = out / f"provenance-k{k}.pt"
        if stage in stages and path.exists():
            pfs[k] = ProvenanceField.from_state(torch.load(path, weights_only=False), field)
            continue
        t0 = time.time()
        s = collect_samples(field, occ, settings, train.c2w, train.intrinsics,
                            [train.hw(i) for i in range(train.num_views)])
        t_samples = time.time() - t0
        cond = radiance_features(field, s.x[:2], h).shape[1]
        pf = ProvenanceField(ProvenanceConfig(samples=k, steps=a.steps), torch.as_tensor(train.aabb), train.near,
                             train.far, cond_dim=cond)
        pf.attach(field, h, fit_on=s.x[torch.randperm(len(s), generator=torch.Generator().manual_seed(0))[:50000]])
        t0 = time.time()
        curve = train_provenance(pf, s, quiet=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(pf.state(), path)
        pfs[k] = pf
        done(stage, {"samples": len(s), "collect_s": round(t_samples, 1), "train_s": round(time.time() - t0, 1),
                     "steps": a.steps, "loss_curve": curve})

    pts, nrm = sample_builtin_surface(a.points, seed=1)
    x = torch.as_tensor(pts).float()
    cache: dict = {}

    def occlusion(scene, stop: float) -> np.ndarray:
        key = (id(scene), stop)
        if key not in cache:
            cams = torch.as_tensor(scene.c2w)
            fr = torch.stack([in_frustum(x, cams[c], torch.as_tensor(scene.intrinsics[c]), scene.hw(c))
                              for c in range(len(cams))]).float()
            tt = torch.stack([transmittance_to_points(field, occ, settings, cams[c, :3, 3], x, stop)
                              for c in range(len(cams))])
            cache[key] = (fr * tt).numpy()
        return cache[key]

    def prov(scene, k: int, kappa: float, reduce: str) -> np.ndarray:
        key = (id(scene), k, kappa, reduce)
        if key not in cache:
            cams = torch.as_tensor(scene.c2w)
            fr = torch.stack([in_frustum(x, cams[c], torch.as_tensor(scene.intrinsics[c]), scene.hw(c))
                              for c in range(len(cams))]).float()
            cache[key] = (fr * visibility_scores(pfs[k], x, cams[:, :3, 3], kappa, reduce=reduce)).numpy()
        return cache[key]

    kappas = [0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0]
    methods = {
        "baseline": ([{"stop": s * h} for s in (-1, 0, 0.5, 1, 2, 4)], lambda sc, p: occlusion(sc, p["stop"])),
        "provenance": ([{"k": 16, "kappa": kk, "reduce": r} for kk in kappas for r in ("max", "mean", "resultant")],
                       lambda sc, p: prov(sc, p["k"], p["kappa"], p["reduce"])),
        "provenance_k1": ([{"k": 1, "kappa": kk, "reduce": "max"} for kk in kappas],
                          lambda sc, p: prov(sc, 1, p["kappa"], "max")),
        "provenance_x_occlusion": (
            [{"k": k, "kappa": kk, "reduce": r, "gamma": g, "stop": 0.0} for k, r in ((16, "resultant"), (16, "mean"),
                                                                                   (1, "max"))
             for kk in kappas[:5] for g in (0.5, 1.0, 2.0)],
            lambda sc, p: prov(sc, p["k"], p["kappa"], p["reduce"]) ** p["gamma"] * occlusion(sc, p["stop"])),
    }
    if f"{name}/visibility" not in stages:
        truth_val = builtin_visibility(pts, nrm, val.c2w, val.intrinsics, val.hw(0))
        truth = builtin_visibility(pts, nrm, test.c2w, test.intrinsics, test.hw(0))
        rec = {"points": a.points, "test_cameras": len(test.c2w), "positive_share": float(truth.mean())}
        for m, (grid, fn) in methods.items():
            val_auc = [auc_ap(fn(val, p).ravel(), truth_val.ravel())[0] for p in grid]
            best = grid[int(np.argmax(val_auc))]
            cache.clear()
            t0 = time.time()
            sc = fn(test, best)
            auc, apv = auc_ap(sc.ravel(), truth.ravel())
            rec[m] = {"auc": auc, "ap": apv, "chosen_on_val": best, "val_auc": float(max(val_auc)),
                      "query_s": round(time.time() - t0, 2)}
        # what side information is worth: the true normal's facing test times the occlusion score (an oracle)
        cams = test.c2w[:, :3, 3]
        facing = np.einsum("cnk,nk->cn", cams[:, None, :] - pts[None], nrm) > 0
        occ_best = occlusion(test, rec["baseline"]["chosen_on_val"]["stop"])
        rec["oracle_facing_x_occlusion"] = dict(zip(("auc", "ap"), auc_ap((occ_best * facing).ravel(), truth.ravel()),
                                                    strict=True))
        rec["auc_gain_over_baseline"] = max(rec["provenance"]["auc"], rec["provenance_k1"]["auc"],
                                            rec["provenance_x_occlusion"]["auc"]) - rec["baseline"]["auc"]
        done(f"{name}/visibility", rec)

    if f"{name}/uncertainty" not in stages:
        from scipy.stats import spearmanr

        def terms(scene) -> tuple[list, np.ndarray]:
            """Per view the foreground pixels' (triangulation, unobserved, seen, depth) and the absolute depth error."""
            rows, errs = [], []
            for c in range(scene.num_views):
                hh, ww = scene.hw(c)
                m = provenance_maps(pfs[16], field, occ, settings, scene.c2w[c], scene.intrinsics[c], hh, ww)
                gt = torch.as_tensor(scene.depths[c])
                ok = (torch.isfinite(gt) & (m["opacity"] > 0.5) & torch.isfinite(m["triangulation"])
                      & torch.isfinite(m["depth"]))
                rows.append(np.stack([m[k][ok].numpy() for k in ("triangulation", "unobserved", "seen", "depth")], 1))
                errs.append((m["depth"][ok] - gt[ok]).abs().numpy())
            return rows, errs

        weights = [0.0, 0.1, 0.3, 1.0]

        def rho(rows, errs, lam: float) -> float:
            r, e = np.concatenate(rows), np.concatenate(errs)
            return float(spearmanr(r[:, 1] + lam * r[:, 0], e).statistic)

        vrows, verrs = terms(val)
        val_rho = [rho(vrows, verrs, lam) for lam in weights]
        lam = weights[int(np.argmax(val_rho))]
        rows, errs = terms(test)
        r, e = np.concatenate(rows), np.concatenate(errs)
        done(f"{name}/uncertainty", {
            "pixels": int(len(e)), "triangulation_weight_chosen_on_val": lam,
            "val_spearman_by_weight": dict(zip(map(str, weights), val_rho, strict=True)),
            "spearman": rho(rows, errs, lam),
            "spearman_per_view": [rho([a], [b], lam) for a, b in zip(rows, errs, strict=True)],
            "spearman_triangulation_only": float(spearmanr(r[:, 0], e).statistic),
            "spearman_unobserved_only": float(spearmanr(r[:, 1], e).statistic),
            "spearman_unseen": float(spearmanr(-r[:, 2], e).statistic),
            "spearman_depth_itself": float(spearmanr(r[:, 3], e).statistic),
            "median_abs_depth_error": float(np.median(e))})


if __name__ == "__main__":
    main()
