"""The classic NeRF MLP (Mildenhall et al. 2020): positional encoding, 8x256 layers, a skip at layer 5.

Used as the baseline in benchmarks (``--field.kind vanilla``). It plugs into the same sampler and renderer
as every other field, so a comparison isolates the field.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from privnerf.fields.base import RadianceField, SceneSpace
from privnerf.fields.encoding import positional_encoding


@dataclass
class VanillaFieldConfig:
    width: int = 256
    depth: int = 8
    skip: int = 4
    pos_freqs: int = 10
    dir_freqs: int = 4


class VanillaField(RadianceField):
    def __init__(self, cfg: VanillaFieldConfig, aabb: torch.Tensor, contraction: bool):
        super().__init__()
        self.cfg = cfg
        self.space = SceneSpace(aabb, contraction)
        in_pos = 3 * (2 * cfg.pos_freqs + 1)
        self.layers = nn.ModuleList()
        d = in_pos
        for i in range(cfg.depth):
            self.layers.append(nn.Linear(d, cfg.width))
            d = cfg.width + (in_pos if i == cfg.skip else 0)
        self.sigma_out = nn.Linear(cfg.width, 1)
        self.feature_out = nn.Linear(cfg.width, cfg.width)
        self.rgb_net = nn.Sequential(
            nn.Linear(cfg.width + 3 * (2 * cfg.dir_freqs + 1), cfg.width // 2), nn.ReLU(inplace=True),
            nn.Linear(cfg.width // 2, 3),
        )

    def _trunk(self, xs: torch.Tensor) -> torch.Tensor:
        box = self.space.box  # positional encoding expects roughly [-1, 1]
        enc = positional_encoding((xs - box[0]) / (box[1] - box[0]) * 2 - 1, self.cfg.pos_freqs)
        h = enc
        for i, layer in enumerate(self.layers):
            h = torch.relu(layer(h))
            if i == self.cfg.skip:
                h = torch.cat([h, enc], dim=-1)
        return h

    def density_space(self, xs: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.sigma_out(self._trunk(xs))[:, 0] - 1.0)

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._trunk(self.space(x))
        sigma = nn.functional.softplus(self.sigma_out(h)[:, 0] - 1.0)
        rgb = torch.sigmoid(self.rgb_net(torch.cat([self.feature_out(h), positional_encoding(d, self.cfg.dir_freqs)], -1)))
        return sigma, rgb
