"""``privnerf face obscure|train``: Identity-Obscured NeRF (privacy-preserving head reconstruction).

* ``privnerf face obscure --data HEAD --out DIR [--operator gradmag|signed] [--blur 6.0] [--levels 2|4]
  [--clip 0.05] [--face-direction X,Y,Z | auto] [--neutral-angle 90] [--factor 8] [--overwrite] [--quiet]``:
  the person's side: neutral views keep RGB, sensitive views only σ codes (:mod:`privnerf.face.obscure`
  documents DIR).
* ``privnerf face train ...``: the two-stage reconstruction from DIR, in ``privnerf.face.train`` (its ``cli(argv)``
  parses the rest; imported only when called).
"""

from __future__ import annotations

import argparse
from pathlib import Path

USAGE = ("usage: privnerf face obscure --data HEAD --out DIR [--operator gradmag|signed] [--blur S] [--levels L]\n"
         "                             [--clip C] [--face-direction X,Y,Z|auto] [--neutral-angle DEG] [--overwrite]\n"
         "       privnerf face train ...  (privnerf face train --help)")


def _obscure(argv: list[str]) -> int:
    from privnerf.face.obscure import obscure_head
    from privnerf.face.operators import OPERATORS, OperatorSpec

    p = argparse.ArgumentParser(prog="privnerf face obscure",
                                description="Keep RGB of the neutral (rear/side) views and only the irreversible "
                                            "operator σ of the sensitive (face) views.")
    p.add_argument("--data", type=Path, required=True,
                   help="masked LLFF head folder (poses_bounds.npy, images_8/, masks_8/)")
    p.add_argument("--out", type=Path, required=True, help="output folder DIR (must not exist or be empty)")
    p.add_argument("--operator", default="gradmag", help=f"σ: one of {', '.join(OPERATORS)} (default gradmag)")
    p.add_argument("--blur", type=float, default=OperatorSpec().blur_sigma,
                   help=f"Gaussian blur sigma in pixels (default {OperatorSpec().blur_sigma:g})")
    p.add_argument("--levels", type=int, default=None,
                   help="quantisation levels, 2..256 (default: gradmag 2, signed 4)")
    p.add_argument("--clip", type=float, default=OperatorSpec().clip,
                   help="gradient (grey levels per pixel) mapped to the top of the range (default %(default)s)")
    p.add_argument("--face-direction", default="auto",
                   help="X,Y,Z in the loaded scene's world frame (write --face-direction=-0.77,0.61,0.19 when X is "
                        "negative), or 'auto' (dlib face detection on every view; default)")
    p.add_argument("--neutral-angle", type=float, default=90.0,
                   help="views with yaw <= this (degrees from the face direction) are sensitive (default 90)")
    p.add_argument("--factor", type=int, default=8, help="image folder images_<factor>/ (default 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output in DIR")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    spec = OperatorSpec(name=a.operator, blur_sigma=a.blur, levels=a.levels, clip=a.clip)
    doc = obscure_head(a.data, a.out, spec, face_direction=a.face_direction, neutral_angle=a.neutral_angle,
                       factor=a.factor, overwrite=a.overwrite, quiet=a.quiet)
    c = doc["counts"]
    fd = ", ".join(f"{x:.3f}" for x in doc["face_direction"])
    print(f"face direction ({doc['face_direction_source']}): [{fd}]"
          + (f" from {len(doc['face_detections'])} view(s) with a face: "
             + ", ".join(d["name"] for d in doc["face_detections"]) if doc["face_detections"] else ""))
    print(f"{c['neutral']} neutral views (RGB), {c['sensitive']} sensitive views ({spec.name} codes, "
          f"{spec.levels} levels, blur {spec.blur_sigma:g} px) -> {a.out}")
    return 0


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "obscure":
        return _obscure(rest)
    if cmd == "train":
        import importlib

        try:
            module = importlib.import_module("privnerf.face.train")
        except ModuleNotFoundError as exc:
            if exc.name != "privnerf.face.train":
                raise
            raise RuntimeError("privnerf face train is not available (privnerf.face.train is missing)") from exc
        return int(module.cli(rest) or 0)
    print(USAGE)
    raise ValueError(f"unknown face command {cmd!r}; expected obscure or train")
