"""The split-learning client: the images, the field's head, volume rendering, the loss and the defense.

Per step the client picks pixels (coordinates only) with the same sampler and seed centralized training
uses, receives the server's cut activation for them, decodes it into density and colour, renders, takes the
colour MSE against its own pixels, updates its head, and returns ``dL/dh`` — through its defense
(:mod:`privnerf.privacy.gradient_defense`). Nothing else it sends depends on a pixel value (a test checks).

The head (:class:`~privnerf.split.cut.ClientHead`: the feature decoder and the view-dependent MLP) is the
client half of the same :class:`GridField` centralized training uses, initialised from the same seed, so
undefended split training is centralized training of that field.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from privnerf.data.io import write_image
from privnerf.data.scene import Scene
from privnerf.eval.metrics import psnr, ssim
from privnerf.privacy.gradient_defense import GradientDefense
from privnerf.split.cut import ClientHead, render_activations, unpack_activations
from privnerf.split.protocol import SERVER_KINDS, decode, encode
from privnerf.train.checkpoint import atomic_torch_save
from privnerf.train.config import TrainConfig
from privnerf.train.rays import PixelSampler
from privnerf.train.trainer import config_to_dict, scene_info

log = logging.getLogger(__name__)


class ServerRefused(RuntimeError):
    """The server answered with an error message."""


class SplitClient:
    """Drives split training from the data owner's side.

    Args:
        cfg: training configuration (sent to the server at setup; the server builds its half from it).
        scene: the training views (images stay here). render_scene: views to render for evaluation
            (their cameras are sent at setup; their images stay here).
        transport: ``request(bytes) -> bytes`` (:mod:`privnerf.split.transport`).
        defense: applied to every outgoing cut gradient.
        run_dir: where the client's checkpoint goes (``run_dir/state.pt``).
        private_head: initialise the head from a secret seed the server cannot replay, not ``cfg.seed``.
        head_seed: that secret seed; default a fresh one from ``os.urandom`` (a test pins it to be repeatable).
    """

    def __init__(self, cfg: TrainConfig, scene: Scene, transport, defense: GradientDefense,
                 render_scene: Scene | None = None, run_dir: Path | None = None, private_head: bool = False,
                 head_seed: int | None = None):
        if cfg.field.kind != "grid":
            raise ValueError("split training needs the grid field (--field.kind grid)")
        if defense.cfg.mix and cfg.field.grid.decoder != "relu":
            raise ValueError("the mix defense drowns entries at dead ReLUs of the cut: it needs --decoder relu")
        self.cfg = cfg
        self.scene = scene
        self.render_scene = render_scene
        self.transport = transport
        self.defense = defense
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = torch.device("cpu")
        gc = cfg.field.grid
        # Same seed, same draw order as Trainer.__init__ → the same head initialisation as centralized training;
        # or a secret seed, which the server cannot replay.
        if private_head:
            torch.manual_seed(head_seed if head_seed is not None else int.from_bytes(os.urandom(8), "little"))
        else:
            torch.manual_seed(cfg.seed)
            if gc.key_cells > 0:  # allowed (the step-for-step tests need it), but the key is then no secret
                log.warning("--key-cells without --private-head: the key is drawn from the announced seed, so "
                            "the server can draw the same key")
        self.head = ClientHead(gc).to(self.device)
        o = cfg.optim
        self.opt = torch.optim.Adam(self.head.parameters(), lr=o.lr_mlp, betas=(0.9, 0.99), eps=1e-15)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.pixels = PixelSampler(scene, self.device)
        bg = scene.background if scene.background is not None else (0.0, 0.0, 0.0)
        self.background = torch.tensor(bg, dtype=torch.float32)
        self.shift: float | None = None
        self.step_count = 0
        self.train_time = 0.0
        self.bytes_up = 0
        self.bytes_down = 0
        self.messages_sent: list[tuple[str, int]] = []
        self.last_psnr = float("nan")

    # -- messaging ----------------------------------------------------------------------------------
    def _exchange(self, kind: str, meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None):
        data = encode(kind, meta, arrays)
        self.bytes_up += len(data)
        self.messages_sent.append((kind, len(data)))
        reply = self.transport.request(data)
        self.bytes_down += len(reply)
        rkind, rmeta, rarrays = decode(reply, SERVER_KINDS, source="server reply")
        if rkind == "error":
            raise ServerRefused(f"split server refused a {kind!r} message: {rmeta['message']}")
        return rkind, rmeta, rarrays

    def setup(self, resume: bool = False) -> int:
        cfg = config_to_dict(self.cfg)
        cfg["data"] = "client"  # the server gets cameras, not a path to the photos
        cfg["output"] = None
        info = scene_info(self.scene)
        info["names"] = [f"view_{i:04d}" for i in range(self.scene.num_views)]  # names can be personal
        cameras: dict[str, Any] = {"train": info}
        if self.render_scene is not None:
            rs = self.render_scene
            cameras["render"] = {"c2w": rs.c2w.tolist(), "intrinsics": rs.intrinsics.tolist(),
                                 "hw": [list(rs.hw(i)) for i in range(rs.num_views)]}
        _, meta, _ = self._exchange("setup", {"config": cfg, "cameras": cameras, "resume": bool(resume)})
        self.shift = float(meta["shift"])
        if self.head.key is not None:  # the key is a function of position in the field's working box
            box = np.asarray(meta["box"], dtype=np.float64)
            if box.shape != (2, 3) or not np.isfinite(box).all() or not (box[1] > box[0]).all():
                raise ServerRefused(f"split server sent a malformed working box {meta['box']!r}")
            self.head.key.place(torch.tensor(box, dtype=torch.float32))
        if resume:
            self.load_state()
            if int(meta["step"]) != self.step_count:
                raise RuntimeError(f"resume: the server is at step {meta['step']}, the client at {self.step_count}")
        return int(meta["step"])

    # -- training -----------------------------------------------------------------------------------
    def progress(self) -> float:
        p = self.step_count / max(self.cfg.steps, 1)
        if self.cfg.max_time:
            p = max(p, self.train_time / self.cfg.max_time)
        return min(p, 1.0)

    def step(self) -> dict[str, float]:
        """One split training step; returns the client's loss, PSNR and the step's traffic."""
        up0, down0 = self.bytes_up, self.bytes_down
        flat = torch.randint(0, self.pixels.num_pixels, (self.cfg.optim.batch_rays,), generator=self.generator)
        img, u, v = self.pixels.locate(flat)
        _, meta, arrays = self._exchange("forward", {"elapsed": self.train_time, "train": 1}, {
            "view": img.numpy().astype(np.int32), "u": u.numpy().astype(np.int32), "v": v.numpy().astype(np.int32)})
        h, s, dirs, xs = unpack_activations(arrays, self.device)
        h.requires_grad_(True)
        target = self.pixels.rgb[flat].to(self.device)
        out = render_activations(self.head, self.shift, h, s, dirs, self.background, xs)
        loss = torch.mean((out["rgb"] - target) ** 2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        scale = self.cfg.optim.lr_final_factor ** self.progress()
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.optim.lr_mlp * scale
        self.opt.step()
        grad = h.grad if h.grad is not None else torch.zeros_like(h)
        sent = self.defense(grad.detach(), h.detach(), self.step_count)
        self._exchange("backward", {"step": int(meta["step"])}, {"grad": np.asarray(sent.cpu().numpy(), np.float32)})
        self.step_count += 1
        m = float(loss.detach())
        self.last_psnr = -10 * math.log10(max(m, 1e-10))
        return {"loss": m, "psnr": self.last_psnr, "samples": float(len(s)), "rays": float(len(flat)),
                "bytes_up": float(self.bytes_up - up0), "bytes_down": float(self.bytes_down - down0)}

    def done(self) -> bool:
        if self.step_count >= self.cfg.steps:
            return True
        return bool(self.cfg.max_time and self.train_time >= self.cfg.max_time)

    def train(self, quiet: bool = False) -> dict[str, float]:
        """Steps until the stop rule, checkpointing both sides every ``checkpoint_every_s`` and at the end."""
        bar = tqdm(total=self.cfg.steps, initial=self.step_count, disable=quiet, dynamic_ncols=True,
                   desc="split train")
        last_ckpt = time.perf_counter()
        totals = {"rays": 0.0, "samples": 0.0, "bytes_up": 0.0, "bytes_down": 0.0, "time": 0.0, "steps": 0}
        while not self.done():
            t0 = time.perf_counter()
            st = self.step()
            dt = time.perf_counter() - t0
            self.train_time += dt
            totals["time"] += dt
            totals["steps"] += 1
            for k in ("rays", "samples", "bytes_up", "bytes_down"):
                totals[k] += st[k]
            if self.step_count % 10 == 0 or self.done():
                bar.set_postfix(psnr=f"{st['psnr']:.2f}", rays_s=f"{totals['rays'] / totals['time']:,.0f}",
                                up_MB=f"{st['bytes_up'] / 1e6:.1f}", down_MB=f"{st['bytes_down'] / 1e6:.1f}")
            bar.update(1)
            if self.run_dir is not None and time.perf_counter() - last_ckpt > self.cfg.checkpoint_every_s:
                self.checkpoint()
                last_ckpt = time.perf_counter()
        bar.close()
        if self.run_dir is not None:
            self.checkpoint()
        n = max(totals["steps"], 1)
        return {"steps": self.step_count, "train_time_s": self.train_time, "last_batch_psnr": self.last_psnr,
                "rays_per_s": totals["rays"] / max(totals["time"], 1e-9),
                "samples_per_step": totals["samples"] / n,
                "bytes_up_per_step": totals["bytes_up"] / n, "bytes_down_per_step": totals["bytes_down"] / n}

    # -- checkpoints ----------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Server and client save at the same step (the server first)."""
        self._exchange("checkpoint", {"step": self.step_count})
        assert self.run_dir is not None
        atomic_torch_save({"head": self.head.state_dict(), "opt": self.opt.state_dict(), "step": self.step_count,
                           "train_time": self.train_time, "generator": self.generator.get_state(),
                           "defense": self.defense.state_dict(), "shift": self.shift},
                          self.run_dir / "state.pt")

    def load_state(self) -> None:
        path = self.run_dir / "state.pt" if self.run_dir is not None else None
        if path is None or not path.exists():
            raise FileNotFoundError(f"resume: no client state at {path}")
        st = torch.load(path, map_location="cpu", weights_only=False)
        self.head.load_state_dict(st["head"])
        self.opt.load_state_dict(st["opt"])
        self.step_count = int(st["step"])
        self.train_time = float(st["train_time"])
        self.generator.set_state(st["generator"])
        self.defense.load_state_dict(st["defense"])

    # -- rendering and evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def render_view(self, index: int, chunk: int | None = None) -> np.ndarray:
        """Render view ``index`` of the render scene through the server: ``(h, w, 3)`` in [0, 1]."""
        assert self.render_scene is not None
        h, w = self.render_scene.hw(index)
        chunk = chunk or self.cfg.render.chunk
        vv, uu = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        uu, vv = uu.reshape(-1), vv.reshape(-1)
        rgb = []
        for i in range(0, h * w, chunk):
            u, v = uu[i : i + chunk], vv[i : i + chunk]
            view = torch.full_like(u, index)
            _, _, arrays = self._exchange("forward", {"elapsed": self.train_time, "train": 0}, {
                "view": view.numpy().astype(np.int32), "u": u.numpy().astype(np.int32), "v": v.numpy().astype(np.int32)})
            hh, s, dirs, xs = unpack_activations(arrays, self.device)
            rgb.append(render_activations(self.head, self.shift, hh, s, dirs, self.background, xs)["rgb"])
        return torch.cat(rgb).reshape(h, w, 3).clamp(0, 1).numpy()

    def evaluate(self, max_images: int | None = None, out_dir: Path | None = None, quiet: bool = False,
                 with_lpips: bool = True) -> dict[str, Any]:
        """Utility: PSNR/SSIM/LPIPS of the client's model on its render views (mean of per-image scores)."""
        from privnerf.eval.evaluate import _lpips_fn
        from privnerf.eval.metrics import mean_metrics, to_uint8

        assert self.render_scene is not None
        n = self.render_scene.num_views if max_images is None else min(max_images, self.render_scene.num_views)
        lp = _lpips_fn() if with_lpips else None
        rows = []
        for i in tqdm(range(n), desc="client eval", disable=quiet, leave=False):
            pred = self.render_view(i)
            gt = self.render_scene.images[i]
            rows.append({"psnr": psnr(pred, gt), "ssim": ssim(pred, gt), "lpips": lp(pred, gt) if lp else None})
            if out_dir is not None:
                write_image(Path(out_dir) / f"view_{i:04d}.png", to_uint8(pred))
        return {**mean_metrics(rows), "num_images": n}
