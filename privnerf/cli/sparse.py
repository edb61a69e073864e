"""``privnerf sparse train``: train on a few views, with HG3-NeRF guidance (:mod:`privnerf.sparse`).

Every ``privnerf train`` flag applies, plus ``--views 0,8,16`` (indices into the training split) or
``--num-views K`` (K views spread over the cameras, :func:`privnerf.sparse.points.spread_views`), ``--prior``
and ``--hg3.*``. ``--hg3.no-depth --hg3.no-photometric --hg3.no-semantic`` trains the plain engine on
the same views.

Example::

    privnerf sparse train --data ../shared/data/nerf_llff_data/fern --num-views 3 --max-time 240
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from dataclasses import field as dc_field
from pathlib import Path
from typing import Optional

import tyro

from privnerf.data.scene import Scene
from privnerf.sparse.guidance import HG3Config, HG3Trainer
from privnerf.sparse.points import (SparsePrior, colmap_prior, parse_views, spread_views, subset_views,
                                    triangulated_prior)
from privnerf.train.config import TrainConfig


@dataclass
class SparseTrainConfig(TrainConfig):
    views: Optional[str] = None
    """Training views, comma-separated indices into the training split (e.g. ``0,8,16``)..."""
    num_views: Optional[int] = None
    """...or this many views spread over the cameras (farthest-point order from view 0)."""
    prior: str = "auto"
    """Sparse depth prior: ``auto`` (an LLFF scene's ``sparse/0`` COLMAP model, else SIFT matches triangulated
    with the known poses), ``triangulate``, or a COLMAP ``points3D.bin`` / model folder."""
    hg3: HG3Config = dc_field(default_factory=HG3Config)


def train_config(cfg: SparseTrainConfig) -> TrainConfig:
    """The plain :class:`TrainConfig` part (what checkpoints store)."""
    return TrainConfig(**{f.name: getattr(cfg, f.name) for f in fields(TrainConfig)})


def choose_views(cfg: SparseTrainConfig, scene: Scene) -> list[int]:
    if cfg.views is not None and cfg.num_views is not None:
        raise ValueError("give --views or --num-views, not both")
    if cfg.views is not None:
        return parse_views(cfg.views, scene.num_views)
    if cfg.num_views is not None:
        return spread_views(scene, cfg.num_views)
    raise ValueError("privnerf sparse train needs --views or --num-views")


def load_prior(spec: str, scene: Scene) -> SparsePrior:
    """The prior named by ``--prior`` for the (subset) training scene."""
    if spec == "auto":
        model = Path(str(scene.meta.get("source", ""))) / "sparse" / "0"
        if scene.meta.get("format") == "llff" and (model / "points3D.bin").is_file():
            return colmap_prior(scene, model)
        return triangulated_prior(scene, min_views=3, confirm_cos=0.9)
    if spec == "triangulate":
        return triangulated_prior(scene, min_views=3, confirm_cos=0.9)
    return colmap_prior(scene, Path(spec))


def make_trainer_factory(cfg: SparseTrainConfig, record: dict):
    """``make_trainer`` for :func:`privnerf.cli.train.train_and_evaluate`: subset the views, load the prior,
    build the trainer; what it chose goes into ``record``."""

    def make(tcfg: TrainConfig, scene: Scene, run_dir):
        views = choose_views(cfg, scene)
        sub = subset_views(scene, views)
        record["run_dir"] = str(run_dir)
        record["views"] = views
        record["view_names"] = sub.names
        prior = None
        if cfg.hg3.uses_prior:
            t0 = time.perf_counter()
            prior = load_prior(cfg.prior, sub)
            record["prior"] = {"source": prior.source, "pixels": len(prior),
                               "per_view": prior.per_view().tolist(), "time_s": time.perf_counter() - t0}
        record["hg3"] = {f.name: getattr(cfg.hg3, f.name) for f in fields(HG3Config)}
        if not cfg.hg3.active:
            from privnerf.train.trainer import Trainer

            return Trainer(tcfg, sub, run_dir)
        return HG3Trainer(tcfg, sub, run_dir, cfg.hg3, prior)

    return make


def run(argv: list[str]) -> int:
    if not argv or argv[0] != "train":
        print("usage: privnerf sparse train [--views I,J,... | --num-views K] [--prior auto|triangulate|PATH] "
              "[--hg3.*] [privnerf train options]")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cfg = tyro.cli(SparseTrainConfig, args=argv[1:], prog="privnerf sparse train")
    from privnerf.cli.train import train_and_evaluate
    from privnerf.train.checkpoint import atomic_write_text

    record: dict = {}
    train_and_evaluate(train_config(cfg), make_trainer=make_trainer_factory(cfg, record))
    atomic_write_text(Path(record["run_dir"]) / "sparse.json", json.dumps(record, indent=2) + "\n")
    print(f"views {record.get('views')}; prior: {record.get('prior', {}).get('pixels', 'none')} pixels")
    return 0
