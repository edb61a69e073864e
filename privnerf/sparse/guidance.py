"""HG3-NeRF sparse-view guidance on the one :class:`~privnerf.train.trainer.Trainer`.

:class:`HG3Trainer` changes two things of a plain training step, nothing else:

* the batch (:meth:`HG3Trainer.sample_batch`): ``batch_rays`` rays made of uniformly random pixels, then one
  ``patch x patch`` patch (HPG / HSG; its pixel stride goes coarse to fine over training), then a fixed share
  ``prior_share`` of pixels that carry a sparse depth prior (HGG, or the depth-loss ablation);
* the samples of the prior rays (:meth:`HG3Trainer.render_batch`): stratified in a band around the prior depth
  that widens from local to global (:func:`privnerf.sparse.losses.band_radius`), without the occupancy grid;
  the other rays take the plain marcher. Once the band is global, every ray is marched as usual.

The loss is the trainer's own (colour MSE over the whole batch, distortion, ...) plus, on the patch, the
multi-scale colour term (HPG) and the AlexNet feature term (HSG, LPIPS's trunk in place of the paper's CLIP),
added in :meth:`HG3Trainer.compute_loss`. With every component off the trainer is the plain one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from privnerf.data.scene import Scene
from privnerf.render.renderer import RenderSettings, cull_samples, select_samples, shade
from privnerf.render.sampler import Samples
from privnerf.sparse.losses import band_radius, band_samples, multiscale_mse, semantic_distance
from privnerf.sparse.points import SparsePrior
from privnerf.train.config import TrainConfig
from privnerf.train.trainer import Trainer


@dataclass
class HG3Config:
    """HG3-NeRF guidance (``privnerf sparse train --hg3.*``). Defaults: all three components on."""

    depth: bool = True
    """HGG: sample prior rays in a band around their sparse-point depth (needs a prior)."""
    depth_loss: float = 0.0
    """Ablation: instead of (or with) the band, an L1 loss on prior rays' rendered depth relative to the prior
    depth, with this weight (0: off)."""
    prior_share: float = 0.125
    """Share of each batch drawn from prior pixels (they are few: fern 3 views ~1,500, lego 8 views ~150)."""
    band_start: float = 0.05
    """Band half-width at the start, as a fraction of the prior depth."""
    band_global_at: float = 0.5
    """Training progress at which the band has grown to the whole ray; from then on prior rays march normally."""
    band_max_samples: int = 64
    """At most this many stratified samples per band (fewer when the band is shorter than that many steps)."""
    photometric: bool = True
    """HPG: colour MSE of the patch at several scales."""
    scales: tuple[int, ...] = (1, 2, 4)
    """Average-pooling factors of HPG."""
    photometric_weight: float = 0.5
    semantic: bool = True
    """HSG: AlexNet (LPIPS trunk) feature distance between the rendered and the true patch (not CLIP)."""
    semantic_weight: float = 0.02
    semantic_taps: tuple[int, ...] = (0, 1, 2)
    """AlexNet ReLU taps compared (0-4: conv1-conv5)."""
    patch: int = 32
    """Patch side in rays (``patch**2`` rays of each batch)."""
    patch_strides: tuple[int, ...] = (4, 2, 1)
    """Pixel stride of the patch over equal thirds of training: coarse (a wide view at low resolution) to fine."""

    @property
    def uses_prior(self) -> bool:
        return self.depth or self.depth_loss > 0

    @property
    def uses_patch(self) -> bool:
        return self.photometric or self.semantic

    @property
    def active(self) -> bool:
        return self.uses_prior or self.uses_patch


class HG3Trainer(Trainer):
    """A :class:`Trainer` with HG3 guidance. ``prior`` is needed when ``hg3.depth`` or ``hg3.depth_loss``."""

    def __init__(self, cfg: TrainConfig, scene: Scene, run_dir=None, hg3: HG3Config | None = None,
                 prior: SparsePrior | None = None):
        super().__init__(cfg, scene, run_dir)
        self.hg3 = hg3 = hg3 or HG3Config()
        if hg3.uses_prior:
            if prior is None:
                raise ValueError("--hg3.depth / --hg3.depth-loss need a sparse depth prior (--prior)")
            prior.check(scene)
            if not 0 < hg3.prior_share < 1:
                raise ValueError(f"--hg3.prior-share {hg3.prior_share}: expected a share in (0, 1)")
        self.prior = prior
        n = cfg.optim.batch_rays
        self.n_patch = hg3.patch ** 2 if hg3.uses_patch else 0
        self.n_prior = int(round(hg3.prior_share * n)) if hg3.uses_prior else 0
        self.n_random = n - self.n_patch - self.n_prior
        if self.n_random < 0:
            raise ValueError(f"--optim.batch-rays {n} is smaller than the patch ({self.n_patch} rays) plus the prior "
                             f"share ({self.n_prior} rays)")
        if hg3.uses_patch:
            for s in hg3.scales:
                if s < 1 or hg3.patch % s:
                    raise ValueError(f"--hg3.scales {hg3.scales}: {s} does not divide --hg3.patch {hg3.patch}")
            if not hg3.patch_strides or min(hg3.patch_strides) < 1:
                raise ValueError(f"--hg3.patch-strides {hg3.patch_strides}: expected positive strides")
            for i in range(scene.num_views):
                h, w = scene.hw(i)
                if min(h, w) < hg3.patch:
                    raise ValueError(f"--hg3.patch {hg3.patch} is larger than view {i} ({w}x{h})")
        self._semantic_model = None
        if hg3.semantic:
            from privnerf.eval.lpips import get_model

            self._semantic_model = get_model(self.device)
        self._batch_info: dict | None = None
        self.guidance_stats: dict[str, float] = {}

    # -- batches ------------------------------------------------------------------------------------
    def patch_stride(self) -> int:
        strides = self.hg3.patch_strides
        return int(strides[min(int(self.progress() * len(strides)), len(strides) - 1)])

    def sample_batch(self):
        if not self.hg3.active:
            return super().sample_batch()
        px, g = self.pixels, self.generator
        flats = [torch.randint(0, px.num_pixels, (self.n_random,), generator=g)]
        info: dict = {"n": self.cfg.optim.batch_rays}
        if self.n_patch:
            p = self.hg3.patch
            stride = self.patch_stride()
            view = int(torch.randint(0, self.scene.num_views, (1,), generator=g))
            h, w = self.scene.hw(view)
            stride = max(1, min(stride, (min(h, w) - 1) // max(p - 1, 1)))
            span = (p - 1) * stride
            u0 = int(torch.randint(0, w - span, (1,), generator=g))
            v0 = int(torch.randint(0, h - span, (1,), generator=g))
            ar = torch.arange(p) * stride
            vv, uu = torch.meshgrid(v0 + ar, u0 + ar, indexing="ij")
            flats.append(px.offsets[view] + vv.reshape(-1) * w + uu.reshape(-1))
            info["patch"] = (self.n_random, self.n_random + self.n_patch)
            info["stride"] = stride
        if self.n_prior:
            pr = self.prior
            pick = torch.randint(0, len(pr), (self.n_prior,), generator=g).numpy()
            view = torch.from_numpy(pr.view[pick])
            w = px.widths[view]
            flats.append(px.offsets[view] + torch.from_numpy(pr.v[pick]) * w + torch.from_numpy(pr.u[pick]))
            info["prior"] = (self.n_random + self.n_patch, info["n"])
            info["prior_depth"] = torch.from_numpy(pr.depth[pick]).float().to(self.device)
        flat = torch.cat(flats)
        img, u, v = px.locate(flat)
        o, d = px.rays(img, u, v)
        self._batch_info = info
        return o, d, px.rgb[flat].to(self.device)

    # -- rendering (HGG) -----------------------------------------------------------------------------
    def render_batch(self, origins: torch.Tensor, dirs: torch.Tensor, settings: RenderSettings,
                     keep_samples: bool) -> dict[str, torch.Tensor]:
        info = self._batch_info
        if not (self.hg3.depth and info is not None and "prior" in info and info["n"] == origins.shape[0]):
            return super().render_batch(origins, dirs, settings, keep_samples)
        a, b = info["prior"]
        depth = info["prior_depth"]
        radius = band_radius(depth, self.progress(), self.hg3.band_start, self.hg3.band_global_at)
        if not bool(torch.isfinite(radius).any()):  # global: the plain marcher for every ray
            return super().render_batch(origins, dirs, settings, keep_samples)
        main = select_samples(self.field, self.occ, origins[:a], dirs[:a], settings, jitter=True)
        band = band_samples(origins[a:b], dirs[a:b], depth, radius, settings.near, settings.far, self.occ.box,
                            settings.step, self.hg3.band_max_samples, jitter=True, generator=self.generator)
        if self.field.cheap_density:
            band = cull_samples(self.field, origins[a:b], dirs[a:b], band, settings)
        s = Samples(torch.cat([main.ray_idx, band.ray_idx + a]), torch.cat([main.t, band.t]),
                    torch.cat([main.delta, band.delta]))
        self.guidance_stats["band_samples"] = float(len(band))
        return shade(self.field, origins, dirs, s, settings, None, keep_samples)

    # -- loss (HPG, HSG, depth-loss ablation) ---------------------------------------------------------
    def compute_loss(self, batch):
        loss, mse, out = super().compute_loss(batch)
        info = self._batch_info
        if info is None or info["n"] != batch[0].shape[0]:
            return loss, mse, out
        target = batch[2]
        terms: dict[str, torch.Tensor] = {}
        if "patch" in info:
            a, b = info["patch"]
            p = self.hg3.patch
            pred = out["rgb"][a:b].reshape(1, p, p, 3).permute(0, 3, 1, 2)
            gt = target[a:b].reshape(1, p, p, 3).permute(0, 3, 1, 2)
            if self.hg3.photometric:
                terms["hpg"] = self.hg3.photometric_weight * multiscale_mse(pred, gt, self.hg3.scales)
            if self.hg3.semantic:
                terms["hsg"] = self.hg3.semantic_weight * semantic_distance(
                    self._semantic_model, pred.clamp(0, 1), gt, self.hg3.semantic_taps)
        if self.hg3.depth_loss > 0 and "prior" in info:
            a, b = info["prior"]
            d = out["depth"][a:b]
            ok = torch.isfinite(d)
            if bool(ok.any()):
                prior = info["prior_depth"]
                terms["depth"] = self.hg3.depth_loss * ((d[ok] - prior[ok]).abs() / prior[ok]).mean()
        for k, v in terms.items():
            self.guidance_stats[k] = float(v.detach())
            loss = loss + v
        self._batch_info = None
        return loss, mse, out
