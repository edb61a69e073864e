"""JacobiNeRF's shaping: the contrastive mutual-information gradient loss, and the fine-tune that adds it.

The loss, as the official code computes it (``xxm19/jacobinerf``; ../shared/specs/idobscured_jacobinerf.md
B.5). For a batch of rays with Jacobians ``J_i`` (:func:`privnerf.semantics.jacobian.ray_jacobians`) and
unit pixel features ``f_i`` (:mod:`privnerf.semantics.features`):

* ``e(i, j) = exp(|cos(J_i, J_j)|)`` (no temperature; the absolute cosine because the mutual information of
  two responses under a random weight perturbation, ``-1/2 log(1 - cos²)``, ignores the sign);
* positives ``P_i = {j : f_i . f_j > tau}``, the anchor itself included; negatives: every other ray;
* ``l_i = -log( sum_P e / (sum_P e + sum_N e) )``, averaged over the anchors with a non-empty ``N``;
* ``tau`` adapts once per anchor, in batch order, and carries over between steps: it starts at 0.8, drops
  by 0.001 while an anchor has fewer than ``int(0.05 n)`` positives (down to 0.5), rises by 0.001 while it
  has more than ``int(0.15 n)`` (up to 0.9) (:class:`AdaptiveThreshold`);
* plus ``L_norm = mean_i (|J_i| - 1)²``, so a perturbation step means the same everywhere.

Total during shaping: ``L_rgb + w L_MI + 0.01 L_norm`` on 64 rays a step (the paper's batch; its ``w`` is
0.01, ours 0.03: see :class:`ShapingConfig`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field as dc_field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from privnerf.semantics.features import FeatureConfig, PixelFeatures
from privnerf.semantics.jacobian import DEFAULT_VIEW


class AdaptiveThreshold:
    """The positives' feature-similarity threshold, adapted per anchor (state carried between steps)."""

    def __init__(self, start: float = 0.8, low: float = 0.5, high: float = 0.9, step: float = 0.001,
                 few: float = 0.05, many: float = 0.15, adaptive: bool = True):
        self.value, self.low, self.high, self.step = float(start), low, high, step
        self.few, self.many, self.adaptive = few, many, adaptive

    def per_anchor(self, sim: torch.Tensor) -> torch.Tensor:
        """The threshold each anchor (row of ``sim`` ``(n, n)``) uses, ``(n,)``, updating the state after each."""
        n = sim.shape[0]
        if not self.adaptive:
            return torch.full((n,), self.value, dtype=sim.dtype)
        s = sim.detach().cpu().numpy()
        few, many = int(self.few * n), int(self.many * n)
        out = np.empty(n, np.float64)
        for i in range(n):
            out[i] = self.value
            k = int((s[i] > self.value).sum())
            if k < few and self.value > self.low:
                self.value -= self.step
            elif k > many and self.value < self.high:
                self.value += self.step
        return torch.from_numpy(out).to(sim)

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, st: dict) -> None:
        self.value = float(st["value"])


