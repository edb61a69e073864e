"""The default field: DVGO-style dense voxel grids with a small colour MLP, fast on the CPU.

Why this design (measured, see BENCHMARKS.md "Field choice"): on two CPU cores the cost of a step is
dominated by interpolation and its backward. A dense channel-last grid needs 8 contiguous row reads per
sample, which our compiled kernel does ~5x faster than ``grid_sample`` and far faster than a 16-level hash
grid (128 scattered reads per sample). Its weakness, memory and full-size optimizer updates, is handled by
(a) growing the grid during training, (b) shrinking the box, once, to the occupied region (connected
components of the occupancy grid, so floaters do not hold it open) once the model has formed, and (c) the
sparse Adam that touches only voxels a batch hit.

Density: ``softplus(raw + shift)`` with ``shift`` set so an untouched voxel is nearly transparent.

Colour uses deferred view-dependent shading (SNeRG, Hedman et al. 2021): each sample gives a diffuse colour
``sigmoid(f[:3])`` and specular features ``f[3:]``; both are alpha-composited along the ray, and a small MLP
on ``[composited diffuse, composited specular features, PE(direction)]`` adds a view-dependent residual once
per *ray*. A per-sample MLP costs ~5 us per sample on two cores (measured: small-K matmuls run at ~24
GFLOP/s there), and a batch shades 50-400 thousand samples but only 4096 rays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from privnerf.fields.base import RadianceField, SceneSpace
from privnerf.fields.encoding import DenseGrid, positional_encoding, read_grids, softplus_shift_for_alpha
from privnerf.fields.keyed import KeyedRotation


def resolution_for(aabb: torch.Tensor, num_voxels: int) -> tuple[int, int, int]:
    """Grid points per axis for about ``num_voxels`` cubic voxels filling ``aabb`` ``(2, 3)``."""
    extent = (aabb[1] - aabb[0]).clamp(min=1e-6)
    size = (extent.prod() / num_voxels) ** (1 / 3)
    return tuple(max(int(round(float(e / size))) + 1, 2) for e in extent)


@dataclass
class GridFieldConfig:
    num_voxels: int = 0
    """Voxels at the end of training; 0 = automatic: voxels of ``voxel_pixels`` pixel footprints at the
    scene centre (camera distance / focal), in the box as it is at each growth stage, at most ``max_voxels``."""
    voxel_pixels: float = 1.3
    max_voxels: int = 256**3
    num_voxels_start: int = 64**3
    """Voxels at the start; the grid grows geometrically to ``num_voxels`` at the ``grow_at`` points."""
    grow_at: tuple[float, ...] = (0.05, 0.12, 0.2, 0.3)
    """Training progress fractions at which the grid grows."""
    shrink_at_growth: int = 2
    """From this growth stage on (1-based; 0 = never) the box shrinks, once, to the content seen by the
    occupancy grid: at the first such stage reached after ``shrink_after_steps`` steps."""
    shrink_after_steps: int = 400
    """No shrink before this many steps: an immature model's content box cuts off what has not formed yet
    (measured on the built-in scene at step 49: the objects' upper halves were not yet opaque and were cut)."""
    shrink_min_alpha: float = 0.05
    """Opacity over one render step that counts as content when shrinking the box."""
    feature_dim: int = 12
    mlp_width: int = 64
    mlp_depth: int = 2
    dir_freqs: int = 4
    alpha_init: float = 1e-2
    """Opacity of an untouched voxel over one render step."""
    decoder: Literal["none", "linear", "full", "relu"] = "none"
    """A learned per-sample feature decoder before the fixed activations, for split learning (privnerf.split),
    so the server's grids mean nothing without the client's half. none: the core field. linear: the client
    decodes the raw features with ``Linear(F, F)`` (random orthogonal initialisation). full: the client
    decodes density *and* features from all ``1 + F`` grid channels with ``Linear(1 + F, 1 + F)`` (random
    orthogonal), so no grid channel is the density and the server cannot tell empty space from content (it
    then cannot skip empty space either: ``render.skip_empty`` must be off where the decoder is unknown). relu: the server
    applies ``Linear(F, cut_width) + ReLU`` and the client ``Linear(cut_width, F)`` (the paper's shape: a
    64-d post-ReLU cut; S²NeRF's ``mix`` noise needs its dead ReLUs)."""
    cut_width: int = 32
    """Width of the ``relu`` decoder's cut."""
    cut_init_std: float = 1e-2
    """``relu`` decoder: standard deviation of the feature grid's initial values (all-zero features would sit
    at the ReLU's kink, where no gradient passes)."""
    key_cells: int = 0
    """``full`` decoder only: rotate the cut by a secret position-dependent rotation before decoding it
    (:class:`~privnerf.fields.keyed.KeyedRotation`, angles on a ``key_cells``-per-axis lattice); 0 = off. A
    client-held secret against the split attacks that read the server's grids (docs/split.md,
    benchmarks/keyed_decoder.py); the split server then sends each sample's position with its activation."""
    key_layers: int = 3
    """Rounds of Givens rotations in the key (each over a random pairing of the channels)."""


def make_rgb_net(cfg: GridFieldConfig) -> nn.Sequential:
    """The per-ray view-dependent head: ``[composited features, PE(direction)]`` → RGB residual."""
    in_dim = cfg.feature_dim + 3 * (2 * cfg.dir_freqs + 1)
    layers: list[nn.Module] = []
    for _ in range(cfg.mlp_depth):
        layers += [nn.Linear(in_dim, cfg.mlp_width), nn.ReLU(inplace=True)]
        in_dim = cfg.mlp_width
    layers.append(nn.Linear(in_dim, 3))
    return nn.Sequential(*layers)


class FullDecoder(nn.Linear):
    """``Linear(1 + F, 1 + F)`` over the whole cut (density logit and features): the ``full`` decoder. A type of
    its own so :func:`decode_cut` knows the density is decoded too; parameters are named as a Linear's."""


def make_feature_out(cfg: GridFieldConfig) -> nn.Module | None:
    """The client half of the feature decoder (``None`` for the core field)."""
    if cfg.decoder == "relu":
        return nn.Linear(cfg.cut_width, cfg.feature_dim)
    if cfg.decoder in ("linear", "full"):
        k = cfg.feature_dim + (cfg.decoder == "full")
        layer = (FullDecoder if cfg.decoder == "full" else nn.Linear)(k, k)
        with torch.no_grad():
            nn.init.orthogonal_(layer.weight)
            layer.bias.zero_()
        return layer
    if cfg.decoder != "none":
        raise ValueError(f"unknown grid decoder {cfg.decoder!r} (none, linear, full, relu)")
    return None


def make_key(cfg: GridFieldConfig, box: torch.Tensor | None) -> KeyedRotation | None:
    """The client's secret rotation of the cut (``None`` unless ``key_cells``) over the working ``box`` (or one
    placed later); drawn from the global generator after every other part of the head, so the head's other
    weights do not depend on whether it has a key."""
    if cfg.key_cells <= 0:
        return None
    if cfg.decoder != "full":
        raise ValueError("--field.grid.key-cells needs --field.grid.decoder full (the key rotates the density too)")
    return KeyedRotation(1 + cfg.feature_dim, cfg.key_cells, box, cfg.key_layers)


def decode_cut(h: torch.Tensor, shift: float, feature_out: nn.Module | None = None,
               key: KeyedRotation | None = None, xs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut activation ``(m, 1 + C)`` → density ``(m,)`` and the values composited along rays ``(m, F)``
    (diffuse colour ``sigmoid(f[:, :3])``, then specular features; ``f = feature_out(h[:, 1:])`` when the field
    has a feature layer, else ``h[:, 1:]``; a :class:`FullDecoder` maps all of ``h`` to ``[density logit, f]``).
    With a client ``key`` the cut is first rotated by position, which needs the samples' working-box points
    ``xs (m, 3)``. The field and a split client's head both decode through here."""
    if key is not None:
        if xs is None or xs.shape[0] != h.shape[0]:
            raise ValueError("a keyed head decodes by position: it needs the sample positions xs "
                             f"({h.shape[0]} samples, positions {None if xs is None else tuple(xs.shape)})")
        h = key(h, xs)
    if isinstance(feature_out, FullDecoder):
        h, feature_out = feature_out(h), None
    sigma = nn.functional.softplus(h[:, 0] + shift)
    f = h[:, 1:] if feature_out is None else feature_out(h[:, 1:])
    return sigma, torch.cat([torch.sigmoid(f[:, :3]), f[:, 3:]], dim=-1)


def deferred_shading(rgb_net: nn.Module, dir_freqs: int, composited: torch.Tensor, opacity: torch.Tensor,
                     dirs: torch.Tensor) -> torch.Tensor:
    """Ray colour ``(r, 3)`` from composited values ``(r, F)``, opacity ``(r,)`` and directions ``(r, 3)``."""
    h = torch.cat([composited, positional_encoding(dirs, dir_freqs)], dim=-1)
    # the residual fades with opacity so empty rays show exactly the background
    return composited[:, :3] + opacity[:, None] * rgb_net(h)


class GridField(RadianceField):
    def __init__(self, cfg: GridFieldConfig, aabb: torch.Tensor, contraction: bool, step_size: float,
                 pixel_footprint: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.pixel_footprint = pixel_footprint
        self.space = SceneSpace(aabb, contraction)
        box = self.space.box
        res = resolution_for(box, cfg.num_voxels_start)
        self.shift = softplus_shift_for_alpha(cfg.alpha_init, step_size)
        self.density_grid = DenseGrid(res, 1, box, init=0.0)
        self.feature_grid = DenseGrid(res, cfg.feature_dim, box, init=0.0)
        if cfg.feature_dim < 4:
            raise ValueError("grid field feature_dim must be >= 4 (3 diffuse colour channels + specular features)")
        self.rgb_net = make_rgb_net(cfg)
        # Built in this order (after rgb_net) so a split client seeding like Trainer gets the same weights.
        self.feature_out = make_feature_out(cfg)
        self.feature_in = (nn.Sequential(nn.Linear(cfg.feature_dim, cfg.cut_width, bias=False), nn.ReLU())
                           if cfg.decoder == "relu" else None)
        if self.feature_in is not None:
            # drawn last, so the heads above keep their seeded initialisation
            with torch.no_grad():
                self.feature_grid.data.normal_(0.0, cfg.cut_init_std)
        self.key = make_key(cfg, box)
        self.register_buffer("grow_count", torch.zeros((), dtype=torch.long))

    def grids(self) -> list[DenseGrid]:
        return [self.density_grid, self.feature_grid]

    cheap_density = True

    def _inside(self, xs: torch.Tensor) -> torch.Tensor:
        box = self.density_grid.aabb
        return ((xs >= box[0]) & (xs <= box[1])).all(dim=-1)

    @property
    def density_is_grid(self) -> bool:
        """Whether the density grid alone gives the density (the fused march-and-cull kernel reads it)."""
        return not isinstance(self.feature_out, FullDecoder)

    def density_space(self, xs: torch.Tensor) -> torch.Tensor:
        if isinstance(self.feature_out, FullDecoder):
            return decode_cut(self.encode_space(xs), self.shift, self.feature_out, self.key, xs)[0] * self._inside(xs)
        return self.grid_density(xs)

    def grid_density(self, xs: torch.Tensor) -> torch.Tensor:
        """Density ``(n,)`` from the density grid alone at working-box points ``(n, 3)`` (every decoder but
        the full one reads density there)."""
        raw = self.density_grid(xs)[:, 0]
        # Outside the (possibly shrunk) grid box space is empty, not the clamped border value.
        return nn.functional.softplus(raw + self.shift) * self._inside(xs)

    @property
    def cut_channels(self) -> int:
        """Channels of :meth:`encode_space`'s output: density logit + features (``cut_width`` or ``feature_dim``)."""
        return 1 + (self.cfg.cut_width if self.cfg.decoder == "relu" else self.cfg.feature_dim)

    def encode_space(self, xs: torch.Tensor) -> torch.Tensor:
        """The server part of the field: working-box points ``(n, 3)`` → ``(n, cut_channels)``: the density
        logit, then the raw features (or, with ``cut_width``, the feature layer's ReLU output). Split learning
        cuts the field here (privnerf.split)."""
        return self.cut_of(*read_grids([self.density_grid, self.feature_grid], xs))

    def cut_of(self, density_raw: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """:meth:`encode_space` from the density and feature grids' values ``(n, 1)``, ``(n, feature_dim)``."""
        if self.feature_in is not None:
            feat = self.feature_in(feat)
        return torch.cat([density_raw, feat], dim=-1)

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs = self.space(x)
        sigma, values = decode_cut(self.encode_space(xs), self.shift, self.feature_out, self.key, xs)
        # Outside the (possibly shrunk) grid box space is empty, not the clamped border value.
        return sigma * self._inside(xs), values

    def finish(self, composited: torch.Tensor, opacity: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        return deferred_shading(self.rgb_net, self.cfg.dir_freqs, composited, opacity, dirs)

    # -- progressive growth ---------------------------------------------------------------------------
    def final_voxels(self, box: torch.Tensor) -> int:
        if self.cfg.num_voxels > 0:
            return self.cfg.num_voxels
        if not self.pixel_footprint or self.space.contraction:
            return min(160**3, self.cfg.max_voxels)
        size = self.cfg.voxel_pixels * self.pixel_footprint
        volume = float((box[1] - box[0]).prod())
        return int(min(max(volume / size**3, self.cfg.num_voxels_start), self.cfg.max_voxels))

    def target_voxels(self, stage: int, box: torch.Tensor) -> int:
        n = len(self.cfg.grow_at)
        final = self.final_voxels(box)
        ratio = (final / self.cfg.num_voxels_start) ** (stage / max(n, 1))
        return int(self.cfg.num_voxels_start * ratio)

    def pending_growth(self, progress: float) -> bool:
        k = int(self.grow_count)
        return k < len(self.cfg.grow_at) and progress >= self.cfg.grow_at[k]

    @torch.no_grad()
    def grow(self, box: torch.Tensor | None = None) -> None:
        """Advance one growth stage; ``box`` (in the grid's space) replaces the grid's box if given."""
        self.grow_count += 1
        box = self.density_grid.aabb if box is None else box
        res = resolution_for(box, self.target_voxels(int(self.grow_count), box))
        for g in self.grids():
            g.resample(res, box)
