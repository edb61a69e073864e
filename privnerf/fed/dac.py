"""DaC as a federated aggregator (``privnerf fed run --aggregator dac``): group experts from per-group secure
sums, distilled on the server into the one global field.

DaC (Divide and Conquer, arXiv 2401.16144; spec ``blog_papers.md`` section 1) trains one expert per group of
views and distils the experts into one student. Here a group is a group of *users*, and the server never holds
one user's update:

1. **Groups.** Each user computes, on its device, the azimuth sector of its cameras (the circular mean of
   their azimuths about the scene box's centre, one of ``K`` equal sectors; DaC's NeRF-synthetic rule, whose
   sector centres are ``(2i + 1) 180 / K`` degrees) and reports **only that sector id** (a Flower
   ``evaluate`` message, outside SecAgg+). The server groups the users by sector; a group with fewer than
   ``min_group`` users is refused (:func:`form_groups`), as a sum of so few updates nearly reveals each.
   Empty sectors have no expert: their rays go to the nearest sector that has one (:func:`routing_table`).
2. **Experts.** Each round, each group trains from the global model (``--dac.start global``, the default;
   ``expert``: from its own last expert, DaC's independent experts) and the server gets one SecAgg+ sum per
   group, over that group's nodes only (``RoundStrategy.only_nodes`` narrows Flower's ``SecAggPlusWorkflow``
   sampling); the group's coverage-weighted mean is its expert.
3. **Distillation.** The server renders rays from points on a sphere around the box looking at random
   points inside it (:func:`sphere_rays`), each ray answered by the expert of the sector that holds its
   origin's azimuth, and distils the experts into the global field (starting from the experts' mean, the sum
   of the group sums, ``--dac.init mean``) with the four DaC losses
   (:func:`privnerf.dac.distill.distill`) through a server-side :class:`~privnerf.train.trainer.Trainer`
   whose scene has no images and no cameras. No user camera or pixel is used.

What the server knows: each user node's sector id (``K`` coarse azimuth bins), the group sums (so each group's
mean, which it renders: the experts' leakage is measured in the benchmark), the scene box, the render bounds
and the background colour (the global model's own settings), and the prior that photos are taken from above
the ground (ray origins on the upper part of the sphere, ``DacSettings.elevation_min/max``).

Worked example (``K = 4``): sector centres 45, 135, 225, 315 degrees; a user whose cameras sit at azimuths
10-28 degrees reports sector 0; twenty users in 18-degree slices from 0 degrees form four groups of five;
a server ray whose origin has azimuth 100 degrees is answered by group 1's expert.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch

from privnerf.dac.grouping import sector_of
from privnerf.data.scene import Scene
from privnerf.fed import messages

log = logging.getLogger(__name__)

RaySource = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

# Distillation FLOPs per sample and per ray (see :func:`distill_flops`), counted from the layer sizes as
# privnerf.fed.run counts the clients': trilinear on the 13 global channels, the density activation; the
# per-ray colour MLP (39 -> 64 -> 64 -> 3).
FORWARD_PER_SAMPLE = 2 * 8 * 13 + 40
FORWARD_PER_RAY = 2 * (39 * 64 + 64 * 64 + 64 * 3)


@dataclass
class DacSettings:
    """``--dac.*``: the DaC aggregator."""

    groups: int = 4
    """K azimuth sectors (DaC's sector rule); users are grouped by the sector of their cameras."""
    min_group: int = 3
    """Smallest group the server accepts (a secure sum of fewer users nearly reveals each update)."""
    steps: int = 100
    """Distillation steps on the server each round (with ``start expert``: in each round that distils)."""
    final_steps: int = 300
    """Distillation steps in the last round: the global model the run ends with."""
    every: int = 1
    """``start expert`` only: distil every this many rounds (and in the last); no client trains from the
    students in between, which only warm-start the last distillation and show progress."""
    batch_rays: int = 4096
    """Server rays per distillation step."""
    radius: float = 1.6
    """Ray origins lie on a sphere of this many half box diagonals around the box centre."""
    elevation_min: float = 0.0
    """Lowest origin elevation in degrees (the server's prior: photos are taken from above the ground)."""
    elevation_max: float = 90.0
    start: Literal["expert", "global"] = "global"
    """What a group trains from each round: its own expert (DaC: experts trained apart, the student distilled
    from them) or the global model (each round's experts are one round of group training from the student)."""
    init: Literal["student", "mean"] = "mean"
    """Where each distillation starts: the last student, or the mean of the experts (with ``start global``, every
    user's coverage-weighted mean, as learned/fedavg aggregate; the sum of the group sums)."""
    lr_scale: float = 1.0
    """The student's grid learning rates are ``--train.optim.lr-density/-features`` times this."""

    def check(self) -> None:
        if self.groups < 1:
            raise ValueError(f"--dac.groups must be >= 1, got {self.groups}")
        if self.min_group < 2:
            raise ValueError(f"--dac.min-group must be >= 2 (SecAgg+ needs two parties), got {self.min_group}")
        if self.steps < 0 or self.final_steps < 0 or self.batch_rays < 1 or self.every < 1:
            raise ValueError(f"--dac.steps and --dac.final-steps must be >= 0, --dac.batch-rays and --dac.every >= 1; "
                             f"got {self.steps}, {self.final_steps}, {self.batch_rays}, {self.every}")
        if not self.radius > 1.0:
            raise ValueError(f"--dac.radius must be > 1 (origins outside the box), got {self.radius}")
        if not -90.0 <= self.elevation_min <= self.elevation_max <= 90.0:
            raise ValueError(f"--dac.elevation-min/max must satisfy -90 <= min <= max <= 90, got "
                             f"{self.elevation_min}, {self.elevation_max}")


# -- groups -------------------------------------------------------------------------------------------------


def camera_sector(c2w: np.ndarray, centre: np.ndarray, groups: int) -> int:
    """On the device: the sector of a user's cameras ``c2w`` ``(n, 4, 4)`` about ``centre`` ``(3,)``: the
    circular mean of the cameras' azimuths (robust where a slice straddles 0 degrees)."""
    if len(c2w) == 0:
        raise ValueError("a user with no cameras has no sector")
    xy = np.asarray(c2w, np.float64)[:, :2, 3] - np.asarray(centre, np.float64)[:2]
    az = np.arctan2(xy[:, 1], xy[:, 0])
    mean = math.degrees(math.atan2(float(np.sin(az).mean()), float(np.cos(az).mean())))
    return int(sector_of(mean, groups))


def scene_sector(scene: Scene, groups: int) -> int:
    """:func:`camera_sector` of a user's photos (the box centre is the scene's)."""
    return camera_sector(scene.c2w, (scene.aabb[0] + scene.aabb[1]) / 2, groups)


def sector_range(sector: int, groups: int) -> str:
    w = 360.0 / groups
    return f"azimuth {sector * w:g}-{(sector + 1) * w:g} deg"


def form_groups(sectors: Mapping[Any, int], groups: int, min_group: int) -> dict[int, list]:
    """``{sector: sorted members}`` from each member's reported sector; raises ``ValueError`` naming every group
    smaller than ``min_group`` (empty sectors form no group).

    >>> form_groups({"a": 0, "b": 0, "c": 0, "d": 2, "e": 2, "f": 2}, 4, 3)
    {0: ['a', 'b', 'c'], 2: ['d', 'e', 'f']}
    """
    out: dict[int, list] = {}
    for member, s in sectors.items():
        s = int(s)
        if not 0 <= s < groups:
            raise ValueError(f"member {member} reported sector {s}; expected 0..{groups - 1}")
        out.setdefault(s, []).append(member)
    if not out:
        raise ValueError("no users reported a sector")
    small = {s: len(m) for s, m in sorted(out.items()) if len(m) < min_group}
    if small:
        what = "; ".join(f"group {s} ({sector_range(s, groups)}) has {n} user{'s' if n != 1 else ''}"
                         for s, n in small.items())
        raise ValueError(f"DaC aggregator: {what}, fewer than --dac.min-group {min_group} (the server would see a "
                         f"sum of too few updates); use fewer --dac.groups or more users per sector")
    return {s: sorted(m) for s, m in sorted(out.items())}


def routing_table(present: list[int], groups: int) -> np.ndarray:
    """``(groups,)`` long: for each sector, the index into ``present`` (sorted sectors with an expert) of the
    expert that answers its rays: its own, else the circularly nearest (ties to the lower sector)."""
    if not present:
        raise ValueError("no expert to route rays to")
    table = np.zeros(groups, np.int64)
    for s in range(groups):
        dist = [min((s - p) % groups, (p - s) % groups) for p in present]
        table[s] = int(np.argmin(dist))
    return table


# -- the server's rays ------------------------------------------------------------------------------------


def sphere_rays(box: torch.Tensor, table: np.ndarray, radius: float = 1.6, elevation_min: float = 0.0,
                elevation_max: float = 90.0) -> RaySource:
    """A :data:`RaySource` that needs no camera: origins uniform (by area) on the part of the sphere of
    ``radius`` half box diagonals around the box centre between the two elevations, each ray aimed at a
    uniform point inside the box ``(2, 3)``; the teacher index is ``table[sector of the origin's azimuth]``.

    Returns ``n -> (origins (n, 3), dirs (n, 3) unit, teacher (n,) long)``."""
    box = box.detach().float().cpu()
    centre = (box[0] + box[1]) / 2
    r = radius * float((box[1] - box[0]).norm()) / 2
    lo, hi = math.sin(math.radians(elevation_min)), math.sin(math.radians(elevation_max))
    groups = len(table)
    route = torch.from_numpy(np.asarray(table, np.int64))

    def rays(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        az = torch.rand(n, generator=gen, dtype=torch.float64) * (2 * math.pi)
        z = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)  # uniform in sin(elevation)
        c = torch.sqrt((1 - z * z).clamp(min=0))
        o = centre + r * torch.stack([c * torch.cos(az), c * torch.sin(az), z], -1).float()
        target = box[0] + (box[1] - box[0]) * torch.rand(n, 3, generator=gen)
        d = target - o
        d = d / d.norm(dim=-1, keepdim=True)
        sector = torch.from_numpy(sector_of(np.degrees(az.numpy()), groups))
        return o, d, route[sector]

    return rays


def server_scene(box: np.ndarray, background, scene_type: str, radius: float) -> Scene:
    """A scene with no images and no cameras for the server's student trainer: the box, the background, and
    near/far that cover the box from anywhere on the rays' sphere (marching clips to the box)."""
    half = float(np.linalg.norm(np.asarray(box[1]) - np.asarray(box[0]))) / 2
    return Scene(images=[], c2w=np.zeros((0, 4, 4), np.float32), intrinsics=np.zeros((0, 4), np.float32),
                 near=0.0, far=2 * (radius + 1) * half, aabb=np.asarray(box, np.float32),
                 scene_type=scene_type, background=background)


def distill_flops(stats: dict[str, Any], batch_rays: int) -> float:
    """Server FLOPs of distillation steps from their sample counts: the teacher renders forward only (1x), the
    student forward + backward (3x) on its own samples and again at the teacher's points (DaC's point losses).
    Uses ``stats['teacher_samples']`` / ``['student_samples']`` when the distiller reports them, else assumes
    both equal ``stats['samples']``."""
    steps = float(stats.get("steps", 0))
    s_t = float(stats.get("teacher_samples", stats.get("samples", 0.0)))
    s_s = float(stats.get("student_samples", stats.get("samples", 0.0)))
    rays = steps * batch_rays
    teacher = s_t * FORWARD_PER_SAMPLE + rays * FORWARD_PER_RAY
    student = 3 * (s_s * FORWARD_PER_SAMPLE + rays * FORWARD_PER_RAY) + 3 * s_t * FORWARD_PER_SAMPLE
    return teacher + student


# -- the aggregator on the server --------------------------------------------------------------------------


class DacAggregator:
    """The server's DaC state: groups of nodes, one expert per group, the student trainer.

    ``template``: the server's global field (experts are copies of it); ``scene``: the imageless scene of
    :func:`server_scene` (box, background); ``train``: the training configuration (the student's learning rates
    and render settings)."""

    def __init__(self, settings: DacSettings, template, scene: Scene, train, rounds: int, seed: int = 0):
        settings.check()
        self.s = settings
        self.template = template
        self.scene = scene
        tc = copy.deepcopy(train)
        tc.personal.enabled = False
        tc.field.grid.grow_at = ()  # the server grows the global grids itself (DecentServer._grow_if_due)
        tc.field.grid.shrink_at_growth = 0
        tc.optim.lr_density *= settings.lr_scale
        tc.optim.lr_features *= settings.lr_scale
        # the learning rate decays over every distillation step of the run
        tc.steps = max(1, sum(self.steps_in(r, rounds) for r in range(1, rounds + 1)))
        tc.max_time = None
        tc.seed = seed
        self.train_cfg = tc
        self.rounds = rounds
        self.student = None
        self.groups: dict[int, list[int]] = {}
        self.experts: dict[int, list[np.ndarray]] = {}
        self.distill_steps = 0

    def steps_in(self, rnd: int, rounds: int) -> int:
        """Distillation steps in round ``rnd`` of ``rounds``."""
        if rnd == rounds:
            return self.s.final_steps
        if self.s.start == "global":  # the groups train from the student: it must follow every round
            return self.s.steps
        return self.s.steps if rnd % self.s.every == 0 else 0

    # -- groups (every run start: node ids change when the federation restarts) ---------------------
    def connect(self, grid, legacy, num_users: int) -> dict[int, list[int]]:
        """Ask every node for its sector (one plain ``evaluate`` exchange: the sector id is all that crosses)
        and form the groups; raises ``ValueError`` (naming the group) if one is below ``min_group``."""
        replies = report(grid, legacy, {"phase": "sector", "groups": self.s.groups})
        if len(replies) < num_users:
            raise RuntimeError(f"DaC aggregator: {len(replies)} of {num_users} users reported a sector")
        self.groups = form_groups({nid: int(m["sector"]) for nid, m in replies.items()}, self.s.groups,
                                  self.s.min_group)
        log.info("DaC groups (sector: users): %s", {s: len(m) for s, m in self.groups.items()})
        return self.groups

    def expert_arrays(self, sector: int, g: list[np.ndarray]) -> list[np.ndarray]:
        """Group ``sector``'s expert at the global arrays' shapes (regridded if the server grew the grids; the
        global arrays before a group's first sum)."""
        e = self.experts.get(sector)
        if e is None:
            return [a.copy() for a in g]
        out = [messages.match_shape(a, np.shape(b)) for a, b in zip(e, g)]
        return [b.copy() if a is None else np.asarray(a, np.float32) for a, b in zip(out, g)]

    # -- distillation ---------------------------------------------------------------------------------
    def _field(self, arrays: list[np.ndarray]):
        f = copy.deepcopy(self.template)
        messages.load_global(f, arrays)
        return f

    def _student(self, g: list[np.ndarray]):
        from privnerf.train.trainer import Trainer

        if self.student is None:
            with warnings.catch_warnings():  # no cameras, so no pixel footprint (it sizes grid growth: none here)
                warnings.simplefilter("ignore", RuntimeWarning)
                self.student = Trainer(self.train_cfg, self.scene)
        t = self.student
        messages.load_global(t.field, g)
        t._build_optimizers()  # Adam restarts each round (the grids may have grown)
        t.step_count = self.distill_steps
        r = self.train_cfg.render
        t.occ.update(t.occupancy_density, t.occ_step, r.occ_threshold)
        return t

    def distill(self, g: list[np.ndarray], steps: int) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Distil the current experts into a student that starts at ``g`` for ``steps`` steps; returns its arrays
        and the stats."""
        from privnerf.dac.distill import DistillConfig, Teacher, distill
        from privnerf.render.occupancy import occupancy_of

        present = sorted(self.experts)
        t = self._student(g)
        r = self.train_cfg.render
        teachers = []
        for s in present:
            f = self._field(self.expert_arrays(s, g))
            occ = occupancy_of(f.density_space, f.space.box, r.occ_resolution, t.occ_step, r.occ_threshold)
            teachers.append(Teacher(field=f, occ=occ, settings=t.settings(inference=False, field=f)))
        rays = sphere_rays(t.field.space.box, routing_table(present, self.s.groups), self.s.radius,
                           self.s.elevation_min, self.s.elevation_max)
        t0 = time.perf_counter()
        stats = distill(t, teachers, rays, DistillConfig(steps=steps, batch_rays=self.s.batch_rays), quiet=True)
        stats = dict(stats)
        stats.setdefault("time_s", time.perf_counter() - t0)
        self.distill_steps = t.step_count
        if "flops" not in stats or stats["flops"] is None:
            stats["flops"] = distill_flops(stats, self.s.batch_rays)
        return messages.global_arrays(t.field), stats

    # -- persistence ----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"experts": self.experts, "distill_steps": self.distill_steps}

    def load(self, st: dict[str, Any] | None) -> None:
        if st:
            self.experts = {int(k): v for k, v in st.get("experts", {}).items()}
            self.distill_steps = int(st.get("distill_steps", 0))


def report(grid, legacy, config: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """One plain (not secure) ``evaluate`` exchange with every node: ``{node_id: its reply's metrics}``. The
    DecentNeRF client answers ``phase=sector`` with its sector id alone (:meth:`DecentClient.evaluate`)."""
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
    from flwr.server.workflow.default_workflows import default_evaluate_workflow
    from flwr.app import ConfigRecord
    from flwr.common import ndarrays_to_parameters
    import flwr.compat.common.recorddict_compat as compat

    strategy = legacy.strategy
    strategy.evaluate_config = dict(config)
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(ndarrays_to_parameters([]), True)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: 0})
    strategy.eval_results = []
    try:
        default_evaluate_workflow(grid, legacy)
    finally:
        strategy.evaluate_config = {}
    return {int(proxy.node_id): dict(res.metrics) for proxy, res in strategy.eval_results}


def group_sums(grid, legacy, rnd: int, groups: Mapping[int, list[int]], parameters: Mapping[int, list[np.ndarray]],
               config: dict[str, Any], bounds: Mapping[int, list[float]], secagg, min_group: int,
               flops: dict[str, float] | None = None) -> dict[int, tuple[list[np.ndarray], int]]:
    """One SecAgg+ sum per group, each over that group's nodes only: ``{group: (plain sum, users in it)}``;
    a group whose sum failed, or came from fewer than ``min_group`` users (dropouts), is left out (logged)."""
    from privnerf.fed.server import secure_sum

    out = {}
    strategy = legacy.strategy
    results, failures = [], []
    try:
        for s, nodes in groups.items():
            strategy.only_nodes = set(int(n) for n in nodes)
            cfg = {**config, "group": int(s), "bounds": messages.encode_bounds(bounds[s])}
            res = secure_sum(grid, legacy, rnd, parameters[s], cfg, bounds[s], secagg, flops)
            results += strategy.results
            failures += strategy.failures
            if res is None:
                continue
            if res[1] < min_group:
                log.error("round %d: group %d's sum has %d users (< %d); its expert is unchanged", rnd, s, res[1],
                          min_group)
                continue
            out[s] = res
    finally:
        strategy.only_nodes = None
        # every group's replies (their metrics: steps, time, samples) for the round's record, as one sum leaves them
        strategy.results, strategy.failures = results, failures
    return out


__all__ = ["DacAggregator", "DacSettings", "camera_sector", "distill_flops", "form_groups", "group_sums",
           "report", "routing_table", "scene_sector", "sector_of", "server_scene", "sphere_rays"]
