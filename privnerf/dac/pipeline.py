"""DaC end to end on one machine: group the views, train an expert per group, distil, fine-tune.

``privnerf train --method dac`` calls :func:`run_dac`. The run's budget (``--max-time`` T and/or ``--steps``
S) is the total compute of all phases, split by :class:`~privnerf.dac.config.DacConfig`'s shares
(:func:`phase_budgets`); on one machine the experts run one after another, so compute is wall time summed.

Layout of ``run_dir`` (a plain run's, plus the experts)::

    dac.json                     groups, phase budgets, each finished phase's time and steps
    warm/checkpoints/last.pt     the shared all-view start (only with --dac.warm-share > 0)
    experts/<k>/checkpoints/last.pt
    checkpoints/last.pt          the student (what privnerf eval / render read)

A killed run resumes (``--resume``) at its phase: finished experts are loaded, a half-trained expert or
student continues from its checkpoint with the rest of its budget.

Worked example of the budget (defaults, T = 600 s, K = 4): each expert 600 * 0.5 / 4 = 75 s, distillation
150 s, fine-tuning 150 s; the student's own schedule (learning-rate decay, grid growth) spans its 300 s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

from privnerf.dac.distill import DistillConfig, Teacher, camera_rays, distill
from privnerf.dac.grouping import group_views, owner_of
from privnerf.data.scene import Scene
from privnerf.train.checkpoint import atomic_write_text, latest_checkpoint
from privnerf.train.config import TrainConfig
from privnerf.train.trainer import Trainer, trainer_from_checkpoint

log = logging.getLogger(__name__)

STATE = "dac.json"


def phase_budgets(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """Per phase (``warm``, ``expert`` (each), ``distill``, ``finetune``): ``max_time`` (s or None) and ``steps``."""
    d = cfg.dac
    shares = {"warm": d.warm_share, "expert": d.expert_share / d.groups, "distill": d.distill_share}
    shares["finetune"] = 1.0 - d.warm_share - d.expert_share - d.distill_share
    for name, v in (("warm-share", d.warm_share), ("expert-share", d.expert_share),
                    ("distill-share", d.distill_share)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"--dac.{name} must lie in [0, 1], got {v}")
    if d.expert_share <= 0 or d.distill_share <= 0:
        raise ValueError("--dac.expert-share and --dac.distill-share must be positive")
    if shares["finetune"] < -1e-9:
        raise ValueError(f"--dac shares add up to {1 - shares['finetune']:.3f} > 1 (warm + expert + distill; "
                         "fine-tuning takes the rest)")
    shares["finetune"] = max(shares["finetune"], 0.0)
    return {k: {"share": v, "max_time": None if not cfg.max_time else cfg.max_time * v,
                "steps": int(round(cfg.steps * v))} for k, v in shares.items()}


def _with_budget(cfg: TrainConfig, *phases: dict[str, Any]) -> TrainConfig:
    t = None if phases[0]["max_time"] is None else sum(p["max_time"] for p in phases)
    return dataclasses.replace(cfg, max_time=t, steps=max(1, sum(p["steps"] for p in phases)), resume=False)


def _load_state(run_dir: Path) -> dict[str, Any] | None:
    p = run_dir / STATE
    return json.loads(p.read_text()) if p.exists() else None


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(run_dir / STATE, json.dumps(state, indent=2) + "\n")


def _train_phase(trainer: Trainer, ckpt_dir: Path, quiet: bool, start: dict[str, Any] | None = None,
                 eval_fn=None) -> dict[str, Any]:
    """Resume ``trainer`` from ``ckpt_dir`` (else from ``start``, a state to branch from), train to its stop rule."""
    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is not None:
        trainer.load_checkpoint(ckpt)
    elif start is not None:
        trainer.load_state(start)
    t0, s0 = (start["train_time"], start["step"]) if start is not None else (0.0, 0)
    trainer.train(eval_fn=eval_fn, quiet=quiet)
    return {"time_s": trainer.train_time - t0, "steps": trainer.step_count - s0, "views": trainer.scene.num_views,
            "rays_per_s": trainer.last_stats.get("rays_per_s")}


def check_dac(cfg: TrainConfig, scene: Scene) -> tuple[dict[str, dict[str, Any]], list[list[int]]]:
    """The phase budgets and view groups of ``cfg`` on ``scene``; raises ``ValueError`` naming the bad
    ``--dac`` option (K < 1, K > views, an empty group, shares out of range)."""
    if cfg.personal.enabled:
        raise ValueError("--method dac does not support --personal.enabled (a personal field per photo)")
    if cfg.dac.student_from_warm and cfg.dac.warm_share <= 0:
        raise ValueError("--dac.student-from-warm needs --dac.warm-share > 0 (a shared model to start from)")
    budgets = phase_budgets(cfg)
    groups = group_views(scene, cfg.dac.groups, cfg.dac.grouping, cfg.seed)
    return budgets, groups


def run_dac(cfg: TrainConfig, scene: Scene, run_dir: Path, eval_fn: Callable | None = None,
            quiet: bool = False) -> tuple[Trainer, dict[str, Any]]:
    """Run (or resume) every DaC phase in ``run_dir``; returns the fine-tuned student and the phase record.

    Refuses bad groups (K < 1, K > views, an empty sector) and bad shares before writing anything.
    """
    d = cfg.dac
    budgets, groups = check_dac(cfg, scene)
    owner = owner_of(groups, scene.num_views)
    run_dir = Path(run_dir)
    state = _load_state(run_dir) if cfg.resume else None
    if state is not None and state["groups"] != groups:
        raise ValueError(f"{run_dir / STATE}: its groups differ from this configuration's; resume with the "
                         "same --dac settings and data")
    if state is None:
        state = {"groups": groups, "grouping": d.grouping, "budgets": budgets, "phases": {}}
    run_dir.mkdir(parents=True, exist_ok=True)
    _save_state(run_dir, state)
    phases = state["phases"]

    start = None
    if budgets["warm"]["share"] > 0:
        warm = Trainer(_with_budget(cfg, budgets["warm"]), scene, run_dir / "warm")
        if "warm" not in phases:
            phases["warm"] = _train_phase(warm, run_dir / "warm", quiet)
            _save_state(run_dir, state)
        else:
            warm.load_checkpoint(run_dir / "warm" / "checkpoints" / "last.pt")
        start = warm.state()
        del warm

    experts = phases.setdefault("experts", {})
    for k, views in enumerate(groups):
        if str(k) in experts:
            continue
        if not quiet:
            print(f"[dac] expert {k + 1}/{len(groups)} on {len(views)} views")
        parts = [budgets["warm"], budgets["expert"]] if start is not None else [budgets["expert"]]
        t = Trainer(_with_budget(cfg, *parts), scene.subset(views), run_dir / "experts" / str(k))
        experts[str(k)] = _train_phase(t, run_dir / "experts" / str(k), quiet, start)
        _save_state(run_dir, state)
        del t
    teachers = [Teacher.from_trainer(trainer_from_checkpoint(run_dir / "experts" / str(k), cfg.device))
                for k in range(len(groups))]

    warm_student = d.student_from_warm and start is not None
    parts = [budgets["warm"]] if warm_student else []
    student = Trainer(_with_budget(cfg, *parts, budgets["distill"], budgets["finetune"]), scene, run_dir)
    # the student's clock and step count before distillation (a warm-started student carries the warm model's)
    s_t0, s_s0 = (start["train_time"], start["step"]) if warm_student else (0.0, 0)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        student.load_checkpoint(ckpt)
    elif warm_student:
        student.load_state(start)
    if "distill" not in phases:
        b = budgets["distill"]
        dcfg = DistillConfig(steps=b["steps"] - (student.step_count - s_s0),
                             max_time=None if b["max_time"] is None else b["max_time"] - (student.train_time - s_t0),
                             batch_rays=d.distill_batch_rays, w_hist=d.w_hist if d.points else 0.0,
                             w_pts_rgb=d.w_pts_rgb if d.points else 0.0,
                             w_pts_alpha=d.w_pts_alpha if d.points else 0.0, w_ray_rgb=d.w_ray_rgb,
                             checkpoint_every_s=cfg.checkpoint_every_s)
        if not quiet:
            print(f"[dac] distilling {len(teachers)} experts into the student")
        stats = distill(student, teachers, camera_rays(scene, owner), dcfg, quiet=quiet)
        student.save_checkpoint()
        phases["distill"] = {**stats, "time_s": student.train_time - s_t0, "steps": student.step_count - s_s0}
        _save_state(run_dir, state)
    del teachers
    t0, s0 = s_t0 + phases["distill"]["time_s"], s_s0 + phases["distill"]["steps"]
    if not quiet:
        print("[dac] fine-tuning the student on every training view")
    student.train(eval_fn=eval_fn, quiet=quiet)
    phases["finetune"] = {"time_s": student.train_time - t0, "steps": student.step_count - s0}
    state["total_time_s"] = (sum(p["time_s"] for p in experts.values()) + phases["finetune"]["time_s"]
                             + phases["distill"]["time_s"] + phases.get("warm", {}).get("time_s", 0.0))
    _save_state(run_dir, state)
    return student, state
