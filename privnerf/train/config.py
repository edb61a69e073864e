"""Training configuration: nested dataclasses, exposed on the CLI by tyro (``--optim.batch-rays 8192``)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Literal, Optional

from privnerf.dac.config import DacConfig
from privnerf.fields import FieldConfig
from privnerf.fields.personal_field import PersonalFieldConfig


@dataclass
class RenderConfig:
    step_ratio: float = 0.5
    """Grid fields: render step as a fraction of the current voxel size."""
    samples_per_ray: int = 192
    """Other fields, and grid fields without skip_empty: render step = box diagonal / samples_per_ray."""
    skip_empty: bool = True
    """Empty-space skipping (occupancy grid, weight culling, box shrink). Off, samples lie uniformly in the
    box at diagonal / samples_per_ray spacing and the occupancy grid is never read from the density: for a
    split server that cannot decode density (privnerf.split, ``--decoder full``)."""
    weight_threshold: float = 1e-4
    """Samples with a smaller rendering weight are not shaded (see privnerf.render.renderer)."""
    occ_resolution: int = 128
    occ_threshold: float = 5e-3
    """Occupancy cells whose opacity over one step stays below this are skipped."""
    occ_update_every: int = 16
    occ_warmup_steps: int = 48
    """Refresh the occupancy grid every step before this step."""
    occ_fraction: float = 1.0
    """Share of occupancy cells re-evaluated per update (lower it for costly fields)."""
    chunk: int = 16384
    """Rays per chunk when rendering full images."""
    inference_step_scale: float = 1.5
    """Grid fields: evaluation and rendering march with this multiple of the training step. Measured on
    lego 400 (20 test views, ``benchmarks/render_speed.py``): x1.5 scores the same PSNR to 0.002 dB and
    renders a third faster (3.53 -> 2.43 s per frame); x2 loses 0.006 dB."""


@dataclass
class OptimConfig:
    batch_rays: int = 4096
    lr_density: float = 0.1
    lr_features: float = 0.1
    lr_mlp: float = 1e-3
    lr_final_factor: float = 0.1
    """Learning rates decay exponentially to this factor at the end of training (by steps or time)."""
    tv_weight: float = 0.0
    """Total-variation weight on the density grid (applied every ``tv_every`` steps)."""
    tv_every: int = 16
    distortion_weight: float = 5e-4
    """Weight of mip-NeRF 360's distortion loss (ray distances in units of the render step), which pulls each
    ray's weight into one short interval. Without it lego's surfaces stay a haze (300 s in: a median of 156
    samples between 5% and 95% of a hit ray's weight), and every step shades them all. Measured on lego 400,
    300 s runs, 4 test views (BENCHMARKS.md): 0 -> 24.99 dB, 1e-4 24.92, 5e-4 26.45, 1e-3 26.48 / 25.71
    (two seeds), 3e-3 24.43, 1e-2 23.58. Bounded scenes only: in a contracted scene the far samples' lengths
    have no common unit with the step (not measured there, so off)."""
    rgb_per_sample_weight: float = 0.0
    """Weight of DVGO's per-sample colour loss: ``sum_i w_i |c_i - C|^2`` with ``c_i`` a sample's diffuse colour."""


@dataclass
class OwnershipConfig:
    """White-box ownership signature (IPR-NeRF's sign loss, :mod:`privnerf.ownership.signature`)."""

    key: Optional[str] = None
    """An owner's key file (``privnerf ownership keygen``): its bits are embedded in the signs of the colour
    head's weights while training; ``None``: no signature."""
    margin: float = 0.1
    """Each signed weight is pushed past this magnitude with the owner's sign (DeepIPR's 0.1)."""
    weight: float = 0.1
    """Weight of the hinge sum in the loss."""


@dataclass
class TrainConfig:
    data: str = "builtin"
    """Dataset: 'builtin', a Blender/nerfstudio/LLFF directory, or a tiny-NeRF .npz."""
    method: Literal["plain", "dac"] = "plain"
    """``plain``: one model; ``dac``: divide and conquer (experts per view group, distilled into one student,
    fine-tuned; ``--dac.*``, privnerf.dac). The budget (steps/time) is the total over all phases."""
    output: Optional[Path] = None
    """Run directory (default outputs/<experiment>/<field>/<timestamp>)."""
    experiment: str = "default"
    steps: int = 20000
    """Stop after this many steps..."""
    max_time: Optional[float] = None
    """...or after this many seconds of training (wall clock), whichever comes first; then evaluate."""
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    resume: bool = False
    """Continue from the last checkpoint in --output."""
    seed: int = 0
    background: Optional[Literal["white", "black"]] = None
    """Composite RGBA images on this colour (default: the dataset's convention)."""
    eval_split: str = "test"
    eval_max_images: Optional[int] = None
    """Evaluate on the first N views of the split only (default: all)."""
    eval_every_s: Optional[float] = None
    """Also evaluate (quietly, on eval_curve_images views) every this many training seconds: a PSNR-vs-time curve."""
    eval_curve_images: int = 4
    checkpoint_every_s: float = 120.0
    render_video: bool = False
    """Render an orbit video at the end (the demo does)."""
    threads: Optional[int] = None
    """Torch CPU threads (default: the number of cores)."""
    field: FieldConfig = dc_field(default_factory=FieldConfig)
    personal: PersonalFieldConfig = dc_field(default_factory=PersonalFieldConfig)
    render: RenderConfig = dc_field(default_factory=RenderConfig)
    optim: OptimConfig = dc_field(default_factory=OptimConfig)
    ownership: OwnershipConfig = dc_field(default_factory=OwnershipConfig)
    dac: DacConfig = dc_field(default_factory=DacConfig)


def config_from_dict(d: dict) -> TrainConfig:
    """Inverse of :func:`privnerf.train.trainer.config_to_dict` (unknown keys are an error)."""
    import dataclasses
    import typing

    def build(cls, values):
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            t = hints[f.name]
            if dataclasses.is_dataclass(t):
                v = build(t, v)
            elif f.name == "output" and v is not None:
                v = Path(v)
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
        return cls(**kwargs)

    return build(TrainConfig, d)
