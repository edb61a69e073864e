"""Face privacy of Identity-Obscured NeRF's operator σ on the Ethiopian head: detection, recognition, inversion.

For the masked head (``<data>/nerd_ethiopian_head``, 66 views at 500 px):

* **raw views**: on how many views dlib finds a face (MMOD CNN and HOG, the head-crop protocol of
  :func:`privnerf.privacy.face_attacks.detect_faces_in_head`), and the verification rate of the raw views with a
  face, leave-one-out: each view's embeddings against the other raw views' (threshold 0.6). These embeddings are
  the *subject's* (the person's enrolled face).
* the face direction (``--face-direction``, or from the CNN detections as in ``privnerf face obscure``) and the
  yaw of each view; the ``--views`` most frontal *sensitive* views (yaw <= ``--neutral-angle``) are scored:
* **σ images** of both operators (gradmag, signed; ``--blur``, ``--levels``, ``--clip``) as an attacker sees them
  (the preview of the codes), the **Poisson** integration of signed σ, and the **learned inverse** of each
  operator (a U-Net trained from scratch on other images: lego, fern, the built-in scene; never the head):
  face detection rate, verification rate against the subject at 0.6 (the other raw views' embeddings, never
  the probe's own photo), and PSNR / SSIM against the raw grey
  image inside the mask (8-bit, :mod:`privnerf.privacy.face_attacks`). Poisson output is defined up to a
  constant: it is scored after the oracle gain and offset that fit the raw image best inside the mask; the
  learned inverse is scored as is and after the same calibration. The baseline is the constant grey image
  (the raw image's mean inside the mask). The issue's bar: the learned inverse at most 3 dB above it.
* ``--extra IMG ...``: further images (e.g. renders of the reconstructed geometry) scored for detection and
  verification against the subject; their mask is the non-black pixels (renders on black).

Writes ``benchmarks/results/face-privacy.json`` and ``face-privacy.png`` (rows: the most frontal views; columns:
raw, σ gradmag, σ signed, Poisson, learned gradmag, learned signed, constant grey; cropped to the head).

Usage (full run, about 10 minutes on 2 CPU cores)::

    python benchmarks/face_privacy.py

Smoke run: ``python benchmarks/face_privacy.py --inverse-steps 5 --views 3 --raw-views 6
--face-direction=-0.767,0.613,0.189 --out /tmp/fp.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from privnerf.data.io import atomic_write_json, read_image, save_figure  # noqa: E402
from privnerf.data.paths import data_root  # noqa: E402
from privnerf.face.head import MASK_THRESHOLD, load_head  # noqa: E402
from privnerf.face.obscure import parse_direction, scene_up, yaw_degrees  # noqa: E402
from privnerf.face.operators import OPERATORS, OperatorSpec, obscure, preview, to_gray  # noqa: E402
from privnerf.privacy import face_attacks as fa  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from engine import machine  # noqa: E402  (one machine description for every benchmark)


def u8(img: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def detect_both(img, mask) -> dict:
    """Detections (CNN, HOG) on the head crop; the faces used for embeddings: CNN's, else HOG's."""
    cnn = fa.detect_faces_in_head(img, mask, method="cnn")
    hog = fa.detect_faces_in_head(img, mask, method="hog")
    return {"cnn": cnn, "hog": hog, "faces": cnn or hog}


def score_image(img, mask, subject: list, threshold: float) -> dict:
    d = detect_both(img, mask)
    emb = fa.face_embeddings(img, detections=d["faces"]) if d["faces"] else []
    v = fa.verification(emb, subject, threshold)
    return {"cnn_faces": len(d["cnn"]), "hog_faces": len(d["hog"]), "face": bool(d["faces"]),
            "verified": v["verified"], "min_distance": v["min_distance"]}


def quality(pred, gt, m) -> dict:
    return {"psnr": fa.masked_psnr(pred, gt, m), "ssim": fa.masked_ssim(pred, gt, m)}


def summarise(rows: list[dict]) -> dict:
    out: dict = {"n": len(rows)}
    if not rows:
        return out
    if "face" in rows[0]:
        out["detection_rate"] = float(np.mean([r["face"] for r in rows]))
        out["cnn_detection_rate"] = float(np.mean([r["cnn_faces"] > 0 for r in rows]))
        out["hog_detection_rate"] = float(np.mean([r["hog_faces"] > 0 for r in rows]))
        out["verification_rate"] = float(np.mean([r["verified"] for r in rows]))
        dists = [r["min_distance"] for r in rows if r["min_distance"] is not None]
        out["min_distance_mean"] = float(np.mean(dists)) if dists else None
    for k in ("psnr", "ssim", "psnr_calibrated", "ssim_calibrated"):
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            out[k] = float(np.mean(vals))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="head folder (default <data>/nerd_ethiopian_head)")
    p.add_argument("--face-direction", default="auto", help="'auto' (from the raw CNN detections) or X,Y,Z")
    p.add_argument("--neutral-angle", type=float, default=90.0)
    p.add_argument("--views", type=int, default=0, help="most frontal sensitive views scored (0 = all sensitive)")
    p.add_argument("--raw-views", type=int, default=0, help="raw views run through the detectors (0 = all; "
                   "else evenly spaced, for smoke runs)")
    p.add_argument("--blur", type=float, default=OperatorSpec().blur_sigma)
    p.add_argument("--levels", type=int, default=OperatorSpec().levels, help="gradmag's quantisation levels")
    p.add_argument("--signed-levels", type=int, default=4, help="signed's levels (2 would keep only one sign)")
    p.add_argument("--clip", type=float, default=OperatorSpec().clip)
    p.add_argument("--threshold", type=float, default=0.6, help="verification distance threshold")
    p.add_argument("--inverse-steps", type=int, default=1000)
    p.add_argument("--inverse-batch", type=int, default=8)
    p.add_argument("--rgb-inverse", action="store_true", help="also train an RGB learned inverse (gradmag)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", type=Path, nargs="*", default=[], help="more images to score (e.g. renders)")
    p.add_argument("--figure-views", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "face-privacy.json")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.time()
    timings: dict[str, float] = {}
    root = a.data or data_root() / "nerd_ethiopian_head"
    scene = load_head(root)
    names = [Path(n).stem for n in scene.names]
    masks = [m >= MASK_THRESHOLD for m in scene.masks]
    greys = [to_gray(im) for im in scene.images]
    n = scene.num_views

    # ---- raw views: detection and the subject's embeddings
    t0 = time.time()
    raw_idx = (list(range(n)) if a.raw_views <= 0
               else sorted(set(np.linspace(0, n - 1, a.raw_views).round().astype(int).tolist())))
    raw_rows, emb = [], {}
    for i in raw_idx:
        d = detect_both(u8(scene.images[i]), scene.masks[i])
        if d["faces"]:
            emb[i] = fa.face_embeddings(u8(scene.images[i]), detections=d["faces"])
        raw_rows.append({"name": names[i], "cnn_faces": len(d["cnn"]), "hog_faces": len(d["hog"]),
                         "cnn_score": max((x.score for x in d["cnn"]), default=None),
                         "hog_score": max((x.score for x in d["hog"]), default=None)})
        if not a.quiet:
            print(f"raw {names[i]}: cnn {len(d['cnn'])} hog {len(d['hog'])}", flush=True)
    timings["raw_detection_s"] = time.time() - t0
    loo = []
    for i, e in emb.items():
        others = [x for j, es in emb.items() if j != i for x in es]
        v = fa.verification(e, others, a.threshold)
        loo.append({"name": names[i], "verified": v["verified"], "min_distance": v["min_distance"],
                    "n_subject": v["n_subject"]})
    subject = [x for es in emb.values() for x in es]

    # ---- face direction, yaw, scored views
    up = scene_up(scene.c2w)
    centre = scene.aabb.astype(np.float64).mean(0)
    given = parse_direction(a.face_direction)
    if given is None:
        idx = [i for i in raw_idx if any(r["name"] == names[i] and r["cnn_faces"] for r in raw_rows)] or list(emb)
        if not idx:
            raise SystemExit("no face detected in the raw views: pass --face-direction X,Y,Z")
        dirs = scene.c2w[idx, :3, 3].astype(np.float64) - centre
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        fdir = dirs.mean(0) / np.linalg.norm(dirs.mean(0))
    else:
        fdir = given
    yaw = yaw_degrees(fdir, scene.c2w[:, :3, 3], centre, up)
    sens = [int(i) for i in np.argsort(yaw) if yaw[i] <= a.neutral_angle]
    scored = sens[: a.views] if a.views > 0 else sens
    if not scored:
        raise SystemExit("no sensitive view to score")

    # ---- learned inverses (other images only)
    t0 = time.time()
    train_imgs = fa.inverse_training_images()
    timings["inverse_data_s"] = time.time() - t0
    models, train_info = {}, {}
    for name in OPERATORS:
        spec = OperatorSpec(name, a.blur, a.levels if name == "gradmag" else a.signed_levels, a.clip)
        t0 = time.time()
        models[name] = fa.train_inverse(spec, train_imgs, steps=a.inverse_steps, seed=a.seed,
                                        batch=a.inverse_batch, quiet=a.quiet)
        train_info[name] = models[name].train_info
        timings[f"inverse_{name}_s"] = time.time() - t0
    if a.rgb_inverse:
        t0 = time.time()
        models["gradmag-rgb"] = fa.train_inverse(OperatorSpec("gradmag", a.blur, a.levels, a.clip), train_imgs,
                                                 steps=a.inverse_steps, seed=a.seed, batch=a.inverse_batch,
                                                 rgb=True, quiet=a.quiet)
        train_info["gradmag-rgb"] = models["gradmag-rgb"].train_info
        timings["inverse_gradmag-rgb_s"] = time.time() - t0

    # ---- score σ images and their inversions
    t0 = time.time()
    rows: dict[str, list] = {k: [] for k in ("sigma_gradmag", "sigma_signed", "poisson_signed", "learned_gradmag",
                                             "learned_signed", "constant_grey", "raw_scored")}
    if a.rgb_inverse:
        rows["learned_gradmag_rgb"] = []
    fig_imgs = []
    for i in scored:
        gt, m, msk = greys[i], masks[i], scene.masks[i]
        base = {"name": names[i], "yaw_deg": float(yaw[i])}
        others = [x for j, es in emb.items() if j != i for x in es]  # never the probe's own raw view
        raw_s = score_image(u8(scene.images[i]), msk, others, a.threshold)
        rows["raw_scored"].append(base | raw_s)
        const = fa.constant_grey(gt, m)
        rows["constant_grey"].append(base | quality(const, gt, m))
        fig = {"raw": scene.images[i], "constant": const, "mask": m}
        for name in OPERATORS:
            spec = OperatorSpec(name, a.blur, a.levels if name == "gradmag" else a.signed_levels, a.clip)
            codes = obscure(spec, scene.images[i])
            pv = preview(spec, codes)
            rows[f"sigma_{name}"].append(base | score_image(pv, msk, others, a.threshold))
            fig[f"sigma_{name}"] = pv
            if name == "signed":
                gx, gy = fa.codes_to_gradients(spec, codes)
                rec = fa.calibrate(fa.poisson_reconstruct(gx, gy), gt, m)
                q = quality(rec, gt, m)
                rows["poisson_signed"].append(base | score_image(rec, msk, others, a.threshold)
                                              | {"psnr_calibrated": q["psnr"], "ssim_calibrated": q["ssim"]})
                fig["poisson_signed"] = rec
            inv = fa.invert(models[name], codes)
            inv_m = np.where(m, inv, 0.0)
            cal = fa.calibrate(inv, gt, m)
            qc = quality(cal, gt, m)
            rows[f"learned_{name}"].append(base | score_image(inv_m, msk, others, a.threshold) | quality(inv_m, gt, m)
                                           | {"psnr_calibrated": qc["psnr"], "ssim_calibrated": qc["ssim"]})
            fig[f"learned_{name}"] = inv_m
        if a.rgb_inverse:
            inv = fa.invert(models["gradmag-rgb"], obscure(models["gradmag-rgb"].spec, scene.images[i]))
            inv_m = inv * m[..., None]
            rows["learned_gradmag_rgb"].append(base | score_image(inv_m, msk, others, a.threshold)
                                               | quality(to_gray(inv_m), gt, m))
        fig_imgs.append(fig)
        if not a.quiet:
            print(f"scored {names[i]} (yaw {yaw[i]:.0f})", flush=True)
    timings["scoring_s"] = time.time() - t0

    # ---- extra images
    extra = []
    for path in a.extra:
        img = read_image(path)
        m = (img.max(-1) > 0.02).astype(np.uint8) * 255
        extra.append({"file": str(path)} | score_image(u8(img), m, subject, a.threshold))

    summary = {k: summarise(v) for k, v in rows.items()}
    grey_psnr = summary["constant_grey"].get("psnr")
    bar = {}
    for name in OPERATORS:
        s = summary[f"learned_{name}"]
        bar[name] = {"learned_psnr": s.get("psnr"), "learned_psnr_calibrated": s.get("psnr_calibrated"),
                     "constant_grey_psnr": grey_psnr,
                     "margin_db": None if grey_psnr is None else s.get("psnr") - grey_psnr,
                     "margin_calibrated_db": None if grey_psnr is None else s.get("psnr_calibrated") - grey_psnr,
                     "within_3db": None if grey_psnr is None else bool(s.get("psnr") - grey_psnr <= 3.0)}
    res = {
        "benchmark": "face-privacy",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).resolve().parents[1]).stdout.strip(),
        "data": str(root),
        "operator": {"blur_sigma": a.blur, "levels": a.levels, "signed_levels": a.signed_levels, "clip": a.clip},
        "detector_protocol": {"crop": "mask box + 10% of its height", "heights": list(fa.HEAD_HEIGHTS),
                              "upsample": 1, "embeddings": "CNN faces else HOG faces, 5-point chips"},
        "face_direction": fdir.tolist(),
        "face_direction_source": "given" if given is not None else "raw CNN detections",
        "up": up.tolist(), "neutral_angle_deg": a.neutral_angle,
        "n_views": n, "n_sensitive": len(sens), "scored_views": [names[i] for i in scored],
        "raw": {"views": len(raw_idx), "cnn_views_with_face": sum(r["cnn_faces"] > 0 for r in raw_rows),
                "hog_views_with_face": sum(r["hog_faces"] > 0 for r in raw_rows),
                "views_with_face": len(emb), "per_view": raw_rows,
                "leave_one_out": {"n": len(loo), "verified": sum(r["verified"] for r in loo),
                                  "rate": (sum(r["verified"] for r in loo) / len(loo)) if loo else None,
                                  "per_view": loo}},
        "summary": summary,
        "bar_learned_vs_constant_grey": bar,
        "per_view": rows,
        "extra": extra,
        "inverse_training": {"images": len(train_imgs), "sources": "nerf_synthetic lego train (black bg), "
                             "nerf_llff_data fern images_8, built-in scene renders (128 px)",
                             "steps": a.inverse_steps, "batch": a.inverse_batch, "info": train_info},
        "timings_s": timings | {"total_s": time.time() - t_start},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, res)
    figure(fig_imgs[: a.figure_views], [names[i] for i in scored[: a.figure_views]], a.out.with_suffix(".png"))
    print(json.dumps({"raw": {k: res["raw"][k] for k in ("views", "cnn_views_with_face", "hog_views_with_face")},
                      "loo_rate": res["raw"]["leave_one_out"]["rate"],
                      "summary": {k: {kk: (round(vv, 3) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                                  for k, v in summary.items()}}, indent=1))
    print(f"results: {a.out}  figure: {a.out.with_suffix('.png')}  ({time.time() - t_start:.0f} s)")
    return 0


def figure(figs: list[dict], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("raw", "raw"), ("sigma_gradmag", "σ gradmag"), ("sigma_signed", "σ signed"),
            ("poisson_signed", "Poisson (signed)"), ("learned_gradmag", "learned (gradmag)"),
            ("learned_signed", "learned (signed)"), ("constant", "constant grey")]
    fig, axes = plt.subplots(len(figs), len(cols), figsize=(2.2 * len(cols), 2.4 * len(figs)), squeeze=False)
    for r, f in enumerate(figs):
        y0, y1, x0, x1 = fa.head_box(f["mask"].astype(np.uint8) * 255) or (0, None, 0, None)
        for c, (key, title) in enumerate(cols):
            ax = axes[r][c]
            img = f[key][y0:y1, x0:x1]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255 if img.dtype == np.uint8 else 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(names[r], fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
