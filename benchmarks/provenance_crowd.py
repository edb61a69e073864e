"""ProvNeRF contributor attribution on a crowd of the built-in scene (issue 29, items 5-6): who supports each
region, and are the regions only one user supports found?

Stages, kept in ``benchmarks/results/provenance-crowd.json`` as they finish (``--fresh`` starts over):

* ``crowd``: a crowd (``privnerf.data.crowd``) of ``builtin:n_train=60`` (100 px): 3 users, each holding the
  views in a 60-degree yaw slice (:data:`SLICES`), each with their own static person in all their photos.
* ``field``: the grid field trained ``--seconds`` on all users' photos (people included: what a curator who
  pooled the photos would get).
* ``provenance``: ``privnerf provenance --checkpoint RUN --data CROWD`` (the CLI itself: field, maps, report).
* ``support``: exact surface points of the scene (people aside); truth: the users with at least one camera that
  sees the point (:func:`builtin_visibility`); a point is *single-user* when exactly one does. Predictions: the
  provenance field's contributor shares (flag: the top share >= 0.9) against the spec's baseline, a
  per-contributor frustum + occlusion check (the run's transmittance from every training camera to the point,
  > 0.5 = seen; flag: one user sees it). Precision / recall / F1 of the flag, AUC of the top share, agreement
  of the main contributor, query time.
* ``personal``: in each user's own photos, the pixels of that user's person (the crowd's masks) against the
  scene's pixels: the share flagged single-user by the provenance maps and by the baseline (at the rendered
  surface point of each pixel). A person only its owner photographed should be flagged; the scene should not.

Usage (2026-12-07): ``python benchmarks/provenance_crowd.py --seconds 150`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
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

from privnerf.train.checkpoint import atomic_write_text  # noqa: E402

OUT = ROOT / "outputs" / "bench-provenance-crowd"
SLICES = [(0.0, 60.0), (120.0, 60.0), (-120.0, 60.0)]
"""Each user's photos: the built-in views within a 60-degree yaw slice (centre, width); three slices a third of the
way round, so a surface facing one slice is seen by that user alone and one facing between two slices by both."""
RESULTS = ROOT / "benchmarks" / "results" / "provenance-crowd.json"



def flag_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    p = tp / max(tp + fp, 1)
    r = tp / max(tp + fn, 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12), "flagged": int(pred.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=150.0)
    ap.add_argument("--points", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--fresh", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    doc = {} if a.fresh or not RESULTS.exists() else json.loads(RESULTS.read_text())
    doc.setdefault("stages", {})
    doc.update(machine=machine(), command=" ".join(["python", "benchmarks/provenance_crowd.py", *sys.argv[1:]]),
               paper="none: contributor attribution is the spec's proposed use of ProvNeRF (blog_papers.md section 7), "
                     "not in the paper",
               started=doc.get("started") or datetime.now(timezone.utc).isoformat(timespec="seconds"))
    stages = doc["stages"]

    def done(name: str, rec: dict) -> None:
        rec.update(commit=commit(), finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        stages[name] = rec
        atomic_write_text(RESULTS, json.dumps(doc, indent=1, default=str) + "\n")
        print(name, {k: v for k, v in rec.items() if not isinstance(v, (list, dict))}, flush=True)

    crowd, run, prov = OUT / "crowd", OUT / "field", OUT / "provenance"
    py = [sys.executable, "-m", "privnerf"]
    if "crowd" not in stages or not crowd.exists():
        from privnerf.data.crowd import CrowdConfig, generate_crowd, write_crowd

        t0 = time.time()
        cfg = CrowdConfig(scene="builtin:n_train=60", users=len(SLICES), slices=SLICES, personal="static")
        write_crowd(generate_crowd(cfg, quiet=True), crowd)
        done("crowd", {"scene": cfg.scene, "users": cfg.users, "slices_deg": SLICES, "personal": "static",
                       "build_s": round(time.time() - t0, 1)})
    if "field" not in stages or not (run / "checkpoints" / "last.pt").exists():
        subprocess.run([*py, "train", "--data", str(crowd), "--max-time", str(a.seconds), "--output", str(run),
                        "--threads", "2"], check=True, cwd=ROOT, capture_output=True)
        r = json.loads((run / "results.json").read_text())
        done("field", {"seconds": a.seconds, "test_psnr_clean_views": r.get("psnr"), "steps": r.get("steps")})
    if "provenance" not in stages or not (prov / "provenance.pt").exists():
        t0 = time.time()
        subprocess.run([*py, "provenance", "--checkpoint", str(run), "--data", str(crowd), "--out", str(prov),
                        "--steps", str(a.steps), "--quiet", "--threads", "2"], check=True, cwd=ROOT)
        s = json.loads((prov / "provenance.json").read_text())
        done("provenance", {"wall_s": round(time.time() - t0, 1), "train_s": s["train_s"], "samples": s["samples"],
                            "views": s["views"]})

    from privnerf.data.builtin import builtin_visibility, sample_builtin_surface
    from privnerf.data.loader import load_scene
    from privnerf.provenance.field import ProvenanceField
    from privnerf.provenance.queries import contributor_shares, provenance_maps, seen_strength
    from privnerf.provenance.report import single_user_flags, user_ids
    from privnerf.provenance.samples import transmittance_to_points
    from privnerf.data.cameras import image_rays
    from privnerf.train.trainer import trainer_from_checkpoint

    tr = trainer_from_checkpoint(run)
    field, occ, settings = tr.field, tr.occ, tr.settings(inference=True)
    train = tr.scene
    users = user_ids(train.names, str(crowd))
    n_users = int(users.max()) + 1
    pf = ProvenanceField.from_state(torch.load(prov / "provenance.pt", weights_only=False), field)

    def baseline_support(x: torch.Tensor) -> np.ndarray:
        """(users, n) bool: some camera of the user sees x per the run's transmittance (> 0.5) and its frustum."""
        from privnerf.provenance.queries import in_frustum

        sup = np.zeros((n_users, len(x)), dtype=bool)
        for c in range(train.num_views):
            cam = torch.as_tensor(train.c2w[c])
            fr = in_frustum(x, cam, torch.as_tensor(train.intrinsics[c]), train.hw(c))
            idx = fr.nonzero().squeeze(1)
            if idx.numel():
                tt = transmittance_to_points(field, occ, settings, cam[:3, 3], x[idx], 0.0)
                sup[users[c], idx[tt > 0.5].numpy()] = True
        return sup

    if "support" not in stages:
        pts, nrm = sample_builtin_surface(a.points, seed=2)
        x = torch.as_tensor(pts).float()
        vis = builtin_visibility(pts, nrm, train.c2w, train.intrinsics, train.hw(0))
        true_sup = np.stack([vis[users == u].any(0) for u in range(n_users)])
        seen_any = true_sup.any(0)
        truth_single = true_sup.sum(0) == 1
        t0 = time.time()
        shares = contributor_shares(pf, x).numpy()
        seen = seen_strength(pf, x).numpy()
        flag = (shares.max(1) >= 0.9) & (seen >= 0.2)  # the report's rule
        t_prov = time.time() - t0
        t0 = time.time()
        bsup = baseline_support(x)
        t_base = time.time() - t0
        from privnerf.provenance.metrics import auc_ap

        m = seen_any  # points some user saw
        true_main = np.stack([vis[users == u].sum(0) for u in range(n_users)]).argmax(0)
        done("support", {
            "points": a.points, "seen_by_someone": float(seen_any.mean()),
            "truth_single_user_share": float(truth_single[m].mean()),
            "truth_users_per_point_mean": float(true_sup.sum(0)[m].mean()),
            "provenance": {**flag_scores(flag[m], truth_single[m]),
                           "auc_top_share": auc_ap(shares.max(1)[m], truth_single[m])[0],
                           "main_user_agreement": float((shares.argmax(1) == true_main)[m].mean()),
                           "seen_auc": auc_ap(seen, seen_any)[0], "query_s": round(t_prov, 2)},
            "baseline": {**flag_scores((bsup.sum(0) == 1)[m], truth_single[m]),
                         "support_accuracy": float((bsup == true_sup)[:, m].mean()), "query_s": round(t_base, 2)},
        })

    if "personal" not in stages:
        crowd_train = load_scene(str(crowd), "train")
        by_name = {n: i for i, n in enumerate(crowd_train.names)}
        rec = {"provenance": {"person": [0, 0], "scene": [0, 0]}, "baseline": {"person": [0, 0], "scene": [0, 0]}}
        per_user = {}
        for u in range(n_users):
            views = np.flatnonzero(users == u)[:2]  # two of each user's photos
            for c in views:
                ci = by_name[train.names[c]]
                mask = np.asarray(crowd_train.masks[ci])
                hh, ww = train.hw(c)
                m = provenance_maps(pf, field, occ, settings, train.c2w[c], train.intrinsics[c], hh, ww)
                fg = (m["opacity"] > 0.5).numpy()
                _, flag_p = single_user_flags(m)  # the report's rule
                o, d, zs = image_rays(torch.as_tensor(train.c2w[c]).float(),
                                      torch.as_tensor(train.intrinsics[c]).float(), hh, ww)
                dist = m["depth"].reshape(-1) * zs  # camera z back to distance along the ray
                sel = torch.as_tensor(fg.reshape(-1))
                xs = o[sel] + dist[sel, None] * d[sel]
                bs = baseline_support(xs)
                flag_b = np.zeros(hh * ww, dtype=bool)
                flag_b[sel.numpy()] = bs.sum(0) == 1
                flag_b = flag_b.reshape(hh, ww)
                person = fg & (mask == u + 1)
                scene = fg & (mask == 0)
                for name, fl in (("provenance", flag_p), ("baseline", flag_b)):
                    rec[name]["person"][0] += int((fl & person).sum())
                    rec[name]["person"][1] += int(person.sum())
                    rec[name]["scene"][0] += int((fl & scene).sum())
                    rec[name]["scene"][1] += int(scene.sum())
                per_user[u] = per_user.get(u, 0) + int(person.sum())
        out = {name: {"person_pixels_flagged": v["person"][0] / max(v["person"][1], 1),
                      "scene_pixels_flagged": v["scene"][0] / max(v["scene"][1], 1),
                      "person_pixels": v["person"][1], "scene_pixels": v["scene"][1]} for name, v in rec.items()}
        done("personal", {**out, "person_pixels_per_user": per_user})
    doc["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(RESULTS, json.dumps(doc, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
