"""``privnerf eval --checkpoint DIR --split S``: score a trained run; writes ``DIR/eval-<split>.json``.

``privnerf eval mesh --mesh M --reference R [--tau 0.01] [--tau-frac] [--points N] [--out results.json]``:
score a mesh's geometry against a reference surface (:mod:`privnerf.eval.mesh`): accuracy, completion,
Chamfer-L1, normal consistency and precision / recall / F-score at distance ``tau``. The reference is a mesh
(.ply / .obj), a point cloud (.ply, or .npz with ``points`` and ``normals``) or ``builtin[:seed=S]`` (the
built-in scene's exact surface). ``tau`` is in scene units, or with ``--tau-frac`` a share of the reference
box's diagonal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run(argv: list[str]) -> int:
    if argv and argv[0] == "mesh":
        return run_mesh(argv[1:])
    from privnerf.cli.main import add_common
    from privnerf.cli.train import load_split
    from privnerf.eval.evaluate import evaluate_split
    from privnerf.train.checkpoint import atomic_write_text
    from privnerf.train.trainer import set_threads, trainer_from_checkpoint

    p = argparse.ArgumentParser(prog="privnerf eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="run directory (holds checkpoints/last.pt)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--no-renders", action="store_true", help="do not write the rendered images")
    add_common(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    trainer = trainer_from_checkpoint(a.checkpoint, a.device)
    scene = load_split(trainer.cfg, a.split)
    out_dir = None if a.no_renders else Path(a.checkpoint) / "renders" / a.split
    r = evaluate_split(trainer.field, trainer.occ, trainer.settings(inference=True), scene, out_dir=out_dir,
                       max_images=a.max_images, chunk=trainer.cfg.render.chunk)
    r.update({"split": a.split, "steps": trainer.step_count, "train_time_s": trainer.train_time})
    path = Path(a.checkpoint) / f"eval-{a.split}.json"
    atomic_write_text(path, json.dumps(r, indent=2) + "\n")
    print(f"PSNR {r['psnr']:.2f}  SSIM {r['ssim']:.4f}  LPIPS {r['lpips']}  ({r['num_images']} views) -> {path}")
    return 0


def run_mesh(argv: list[str]) -> int:
    """``privnerf eval mesh``: geometry metrics of a mesh file against a reference; prints a short table."""
    from privnerf.data.io import atomic_write_json

    p = argparse.ArgumentParser(prog="privnerf eval mesh", description=run_mesh.__doc__)
    p.add_argument("--mesh", required=True, type=Path, help="the mesh to score (.ply or .obj)")
    p.add_argument("--reference", required=True,
                   help="reference surface: a mesh (.ply/.obj), a point cloud (.ply, or .npz with points and "
                        "normals) or builtin[:seed=S]")
    p.add_argument("--tau", type=float, default=0.01,
                   help="F-score distance threshold, in scene units (or a share of the diagonal with --tau-frac)")
    p.add_argument("--tau-frac", action="store_true", help="--tau is a share of the reference box diagonal")
    p.add_argument("--points", type=int, default=200_000,
                   help="points sampled on the mesh (and on a reference mesh or the built-in surface)")
    p.add_argument("--seed", type=int, default=0, help="seed of the surface sampling")
    p.add_argument("--out", type=Path, default=None, help="write the metrics as JSON here")
    a = p.parse_args(argv)
    if not a.tau > 0:
        p.error("--tau must be positive")
    if a.points < 1:
        p.error("--points must be >= 1")
    import trimesh

    from privnerf.eval.mesh import load_reference, mesh_metrics
    from privnerf.export.mesh import check_mesh_path

    path = check_mesh_path(a.mesh)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mesh file")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many types for bad files
        raise ValueError(f"{path}: unreadable mesh ({type(exc).__name__}: {exc})") from exc
    if len(getattr(mesh, "faces", ())) == 0:
        raise ValueError(f"{path}: the mesh has no faces")
    ref = load_reference(a.reference, a.points, a.seed)
    diagonal = ref.diagonal
    tau = a.tau * diagonal if a.tau_frac else a.tau
    try:
        r = mesh_metrics(mesh, ref.points, ref.normals, tau, diagonal, n_samples=a.points, seed=a.seed)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    result = {"mesh": str(path), "reference": ref.source, "reference_box": ref.box.tolist(),
              "tau_given": a.tau, "tau_given_as": "fraction of diagonal" if a.tau_frac else "scene units", **r}
    nc = "n/a" if r["normal_consistency"] is None else f"{r['normal_consistency']:.4f}"
    print(f"mesh {path} vs {ref.source} (diagonal {diagonal:.4g}, tau {tau:.4g} = {r['tau_frac']:.4g} x diagonal)")
    print(f"  {'':12s} {'scene units':>12s} {'x diagonal':>12s}")
    for key in ("accuracy", "completion", "chamfer_l1"):
        print(f"  {key:12s} {r[key]:12.5f} {r[key + '_frac']:12.6f}")
    print(f"  precision {r['precision']:.4f}  recall {r['recall']:.4f}  F-score {r['fscore']:.4f}  "
          f"normal consistency {nc}")
    if a.out is not None:
        atomic_write_json(a.out, result)
        print(f"  -> {a.out}")
    return 0
