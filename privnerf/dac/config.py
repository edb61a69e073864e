"""DaC's settings on the training CLI (``privnerf train --method dac --dac.groups 4``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DacConfig:
    """Divide-and-conquer training (:mod:`privnerf.dac.pipeline`): experts, distillation, fine-tuning.

    The run's budget (``--max-time`` and/or ``--steps``) is the total over all phases, as one model's would
    be: a share ``warm_share`` trains a shared all-view model that every expert starts from (0: experts
    start from scratch, as in DaC), ``expert_share`` is split evenly between the K experts (trained one after
    another), ``distill_share`` distils them into the student, and the rest fine-tunes the student.
    """

    groups: int = 4
    """K, the number of view groups (= experts)."""
    grouping: Literal["sector", "similarity"] = "sector"
    """``sector``: DaC's azimuth sectors; ``similarity``: Louvain on a view-similarity graph (privnerf.dac.grouping)."""
    warm_share: float = 0.0
    """Share of the budget for a shared all-view model that every expert starts from (branch-train-merge)."""
    expert_share: float = 4 / 7
    """Share of the budget for all experts together (each gets ``expert_share / groups``). The defaults 4/7,
    1/7 (distillation) and 2/7 (fine-tuning, the rest) are the proportions of DaC's released script
    (4 experts x 30k steps, 30k distillation steps, 60k fine-tuning steps)."""
    distill_share: float = 1 / 7
    student_from_warm: bool = False
    """With ``warm_share > 0``: the student starts from the shared all-view model too (branch-train-merge,
    then distil the branches back into the trunk) instead of from scratch (DaC)."""
    points: bool = True
    """Distil with the per-sample colour, opacity and histogram losses; off: ray colour only (ablation)."""
    distill_batch_rays: int = 4096
    w_hist: float = 0.3
    w_pts_rgb: float = 0.2
    w_pts_alpha: float = 0.2
    w_ray_rgb: float = 0.3