def mi_gradient_loss(jac: torch.Tensor, feats: torch.Tensor, threshold: AdaptiveThreshold
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """JacobiNeRF's contrastive loss on Jacobians ``jac`` ``(n, ...)`` (flattened per ray) with unit features
    ``feats`` ``(n, d)``; returns the loss and what it saw (mean positives per anchor, anchors counted, tau).

    Example::

        >>> import torch
        >>> J = torch.tensor([[1., 0.], [1., 0.1], [0., 1.]])           # rays 0 and 1 already aligned
        >>> f = torch.tensor([[1., 0.], [1., 0.], [0., 1.]])            # ... and alike in features
        >>> aligned, _ = mi_gradient_loss(J, f, AdaptiveThreshold(adaptive=False))
        >>> crossed, _ = mi_gradient_loss(J, torch.tensor([[1., 0.], [0., 1.], [1., 0.]]), AdaptiveThreshold(adaptive=False))
        >>> bool(aligned < crossed)
        True
    """
    n = jac.shape[0]
    if n == 0:
        return jac.new_zeros(()), {"positives": 0.0, "anchors": 0.0, "tau": threshold.value}
    j = jac.reshape(n, -1)
    j = j / j.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    e = torch.exp((j @ j.T).abs())
    sim = feats @ feats.T
    tau = threshold.per_anchor(sim)
    pos = (sim > tau[:, None]).to(e)
    neg = 1.0 - pos
    sp, sn = (e * pos).sum(-1), (e * neg).sum(-1)
    counted = (sp > 0) & (sn > 0)
    info = {"positives": float(pos.sum(-1).mean()), "anchors": float(counted.sum()), "tau": threshold.value}
    if not bool(counted.any()):
        return jac.new_zeros(()), info
    loss = -torch.log(sp[counted] / (sp[counted] + sn[counted]))
    return loss.mean(), info


def gradient_norm_loss(jac: torch.Tensor) -> torch.Tensor:
    """``mean_i (|J_i|_2 - 1)²`` over rays ``(n, ...)`` (0 for no ray)."""
    if jac.shape[0] == 0:
        return jac.new_zeros(())
    return (jac.reshape(jac.shape[0], -1).norm(dim=-1) - 1.0).pow(2).mean()


@dataclass
class ShapingConfig:
    steps: int = 2000
    """Shaping steps after the plain run (the paper: 10,000 after 200,000 plain ones)."""
    rays: int = 64
    """Rays a step for the MI term (every ordered pair of them is compared)."""
    mi_weight: float = 0.03
    """The MI term's weight. The paper's 0.01 (with its MLP NeRF) moved our grid field little. Built-in scene,
    2,000 steps after a 120 s plain run, one click per class, mean of 3 draws (scratch runs, 2026-12-07):
    mIoU 0.301 without the term (test PSNR 30.62 dB), 0.37-0.43 at 0.01 (30.4-30.6), 0.52 at 0.03 (30.12),
    0.54 at 0.1 (28.9); benchmarks/jacobi.py has the default (3 seeds: 0.46-0.49) and 0.1 side by side, and
    runs spread widely (docs/semantics.md)."""
    norm_weight: float = 0.01
    tau_start: float = 0.8
    adaptive_threshold: bool = True
    candidates: int = 4
    """Pixels drawn per shaping ray (rendered once without gradient to find the opaque ones)."""
    min_opacity: float = 0.05
    """Only rays this opaque take part (of ``candidates * rays`` drawn): a ray through empty space has no Jacobian
    (zero opacity), and a white background's identical features would make it everyone's positive. Low,
    because the opacity only scales a Jacobian (its direction is the head's activation) and the density
    field's built-in ground is half transparent (0.2-0.3)."""
    lr_factor: float = 1.0
    """Learning rates during shaping, as a share of the plain run's base rates (constant; the paper restarts
    its schedule at the base rate). Measured (built-in, MI weight 0.1): 0.1 gave mIoU 0.417, 1.0 0.541."""
    jacobian_view: str = DEFAULT_VIEW
    """Where the colour head is evaluated for the Jacobians (:data:`privnerf.semantics.jacobian.VIEWS`): ``ray``
    (each ray's direction, the paper's 2D setting) or ``zero`` (one direction for all rays, so a point's
    Jacobian is the same from every camera, as in the paper's 3D variant). Propagation must use the view the
    field was shaped with; it is kept in ``shaping.json``. ``zero`` is the default because it was better
    everywhere we measured (2026-12-07): built-in one click 0.543 (3 seeds) against 0.529 at ``ray`` in the same
    run, one dense view 0.68 against 0.58; lego-20 find-my-person 0.524 against 0.461 (at ``ray`` the person
    stops resonating in the photos taken from the other side)."""
    seed: int = 0
    quiet: bool = False
    features: FeatureConfig = dc_field(default_factory=FeatureConfig)


def render_composited(trainer, o: torch.Tensor, d: torch.Tensor, jitter: bool = False) -> tuple[torch.Tensor, dict]:
    """Render rays ``(n, 3)`` with the trainer's field and return the composited head features ``(n, F)`` (the
    deferred head's input before the direction) and the render's outputs (opacity, depth, ...). Training
    settings with ``jitter``, inference settings without."""
    from privnerf.render.renderer import render_rays
    from privnerf.render.volume import accumulate

    t = trainer
    r = render_rays(t.field, t.occ, o, d, t.settings(inference=not jitter), jitter=jitter, keep_samples=True)
    comp = accumulate(r["weights"], r["values"], r["samples"].ray_idx, o.shape[0])[:, : t.field.cfg.feature_dim]
    return comp, r


def pixel_rays(trainer, img: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays ``(n, 3)`` twice through pixels ``(u[k], v[k])`` (column, row) of training views ``img[k]``."""
    from privnerf.data.cameras import rays_from_pixels

    sc = trainer.scene
    c2w = torch.as_tensor(np.asarray(sc.c2w), dtype=torch.float32)[img]
    intr = torch.as_tensor(np.asarray(sc.intrinsics), dtype=torch.float32)[img]
    o, d, _ = rays_from_pixels(c2w, intr, u, v)
    return o.to(trainer.device), d.to(trainer.device)


def pixel_jacobians(trainer, img: torch.Tensor, u: torch.Tensor, v: torch.Tensor, jitter: bool = True,
                    with_opacity: bool = False, view: str = DEFAULT_VIEW):
    """Closed-form Jacobians ``(n, 3, width)`` of training pixels' rendered colours (differentiable): pixel
    ``(u[k], v[k])`` (column, row) of training view ``img[k]``; the head at ``view`` (``ray`` or ``zero``)."""
    from privnerf.semantics.jacobian import head_activation, ray_jacobians

    o, d = pixel_rays(trainer, img, u, v)
    comp, r = render_composited(trainer, o, d, jitter)
    jac = ray_jacobians(head_activation(trainer.field, comp, d, view), r["opacity"])
    return (jac, r["opacity"]) if with_opacity else jac


class ShapingTrainer:
    """The shaping fine-tune on top of :class:`~privnerf.train.trainer.Trainer`: each step the core trainer's
    photometric batch, plus ``rays`` random training pixels rendered for the MI-gradient and norm terms."""

    def __init__(self, trainer, cfg: ShapingConfig):
        from privnerf.fields.grid_field import GridField
        from privnerf.semantics.jacobian import check_view, last_layer

        if not isinstance(trainer.field, GridField):
            raise ValueError("JacobiNeRF shaping needs a grid field run (--field.kind grid or surface)")
        last_layer(trainer.field)
        check_view(cfg.jacobian_view)
        self.trainer, self.cfg = trainer, cfg
        self.threshold = AdaptiveThreshold(start=cfg.tau_start, adaptive=cfg.adaptive_threshold)
        self.features = PixelFeatures(trainer.scene.images, cfg.features)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.steps_done = 0
        trainer.lr_scale = lambda: cfg.lr_factor  # constant rates for the fine-tune (instance override)

    def sample_pixels(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` uniform pixels of the training views: image index, column, row ``(n,)`` each."""
        sc = self.trainer.scene
        img = torch.randint(0, sc.num_views, (n,), generator=self.generator)
        hw = torch.tensor([sc.hw(int(i)) for i in range(sc.num_views)])
        u = (torch.rand(n, generator=self.generator) * hw[img, 1]).long()
        v = (torch.rand(n, generator=self.generator) * hw[img, 0]).long()
        return img, u, v

    def jacobians_at(self, img: torch.Tensor, u: torch.Tensor, v: torch.Tensor, jitter: bool = True) -> torch.Tensor:
        return pixel_jacobians(self.trainer, img, u, v, jitter, view=self.cfg.jacobian_view)

    def step(self) -> dict:
        t, c = self.trainer, self.cfg
        t.maintenance()
        batch = t.sample_batch()
        loss, mse, out = t.compute_loss(batch)
        # rays through empty space have no Jacobian (zero opacity): of `candidates` times `rays` pixels, rendered
        # once without gradient, the first `rays` opaque ones take part (so the batch stays full, and the
        # adaptive threshold's 5-15 % targets mean what they do in the paper, where scenes have no background)
        img, u, v = self.sample_pixels(c.candidates * c.rays)
        with torch.no_grad():
            _, opacity = pixel_jacobians(t, img, u, v, with_opacity=True)
        keep = (opacity > c.min_opacity).nonzero().squeeze(1)[: c.rays]
        img, u, v = img[keep], u[keep], v[keep]
        if len(keep) > 1:  # an empty (or one-ray) batch has no pairs: the step is photometric only
            jac = pixel_jacobians(t, img, u, v, view=c.jacobian_view)
            mi, info = mi_gradient_loss(jac, self.features.lookup(img, u, v).to(jac), self.threshold)
            norm = gradient_norm_loss(jac)
            loss = loss + c.mi_weight * mi + c.norm_weight * norm
        else:
            mi = norm = loss.new_zeros(())
            info = {"positives": 0.0, "anchors": 0.0, "tau": self.threshold.value}
        stats = t.apply_loss(loss, mse, out, batch[0].shape[0])
        self.steps_done += 1
        stats.update(mi=float(mi.detach()), jac_norm=float(norm.detach()), shaping_rays=float(len(keep)), **info)
        return stats

    def train(self) -> dict:
        bar = tqdm(total=self.cfg.steps, initial=self.steps_done, disable=self.cfg.quiet, desc="shape", dynamic_ncols=True)
        stats: dict = {}
        history = []
        while self.steps_done < self.cfg.steps:
            t0 = time.perf_counter()
            stats = self.step()
            self.trainer.train_time += time.perf_counter() - t0
            if self.steps_done % 50 == 0:
                history.append({"step": self.steps_done, **{k: stats[k] for k in ("psnr", "mi", "jac_norm", "tau", "positives", "shaping_rays")}})
                bar.set_postfix(psnr=f"{stats['psnr']:.2f}", mi=f"{stats['mi']:.3f}", tau=f"{stats['tau']:.3f}")
            bar.update(1)
        bar.close()
        return {"last": stats, "history": history}


def shape_run(plain_run: Path, out_dir: Path, cfg: ShapingConfig) -> dict:
    """Shape a finished plain run (its ``checkpoints/last.pt``) into ``out_dir``: a run folder in the core
    trainer's layout (so ``privnerf eval/render`` read it) plus ``shaping.json``; returns the results."""
    from privnerf.cli.train import load_split
    from privnerf.eval.evaluate import evaluate_split
    from privnerf.train.checkpoint import atomic_write_text, latest_checkpoint
    from privnerf.train.config import config_from_dict
    from privnerf.train.trainer import Trainer, config_to_dict, set_threads, write_results

    plain_run, out_dir = Path(plain_run), Path(out_dir)
    ckpt = plain_run / "checkpoints" / "last.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt}: no checkpoint (is {plain_run} a finished privnerf run?)")
    if out_dir.exists() and latest_checkpoint(out_dir) is not None:
        raise FileExistsError(f"{out_dir} already holds a run; choose another --output")
    st = torch.load(ckpt, map_location="cpu", weights_only=False)
    tcfg = config_from_dict(st["config"])
    set_threads(tcfg.threads)
    scene = load_split(tcfg, "train")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        trainer = Trainer(tcfg, scene, out_dir)
        trainer.load_state(st)
        shaper = ShapingTrainer(trainer, cfg)
    except Exception:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    from dataclasses import asdict

    atomic_write_text(out_dir / "config.json", json.dumps(config_to_dict(tcfg), indent=2) + "\n")
    plain_time = trainer.train_time
    t0 = time.perf_counter()
    log = shaper.train()
    shaping_time = time.perf_counter() - t0
    trainer.save_checkpoint()
    eval_scene = load_split(tcfg, tcfg.eval_split)
    metrics = evaluate_split(trainer.field, trainer.occ, trainer.settings(inference=True), eval_scene,
                             max_images=tcfg.eval_max_images, chunk=tcfg.render.chunk, quiet=True, with_lpips=False)
    res = {"psnr": metrics["psnr"], "ssim": metrics["ssim"], "split": tcfg.eval_split, "plain_run": str(plain_run),
           "plain_train_time_s": plain_time, "shaping_time_s": shaping_time,
           "shaping_cost": shaping_time / max(plain_time, 1e-9), "shaping": asdict(cfg), **log}
    atomic_write_text(out_dir / "shaping.json", json.dumps(res, indent=2, default=str) + "\n")
    write_results(out_dir, {k: res[k] for k in ("psnr", "ssim", "split")} | {"steps": trainer.step_count,
                                                                           "train_time_s": trainer.train_time})
    return res


__all__ = ["AdaptiveThreshold", "ShapingConfig", "ShapingTrainer", "pixel_jacobians", "pixel_rays", "render_composited", "gradient_norm_loss", "mi_gradient_loss", "shape_run"]
