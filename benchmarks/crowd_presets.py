"""Generate the crowd presets and record what they hold: photos and personal-pixel share per user, time.

Usage: ``python benchmarks/crowd_presets.py [--scenes builtin lego] [--presets ...] [--out outputs/crowd]``
-> ``benchmarks/results/crowd-presets.json`` and the datasets (with contact sheets) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privnerf.data.crowd import PRESETS, generate_crowd, load_crowd_source, preset_variants, write_crowd  # noqa: E402
from privnerf.data.crowd.presets import BUILTIN_PRESET_SCENE  # noqa: E402
from privnerf.data.errors import SceneError  # noqa: E402
from privnerf.data.io import atomic_write_text  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenes", nargs="+", default=["builtin", "lego"])
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "crowd")
    a = p.parse_args()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = []
    for scene in a.scenes:
        t0 = time.perf_counter()
        try:
            src = load_crowd_source(BUILTIN_PRESET_SCENE if scene == "builtin" else scene)
        except SceneError as exc:  # lego absent: say so and go on
            print(f"skipping {scene}: {exc}")
            continue
        load_s = time.perf_counter() - t0
        for preset in a.presets:
            for variant, cfg in preset_variants(preset, scene):
                t0 = time.perf_counter()
                res = generate_crowd(cfg, src, quiet=True)
                gen_s = time.perf_counter() - t0
                out = a.out / scene / preset / variant if variant else a.out / scene / preset
                write_crowd(res, out)
                users = res.info["users"]
                rows.append({
                    "scene": scene, "preset": preset, "variant": variant or None, "users": len(users),
                    "photos": res.train.num_views, "eval_views": res.eval.num_views,
                    "photos_per_user": [u["views"] for u in users],
                    "personal_fraction_per_user": [round(u["personal_fraction"], 4) for u in users],
                    "personal_fraction": round(res.info["personal_fraction"], 4),
                    "generate_s": round(gen_s, 1), "source_load_s": round(load_s, 1), "dir": str(out),
                })
                print(f"{scene:8s} {preset:22s} {variant or '':11s} users {len(users):2d} photos "
                      f"{res.train.num_views:4d} personal {100 * res.info['personal_fraction']:.1f}% in {gen_s:.0f} s")
    commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()
    out = ROOT / "benchmarks" / "results" / "crowd-presets.json"
    atomic_write_text(out, json.dumps({"started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                       "commit": commit, "command": "python benchmarks/crowd_presets.py " +
                                       " ".join(sys.argv[1:]), "rows": rows}, indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
