"""``privnerf data``: dataset tools.

* ``export-builtin --out DIR [--seed S] [--size N]``: write the built-in scene as nerfstudio data.
* ``builtin-surface --out ref.npz|ref.ply [--points N] [--seed S]``: exact samples of the built-in scene's
  visible surface with outward normals (the ground truth of ``privnerf eval mesh``); .npz also holds the
  scene ``box`` the metrics measure against.
* ``crowd --scene SRC --users K --partition P --personal P --seed S --out DIR`` or ``crowd --preset NAME
  --out DIR [--scene builtin]``: a many-user dataset with personal content (see
  :mod:`privnerf.data.crowd.generate`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def run(argv: list[str]) -> int:
    from privnerf.data.crowd.presets import PRESETS

    p = argparse.ArgumentParser(prog="privnerf data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export-builtin", help="write the built-in scene (all splits) in nerfstudio format")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--size", type=int, default=100)
    b = sub.add_parser("builtin-surface", help="sample the built-in scene's exact surface (points + normals)")
    b.add_argument("--out", required=True, type=Path, help=".npz (points, normals, box) or .ply point cloud")
    b.add_argument("--points", type=int, default=200_000)
    b.add_argument("--seed", type=int, default=0, help="the scene's seed (as export-builtin --seed)")
    b.add_argument("--sample-seed", type=int, default=0, help="seed of the sampling")
    c = sub.add_parser("crowd", help="split a scene's views among users and insert their people",
                       description="Write a crowd dataset: nerfstudio transforms.json (per-frame user_id, "
                                   "mask_path), the clean eval split, crowd.json and contact_sheet.png.")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--preset", default=None, help=", ".join(PRESETS) + " (studies with several datasets write "
                                                                        "DIR/<variant>/)")
    c.add_argument("--scene", default=None,
                   help="builtin[:opts], lego, a NeRF-synthetic folder with depth renders, or a nerfstudio dataset "
                        "with depth (default: builtin, or lego for a preset)")
    # defaults are applied below, so that giving one of these with --preset can be refused
    c.add_argument("--users", type=int, default=None, help="default 20")
    c.add_argument("--partition", default=None, help="yaw-slices (default), random or overlap:DEG")
    c.add_argument("--personal", default=None, choices=["static", "transient", "both"], help="default static")
    c.add_argument("--transient-per-view", type=int, default=None, help="default 5")
    c.add_argument("--appearance", type=float, default=0.0, help="per-photo exposure/white-balance change (0 = off)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--supersample", type=int, default=3)
    c.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "export-builtin":
        from privnerf.data.builtin import export_builtin

        path = export_builtin(a.out, seed=a.seed, size=a.size)
        print(f"built-in scene written to {path}")
        return 0
    if a.cmd == "builtin-surface":
        return _builtin_surface(a)
    return _crowd(a)


def _builtin_surface(a: argparse.Namespace) -> int:
    from privnerf.data.builtin import builtin_box, sample_builtin_surface
    from privnerf.export.mesh import POINT_CLOUD_SUFFIXES, write_point_cloud

    if a.out.suffix.lower() not in POINT_CLOUD_SUFFIXES:
        raise ValueError(f"{a.out}: the surface samples go to a .npz or .ply file")
    if a.points < 1:
        raise ValueError(f"--points must be >= 1, got {a.points}")
    pts, nrm = sample_builtin_surface(a.points, seed=a.sample_seed, scene_seed=a.seed)
    box = builtin_box(a.seed)
    path = write_point_cloud(a.out, pts, nrm, box=box, scene_seed=a.seed)
    diagonal = float(((box[1] - box[0]) ** 2).sum() ** 0.5)
    print(f"built-in surface: {path} ({len(pts)} points, box diagonal {diagonal:.4g})")
    return 0


def _crowd(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from privnerf.data.crowd import CrowdConfig, generate_crowd, load_crowd_source, preset_variants, write_crowd
    from privnerf.data.io import atomic_directory, atomic_write_json

    layout = {"users": a.users, "partition": a.partition, "personal": a.personal,
              "transient_per_view": a.transient_per_view}
    if a.preset:
        given = [f"--{k.replace('_', '-')}" for k, v in layout.items() if v is not None]
        if given:
            raise ValueError(f"--preset {a.preset} fixes the layout; drop {', '.join(given)}")
        variants = preset_variants(a.preset, a.scene, a.seed)
        variants = [(v, replace(cfg, appearance=a.appearance, supersample=a.supersample)) for v, cfg in variants]
    else:
        defaults = CrowdConfig()
        layout = {k: getattr(defaults, k) if v is None else v for k, v in layout.items()}
        variants = [("", CrowdConfig(scene=a.scene or "builtin", seed=a.seed, appearance=a.appearance,
                                     supersample=a.supersample, **layout))]
    for _, cfg in variants:  # fail on bad arguments before the (slow) source is loaded
        cfg.check()
    src = load_crowd_source(variants[0][1].scene)
    if len(variants) == 1:
        _, cfg = variants[0]
        result = generate_crowd(cfg, src, quiet=a.quiet)
        write_crowd(result, a.out)
        _report(a.out, cfg, result)
        return 0
    # a study: every variant is built inside one temporary folder that replaces DIR only when all are done
    written = []
    with atomic_directory(a.out, overwrite_if="preset.json") as tmp:
        for name, cfg in variants:
            result = generate_crowd(cfg, src, quiet=a.quiet)
            write_crowd(result, tmp / name)
            _report(a.out / name, cfg, result)
            written.append({"variant": name, "dir": str(a.out / name), "frames": result.train.num_views,
                            "personal_fraction": result.info["personal_fraction"]})
        atomic_write_json(tmp / "preset.json", {"preset": a.preset, "variants": written})
    print(f"index: {a.out / 'preset.json'}")
    return 0


def _report(out: Path, cfg, result) -> None:
    print(f"crowd dataset: {out} ({cfg.users} users, {result.train.num_views} photos, "
          f"{100 * result.info['personal_fraction']:.1f}% personal pixels; contact sheet: {out / 'contact_sheet.png'})")


if __name__ == "__main__":
    raise SystemExit(run(__import__("sys").argv[1:]))
