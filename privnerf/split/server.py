"""The split-learning server: camera poses, ray marching, the occupancy grid and the grids of the field.

The server runs the one :class:`~privnerf.train.trainer.Trainer` on a *camera-only* scene (the client's
``setup`` message carries poses and image sizes, never pixels). A training step is the trainer's step cut in
two by the network:

1. ``forward`` — the client names pixels; the server runs the trainer's maintenance (occupancy refresh, grid
   growth), marches the rays, culls empty space with its own density, and sends the grid values at the
   shaded samples (the cut activation ``h``, raw density logit + features) with the sample packing.
2. ``backward`` — the client returns ``dL/dh``; the server back-propagates it into the grids through the
   surrogate loss ``sum(h * dL/dh)`` (same gradient) and runs the trainer's optimizer step.

The server-side :class:`GridField` also owns a view-dependent head (``rgb_net``); on the server it is never
used, trained or sent: the client's head is the real one.

Observers (a curious server's attacks, :mod:`privnerf.privacy.split_attack`) see what the server sees after
every backward: its activations, the received gradient, the pixel coordinates and the packing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from privnerf.data.cameras import rays_from_pixels
from privnerf.fields.grid_field import GridField
from privnerf.render.renderer import select_samples
from privnerf.render.sampler import Samples
from privnerf.split.protocol import CLIENT_KINDS, DEFAULT_MAX_BYTES, ProtocolError, decode, encode, error_message
from privnerf.train.config import config_from_dict
from privnerf.train.trainer import Trainer, scene_from_info, set_threads

log = logging.getLogger(__name__)


@dataclass
class CutBatch:
    """Everything the server knows about one training step (what an attack may use).

    Attributes:
        h: ``(m, C)`` the cut activation it sent; grad: ``(m, C)`` the gradient it received.
        view, u, v: ``(n,)`` the pixels the client asked for; samples: the packing; dirs: ``(n, 3)``.
        step: the training step (0-based) this batch trained.
    """

    h: torch.Tensor
    grad: torch.Tensor
    view: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    samples: Samples
    dirs: torch.Tensor
    step: int


class Observer(Protocol):
    def observe(self, batch: CutBatch, server: "SplitServer") -> None: ...

    def save(self, path: Path) -> None: ...


class SplitServer:
    """Handles client messages (bytes in, bytes out) for any transport.

    Args:
        run_dir: where the server's checkpoint goes (``run_dir/checkpoints/last.pt``).
        observers: attacks run by a curious server, called after each backward.
    """

    def __init__(self, run_dir: Path | None, device: str = "cpu", threads: int | None = None,
                 observers: list | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 observer_factory=None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = device
        self.threads = threads
        self.observers: list = list(observers or [])
        self.observer_factory = observer_factory
        """Called as ``factory(server)`` after setup, returning more observers (they need the trainer)."""
        self.max_bytes = max_bytes
        self.trainer: Trainer | None = None
        self.render_cameras: dict[str, np.ndarray] | None = None
        self._pending: tuple[torch.Tensor, Samples, torch.Tensor, tuple] | None = None
        self.send_positions = False
        """Whether activations carry the samples' positions (the client's head is keyed)."""
        self.bytes_in = 0
        self.bytes_out = 0

    # -- transport entry point ------------------------------------------------------------------------
    def handle(self, data: bytes) -> bytes:
        self.bytes_in += len(data)
        try:
            kind, meta, arrays = decode(data, CLIENT_KINDS, self.max_bytes, source="client message")
            reply = getattr(self, f"_on_{kind}")(meta, arrays)
        except ProtocolError as exc:
            log.error("refused a client message: %s", exc)
            reply = error_message(str(exc))
        except (ValueError, RuntimeError, OSError) as exc:  # e.g. a setup config the field cannot be built from
            log.exception("a client message failed on the server")
            reply = error_message(f"the server could not carry out the request: {exc}")
        self.bytes_out += len(reply)
        return reply

    # -- handlers --------------------------------------------------------------------------------------
    def _on_setup(self, meta: dict[str, Any], arrays) -> bytes:
        try:
            cfg = config_from_dict(meta["config"])
            cams = meta["cameras"]
            scene = scene_from_info(cams["train"])
            render = cams.get("render") or {"c2w": [], "intrinsics": [], "hw": []}
            self.render_cameras = {"c2w": np.asarray(render["c2w"], np.float32).reshape(-1, 4, 4),
                                   "intrinsics": np.asarray(render["intrinsics"], np.float32).reshape(-1, 4),
                                   "hw": np.asarray(render["hw"], np.int64).reshape(-1, 2)}
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"setup: malformed configuration or cameras ({exc})") from None
        if cfg.field.kind != "grid":
            raise ProtocolError("setup: split training needs the grid field (--field.kind grid)")
        if cfg.personal.enabled:
            raise ProtocolError("setup: split training has no personal field")
        if cfg.field.grid.decoder == "full" and cfg.render.skip_empty:
            # the density is the client's secret: the server cannot tell empty space from content
            log.info("the client decodes density (--decoder full): no empty-space skipping on the server")
            cfg.render.skip_empty = False
        # A keyed client decodes by position: it needs each sample's position; the key itself is the client's
        # (the server's field holds none).
        self.send_positions = cfg.field.grid.key_cells > 0
        cfg.field.grid.key_cells = 0
        cfg.device = self.device
        cfg.threads = self.threads or cfg.threads
        set_threads(cfg.threads)
        self.trainer = Trainer(cfg, scene, self.run_dir)
        ckpt = self.run_dir / "checkpoints" / "last.pt" if self.run_dir is not None else None
        if meta["resume"]:
            if ckpt is None or not ckpt.exists():
                raise ProtocolError(f"setup: resume asked for, but the server has no checkpoint at {ckpt}")
            self.trainer.load_checkpoint(ckpt)
            log.info("server resumed at step %d", self.trainer.step_count)
        if self.observer_factory is not None:
            self.observers += list(self.observer_factory(self))
        field = self.trainer.field
        assert isinstance(field, GridField)
        return encode("setup_ok", {"cut_channels": field.cut_channels, "shift": float(field.shift),
                                   "step": self.trainer.step_count, "box": field.space.box.cpu().tolist()})

    def _require_setup(self) -> Trainer:
        if self.trainer is None:
            raise ProtocolError("no setup message yet")
        return self.trainer

    def _rays(self, view: np.ndarray, u: np.ndarray, v: np.ndarray, train: bool):
        tr = self._require_setup()
        if train:
            c2w, K = tr.scene.c2w, tr.scene.intrinsics
            hw = np.array([tr.scene.hw(i) for i in range(tr.scene.num_views)], dtype=np.int64)
        else:
            c2w, K, hw = self.render_cameras["c2w"], self.render_cameras["intrinsics"], self.render_cameras["hw"]
        if not (len(view) == len(u) == len(v)) or len(view) == 0:
            raise ProtocolError(f"forward: view/u/v must be equal, non-zero lengths, got {len(view)}/{len(u)}/{len(v)}")
        if view.min() < 0 or view.max() >= len(c2w):
            raise ProtocolError(f"forward: view index out of range 0..{len(c2w) - 1}")
        h, w = hw[view, 0], hw[view, 1]
        if (u < 0).any() or (v < 0).any() or (u >= w).any() or (v >= h).any():
            raise ProtocolError("forward: a pixel coordinate lies outside its image")
        vt = torch.from_numpy(view.astype(np.int64))
        o, d, _ = rays_from_pixels(torch.from_numpy(c2w)[vt], torch.from_numpy(K)[vt],
                                   torch.from_numpy(u.astype(np.int64)), torch.from_numpy(v.astype(np.int64)))
        return o.to(tr.device), d.to(tr.device)

    def cut_forward(self, origins: torch.Tensor, dirs: torch.Tensor, train: bool
                    ) -> tuple[torch.Tensor, Samples, torch.Tensor]:
        """March, cull, and evaluate the grids: ``h (m, C)`` (with graph when ``train``), the samples and their
        working-box positions ``(m, 3)``."""
        tr = self._require_setup()
        field = tr.field
        settings = tr.settings(inference=not train)
        with torch.set_grad_enabled(train):
            s = select_samples(field, tr.occ, origins, dirs, settings, jitter=train)
            xs = field.space(origins[s.ray_idx] + s.t[:, None] * dirs[s.ray_idx])
            inside = field._inside(xs)
            if not bool(inside.all()):  # zero density there: such samples add nothing to any ray
                s, xs = s.select(inside), xs[inside]
            h = field.encode_space(xs)
        return h, s, xs.detach()

    def _on_forward(self, meta: dict[str, Any], arrays) -> bytes:
        tr = self._require_setup()
        train = bool(meta["train"])
        if train:
            elapsed = float(meta["elapsed"])
            if not math.isfinite(elapsed) or elapsed < 0:
                raise ProtocolError("forward: elapsed must be a finite, non-negative number of seconds")
            tr.train_time = elapsed
            tr.maintenance()
        view, u, v = arrays["view"], arrays["u"], arrays["v"]
        o, d = self._rays(view, u, v, train)
        h, s, xs = self.cut_forward(o, d, train)
        if train:
            self._pending = (h, s, d, (view, u, v))
        return encode("activations", {"step": tr.step_count}, {
            "h": np.asarray(h.detach().cpu().numpy(), dtype=np.float32),
            "ray": np.asarray(s.ray_idx.cpu().numpy(), dtype=np.int32),
            "t": np.asarray(s.t.cpu().numpy(), dtype=np.float32),
            "delta": np.asarray(s.delta.cpu().numpy(), dtype=np.float32),
            "dirs": np.asarray(d.cpu().numpy(), dtype=np.float32),
            "xs": np.asarray(xs.cpu().numpy() if self.send_positions else np.zeros((0, 3)), dtype=np.float32),
        })

    def _on_backward(self, meta: dict[str, Any], arrays) -> bytes:
        tr = self._require_setup()
        if self._pending is None:
            raise ProtocolError("backward: no training forward is waiting for its gradient")
        h, s, d, (view, u, v) = self._pending
        g = arrays["grad"]
        if tuple(g.shape) != tuple(h.shape):
            raise ProtocolError(f"backward: gradient shape {tuple(g.shape)} does not match the activation "
                                f"{tuple(h.shape)} it belongs to")
        if int(meta["step"]) != tr.step_count:
            raise ProtocolError(f"backward: gradient for step {meta['step']}, server is at step {tr.step_count}")
        self._pending = None
        grad = torch.from_numpy(g).to(h.device)  # decode hands out writable arrays
        step = tr.step_count
        # d/dθ sum(h ⊙ G) = G^T dh/dθ: the chain rule through the cut with the client's gradient.
        tr.apply_loss((h * grad).sum(), torch.tensor(float("nan")), {"num_samples": len(s)}, len(view))
        if self.observers:
            batch = CutBatch(h.detach(), grad, torch.from_numpy(view.astype(np.int64)),
                             torch.from_numpy(u.astype(np.int64)), torch.from_numpy(v.astype(np.int64)), s, d, step)
            for obs in self.observers:
                obs.observe(batch, self)
        return encode("ack", {"step": tr.step_count})

    def _on_checkpoint(self, meta: dict[str, Any], arrays) -> bytes:
        tr = self._require_setup()
        if self.run_dir is not None:
            tr.save_checkpoint()
            for obs in self.observers:
                obs.save(self.run_dir)
        return encode("ack", {"step": tr.step_count})
