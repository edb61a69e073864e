"""``privnerf export``: export what a run learned.

* ``mesh --checkpoint RUN --out mesh.ply|.obj [--resolution N] [--threshold T]``: the run's surface as a
  vertex-coloured triangle mesh in the scene's world frame (:func:`privnerf.export.mesh.mesh_from_run`): the
  zero level set of the field's signed distance if it has one, else the density at which four inference
  render steps are half opaque (``ln 2 / (4 step)``), or ``--threshold``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def run(argv: list[str]) -> int:
    from privnerf.cli.main import add_common

    p = argparse.ArgumentParser(prog="privnerf export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mesh", help="extract the run's surface as a .ply / .obj mesh")
    m.add_argument("--checkpoint", required=True, type=Path, help="run directory (holds checkpoints/last.pt)")
    m.add_argument("--out", required=True, type=Path, help="mesh file, .ply or .obj")
    m.add_argument("--resolution", type=int, default=256, help="grid points along the box's longest axis")
    m.add_argument("--threshold", type=float, default=None,
                   help="level of the surface: a density (default ln 2 / (4 inference steps)) or, for a field "
                        "with a signed distance, a distance (default 0)")
    add_common(m)
    a = p.parse_args(argv)
    from privnerf.export.mesh import check_mesh_path, mesh_from_run, write_mesh
    from privnerf.train.trainer import set_threads

    check_mesh_path(a.out)  # refuse a bad suffix before the (slow) extraction
    if a.resolution < 2:
        p.error("--resolution must be >= 2")
    set_threads(a.threads)
    mesh, info = mesh_from_run(a.checkpoint, resolution=a.resolution, threshold=a.threshold, device=a.device)
    path = write_mesh(mesh, a.out)
    print(f"mesh: {path} ({info['vertices']} vertices, {info['faces']} faces; {info['mode']} level "
          f"{info['level']:.4g}, grid {'x'.join(map(str, info['grid']['shape']))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(__import__("sys").argv[1:]))
