"""``privnerf data export-builtin --out DIR [--seed S] [--size N]``: write the built-in scene as nerfstudio data."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="privnerf data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export-builtin", help="write the built-in scene (all splits) in nerfstudio format")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--size", type=int, default=100)
    a = p.parse_args(argv)
    if a.cmd == "export-builtin":
        from privnerf.data.builtin import export_builtin

        path = export_builtin(a.out, seed=a.seed, size=a.size)
        print(f"built-in scene written to {path}")
    return 0
