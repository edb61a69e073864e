"""Pixel features that pick JacobiNeRF's positives, without downloads.

The paper compares rays by DINO ViT-S/8 descriptors, which cannot be fetched here. We use what ships
offline: the ImageNet AlexNet conv trunk whose weights the project already converts for LPIPS
(:mod:`privnerf.eval.lpips_weights`, ``make setup``), as hypercolumns, optionally with the pixel's colour
and its image position. Per image the conv maps are kept at their own resolution and read bilinearly at
the sampled pixels (:meth:`PixelFeatures.lookup`), so memory stays small at any image size.

A feature vector: for each chosen layer its channels L2-normalised and scaled by ``1 / sqrt(layers)``, then
``colour_weight`` times the RGB (centred, unit length) and ``position_weight`` times ``(u / W, v / H)``
centred; the whole vector L2-normalised (the loss compares by cosine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class FeatureConfig:
    layers: tuple[int, ...] = (2, 3, 4)
    """AlexNet ReLU taps (0-4: conv1-conv5) in the hypercolumn; empty: colour (and position) alone."""
    load_size: int = 320
    """Images are resized so their shorter side has this many pixels before the trunk (conv1 has stride 4;
    the paper's DINO ran at 360)."""
    colour_weight: float = 0.0
    position_weight: float = 0.0


class PixelFeatures:
    """Feature maps of a list of images ``(H, W, 3)`` in [0, 1]; :meth:`lookup` returns unit features."""

    def __init__(self, images: list, cfg: FeatureConfig | None = None, device: str | torch.device = "cpu"):
        self.cfg = cfg = cfg or FeatureConfig()
        if any(not 0 <= k <= 4 for k in cfg.layers):
            raise ValueError(f"feature layers are AlexNet taps 0-4, got {cfg.layers}")
        self.images = [torch.as_tensor(np.asarray(im, np.float32)) for im in images]
        self.maps: list[list[torch.Tensor]] = []
        if cfg.layers:
            from privnerf.eval.lpips import get_model

            model = get_model(device)
            with torch.no_grad():
                for im in self.images:
                    h, w = im.shape[:2]
                    s = cfg.load_size / min(h, w)
                    x = im.permute(2, 0, 1)[None].to(device)
                    x = F.interpolate(x, size=(max(int(round(h * s)), 64), max(int(round(w * s)), 64)),
                                      mode="bilinear", align_corners=False)
                    taps = model._taps((2 * x - 1 - model.shift) / model.scale)
                    self.maps.append([F.normalize(taps[k], dim=1)[0].cpu() for k in cfg.layers])

    @property
    def dim(self) -> int:
        return int(self.lookup(torch.zeros(1, dtype=torch.long), torch.zeros(1), torch.zeros(1)).shape[1])

    def lookup(self, image: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Unit features ``(n, d)`` at pixel centres ``(u, v)`` (column, row) of images ``image`` ``(n,)``."""
        c = self.cfg
        n = image.shape[0]
        parts = []
        if c.layers:
            cols = [torch.zeros(n, m.shape[0]) for m in self.maps[0]]
            for i in torch.unique(image).tolist():
                sel = (image == i).nonzero().squeeze(1)
                h, w = self.images[i].shape[:2]
                # pixel centres -> [-1, 1] (align_corners=False convention: the map covers the whole image)
                grid = torch.stack([(u[sel].float() + 0.5) / w * 2 - 1, (v[sel].float() + 0.5) / h * 2 - 1], -1)
                for k, m in enumerate(self.maps[i]):
                    cols[k][sel] = F.grid_sample(m[None], grid[None, None], mode="bilinear",
                                                 align_corners=False)[0, :, 0].T
            scale = 1.0 / np.sqrt(len(c.layers))
            parts += [F.normalize(col, dim=-1) * scale for col in cols]
        if c.colour_weight > 0 or not c.layers:
            rgb = torch.stack([self.images[int(i)][int(y), int(x)] for i, x, y in zip(image, u, v)])
            parts.append(F.normalize(rgb - 0.5, dim=-1) * max(c.colour_weight, 1e-6 if c.layers else 1.0))
        if c.position_weight > 0:
            hw = torch.tensor([[self.images[int(i)].shape[1], self.images[int(i)].shape[0]] for i in image], dtype=torch.float32)
            parts.append((torch.stack([u.float(), v.float()], -1) / hw - 0.5) * c.position_weight)
        return F.normalize(torch.cat(parts, -1), dim=-1)


__all__ = ["FeatureConfig", "PixelFeatures"]
