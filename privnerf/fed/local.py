"""One user's on-device work in DecentNeRF, without any Flower code: load the user's photos, train the global
and personal fields from the received global weights, compute the loss gradient at the aggregate, update
``alpha_k``, and keep the private state on disk between rounds.

Everything here runs on the user's device. :mod:`privnerf.fed.client` wraps it in a Flower ``ClientApp`` and
:mod:`privnerf.fed.messages` says what of it may leave.

Decisions the paper leaves open (documented in docs/decentnerf.md with the measurements behind them):

* **Where the gradient is taken**: at the *aggregated* ``g^(m-1)`` with the user's current personal state,
  on ``grad_batches`` batches of the user's own training rays (Algorithm 1's lines 8-11 read both ways; the
  aggregate is what ``g = sum alpha_k g_k`` differentiates through).
* **Normalisation**: the server divides ``sum alpha_k g_k`` by ``sum alpha_k`` (both secure sums), so the
  aggregate is a convex combination; each user rescales its ``alpha_k`` by the broadcast ``sum alpha`` so the
  weights start every update on the simplex. The secure sum's bound for ``alpha_k`` is 1; an update that
  would leave it is capped there (and logged): above the bound the sum would clip ``alpha_k`` but not the
  ``alpha_k g_k`` it weights, and the aggregate would be wrong.
* **The update**: with normalisation, ``dL/dalpha_k = <sum_j dL_j/dg, g_k - g> / sum alpha`` ("centred");
  the paper's literal ``<sum_j dL_j/dg, g_k>`` ("raw") adds a term common to all users. With coverage
  weighting a grid voxel's aggregate is ``sum alpha m g / sum alpha m``, whose derivative in ``alpha_k`` is
  ``m_k (g_k - g)`` there: the centred difference counts only the voxels the user's own training touched
  (``m_k``, kept on the device from the last round). Without the mask, each user's ``d_k`` also carried the
  aggregate's movement on every voxel it did *not* touch, a term that grows with what the user did not see
  and that with a larger ``eta`` pushed every ``alpha_k`` above its bound (decentnerf-ablation-8 at
  ``eta`` 8, 2026-11-24: weights of 5-80 after round 3 and a broken aggregate). Default: the centred
  gradient in an exponentiated step ``alpha_k <- alpha_k exp(-eta d_k / |sum_j L_j|)``: divided by the summed
  loss, ``d_k`` is the first-order *relative* change of everyone's loss if the global model moved to user k's
  weights, which makes ``eta`` scale-free; the multiplicative form keeps ``alpha_k > 0``.
* **Local work per round**: ``local_epochs`` passes over the user's pixels (a float; fractions allowed so
  that the total client steps can match a centralized run). The learning rate follows one exponential
  decay over all of a user's rounds (the step counter persists); Adam moments restart every round, as the
  authors' prototype recreated its optimizer.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privnerf.data.scene import Scene
from privnerf.fed import messages
from privnerf.train.checkpoint import atomic_torch_save
from privnerf.train.config import TrainConfig
from privnerf.train.trainer import Trainer

log = logging.getLogger(__name__)

_SCENE_CACHE: dict[tuple[str, str], Scene] = {}


def load_dataset(data: str, split: str = "train") -> Scene:
    """A dataset split, cached per process (simulation runs many clients in one worker)."""
    from privnerf.data.loader import load_scene

    key = (str(data), split)
    if key not in _SCENE_CACHE:
        _SCENE_CACHE[key] = load_scene(data, split=split)
    return _SCENE_CACHE[key]


def user_views(scene: Scene, user: int) -> list[int]:
    """Indices of the views whose ``user_id`` is ``user`` (crowd datasets tag every photo with its owner)."""
    ids = [m.get("user_id") for m in scene.frame_meta]
    if all(i is None for i in ids):
        raise ValueError(f"{scene.meta.get('source', 'dataset')}: no per-frame user_id; federated training needs a "
                         "crowd dataset (privnerf data crowd)")
    return [i for i, u in enumerate(ids) if u is not None and int(u) == int(user)]


def load_user_scene(data: str, user: int, person_free: bool = False) -> Scene:
    """User ``user``'s training photos (their person-free copies with ``person_free``)."""
    scene = load_dataset(data, "train")
    views = user_views(scene, user)
    if not views:
        raise ValueError(f"{data}: user {user} has no photos")
    mine = scene.subset(views)
    if person_free:
        from privnerf.privacy.leakage import person_free_copy

        mine = person_free_copy(mine)
    return mine


