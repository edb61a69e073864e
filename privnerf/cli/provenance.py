"""``privnerf provenance --checkpoint RUN [--data CROWD] --out DIR``: ProvNeRF per-point provenance of a finished run
(:mod:`privnerf.provenance`).

Trains a provenance field on the run's training rays (where each point was seen from, and by whom), then renders
for each held-out camera of the data's ``test`` split how well what it sees was observed, the triangulation
uncertainty and, with ``--data CROWD``, the main contributor of each region and the regions only one user
supports. Writes ``DIR/provenance.pt``, ``DIR/provenance.json``, ``DIR/views/*.png`` and ``DIR/report.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="privnerf provenance", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a run directory (checkpoints/last.pt)")
    p.add_argument("--data", default=None,
                   help="the crowd dataset the run was trained on (contributors from its user_id); default: the "
                        "run's own data, one contributor")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--views", type=int, default=8, help="held-out (test split) cameras to render (default 8)")
    p.add_argument("--steps", type=int, default=2000, help="provenance field training steps (default 2000)")
    p.add_argument("--single-share", type=float, default=0.9,
                   help="flag a region single-user when one contributor holds this share of its observations")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if not 0.5 < a.single_share <= 1.0:
        raise ValueError(f"--single-share {a.single_share}: must be in (0.5, 1]")
    if a.steps < 1 or a.views < 1:
        raise ValueError("--steps and --views must be >= 1")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from privnerf.provenance.report import ProvenanceJob, run_job

    s = run_job(ProvenanceJob(a.checkpoint, a.out, a.data, a.views, a.steps, single_share=a.single_share),
                quiet=a.quiet)
    print(f"provenance of {s['training_views']} training views ({s['users']} contributor(s)) -> {a.out}/report.html")
    for v in s["views"]:
        extra = (f", single-user {v['single_user_share_of_foreground']:.1%}"
                 if "single_user_share_of_foreground" in v else "")
        print(f"  {v['view']}: seen {v['seen_share_of_foreground']:.1%} of foreground{extra}")
    return 0
