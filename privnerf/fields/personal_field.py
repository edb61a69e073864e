"""The personal field (DecentNeRF's personal MLP, NeRF-W's transient field) and per-image appearance codes.

A user's photos show the shared scene plus personal content (the friend who poses in every shot, passers-by).
DecentNeRF gives each user a *personal* field that explains what the global field cannot; it never leaves
the device. NeRF-W's transient head takes the static trunk's features and a per-image embedding and returns a
transient density, colour and an uncertainty beta. We keep that interface and make it CPU-cheap:

* the per-sample network input is ``[personal grid features (F_p), global features (F_g, detached),
  per-image embedding (E)]`` -> one hidden layer -> ``gate, rgb (3), beta``. A grid of personal features
  gives the position information that the PE trunk gives NeRF-W (our global features are not trained in
  empty space, where people stand, so they alone cannot locate a person).
* density ``sigma_t(x, i) = softplus(raw_t(x) + shift) * sigmoid(gate(x, i))``: the grid term is an upper bound
  over all images, which the occupancy grid and sample culling use (a per-image MLP density could not be
  bounded cheaply); the per-image gate selects which personal content appears in image ``i``.
* global features are detached (decision): the global field learns only through its own share of the
  rendering, never through the personal head, which removes one path for personal content into the
  weights that leave the device.

Appearance (decision): NeRF-W feeds a 48-d appearance embedding to the colour MLP; our colour network runs
once per ray on composited features, so a per-image affine colour map (3 log-gains + 3 offsets, identity at
start) plays that role. Codes are per image and stay on the client; evaluation renders use identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from privnerf.fields.encoding import DenseGrid, softplus_shift_for_alpha


@dataclass
class PersonalFieldConfig:
    enabled: bool = False
    """Train a personal field (NeRF-W transient head) next to the global field, with the NeRF-W loss."""
    resolution: int = 48
    """Personal grid points along the longest axis of the field's box (personal content is coarse)."""
    feature_dim: int = 8
    embed_dim: int = 16
    """Per-image personal embedding (NeRF-W's transient embedding; 16 as in NeRF-W)."""
    hidden: int = 32
    beta_min: float = 0.1
    """Floor on the composited uncertainty (nerf_pl's default for Blender data)."""
    lambda_u: float = 0.01
    """Weight of the personal-density sparsity term (NeRF-W's lambda_u)."""
    alpha_init: float = 1e-3
    """Opacity of an untouched personal voxel over one render step."""
    appearance: bool = True
    """Per-image affine colour codes (kept on the client)."""
    lr_grid: float = 0.05
    lr_mlp: float = 1e-3
    exclude_alpha: float = 0.0
    """Federated clients: the personal density is zero wherever the received aggregate's opacity over one render
    step exceeds this (0 = off). People stand where the aggregate is empty; the object's detail lies where it is
    occupied, and a personal field allowed there re-renders that detail for its user's views (decision and
    measurement: docs/decentnerf.md, "Giving the global steps back"). With it on, rendering takes the unfused
    march-then-cull path (the fused CPU kernel reads the personal grid itself and knows no exclusion)."""


class PersonalField(nn.Module):
    """Personal density, colour and uncertainty for the images of one user (or of one NeRF-W scene).

    Args:
        cfg: the configuration.
        box: ``(2, 3)`` the global field's working box (the personal grid spans the same box).
        num_images: images with their own embedding.
        global_dim: width of the global field's per-sample features.
        step_size: render step at the start (sets the density shift so empty voxels are nearly transparent).
    """

    def __init__(self, cfg: PersonalFieldConfig, box: torch.Tensor, num_images: int, global_dim: int,
                 step_size: float):
        super().__init__()
        self.cfg = cfg
        extent = (box[1] - box[0]).clamp(min=1e-6)
        res = [max(int(round(float(cfg.resolution * e / extent.max()))), 2) for e in extent]
        self.shift = softplus_shift_for_alpha(cfg.alpha_init, step_size)
        self.density_grid = DenseGrid(res, 1, box, init=0.0)
        self.feature_grid = DenseGrid(res, cfg.feature_dim, box, init="normal")
        self.embedding = nn.Embedding(num_images, cfg.embed_dim)
        nn.init.normal_(self.embedding.weight, std=0.01)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.feature_dim + global_dim + cfg.embed_dim, cfg.hidden), nn.ReLU(inplace=True),
            nn.Linear(cfg.hidden, 5),
        )
        # start with the gate open (the grid decides) and a neutral colour
        with torch.no_grad():
            self.mlp[-1].bias.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0, 0.0]))
        self.appearance = nn.Parameter(torch.zeros(num_images, 6)) if cfg.appearance else None
        self._exclusion = None

    def set_exclusion(self, occ) -> None:
        """Zero the personal density inside the occupied cells of ``occ`` (an OccupancyGrid over the global
        field, built from the received aggregate; ``None`` lifts it). Not part of the state: the client rebuilds
        it from each round's aggregate."""
        object.__setattr__(self, "_exclusion", occ)  # not a submodule: no state_dict entry

    @property
    def exclusion(self):
        """The OccupancyGrid set by :meth:`set_exclusion`, or ``None``."""
        return self._exclusion

    def grids(self) -> list[DenseGrid]:
        return [self.density_grid, self.feature_grid]

    def _inside(self, xs: torch.Tensor) -> torch.Tensor:
        box = self.density_grid.aabb
        return ((xs >= box[0]) & (xs <= box[1])).all(dim=-1)

    def density_bound(self, xs: torch.Tensor) -> torch.Tensor:
        """Upper bound over images of the personal density at working-box points ``(m, 3)`` → ``(m,)``."""
        raw = self.density_grid(xs)[:, 0]
        keep = self._inside(xs)
        if self._exclusion is not None:
            keep = keep & ~self._exclusion.query(xs)
        return nn.functional.softplus(raw + self.shift) * keep

    def forward(self, xs: torch.Tensor, global_feat: torch.Tensor, image: torch.Tensor):
        """Personal density ``(m,)``, colour ``(m, 3)`` and uncertainty ``(m,)`` at working-box points.

        Args:
            xs: ``(m, 3)`` points in the working box.
            global_feat: ``(m, F_g)`` the global field's features there (detached here).
            image: ``(m,)`` long, the image each sample's ray comes from.
        """
        bound = self.density_bound(xs)
        h = torch.cat([self.feature_grid(xs), global_feat.detach(), self.embedding(image)], dim=-1)
        out = self.mlp(h)
        sigma = bound * torch.sigmoid(out[:, 0])
        rgb = torch.sigmoid(out[:, 1:4])
        beta = nn.functional.softplus(out[:, 4])
        return sigma, rgb, beta

    def apply_appearance(self, rgb: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """Per-image affine colour map ``rgb * exp(g) + b`` on ``(n, 3)`` ray colours (identity if ``image`` is None)."""
        if self.appearance is None or image is None:
            return rgb
        code = self.appearance[image]
        return rgb * torch.exp(code[:, :3]) + code[:, 3:]