def user_private_masks(scene: Scene, user: int, where: str | None) -> list[np.ndarray] | None:
    """User ``user``'s private masks for its photos ``scene`` (``FedConfig.private_masks``): ``None``, the
    crowd's masks of its person (``truth``), or ``where/user-XXX/masks/*.png`` (read on the device)."""
    if where is None:
        return None
    if where == "truth":
        if scene.masks is None:
            raise ValueError("private_masks=truth needs the crowd dataset's masks")
        return [np.asarray(m) == user + 1 for m in scene.masks]
    from privnerf.semantics.find_person import read_private_masks

    return read_private_masks(Path(where) / f"user-{user:03d}", scene)


def user_signature_key(user: int, where: str | None):
    """User ``user``'s ownership key (``FedConfig.signature_keys``: ``where/user-XXX.json``), or ``None``."""
    if where is None:
        return None
    from privnerf.ownership.signature import read_key

    return read_key(Path(where) / f"user-{user:03d}.json")


def trainer_at(cfg: TrainConfig, scene: Scene, global_arrays: list[np.ndarray]) -> Trainer:
    """A trainer on ``scene`` whose global field holds ``global_arrays`` (shapes included: the server may have
    grown the grids), with optimizers built for those tensors. The occupancy grid is not yet refreshed."""
    t = Trainer(cfg, scene)
    messages.load_global(t.field, global_arrays)
    t._build_optimizers()  # grids may have been replaced by the received shapes
    return t


def aggregate_occupancy(field, resolution: int, step: float, alpha: float):
    """Where the global field (a received aggregate) is occupied: an OccupancyGrid of its density alone, cells
    whose opacity over one render step ``step`` exceeds ``alpha`` (``PersonalFieldConfig.exclude_alpha``)."""
    from privnerf.render.occupancy import occupancy_of

    return occupancy_of(field.density_space, field.space.box, resolution, step, alpha)


