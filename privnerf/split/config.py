"""Split-training configuration: ``privnerf split train`` exposes every field as a flag."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Literal, Optional

from privnerf.privacy.gradient_defense import DefenseConfig, DefenseName
from privnerf.privacy.split_attack import AttackConfig
from privnerf.train.config import TrainConfig


@dataclass
class SplitConfig:
    data: str = "builtin"
    """Dataset the client holds (its images never leave the client process)."""
    defense: DefenseName = "s2nerf"
    """What the client does to the cut gradient (privnerf.privacy.gradient_defense). The default posture
    (s2nerf c = 0.1 with --decoder full and --private-head) keeps the gradient attacks (SMA, replay) at or
    below the constant colour on lego 400 for 1.2 dB of utility; it does not stop a server that reads its
    own grids (principal-direction attack 14.9 dB, SA-SMA with one leaked photo 18.0 dB; BENCHMARKS.md,
    "Split learning")."""
    c: float = 0.1
    """Noise scale (s2nerf, s2nerf-light, gaussian): sigma = c * the batch's largest per-sample gradient norm.
    The default is the largest scale measured to keep utility within 1.5 dB on lego (-1.19 dB at c = 0.1 with
    the full decoder, -0.96 dB with the linear one); with the linear decoder c >= 1 early in training fills the
    occupancy grid with noise-born density and slows steps severalfold (BENCHMARKS.md, "Split learning")."""
    r: float = 1.0
    """S²NeRF decay ratio: the noise falls to r times its initial scale at the end of training (1 = constant)."""
    mix: bool = False
    light_fraction: float = 0.25
    prune_ratio: float = 0.9
    clip: float = 0.0
    decoder: Literal["linear", "full", "relu", "none"] = "full"
    """The client's private feature decoder (privnerf.fields.grid_field.GridFieldConfig.decoder): linear (the
    server sends the raw grid values; it decodes density itself and skips empty space), full (the client
    decodes density too, from all grid channels: the server no longer knows the geometry, so it samples
    every ray uniformly, --train.render.samples-per-ray), relu (a server layer Linear(F, cut_width) + ReLU,
    the paper's shape), or none (fixed activations: the server can render the scene itself and no gradient
    defense can hide it)."""
    cut_width: int = 32
    key_cells: int = 0
    """With --decoder full: the client rotates the cut by a secret, slowly varying, position-dependent rotation
    before decoding it (privnerf.fields.keyed; angles on a key_cells-per-axis lattice; 0 = off). The server
    then sends each sample's position. Against the attacks that read the server's grids (principal
    direction, SA-SMA) a single decoder for all of space gives the scene away; see docs/split.md."""
    private_head: bool = True
    """Initialise the client's head from a secret seed instead of the announced one (split training then no
    longer equals centralized training step for step, and the replay attack has no head to replay)."""
    transport: Literal["inproc", "grpc"] = "inproc"
    """inproc: both roles in this process (same bytes, same checks); grpc: the server runs as a separate
    process (started here, or --server to use a running `privnerf split serve`)."""
    server: Optional[str] = None
    """host:port of a running `privnerf split serve` (implies --transport grpc)."""
    experiment: str = "split"
    output: Optional[Path] = None
    steps: int = 3000
    max_time: Optional[float] = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    """Device of the server's half (the client's head is tiny and runs on the CPU)."""
    threads: Optional[int] = None
    resume: bool = False
    eval_max_images: Optional[int] = 8
    """Test views scored for utility and attack (None = all)."""
    background: Optional[Literal["white", "black"]] = None
    attack: AttackConfig = dc_field(default_factory=AttackConfig)
    train: TrainConfig = dc_field(default_factory=TrainConfig)
    """Field, rendering and optimizer settings (steps, seed, device from the top-level flags win)."""

    def train_config(self) -> TrainConfig:
        t = copy.deepcopy(self.train)
        t.data, t.steps, t.max_time, t.seed = self.data, self.steps, self.max_time, self.seed
        t.device, t.threads, t.background = self.device, self.threads, self.background
        t.eval_max_images = self.eval_max_images
        t.field.kind = "grid"
        t.field.grid.decoder = self.decoder
        t.field.grid.cut_width = self.cut_width
        t.field.grid.key_cells = self.key_cells
        if self.decoder == "full":  # the server cannot evaluate the density (it would refuse to skip anyway)
            t.render.skip_empty = False
        t.personal.enabled = False
        # The split client's loss is the colour MSE (privnerf.split.client); sample-level regularisers of
        # the core loss are off so centralized references of a split run train the same objective.
        t.optim.distortion_weight = 0.0
        t.optim.rgb_per_sample_weight = 0.0
        return t

    def defense_config(self) -> DefenseConfig:
        return DefenseConfig(name=self.defense, c=self.c, r=self.r, mix=self.mix,
                             light_fraction=self.light_fraction, prune_ratio=self.prune_ratio, clip=self.clip)
