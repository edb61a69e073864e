"""Training pixels and the rays through them."""

from __future__ import annotations

import numpy as np
import torch

from privnerf.data.cameras import rays_from_pixels
from privnerf.data.scene import Scene


class PixelSampler:
    """All training pixels of a scene, sampled uniformly at random.

    Stores colours flat, ``(P, 3)`` float32, plus per-image cameras; rays are generated per batch from
    ``(image, u, v)``, so only coordinates are needed to ask for a ray (which split learning relies on).
    """

    def __init__(self, scene: Scene, device: torch.device, exclude: list[np.ndarray] | None = None):
        sizes = [h * w for h, w in (scene.hw(i) for i in range(scene.num_views))]
        self.offsets = torch.tensor(np.cumsum([0] + sizes), dtype=torch.long)
        self.widths = torch.tensor([scene.hw(i)[1] for i in range(scene.num_views)], dtype=torch.long)
        self.rgb = torch.from_numpy(np.concatenate([im.reshape(-1, 3) for im in scene.images]).astype(np.float32))
        self.c2w = torch.from_numpy(scene.c2w).float()
        self.intrinsics = torch.from_numpy(scene.intrinsics).float()
        self.device = device
        self.num_pixels = int(self.offsets[-1])
        self.pool: torch.Tensor | None = None
        """Flat indices of the pixels that may be drawn (``None``: all). With ``exclude`` (one boolean ``(H_i,
        W_i)`` mask per view, True = never train on it) the masked pixels are never sampled: DecentNeRF's
        private masks (a user's own person, found on the device) keep them out of every loss and upload."""
        if exclude is not None:
            if len(exclude) != scene.num_views:
                raise ValueError(f"exclude: {len(exclude)} masks for {scene.num_views} views")
            for i, m in enumerate(exclude):
                if np.shape(m) != tuple(scene.hw(i)):
                    raise ValueError(f"exclude: mask {i} is {np.shape(m)}, view {i} is {scene.hw(i)}")
            keep = ~np.concatenate([np.asarray(m, bool).reshape(-1) for m in exclude])
            if not keep.any():
                raise ValueError("exclude: every pixel is masked; nothing left to train on")
            self.pool = torch.from_numpy(np.flatnonzero(keep))

    def locate(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat pixel index ``(n,)`` → image index, column u, row v."""
        img = torch.searchsorted(self.offsets, flat, right=True) - 1
        rem = flat - self.offsets[img]
        w = self.widths[img]
        return img, rem % w, rem // w

    def rays(self, img: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
        o, d, _ = rays_from_pixels(self.c2w[img], self.intrinsics[img], u, v)
        return o.to(self.device), d.to(self.device)

    def sample(self, n: int, generator: torch.Generator, with_image: bool = False):
        """``n`` random pixels → origins ``(n, 3)``, directions ``(n, 3)``, target colours ``(n, 3)`` (and, with
        ``with_image``, the image index of each ray ``(n,)``, which per-image embeddings need)."""
        if self.pool is None:
            flat = torch.randint(0, self.num_pixels, (n,), generator=generator)
        else:
            flat = self.pool[torch.randint(0, len(self.pool), (n,), generator=generator)]
        img, u, v = self.locate(flat)
        o, d = self.rays(img, u, v)
        if with_image:
            return o, d, self.rgb[flat].to(self.device), img.to(self.device)
        return o, d, self.rgb[flat].to(self.device)
