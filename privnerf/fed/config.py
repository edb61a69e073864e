"""Configuration of a federated run (``privnerf fed run``), a nested dataclass exposed on the CLI by tyro."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Literal, Optional

from privnerf.fed.dac import DacSettings
from privnerf.fed.local import AlphaRule
from privnerf.fed.secure import SecAggSettings
from privnerf.fed.server_opt import ServerOptSettings
from privnerf.train.config import TrainConfig

AGGREGATORS = ("learned", "fedavg", "fednerf", "centralized", "oracle", "dac")


def _default_train() -> TrainConfig:
    t = TrainConfig()
    t.personal.enabled = True
    # Federated grids: every round every user uploads a masked int64 copy (8 bytes per value) and the server
    # regenerates masks per user, so the global grid is capped well below the centralized default.
    t.field.grid.max_voxels = 96**3
    t.field.grid.grow_at = (0.1, 0.2, 0.3, 0.4)
    # each round rebuilds the occupancy grid from the received aggregate, so the per-step refresh of the
    # first centralized steps is needed only briefly (it costs ~0.5 s a step on one core)
    t.render.occ_warmup_steps = 8
    t.threads = 1
    # Off for every aggregator (so fednerf and centralized train the same objective as the DecentNeRF clients
    # they are compared with) until measured on a federated run; when set, the clients' NeRF-W loss applies it
    # to the global field's weights (Trainer.compute_loss).
    t.optim.distortion_weight = 0.0
    return t


@dataclass
class FedConfig:
    data: str = ""
    """A crowd dataset (privnerf data crowd): nerfstudio transforms.json with per-frame user_id, test = clean views."""
    aggregator: Literal["learned", "fedavg", "fednerf", "centralized", "oracle", "dac"] = "learned"
    """learned = DecentNeRF; fedavg = DecentNeRF with pixel-count weights; fednerf = one field, FedAvg, the
    server sees each update; centralized = all photos on one trainer, same model (the issue's upper baseline);
    oracle = the crowd's person-free copies on one trainer, global field only (needs a crowd with clean/
    copies): a ceiling no real system reaches, since it needs the people removed perfectly, and the fair
    upper baseline where centralized keeps the people (docs/decentnerf.md); dac = users in azimuth groups, one
    SecAgg+ sum per group (a group expert), the experts distilled into the global field on the server (DaC,
    ``--dac.*``, docs/decentnerf.md "DaC as an aggregator")."""
    rounds: int = 10
    local_epochs: float = 1.0
    """Passes over a user's pixels per round (fractions allowed)."""
    engine: Literal["simulation", "deployment"] = "simulation"
    insecure: bool = False
    """Deployment engine without TLS (loopback testing only)."""
    output: Optional[Path] = None
    """Run directory (default outputs/<experiment>/fed-<aggregator>/<timestamp>)."""
    experiment: str = "fed"
    resume: bool = False
    """Continue from the last completed round in --output."""
    client_lr_scale: float = 10.0
    """Federated clients train the global grids at this multiple of ``--train.optim.lr-density/-features``;
    centralized trains at those rates as given. Averaging users who see different parts of the scene shrinks
    each voxel's update; one trainer averages nothing. Measured on the demo crowd (learned, 4 rounds x 1 epoch;
    centralized 26.98 dB): client grid lr 0.1 -> 18.17 dB, 0.3 -> 22.44, 1.0 -> 24.74, 3.0 -> 24.74; on
    decentnerf-lego-20 centralized at the clients' 1.0 scored 19.31 dB, below every federated aggregator."""
    coverage: bool = True
    """Coverage-weighted grid averaging: each voxel is averaged over the users whose training touched it
    (weights alpha_k m_k), not diluted by users who never saw it; MLP weights use alpha_k. Off = the paper's
    plain sum alpha_k g_k / sum alpha_k everywhere. Not used by fednerf (the paper's baseline)."""
    coverage_weight: Literal["touched", "gradient"] = "touched"
    """Per-voxel weight m_k for coverage weighting: 'touched' = 1 where the user's training changed the voxel;
    'gradient' = the user's RMS gradient there (from its Adam second moments), scaled to a maximum of 1.
    'gradient' doubles a late round's progress on person-free photos (benchmarks/round_rules.py) but lets each
    user's own people and floaters into the aggregate, which its photos pin hardest (decentnerf-lego-20-x5-rms:
    19.08 dB and leakage 7.3 at round 5 against 21.11 and 5.3 with 'touched'; docs/decentnerf.md)."""
    personal_warmup: float = 0.0
    """Share of each round's local steps that train only the personal field (global frozen). With
    ``--train.personal.lr-grid 1.0`` it moves each user's static people into its personal field
    (decentnerf-lego-20-x5-pw50: leakage 6.19 -> 4.75 dB, SSIM 0.778 -> 0.797, LPIPS 0.304 -> 0.250, but PSNR
    21.78 -> 19.90, the global field training on half the steps; off by default, docs/decentnerf.md)."""
    personal_warmup_extra: bool = False
    """The warm-up steps come on top of each round's local steps instead of out of them (the global field keeps
    all its steps; the client trains longer, and its step count says so)."""
    personal_warmup_after: int = 1
    """The warm-up starts once a user has trained this many rounds (on the first, nearly empty, aggregate a
    personal field trained alone takes the scene itself)."""
    person_free: bool = False
    """Federated users train on their photos' person-free copies (the crowd's clean/; leakage is still scored
    against the photos with people). A diagnostic, not a privacy mode: it splits the gap between a federated
    run and the oracle into what federation costs and what the people cost (docs/decentnerf.md)."""
    private_masks: Optional[str] = None
    """Each user's own person masks, kept on its device: ``DIR/user-XXX/masks/<photo>.png`` as ``privnerf
    semantics find-person`` writes them (one click on the person in one photo, JacobiNeRF propagates it).
    The masked pixels never enter the user's training (neither field, nor the alpha gradient), so its
    person cannot enter its upload. ``truth`` uses the crowd's own masks of the user's person instead (a
    diagnostic: what perfect masks are worth)."""
    signature_keys: Optional[str] = None
    """Each user's own ownership key, kept on its device: ``DIR/user-XXX.json`` (``privnerf ownership keygen
    --federation N --out DIR``: one slot per user, so the users' signed weights never overlap). Each user's
    local training adds the sign loss for its own bits (IPR-NeRF); only the weights leave, through SecAgg+, and
    the aggregate carries every user's signature (docs/ownership.md). The keys never leave the device."""
    keep_optimizer: bool = False
    """Users keep their Adam moments between rounds (on the device) instead of restarting them each round."""
    grad_batches: int = 4
    """Batches of own rays for dL_k/dg (learned aggregation)."""
    alpha: AlphaRule = dc_field(default_factory=AlphaRule)
    secagg: SecAggSettings = dc_field(default_factory=SecAggSettings)
    dac: DacSettings = dc_field(default_factory=DacSettings)
    """The DaC aggregator's groups and distillation (``--aggregator dac`` only)."""
    server_opt: ServerOptSettings = dc_field(default_factory=ServerOptSettings)
    """The server's step on the aggregate (all federated aggregators; fednerf included, on the plain mean)."""
    eval_every: int = 1
    """Evaluate the global model every this many rounds (and after the last)."""
    eval_max_images: Optional[int] = None
    leakage_views: int = 3
    """Training views per user rendered for the personal-content leakage measure."""
    sim_cpus_per_client: float = 1.0
    seed: int = 0
    train: TrainConfig = dc_field(default_factory=_default_train)
    """Local training (and, for centralized, the one trainer)."""
    num_users: int = 0
    """Filled in from the dataset."""
    state_dir: str = ""
    """Filled in: <output>/state (each client's private state lives under clients/)."""

    # What each aggregator is, asked in one place (the run, the deployment, the benchmarks ask these):
    @property
    def secure(self) -> bool:
        """The server only unmasks SecAgg+ sums (learned, fedavg; dac: one per group); needs at least two users."""
        return self.aggregator in ("learned", "fedavg", "dac")

    @property
    def one_trainer(self) -> bool:
        """No federation: one trainer holds every photo (centralized, oracle)."""
        return self.aggregator in ("centralized", "oracle")

    @property
    def personal_field(self) -> bool:
        """The model has a personal field beside the global one (not fednerf, not the person-free oracle)."""
        return self.aggregator not in ("fednerf", "oracle")

    @property
    def trains_person_free(self) -> bool:
        """The training photos are the crowd's person-free copies (the oracle, or ``--person-free``)."""
        return self.aggregator == "oracle" or self.person_free

    def client_train_config(self) -> TrainConfig:
        t = copy.deepcopy(self.train)
        t.personal.enabled = self.personal_field
        t.seed = self.seed
        if not self.one_trainer:
            t.optim.lr_density *= self.client_lr_scale
            t.optim.lr_features *= self.client_lr_scale
        return t

    def to_json(self) -> str:
        from privnerf.train.trainer import config_to_dict

        return json.dumps(config_to_dict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "FedConfig":
        """Inverse of :meth:`to_json` (unknown keys are an error): how a Flower app process started by the
        Deployment Engine gets the run's configuration back from ``config.json``."""
        import dataclasses
        import typing

        from privnerf.train.config import config_from_dict

        def build(klass, values: dict):
            if not isinstance(values, dict):
                raise ValueError(f"{klass.__name__}: expected an object, got {type(values).__name__}")
            names = {f.name for f in dataclasses.fields(klass)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"unknown config keys for {klass.__name__}: {sorted(unknown)}")
            hints = typing.get_type_hints(klass)
            kwargs = {}
            for name, v in values.items():
                t = hints[name]
                if t is TrainConfig:
                    v = config_from_dict(v)
                elif dataclasses.is_dataclass(t):
                    v = build(t, v)
                elif name == "output" and v is not None:
                    v = Path(v)
                elif isinstance(v, list):
                    v = tuple(v)
                kwargs[name] = v
            return klass(**kwargs)

        return build(cls, json.loads(text))
