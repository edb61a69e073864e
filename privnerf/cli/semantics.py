"""``privnerf semantics shape|propagate|clicks``: JacobiNeRF (shaping, label propagation from clicks).

* ``privnerf semantics shape --checkpoint RUN --output SHAPED [--steps 2000] [--mi-weight 0.03]
  [--layers 1,2] [--quiet]``: fine-tune a finished grid-field run with the MI-gradient loss
  (:mod:`privnerf.semantics.shaping`); SHAPED is a run folder (``privnerf eval/render`` read it) with
  ``shaping.json``.
* ``privnerf semantics propagate --checkpoint RUN --clicks clicks.json --out DIR [--split test|train]
  [--views N] [--t 0.1] [--jacobian-view ray|zero] [--aggregate]``: per-view label maps (``labels/<view>.png`` colour-coded, ``.npy`` label indices),
  overlays on the views' photos, ``points.ply`` (the labelled rendered surface points of every view, in the
  scene's frame) and ``propagation.json`` (labels, clicks; metrics when the split has semantic ground truth
  named like the labels). ``clicks.json``: see :mod:`privnerf.semantics.propagate`. ``--aggregate``: the clicks
  label one view densely (``privnerf semantics clicks --per-class 0``), and the paper's dense setting (chosen
  seeds, a learned response aggregator: :mod:`privnerf.semantics.aggregator`) labels the views.
* ``privnerf semantics find-person --data CROWD --user K (--clicks clicks.json | --simulate-click) --out DIR
  [--train-time 90] [--shaping-steps 400] [--dilate 2]``: on user K's device, one click on its own person in
  one of its photos (``clicks.json`` with one click, the view one of the user's photos) → that person's
  mask in all its photos (``DIR/masks/<photo>.png``, overlays, ``find_person.json`` with the IoU when the crowd
  has masks). ``--simulate-click`` clicks the most interior pixel of the crowd's mask of the person (for
  benchmarks). DecentNeRF reads a folder of such outputs (``user-XXX/``) with ``--private-masks``.
* ``privnerf semantics clicks --data builtin --out clicks.json [--view 0] [--per-class 1] [--seed 0]``: draw
  clicks from a labelled training view (one random pixel per class, void excluded): the paper's protocol.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

USAGE = ("usage: privnerf semantics shape --checkpoint RUN --output SHAPED [--steps N] [--mi-weight W]\n"
         "       privnerf semantics propagate --checkpoint RUN --clicks clicks.json --out DIR [--split S]\n"
         "       privnerf semantics find-person --data CROWD --user K (--clicks clicks.json | --simulate-click) --out DIR\n"
         "       privnerf semantics clicks --data DATA --out clicks.json [--view I] [--per-class K] [--seed S]")


VIEWS = ("ray", "zero")  # privnerf.semantics.jacobian.VIEWS, kept here so --help imports no torch


def _shape(argv: list[str]) -> int:
    from privnerf.semantics.features import FeatureConfig
    from privnerf.semantics.shaping import ShapingConfig, shape_run

    d = ShapingConfig()
    p = argparse.ArgumentParser(prog="privnerf semantics shape", description="JacobiNeRF shaping of a finished run")
    p.add_argument("--checkpoint", type=Path, required=True, help="a finished grid-field run folder")
    p.add_argument("--output", type=Path, required=True, help="the shaped run's folder (must not hold a run)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--rays", type=int, default=d.rays, help="rays a step in the MI term (default %(default)s)")
    p.add_argument("--mi-weight", type=float, default=d.mi_weight)
    p.add_argument("--norm-weight", type=float, default=d.norm_weight)
    p.add_argument("--lr-factor", type=float, default=d.lr_factor)
    p.add_argument("--layers", default=",".join(map(str, d.features.layers)),
                   help="AlexNet taps 0-4 in the positives' features (default %(default)s; '' for colour alone)")
    p.add_argument("--colour-weight", type=float, default=d.features.colour_weight)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--jacobian-view", choices=VIEWS, default=d.jacobian_view,
                   help="the colour head's direction for Jacobians: each ray's, or zero for all (default %(default)s)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        layers = tuple(int(x) for x in a.layers.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--layers: comma-separated AlexNet taps 0-4, got {a.layers!r}") from None
    cfg = ShapingConfig(steps=a.steps, rays=a.rays, mi_weight=a.mi_weight, norm_weight=a.norm_weight,
                        lr_factor=a.lr_factor, seed=a.seed, quiet=a.quiet, jacobian_view=a.jacobian_view,
                        features=FeatureConfig(layers=layers, colour_weight=a.colour_weight))
    r = shape_run(a.checkpoint, a.output, cfg)
    print(f"shaped {a.output}: test PSNR {r['psnr']:.2f} dB, {r['shaping_time_s']:.0f} s of shaping "
          f"({r['shaping_cost']:.2f}x the plain run's {r['plain_train_time_s']:.0f} s)")
    return 0


def _propagate(argv: list[str]) -> int:
    from privnerf.semantics.propagate import propagate_run

    p = argparse.ArgumentParser(prog="privnerf semantics propagate", description="labels from clicks to every view")
    p.add_argument("--checkpoint", type=Path, required=True, help="a (shaped) grid-field run folder")
    p.add_argument("--clicks", type=Path, required=True, help="clicks.json (views are the run's training views)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="test", help="the views to label (default test)")
    p.add_argument("--views", type=int, default=None, help="at most this many views")
    p.add_argument("--t", type=float, default=0.1, help="perturbation step (default %(default)s)")
    p.add_argument("--jacobian-view", choices=VIEWS, default=None,
                   help="the colour head's direction for Jacobians (default: what the run was shaped with)")
    p.add_argument("--aggregate", action="store_true",
                   help="the clicks label one view densely: choose seeds and learn a response aggregator (the "
                   "paper's dense setting)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    doc = propagate_run(a.checkpoint, a.clicks, a.out, split=a.split, max_views=a.views, t=a.t, quiet=a.quiet,
                        view=a.jacobian_view, aggregate=a.aggregate)
    m = doc.get("metrics")
    extra = f"; mIoU {m['miou']:.3f}, accuracy {m['total_accuracy']:.3f}" if m else ""
    print(f"{len(doc['views'])} {a.split} views labelled with {', '.join(doc['labels'])} -> {a.out}{extra}")
    return 0


def _clicks(argv: list[str]) -> int:
    from privnerf.data.loader import load_scene
    from privnerf.semantics.propagate import clicks_from_labels, write_clicks

    p = argparse.ArgumentParser(prog="privnerf semantics clicks", description="clicks drawn from a labelled view")
    p.add_argument("--data", default="builtin")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--view", type=int, default=0)
    p.add_argument("--per-class", type=int, default=1, help="clicks per class (0: every labelled pixel, the dense setting)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    scene = load_scene(a.data, "train")
    if not 0 <= a.view < scene.num_views:
        raise ValueError(f"--view {a.view}: {a.data} has {scene.num_views} training views")
    clicks = clicks_from_labels(scene, a.view, a.per_class, a.seed)
    write_clicks(clicks, scene, a.out)
    print(f"{len(clicks)} clicks ({', '.join(c.label for c in clicks)}) -> {a.out}")
    return 0


def _find_person(argv: list[str]) -> int:
    from privnerf.fed.local import load_user_scene
    from privnerf.semantics.find_person import FindPersonConfig, find_person_run
    from privnerf.semantics.propagate import read_clicks
    from privnerf.train.trainer import set_threads

    d = FindPersonConfig()
    p = argparse.ArgumentParser(prog="privnerf semantics find-person",
                                description="one click on your own person -> its mask in all your photos")
    p.add_argument("--data", required=True, help="a crowd dataset (privnerf data crowd)")
    p.add_argument("--user", type=int, required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--clicks", type=Path, help="clicks.json with one click; its view is one of the user's photos")
    g.add_argument("--simulate-click", action="store_true",
                   help="click the most interior pixel of the crowd's mask of the person (benchmarks)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-time", type=float, default=d.train_time_s, help="seconds for the device field (default %(default)s)")
    p.add_argument("--shaping-steps", type=int, default=d.shaping.steps)
    p.add_argument("--jacobian-view", choices=VIEWS, default=d.shaping.jacobian_view,
                   help="the colour head's direction for Jacobians, in shaping and propagation (default %(default)s)")
    p.add_argument("--dilate", type=int, default=d.dilate, help="pixels of dilation of the written masks")
    p.add_argument("--object-radius", type=lambda x: None if x.lower() == "none" else float(x), default=d.object_radius,
                   help="the person lies within this share of the box diagonal of the click ('none': no limit; "
                   "default %(default)s)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    set_threads(a.threads)
    click = None
    if a.clicks is not None:
        clicks = read_clicks(a.clicks, load_user_scene(a.data, a.user))
        if len(clicks) != 1:
            raise ValueError(f"{a.clicks}: find-person takes one click, got {len(clicks)}")
        click = clicks[0]
    cfg = FindPersonConfig(train_time_s=a.train_time, dilate=a.dilate, object_radius=a.object_radius)
    cfg.shaping.steps = a.shaping_steps
    cfg.shaping.jacobian_view = a.jacobian_view
    doc = find_person_run(a.data, a.user, click, a.out, cfg, quiet=a.quiet)
    iou = f"; mean IoU against the crowd's mask {doc['iou']:.3f}" if doc.get("iou") is not None else ""
    print(f"user {a.user}: masks of its person in {len(doc['views'])} photos -> {a.out}{iou}")
    return 0


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmds = {"shape": _shape, "propagate": _propagate, "clicks": _clicks, "find-person": _find_person}
    if argv[0] not in cmds:
        print(USAGE)
        raise SystemExit(f"privnerf semantics: unknown command {argv[0]!r}")
    return cmds[argv[0]](argv[1:])
