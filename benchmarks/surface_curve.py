"""The surface field's mesh quality *during* training on the built-in scene: how the SDF drifts.

Trains the dual surface field on the built-in scene for ``--seconds`` (the flags in ``--train-args`` on top
of the defaults, as in ``benchmarks/surface.py``) and every ``--every`` seconds of training extracts the
SDF's zero level set (``--resolution`` voxels along the longest axis) and scores it against ``--points``
exact surface samples above the ground (Chamfer-L1, F-score at 1 % of the box diagonal, precision, recall),
with the current ``beta``. Extraction and scoring are not training time.

Usage: ``python benchmarks/surface_curve.py [--seconds 300] [--every 60] [--train-args "..."] --tag NAME`` →
``benchmarks/results/surface-curve-NAME.json``. docs/notes/surface-rounds.md ("Third round") has the table it gave.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine import machine  # noqa: E402
from surface import config, crop_below  # noqa: E402

from privnerf.cli.train import load_split  # noqa: E402
from privnerf.data.builtin import builtin_box, sample_builtin_surface  # noqa: E402
from privnerf.data.io import atomic_write_json  # noqa: E402
from privnerf.eval.mesh import mesh_metrics  # noqa: E402
from privnerf.export.mesh import extract_mesh, extraction_box  # noqa: E402
from privnerf.train.trainer import Trainer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--every", type=float, default=60.0)
    p.add_argument("--train-args", default="")
    p.add_argument("--tag", required=True)
    p.add_argument("--resolution", type=int, default=192)
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = config("surface", "dual", "builtin", a.seconds, ROOT / "outputs" / "surface-curve" / a.tag, a.train_args)
    cfg.eval_every_s = a.every
    box = builtin_box()
    diag = float(np.linalg.norm(box[1] - box[0]))
    ref_p, ref_n = sample_builtin_surface(a.points, seed=1)
    trainer = Trainer(cfg, load_split(cfg, "train"), None)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows: list[dict] = []

    def score(t: Trainer) -> dict:
        f = t.field
        row = {"time_s": t.train_time, "step": t.step_count, "beta": float(f.beta), "voxel": f.voxel}
        if f.sdf_active:
            with torch.no_grad():
                mesh = extract_mesh(lambda x: f.sdf(x), extraction_box(f), a.resolution)
            voxel = float((mesh.bounds[1] - mesh.bounds[0]).max()) / a.resolution
            m = mesh_metrics(crop_below(mesh, -2 * voxel), ref_p, ref_n, tau=0.01 * diag, diagonal=diag)
            row.update(fscore=m["fscore"], precision=m["precision"], recall=m["recall"],
                       chamfer_l1_frac=m["chamfer_l1_frac"], normal_consistency=m["normal_consistency"])
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        return {}

    trainer.train(eval_fn=score, quiet=True)
    if not rows or rows[-1]["step"] != trainer.step_count:
        score(trainer)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    out = a.results_dir / f"surface-curve-{a.tag}.json"
    atomic_write_json(out, {"started": started, "machine": machine(), "commit": commit, "train_args": a.train_args,
                            "seconds": a.seconds, "resolution": a.resolution, "points": a.points, "rows": rows,
                            "command": "python benchmarks/surface_curve.py " + " ".join(sys.argv[1:])})
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