@dataclass
class AlphaRule:
    """How a user updates its aggregation weight (see the module docstring)."""

    eta: float = 8.0
    """Step size of the exponentiated update. decentnerf-ablation-8, 10 rounds, the masked centred gradient
    (2026-11-24): eta 2 -> 22.56 dB (fedavg 22.16), eta 8 -> 22.91, heavy/light users' weights 0.09-0.11 /
    0.14-0.16 at eta 2 and 0.05-0.08 / 0.15-0.20 at eta 8 after 10 rounds."""
    gradient: str = "centred"
    """'centred' (<sumG, g_k - g>, on grids only where the user's training touched: the true derivative of the
    coverage-weighted mean), 'centred-all' (the same over every voxel: the rule before 2026-11-24, which the
    earlier learned benchmark rows used) or 'raw' (the paper's <sumG, g_k>)."""
    step: str = "exp"
    """'exp' (alpha *= exp(-eta d / |sum L|)) or 'sgd' (alpha -= eta d, the paper's Eq. 1, floored)."""
    floor: float = 1e-4

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` naming the setting (also called at each update: ``--set`` in the benchmark
        changes fields after construction, and an unknown name would otherwise act as another rule)."""
        if self.gradient not in ("centred", "centred-all", "raw"):
            raise ValueError(f"alpha.gradient: {self.gradient!r} is not one of centred, centred-all, raw")
        if self.step not in ("exp", "sgd"):
            raise ValueError(f"alpha.step: {self.step!r} is not one of exp, sgd")
        if not self.eta > 0 or not self.floor > 0:
            raise ValueError(f"alpha.eta and alpha.floor must be > 0, got {self.eta}, {self.floor}")


@dataclass
class UserState:
    """What a user keeps between rounds (on the device only)."""

    personal: dict[str, Any] | None = None
    alpha: float = 0.0
    steps: int = 0
    previous_global: list[np.ndarray] | None = None
    """The user's own global weights after last round's training (``g_k^(m-1)``), for the alpha update."""
    alpha_history: list[float] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    """Adam moments of the user's last round (kept when ``keep_optimizer``)."""
    previous_mask: np.ndarray | None = None
    """``(X, Y, Z)`` coverage weight ``m_k`` the user sent last round (None without coverage weighting)."""
    rounds: int = 0
    """Rounds this user has trained (the personal warm-up starts after ``warmup_after`` of them)."""


class LocalUser:
    """A user with its photos and private state directory.

    Args:
        user: the user id (``user_id`` in the crowd dataset).
        data: the dataset path (only this user's photos are used).
        cfg: the training configuration for local work (``cfg.personal.enabled`` for DecentNeRF).
        state_dir: where the private state persists (survives a restart of the client process).
        rounds, epochs: rounds and local epochs per round (the user's total steps set the learning-rate decay).
        person_free: train on the photos' person-free copies (``FedConfig.person_free``, a diagnostic).
    """

    def __init__(self, user: int, data: str, cfg: TrainConfig, state_dir: Path, rounds: int, epochs: float,
                 keep_optimizer: bool = False, person_free: bool = False, private_masks: str | None = None,
                 signature_keys: str | None = None):
        self.keep_optimizer = keep_optimizer
        self.user = int(user)
        self.scene = load_user_scene(data, self.user, person_free)
        self.private_masks = user_private_masks(self.scene, self.user, private_masks)
        self.signature_key = user_signature_key(self.user, signature_keys)
        self.cfg = copy.deepcopy(cfg)
        gc = self.cfg.field.grid
        gc.grow_at = ()  # the server grows the global grids; clients take the shape they receive
        gc.shrink_at_growth = 0
        self.cfg.steps = max(rounds * self.steps_per_round(epochs), 1)
        self.cfg.max_time = None
        self.state_dir = Path(state_dir)
        self.state_path = self.state_dir / f"user-{self.user:03d}.pt"
        self.state = self._load_state()

    @property
    def num_pixels(self) -> int:
        return int(sum(h * w for h, w in (self.scene.hw(i) for i in range(self.scene.num_views))))

    def steps_per_round(self, epochs: float) -> int:
        return max(1, int(round(epochs * self.num_pixels / self.cfg.optim.batch_rays)))

    # -- private state ------------------------------------------------------------------------------
    def _load_state(self) -> UserState:
        if self.state_path.exists():
            st = torch.load(self.state_path, map_location="cpu", weights_only=False)
            return UserState(**st)
        return UserState()

    def save_state(self) -> None:
        atomic_torch_save(self.state.__dict__, self.state_path)

    # -- the trainer at the received global weights -------------------------------------------------
    def trainer(self, global_arrays: list[np.ndarray]) -> Trainer:
        t = trainer_at(self.cfg, self.scene, global_arrays)
        t.excluded_pixels = self.private_masks
        if self.signature_key is not None:
            from privnerf.ownership.signature import SignLoss

            own = self.cfg.ownership
            t.sign_loss = SignLoss([self.signature_key], t.field, own.margin, own.weight)
        if t.personal is not None and self.state.personal is not None:
            t.personal.load_state_dict(self.state.personal)  # in place: the optimizers keep these tensors
        t.step_count = self.state.steps
        t.generator.manual_seed(self.cfg.seed * 1_000_003 + self.user * 7919 + self.state.steps)
        if self.keep_optimizer and self.state.optimizer is not None:
            # moments of grids whose shape changed (the server grew them) restart inside GridAdam.step
            t.grid_opt.load_state_dict(self.state.optimizer["grid"])
            t.mlp_opt.load_state_dict(self.state.optimizer["mlp"])
        st = self.cfg.render
        if t.personal is not None and self.cfg.personal.exclude_alpha > 0:
            t.personal.set_exclusion(aggregate_occupancy(t.field, st.occ_resolution, t.occ_step,
                                                         self.cfg.personal.exclude_alpha))
        t.occ.update(t.occupancy_density, t.occ_step, st.occ_threshold)
        return t

    def steer_signature(self, keys: list[str], weights: list[np.ndarray], global_arrays: list[np.ndarray],
                        alpha: float, alpha_sum: float, num_users: int) -> list[np.ndarray]:
        """The upload with this user's signed weights steered (``FedConfig.signature_keys``): at its own
        positions the user sends ``(t A - (A - alpha) g) / alpha`` instead of its trained ``w`` (``t = b
        max(b w, margin)``: ``w`` moved onto its bit's side of the margin, ``g`` the received global value, ``A``
        the expected sum of weights: last round's, or ``alpha * num_users`` in the first), so that the weighted
        mean lands on ``t`` when the others' values stay near ``g``. Without it the others' unsigned values,
        ``1 - alpha`` of the mean, hold each signed weight where it was (at 20 users a twentieth of a user's
        move survives a round), and a round's few local steps move a weight about 1e-3 each, far less than the
        0.26 a weight may need (decentnerf-lego-20 on the built-in scene, 4 rounds: no user verified with the
        sign loss and ``w`` steered). The positions are the user's alone (its slot), so no one else steers them;
        the values are masked by SecAgg+ like every other."""
        if self.signature_key is None:
            return weights
        from privnerf.ownership.signature import carrier_locations, carrier_order, key_positions

        order = carrier_order(keys, [w.ndim for w in weights])
        sizes = [weights[j].size for j in order]
        if sum(sizes) != self.signature_key.carrier_size:
            raise ValueError(f"user {self.user}'s key is for a carrier of {self.signature_key.carrier_size} weights; "
                             f"the global colour head has {sum(sizes)}")
        a_sum = alpha_sum if alpha_sum > 0 else alpha * num_users
        out = [w.copy() for w in weights]
        idx, bits = key_positions(self.signature_key)
        margin = self.cfg.ownership.margin
        for (layer, flat), b in zip(carrier_locations(idx, sizes), bits):
            j = order[layer]
            w, g = out[j].reshape(-1), np.asarray(global_arrays[j]).reshape(-1)
            t = b * max(b * float(w[flat]), margin)
            w[flat] = (t * a_sum - (a_sum - alpha) * g[flat]) / alpha
        return out

    def loss_gradient(self, global_arrays: list[np.ndarray], batches: int) -> tuple[list[np.ndarray], float]:
        """``dL_k/dg`` at the received global weights (mean over ``batches`` batches of own rays) and ``L_k``."""
        t = self.trainer(global_arrays)
        params = messages.global_tensors(t.field)
        grids = t.field.grids()
        for g in grids:
            g.grad_buffer().zero_()
            g.touched_mask().zero_()
        for p in params:
            p.grad = None
        total = 0.0
        gen = torch.Generator().manual_seed(1000 + self.user)
        for _ in range(batches):
            batch = t.pixels.sample(self.cfg.optim.batch_rays, gen, with_image=t.personal is not None)
            loss, _, _ = t.compute_loss(batch)
            loss.backward()
            total += float(loss.detach())
        out = []
        for k, p in zip(messages.global_keys(t.field), params):
            if k.endswith("grid.data"):
                grid = t.field.density_grid if k.startswith("density") else t.field.feature_grid
                g = grid.grad_buffer() if grid.sparse else (p.grad if p.grad is not None else torch.zeros_like(p))
            else:
                g = p.grad if p.grad is not None else torch.zeros_like(p)
            out.append((g.detach().cpu().double() / batches).numpy())
        return out, total / batches

    def update_alpha(self, grad_sum: list[np.ndarray], loss_sum: float, global_arrays: list[np.ndarray],
                     alpha_sum: float, rule: AlphaRule) -> float | None:
        """DecentNeRF's Alpha-Update on the device; returns ``d_k`` (or ``None`` if skipped: no previous
        weights, or they cannot be matched to the received ones).

        When the server grew the grids since last round, the user's own grids are regridded the way the
        server grew the aggregate (trilinear, same box), so ``g_k - g`` is the regridded difference of last
        round's weights. (Skipping those rounds instead left the update to half of a 10-round run, the grids
        growing at 10-40% of the rounds.)"""
        if alpha_sum > 0:
            self.state.alpha /= alpha_sum  # back onto the simplex
        rule.check()
        prev = self.state.previous_global
        if prev is None or len(prev) != len(global_arrays):
            return None
        prev = [messages.match_shape(a, np.shape(b)) for a, b in zip(prev, global_arrays)]
        if any(a is None for a in prev):
            return None
        mask = self.state.previous_mask if rule.gradient == "centred" else None
        d = 0.0
        for gs, gk, g in zip(grad_sum, prev, global_arrays):
            x = gk.astype(np.float64) - (g.astype(np.float64) if rule.gradient != "raw" else 0.0)
            if mask is not None and np.ndim(g) == 4:
                # only where this user's weight entered the voxel's mean (regridded if the grids grew)
                m = messages.match_shape(np.asarray(mask, np.float32)[..., None], np.shape(g)[:3] + (1,))
                if m is not None:
                    x = x * m
            d += float(np.dot(gs.ravel(), x.ravel()))
        if rule.step == "exp":
            z = -rule.eta * d / max(abs(loss_sum), 1e-12)
            self.state.alpha *= math.exp(max(min(z, 20.0), -20.0))
        else:
            self.state.alpha = max(self.state.alpha - rule.eta * d, rule.floor)
        self.state.alpha = max(self.state.alpha, rule.floor)
        if self.state.alpha > messages.ALPHA_BOUND:
            log.warning("user %d: alpha %.3g above the secure sum's bound %g; capped (eta %g too large?)",
                        self.user, self.state.alpha, messages.ALPHA_BOUND, rule.eta)
            self.state.alpha = messages.ALPHA_BOUND
        return d

    @staticmethod
    def _gradient_energy(t: Trainer) -> np.ndarray | None:
        """Per-voxel RMS gradient of the global grids over the last ~100 steps (Adam's second moments),
        scaled to a maximum of 1: how strongly this user's photos constrain each voxel."""
        if t.grid_opt is None:
            return None
        sq = [st["exp_avg_sq"] for st in t.grid_opt.state[: len(t.field.grids())]]
        e = sum(torch.sqrt(s).mean(dim=-1) for s in sq)
        m = float(e.max())
        return ((e / m) if m > 0 else e).double().cpu().numpy()

    def coverage_weight(self, keys: list[str], weights: list[np.ndarray], received: list[np.ndarray],
                        kind: str = "touched") -> np.ndarray:
        """``(X, Y, Z)`` per-voxel weight ``m_k`` of this user's grid values in the coverage-weighted mean, after
        :meth:`train` returned ``weights`` from ``received``: 0 where the round's training left the voxel as it
        came; elsewhere 1 (``touched``) or the RMS gradient from the round's Adam moments scaled to a maximum
        of 1 (``gradient``: a voxel this user's rays reached once and moved by one noisy Adam step counts
        for little, one its photos pin down counts fully)."""
        if kind not in ("touched", "gradient"):
            raise ValueError(f"coverage_weight: {kind!r} is not one of touched, gradient")
        touched = np.zeros(weights[0].shape[:3], dtype=bool)
        for k, w, g in zip(keys, weights, received):
            if messages.is_grid_key(k) and w.shape == g.shape:
                touched |= np.any(w != g, axis=-1)
        if kind == "gradient":
            energy = getattr(self, "gradient_energy", None)
            if energy is not None and energy.shape == touched.shape:
                return np.where(touched, energy, 0.0)
            log.warning("user %d: no gradient energy of the grids' shape %s from this round; coverage weight "
                        "'touched' used instead", self.user, touched.shape)
        return touched.astype(np.float64)

    def train(self, global_arrays: list[np.ndarray], epochs: float, personal_warmup: float = 0.0,
              warmup_after: int = 1, warmup_extra: bool = False) -> tuple[list[np.ndarray], dict[str, float]]:
        """Local training from the received global weights and the user's own personal state; the first
        ``personal_warmup`` share of the steps trains the personal field only (the global one is frozen), so
        what the aggregate cannot explain goes to the personal field before local training relearns it.
        The warm-up runs only once the user has trained ``warmup_after`` rounds: in its first round the
        aggregate is (nearly) empty, and a personal field trained alone on it takes the scene itself (demo
        crowd, warm-up in every round: 13.4 dB after 4 rounds against 18.2, docs/decentnerf.md). With
        ``warmup_extra`` the warm-up steps come on top of the round's steps (the global field keeps all of
        them; the client trains longer)."""
        t = self.trainer(global_arrays)
        steps = self.steps_per_round(epochs)
        warming = t.personal is not None and personal_warmup > 0
        warm = int(round(personal_warmup * steps)) if warming and self.state.rounds >= warmup_after else 0
        if warmup_extra:
            steps += warm
        n_global = len(t.field.grids())
        saved = (list(t.grid_opt.lrs), t.mlp_opt.param_groups[0]["base_lr"])
        if warming and self.state.rounds < warmup_after:
            # before the warm-up starts the personal field waits (frozen at its near-transparent start)
            for j in range(n_global, len(t.grid_opt.lrs)):
                t.grid_opt.lrs[j] = 0.0
            for g in t.mlp_opt.param_groups[1:]:
                g["base_lr"] = 0.0
        t0 = time.perf_counter()
        psnr, samples = [], 0.0
        for i in range(steps):
            frozen = i < warm
            for j in range(n_global):
                t.grid_opt.lrs[j] = 0.0 if frozen else saved[0][j]
            t.mlp_opt.param_groups[0]["base_lr"] = 0.0 if frozen else saved[1]
            s = t.step()
            psnr.append(s["psnr"])
            samples += s["samples"]
        dt = time.perf_counter() - t0
        # extra warm-up steps do not advance the learning-rate decay across rounds (it is set for the round's steps)
        self.state.steps = t.step_count - (warm if warmup_extra else 0)
        self.state.rounds += 1
        if self.keep_optimizer:
            self.state.optimizer = {"grid": t.grid_opt.state_dict(), "mlp": t.mlp_opt.state_dict()}
        if t.personal is not None:
            self.state.personal = {k: v.detach().cpu().clone() for k, v in t.personal.state_dict().items()}
        weights = messages.global_arrays(t.field)
        self.state.previous_global = weights
        self.gradient_energy = self._gradient_energy(t)
        self.trainer_last = t
        return weights, {"train_time_s": dt, "local_steps": steps, "samples": samples,
                         "rays": float(steps * self.cfg.optim.batch_rays), "train_psnr": float(np.mean(psnr[-10:]))}
