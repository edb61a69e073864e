"""``privnerf`` command line: ``train``, ``eval``, ``render``, ``export``, ``data``, ``fed``, ``split``, ``face``,
``semantics``, ``ownership``, ``provenance``, ``sparse``.

``privnerf train`` takes every field of :class:`privnerf.train.config.TrainConfig` as a flag (nested ones
as ``--field.grid.num-voxels``); ``privnerf train --help`` lists them.
"""

from __future__ import annotations

import argparse
import logging
import sys

from privnerf.data.errors import SceneError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    commands = {
        "train": ("train a NeRF on one scene", "privnerf.cli.train"),
        "eval": ("evaluate a run directory on a split, or a mesh (eval mesh)", "privnerf.cli.evaluate"),
        "render": ("render an orbit video or a split's views from a run", "privnerf.cli.render"),
        "export": ("export a run's surface as a mesh (export mesh)", "privnerf.cli.export"),
        "data": ("dataset tools: export the built-in scene, make crowd datasets", "privnerf.cli.data"),
        "fed": ("federated training on Flower: DecentNeRF and its baselines", "privnerf.cli.fed"),
        "split": ("split learning (SplitNeRF / S2NeRF): train, serve, attack", "privnerf.cli.split"),
        "face": ("identity-obscured head reconstruction: obscure, train", "privnerf.cli.face"),
        "semantics": ("JacobiNeRF: shape a run, propagate labels from clicks", "privnerf.cli.semantics"),
        "ownership": ("IPR-NeRF: keys, weight signatures, render watermarks", "privnerf.cli.ownership"),
        "provenance": ("ProvNeRF: where each point was seen from, uncertainty, contributors", "privnerf.cli.provenance"),
        "sparse": ("train on a few views with HG3-NeRF guidance (sparse train)", "privnerf.cli.sparse"),
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: privnerf {train,eval,render,export,data,fed,split,face,semantics,ownership,provenance,sparse} [options]\n")
        for name, (desc, _) in commands.items():
            print(f"  {name:10s} {desc}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    import importlib

    module = importlib.import_module(commands[argv[0]][1])
    try:
        return int(module.run(argv[1:]) or 0)
    except SceneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)


if __name__ == "__main__":
    raise SystemExit(main())
