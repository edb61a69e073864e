"""Black-box ownership watermark (IPR-NeRF's black-box half, built StegaNeRF-style): the owner's message is
readable from rendered images alone, by a small decoder that only the owner holds.

**Message.** 48 bits derived from the owner's signature key (:mod:`privnerf.ownership.signature`): the first
48 bits of ``SHA-256(b"privnerf-watermark/1" + secret)``. Domain-separated from the white-box bits, so one key
file serves both halves and neither reveals the other.

**Decoder** (:class:`WatermarkDecoder`). Five 3x3 convolutions (two of stride 2) and a 1x1 convolution to 48
logit maps, averaged over space: any image size reads, ``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 48)`` logits.
Trained from scratch, jointly with the field; after the fine-tune its mean logits on clean patches are stored
as :attr:`~WatermarkDecoder.null` and subtracted when reading (:meth:`WatermarkDecoder.read`).

**Embedding** (:func:`embed`, a fine-tune of a trained run through the one training loop). Each step of
:class:`privnerf.train.trainer.Trainer` keeps its photometric loss on training rays (fidelity) and adds
:class:`WatermarkLoss` (``trainer.extra_loss``)::

    lambda * [ BCE(D(attack(render_patch(field, novel pose))), m)          # the message, from novel views
             + BCE(D(attack(render_patch(base, same pose))), 1/2)          # the unwatermarked model: no message
             + BCE(D(attack(crop(training photo))), 1/2) ]                 # real photos: no message

A patch is ``patch x patch`` pixels (64) of a pose drawn around the training cameras (random azimuth, the
training cameras' elevations and distances) at a random image scale (0.5-1 of the training size), placed
where the rendered opacity is high (a background patch of a white-background scene carries nothing). The
base model's patch is the same view rendered by the field as it was before the fine-tune, so the decoder
learns the difference the watermark makes, not the scene. The attack (:class:`Attack`) is drawn per image:
identity, JPEG (quality 50-95, real JPEG via PIL with a straight-through gradient), resize down by 0.5-1 and
back (bilinear), Gaussian noise (sigma up to 0.03) or a random crop (50-100 % of the side). The decoder's
parameters join the trainer's MLP optimizer (their own learning rate), so one backward and one optimizer step
train both. lambda adapts (:attr:`WatermarkConfig.target_margin`): it rises until decoder and field have found
a pattern, then falls while the photometric loss wears the pattern down to what the decoder needs.

**Reading** (:func:`read_images`). An image is cut into ``patch``-sized tiles; tiles that are mostly background
(within 0.1 of the colour of the image border) are dropped (all kept when none is left); the decoder's logits
(calibrated) are averaged over an image's tiles (per view), then over views; a bit is the sign of that mean.
Reported (:func:`score`): bit accuracy of the mean, each view's own accuracy, the binomial chance of matching as
many bits at one half, and the agreement ``mean((2 m - 1) * logits)``. The verdict needs the chance below
:data:`FALSE_POSITIVE` **and** the agreement above :data:`MIN_AGREEMENT`: a decoder trained on one message is a
one-bit detector, its bits move together, and only the agreement separates clean images from watermarked ones
(measured: docs/ownership.md).

Example (shapes)::

    >>> from privnerf.ownership.signature import new_key
    >>> key = new_key("alice", seed=0)
    >>> m = message_bits(key)
    >>> m.shape, set(m.tolist()) <= {0.0, 1.0}
    (torch.Size([48]), True)
    >>> dec = WatermarkDecoder()
    >>> dec(torch.rand(2, 3, 64, 64)).shape, dec(torch.rand(1, 3, 100, 80)).shape
    (torch.Size([2, 48]), torch.Size([1, 48]))
    >>> x = torch.rand(1, 3, 32, 32, requires_grad=True)
    >>> y = jpeg(x, 75); y.sum().backward(); bool((y != x).any()), bool((x.grad == 1).all())
    (True, True)
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privnerf.data.errors import SceneError
from privnerf.render.renderer import render_image, render_rays
from privnerf.ownership.signature import SignatureKey, binomial_tail

DOMAIN = b"privnerf-watermark/1"
MESSAGE_BITS = 48
DECODER_FORMAT = "privnerf-watermark-decoder/1"
FALSE_POSITIVE = 1e-6
"""The verdict's bar on the binomial chance (with 48 bits: at least 41 matching bits, p = 4.3e-7)."""
MIN_AGREEMENT = 0.6
"""The verdict's second bar: the mean of ``(2 m - 1) * logit`` over bits of the view-averaged calibrated logits
(the agreement with the message). With one message the decoder is a one-bit detector: every bit's logit moves
together, so a clean image's bits read 0 % or 100 % by sign and the binomial chance alone is no
false-positive figure. Measured on lego (benchmarks/results/watermark-lego*.json, 20-25 views each): negatives
(base, control and a second model's renders, training photos, fern photos, under every attack) averaged at
most 0.32; the watermarked renders at least 1.59 (0.91 under a 4 % colour cast). A single image is weak
evidence: one training photo alone reached 1.24."""
MIN_VIEWS_ADVISED = 4


# ------------------------------------------------------------------------------------------- the message


def message_bits(key: SignatureKey, bits: int = MESSAGE_BITS) -> torch.Tensor:
    """``(bits,)`` float32 of 0/1: the first ``bits`` bits of ``SHA-256(DOMAIN + secret)``."""
    if not 1 <= bits <= 256:
        raise ValueError(f"{bits} message bits: 1 to 256")
    digest = hashlib.sha256(DOMAIN + bytes.fromhex(key.secret)).digest()
    raw = np.unpackbits(np.frombuffer(digest, np.uint8))[:bits]
    return torch.from_numpy(raw.astype(np.float32))


# ------------------------------------------------------------------------------------------- the decoder


class WatermarkDecoder(nn.Module):
    """``(B, 3, H, W)`` images in ``[0, 1]`` -> ``(B, bits)`` logits (mean over the logit map, so any size
    reads; the map is ``(B, bits, ~H/4, ~W/4)``, :meth:`logit_map`). ``width`` channels per layer."""

    def __init__(self, bits: int = MESSAGE_BITS, width: int = 64, patch: int = 64):
        super().__init__()
        self.bits, self.width, self.patch = int(bits), int(width), int(patch)
        w = self.width
        self.net = nn.Sequential(
            nn.Conv2d(3, w // 2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w // 2, w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, self.bits, 1),
        )
        self.register_buffer("null", torch.zeros(self.bits))
        """``(bits,)``: the decoder's mean logits on images without the watermark (:meth:`WatermarkLoss.calibrate`);
        reading subtracts it, so a clean image's bits scatter around chance instead of sharing the decoder's
        leftover bias towards the message."""

    def logit_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits ``(B, bits)`` (training); :meth:`read` for verification."""
        return self.logit_map(x).mean(dim=(2, 3))

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated logits ``(B, bits)``: raw minus :attr:`null`; a bit reads as one where positive."""
        return self(x) - self.null


def save_decoder(decoder: WatermarkDecoder, key: SignatureKey, path: Path, info: dict | None = None) -> Path:
    """Write the owner's verification material: ``{"format", "bits", "width", "patch", "commitment" (of the key
    it reads), "state" (the decoder's weights), "info"}`` (torch file, mode 0600)."""
    from privnerf.train.checkpoint import atomic_torch_save

    doc = {"format": DECODER_FORMAT, "bits": decoder.bits, "width": decoder.width, "patch": decoder.patch,
           "commitment": key.commitment, "state": {k: v.detach().cpu() for k, v in decoder.state_dict().items()},
           "info": info or {}}
    path = Path(path)
    atomic_torch_save(doc, path)
    path.chmod(0o600)
    return path


def decoder_path(key_path: Path) -> Path:
    """Where a key's decoder lives: ``KEY.decoder.pt`` beside ``KEY.json``."""
    key_path = Path(key_path)
    return key_path.with_name(key_path.stem + ".decoder.pt")


def load_decoder(path: Path, key: SignatureKey | None = None) -> WatermarkDecoder:
    """The decoder saved by :func:`save_decoder`; with ``key``, refused unless it was trained for that key.
    Errors are :class:`SceneError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(path, "no watermark decoder here (made by `privnerf ownership watermark`)")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file gets one clear error
        raise SceneError(path, f"not a watermark decoder ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != DECODER_FORMAT:
        raise SceneError(path, f"not a watermark decoder (expected format {DECODER_FORMAT!r})")
    if key is not None and doc.get("commitment") != key.commitment:
        raise SceneError(path, f"this decoder was trained for another key (commitment {str(doc.get('commitment'))[:12]}..., "
                               f"the key's is {key.commitment[:12]}...)")
    dec = WatermarkDecoder(int(doc["bits"]), int(doc["width"]), int(doc["patch"]))
    dec.load_state_dict(doc["state"])
    return dec.eval()


# ------------------------------------------------------------------------------------------- attacks


def _jpeg_np(img: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG (PIL, 4:2:0) of ``(B, 3, H, W)`` images in ``[0, 1]``, with a straight-through gradient
    (the identity's): ``x + (jpeg(x) - x).detach()``."""
    u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([_jpeg_np(im, quality) for im in u8])
    y = torch.from_numpy(out).to(x).permute(0, 3, 1, 2) / 255.0
    return x + (y - x).detach()


def resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Down to ``factor`` of the size (bilinear, antialiased) and back up (bilinear); differentiable."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(2, round(h * factor)), max(2, round(w * factor))), mode="bilinear",
                          align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise of standard deviation ``sigma``, clamped to ``[0, 1]``."""
    n = torch.randn(x.shape, generator=generator).to(x)
    return (x + sigma * n).clamp(0, 1)


def center_crop(x: torch.Tensor, area: float) -> torch.Tensor:
    """The central ``area`` share of the image (side ``sqrt(area)`` of each)."""
    h, w = x.shape[-2:]
    s = math.sqrt(area)
    ch, cw = max(1, round(h * s)), max(1, round(w * s))
    t, l = (h - ch) // 2, (w - cw) // 2
    return x[..., t:t + ch, l:l + cw]


ATTACKS = {
    "clean": lambda x: x,
    "jpeg75": lambda x: jpeg(x, 75),
    "jpeg50": lambda x: jpeg(x, 50),
    "resize0.5": lambda x: resize(x, 0.5),
    "noise0.02": lambda x: noise(x, 0.02, torch.Generator().manual_seed(0)),
    "noise0.05": lambda x: noise(x, 0.05, torch.Generator().manual_seed(0)),
    "crop50": lambda x: center_crop(x, 0.5),
    "crop25": lambda x: center_crop(x, 0.25),
    "tint": lambda x: (x * torch.tensor([0.96, 1.04, 0.96]).to(x)[:, None, None]).clamp(0, 1),
}
"""The evaluated attacks on whole images ``(B, 3, H, W)`` (the benchmark's columns). ``tint``: a 4 % green
colour cast (red and blue times 0.96, green times 1.04), not in the training attack layer: on lego the embedded
pattern came out as a magenta cast over the object, and this is the colour correction that undoes it."""


class Attack:
    """The training-time attack layer: per image, one of identity, JPEG (``quality`` range), resize down and
    back (``scale`` range), Gaussian noise (sigma up to ``sigma``) or a random crop (``crop`` of the side and
    more), drawn with ``generator``. ``(1, 3, h, w)`` -> ``(1, 3, h', w')`` (a crop shrinks it)."""

    KINDS = ("identity", "jpeg", "resize", "noise", "crop")

    def __init__(self, quality=(50, 95), scale=(0.5, 1.0), sigma: float = 0.03, crop: float = 0.5,
                 weights=(1, 2, 1, 1, 1)):
        self.quality, self.scale, self.sigma, self.crop = quality, scale, sigma, crop
        self.p = torch.tensor(weights, dtype=torch.float32) / sum(weights)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        kind = self.KINDS[int(torch.multinomial(self.p, 1, generator=g))]
        u = float(torch.rand((), generator=g))
        if kind == "jpeg":
            return jpeg(x, round(self.quality[0] + u * (self.quality[1] - self.quality[0])))
        if kind == "resize":
            return resize(x, self.scale[0] + u * (self.scale[1] - self.scale[0]))
        if kind == "noise":
            return noise(x, u * self.sigma, g)
        if kind == "crop":
            h, w = x.shape[-2:]
            s = self.crop + u * (1 - self.crop)
            ch, cw = max(8, round(h * s)), max(8, round(w * s))
            t = int(torch.randint(0, h - ch + 1, (), generator=g))
            l = int(torch.randint(0, w - cw + 1, (), generator=g))
            return x[..., t:t + ch, l:l + cw]
        return x


# ------------------------------------------------------------------------------------------- poses


def novel_poses(scene, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 4, 4)`` cameras around ``scene``'s training cameras, looking at the scene box's centre: azimuth
    uniform on the circle, elevation (above the plane normal to the cameras' mean up) uniform between the
    training cameras' lowest and highest, distance one of the training cameras'. Forward-facing scenes: the
    training cameras' positions jittered by up to their spread, looking along their mean direction."""
    from privnerf.render.camera_path import look_at

    c2w = scene.c2w.astype(np.float64)
    pos = c2w[:, :3, 3]
    up = c2w[:, :3, 1].mean(0)
    up /= np.linalg.norm(up)
    if scene.scene_type == "forward":
        fwd = -c2w[:, :3, 2].mean(0)
        fwd /= np.linalg.norm(fwd)
        spread = pos.std(0)
        target = pos.mean(0) + fwd * (scene.near + scene.far) * 0.25
        eyes = pos[rng.integers(0, len(pos), n)] + rng.uniform(-1, 1, (n, 3)) * spread
        return np.stack([look_at(e, target, up) for e in eyes])
    centre = (scene.aabb[0] + scene.aabb[1]).astype(np.float64) / 2
    rel = pos - centre
    dist = np.linalg.norm(rel, axis=1)
    elev = np.arcsin(np.clip(rel @ up / dist, -1, 1))
    e1 = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    az = rng.uniform(0, 2 * np.pi, n)
    el = rng.uniform(elev.min(), elev.max(), n)
    r = dist[rng.integers(0, len(dist), n)]
    eyes = centre + r[:, None] * (np.cos(el)[:, None] * (np.cos(az)[:, None] * e1 + np.sin(az)[:, None] * e2)
                                  + np.sin(el)[:, None] * up)
    return np.stack([look_at(e, centre, up) for e in eyes])


# ------------------------------------------------------------------------------------------- the loss


@dataclass
class WatermarkConfig:
    weight: float = 0.05
    """lambda at the start: the watermark term's weight against the photometric MSE."""
    target_margin: float | None = 2.0
    """Adapt lambda (``None``: constant ``weight``): after each watermark step lambda is multiplied by 0.98
    while the running separation (mean agreement ``(2 m - 1) * logit`` of the attacked watermarked patch minus
    that of the base model's same patch) exceeds this, by 1.02 while it does not (within ``weight_range``).
    A high start lets decoder and field find a pattern together; past the margin the photometric loss wears
    the pattern down to the amplitude the decoder needs."""
    weight_range: tuple[float, float] = (3e-4, 0.2)
    patch: int = 64
    """Side of a rendered patch, pixels."""
    scale: tuple[float, float] = (0.5, 1.0)
    """Image scale of a patch's camera, relative to the training images' size."""
    decoder_lr: float = 2e-3
    decoder_width: int = 64
    poses: int = 256
    """Novel poses drawn once (their low-resolution opacity picks where patches go)."""
    min_opacity: float = 0.5
    every: int = 3
    """Once the running separation has first reached ``target_margin``, the term joins every ``every``-th step
    only (the others are plain photometric steps, at their usual speed: a watermark step costs about three);
    before that, every step."""
    seed: int = 0


def _crop_content(img: torch.Tensor, size: int, g: torch.Generator, bg: torch.Tensor, tries: int = 10) -> torch.Tensor:
    """A ``size`` window of ``(3, H, W)`` ``img`` mostly off the background colour ``bg`` ``(3,)`` (the
    last try otherwise)."""
    h, w = img.shape[-2:]
    for _ in range(tries):
        t = int(torch.randint(0, h - size + 1, (), generator=g))
        l = int(torch.randint(0, w - size + 1, (), generator=g))
        c = img[:, t:t + size, l:l + size]
        if float(((c - bg[:, None, None]).abs().amax(0) > 0.1).float().mean()) > 0.5:
            break
    return c


class WatermarkLoss:
    """The watermark's term of a fine-tune (``trainer.extra_loss = WatermarkLoss(...)``): see the module's
    docstring. ``base``: a trainer holding the field before the fine-tune (negatives); ``photos``: the training
    scene (photo negatives); ``message``: ``(bits,)`` 0/1. Adds the decoder to ``trainer.mlp_opt``.
    :attr:`stats` keeps running means (loss, bit accuracy of positives before and after attack)."""

    def __init__(self, trainer, base, decoder: WatermarkDecoder, message: torch.Tensor, cfg: WatermarkConfig):
        self.decoder, self.cfg = decoder.to(trainer.device), cfg
        self.message = message.to(trainer.device)
        self.base = base
        self.g = torch.Generator().manual_seed(cfg.seed)
        self.attack = Attack(scale=cfg.scale)
        trainer.mlp_opt.add_param_group({"params": list(self.decoder.parameters()), "lr": cfg.decoder_lr,
                                         "base_lr": cfg.decoder_lr})
        sc = trainer.scene
        self.h, self.w = sc.hw(0)
        if min(self.h, self.w) < cfg.patch:
            raise ValueError(f"the training images ({self.h}x{self.w}) are smaller than the {cfg.patch}-pixel "
                             f"watermark patch (choose a smaller patch)")
        lo = max(cfg.scale[0], cfg.patch / min(self.h, self.w))
        self.scale = (lo, max(lo, cfg.scale[1]))
        self.intr = torch.from_numpy(sc.intrinsics[0]).float()
        self.poses = torch.from_numpy(novel_poses(sc, cfg.poses, np.random.default_rng(cfg.seed))).float()
        self.coarse = 8
        self.opacity = self._coarse_opacity(base)
        self.photos = sc
        self.bg = trainer.background.detach().cpu()
        self.weight = cfg.weight
        self.reached = False
        """Whether the running separation has reached the target margin yet (then :attr:`cfg.every` applies)."""
        self.stats = {"steps": 0, "loss": 0.0, "pos_acc": 0.0, "separation": 0.0, "weight": self.weight}

    @torch.no_grad()
    def _coarse_opacity(self, base) -> torch.Tensor:
        h, w = self.h // self.coarse, self.w // self.coarse
        intr = self.intr / self.coarse
        st = base.settings(inference=True)
        return torch.stack([render_image(base.field, base.occ, p, intr, h, w, st)["opacity"].cpu()
                            for p in self.poses])

    def _patch_rays(self):
        """Rays ``(P*P, 3)`` x2 of a random patch of a random novel pose at a random scale, on the object."""
        g, P, c = self.g, self.cfg.patch, self.coarse
        lo, hi = self.scale
        while True:
            i = int(torch.randint(0, len(self.poses), (), generator=g))
            s = lo + float(torch.rand((), generator=g)) * (hi - lo)
            H, W = round(self.h * s), round(self.w * s)
            if H < P or W < P:
                continue
            cells = torch.nonzero(self.opacity[i] > self.cfg.min_opacity)
            if len(cells) == 0:
                continue
            cy, cx = cells[int(torch.randint(0, len(cells), (), generator=g))].tolist()
            v0 = int(min(max((cy + 0.5) * c * s - P / 2, 0), H - P))
            u0 = int(min(max((cx + 0.5) * c * s - P / 2, 0), W - P))
            break
        from privnerf.data.cameras import rays_from_pixels

        vv, uu = torch.meshgrid(torch.arange(v0, v0 + P), torch.arange(u0, u0 + P), indexing="ij")
        o, d, _ = rays_from_pixels(self.poses[i], self.intr * s, uu.reshape(-1), vv.reshape(-1))
        return o, d

    def _photo_patch(self) -> torch.Tensor:
        g, P = self.g, self.cfg.patch
        i = int(torch.randint(0, self.photos.num_views, (), generator=g))
        img = torch.from_numpy(np.ascontiguousarray(self.photos.images[i])).float().permute(2, 0, 1)[None]
        lo, hi = self.scale
        s = lo + float(torch.rand((), generator=g)) * (hi - lo)
        h, w = img.shape[-2:]
        if s < 0.999:
            img = F.interpolate(img, size=(max(P, round(h * s)), max(P, round(w * s))), mode="bilinear",
                                align_corners=False, antialias=True)
        return _crop_content(img[0], P, g, self.bg)[None]

    def __call__(self, trainer) -> torch.Tensor:
        P, dev = self.cfg.patch, trainer.device
        if self.reached and trainer.step_count % self.cfg.every:
            return torch.zeros((), device=dev)
        o, d = self._patch_rays()
        o, d = o.to(dev), d.to(dev)
        settings = trainer.settings()
        pos = render_rays(trainer.field, trainer.occ, o, d, settings)["rgb"].clamp(0, 1)
        pos = pos.reshape(P, P, 3).permute(2, 0, 1)[None]
        with torch.no_grad():
            neg = render_rays(self.base.field, self.base.occ, o, d, self.base.settings())["rgb"].clamp(0, 1)
        neg = neg.reshape(P, P, 3).permute(2, 0, 1)[None]
        photo = self._photo_patch().to(dev)
        logits = [self.decoder(self.attack(x, self.g)) for x in (pos, neg, photo)]
        m = self.message[None]
        half = torch.full_like(m, 0.5)
        lp = F.binary_cross_entropy_with_logits(logits[0], m)
        ln = (F.binary_cross_entropy_with_logits(logits[1], half) + F.binary_cross_entropy_with_logits(logits[2], half)) / 2
        loss = self.weight * (lp + ln)
        st = self.stats
        k = st["steps"] = st["steps"] + 1
        a = 1.0 / min(k, 100)  # running mean over about the last 100 steps
        st["loss"] += a * (float((lp + ln).detach()) - st["loss"])
        st["pos_acc"] += a * (float(((logits[0] > 0).float() == m).float().mean()) - st["pos_acc"])
        with torch.no_grad():
            sign = 2 * self.message - 1
            sep = float((sign * (logits[0] - logits[1])).mean())
        st["separation"] += a * (sep - st["separation"])
        if self.cfg.target_margin is not None and k >= 20:
            self.reached = self.reached or st["separation"] > self.cfg.target_margin
            lo, hi = self.cfg.weight_range
            self.weight = min(max(self.weight * (0.98 if st["separation"] > self.cfg.target_margin else 1.02), lo), hi)
        st["weight"] = self.weight
        return loss

    @torch.no_grad()
    def calibrate(self, n: int = 64) -> torch.Tensor:
        """Set the decoder's :attr:`~WatermarkDecoder.null` to its mean logits over ``n`` patches of the base
        model (random novel views, attacked as in training) and ``n`` of the training photos; returns it."""
        out = []
        for _ in range(n):
            o, d = self._patch_rays()
            P = self.cfg.patch
            neg = render_rays(self.base.field, self.base.occ, o, d, self.base.settings(inference=True))["rgb"]
            neg = neg.clamp(0, 1).reshape(P, P, 3).permute(2, 0, 1)[None]
            for x in (neg, self._photo_patch()):
                out.append(self.decoder(self.attack(x, self.g))[0])
        self.decoder.null.copy_(torch.stack(out).mean(0))
        return self.decoder.null


def embed(base_run: Path, key: SignatureKey, out: Path, seconds: float, cfg: WatermarkConfig | None = None,
          weight: float | None = None, quiet: bool = True, progress_every: float = 0.0, steps: int | None = None):
    """Fine-tune ``base_run`` for ``seconds`` (photometric loss + the watermark term with weight
    ``cfg.weight``; ``weight=0`` is the control: the same fine-tune without the term) into the run directory
    ``out`` (config, ``checkpoints/last.pt``: a normal run for ``privnerf render`` / ``eval``). Returns
    ``(trainer, decoder or None, stats)``. Learning rates restart at the run's base rates and decay over the
    fine-tune as in training. ``steps``: also stop after that many steps (an equal-steps control)."""
    from privnerf.cli.train import load_split
    from privnerf.train.checkpoint import atomic_write_text
    from privnerf.train.config import config_from_dict
    from privnerf.train.trainer import Trainer, config_to_dict, trainer_from_checkpoint

    cfg = cfg or WatermarkConfig()
    if weight is not None:
        cfg = WatermarkConfig(**{**asdict(cfg), "weight": weight})
    path = Path(base_run) / "checkpoints" / "last.pt"
    if not path.is_file():
        raise SceneError(base_run, "no checkpoints/last.pt (is it a privnerf run directory?)")
    try:
        st = torch.load(path, map_location="cpu", weights_only=False)
        tcfg = config_from_dict(st["config"])
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file gets one clear error
        raise SceneError(path, f"not a privnerf checkpoint ({type(e).__name__}: {e})") from None
    tcfg.ownership.key = None
    tcfg.device = "cpu" if tcfg.device == "auto" else tcfg.device
    tcfg.max_time, tcfg.steps, tcfg.output = float(seconds), int(steps or 10**9), str(out)
    scene = load_split(tcfg, "train")
    t = Trainer(tcfg, scene, Path(out))
    t.load_state(st, with_optim=False)
    t._build_optimizers()
    t.step_count, t.train_time, t.timeline, t.curve = 0, 0.0, [], []
    decoder = wl = None
    if cfg.weight > 0:
        base = trainer_from_checkpoint(Path(base_run), tcfg.device)
        torch.manual_seed(cfg.seed)
        decoder = WatermarkDecoder(MESSAGE_BITS, cfg.decoder_width, cfg.patch)
        wl = WatermarkLoss(t, base, decoder, message_bits(key), cfg)
        t.extra_loss = wl
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / "config.json", json.dumps(config_to_dict(tcfg), indent=2) + "\n")
    t0 = time.perf_counter()
    if progress_every and not quiet:
        stop = tcfg.max_time
        mark = progress_every
        while t.train_time < stop:
            tcfg.max_time = min(mark, stop)
            t.train(quiet=True)
            print(f"[watermark] {t.train_time:.0f}s step {t.step_count} " + (" ".join(
                f"{k}={v:.3f}" for k, v in wl.stats.items() if k != "steps") if wl else ""), flush=True)
            mark += progress_every
        tcfg.max_time = stop
    else:
        t.train(quiet=quiet)
    t.extra_loss = None
    if wl is not None:
        decoder.eval()
        wl.calibrate()
    stats = {"steps": t.step_count, "train_time_s": t.train_time, "wall_s": time.perf_counter() - t0,
             "watermark": asdict(cfg), **({"running": dict(wl.stats)} if wl else {})}
    return t, (decoder.eval() if decoder is not None else None), stats


# ------------------------------------------------------------------------------------------- reading


def tiles(img: torch.Tensor, size: int, min_content: float = 0.5) -> torch.Tensor:
    """``(3, H, W)`` -> ``(n, 3, size, size)`` non-overlapping tiles (centred grid) with at least
    ``min_content`` of their pixels off the background (more than 0.1 from the median colour of the image's
    one-pixel border); all tiles when none qualifies, the whole image when it is smaller than a tile."""
    _, h, w = img.shape
    if h < size or w < size:
        return img[None]
    border = torch.cat([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], dim=1)
    bg = border.median(dim=1).values
    ny, nx = h // size, w // size
    t0, l0 = (h - ny * size) // 2, (w - nx * size) // 2
    grid = img[:, t0:t0 + ny * size, l0:l0 + nx * size].reshape(3, ny, size, nx, size).permute(1, 3, 0, 2, 4)
    grid = grid.reshape(ny * nx, 3, size, size)
    content = ((grid - bg[None, :, None, None]).abs().amax(1) > 0.1).float().mean(dim=(1, 2))
    keep = content >= min_content
    return grid[keep] if bool(keep.any()) else grid


@torch.no_grad()
def view_logits(decoder: WatermarkDecoder, images: list[torch.Tensor]) -> torch.Tensor:
    """``(n_views, bits)``: per image ``(3, H, W)``, the decoder's logits averaged over its content tiles."""
    return torch.stack([decoder.read(tiles(im, decoder.patch)).mean(0) for im in images])


def score(logits: torch.Tensor, message: torch.Tensor) -> dict:
    """Bit statistics of ``(n_views, bits)`` logits against ``message`` ``(bits,)``: the mean's bit accuracy,
    matches, the binomial chance, the agreement (mean of ``(2 m - 1) * mean logit``), per-view accuracies and
    the verdict."""
    mean = logits.mean(0)
    bits = message.numel()
    match = int(((mean > 0).float() == message).sum())
    per_view = ((logits > 0).float() == message[None]).float().mean(1)
    agreement = float(((2 * message - 1) * mean).mean())
    p = binomial_tail(match, bits)
    return {"views": int(logits.shape[0]), "bits": bits, "matches": match, "bit_accuracy": match / bits,
            "chance_probability": p, "agreement": agreement,
            "per_view_bit_accuracy_mean": float(per_view.mean()), "per_view_bit_accuracy_min": float(per_view.min()),
            "agreement_bar": MIN_AGREEMENT, "verified": bool(p < FALSE_POSITIVE and agreement > MIN_AGREEMENT)}


def read_images(decoder: WatermarkDecoder, key: SignatureKey, images: list[torch.Tensor]) -> dict:
    """:func:`score` of ``images`` (each ``(3, H, W)`` in ``[0, 1]``) against the key's message."""
    if not images:
        raise ValueError("no images to read")
    return score(view_logits(decoder, images), message_bits(key, decoder.bits))


def load_image_dir(folder: Path) -> tuple[list[torch.Tensor], list[str]]:
    """Every ``.png``/``.jpg``/``.jpeg``/``.webp`` in ``folder`` (sorted; RGBA composited on white) as
    ``(3, H, W)`` float tensors; :class:`SceneError` naming the folder or the file when there is nothing to read."""
    from privnerf.data.io import read_rgba

    folder = Path(folder)
    if not folder.is_dir():
        raise SceneError(folder, "no such image folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
                   and not p.name.endswith(("_depth.png", "_gt.png")))
    if not files:
        raise SceneError(folder, "no .png/.jpg images in this folder (renders named *_gt/*_depth are skipped)")
    out = []
    for f in files:
        rgba, _ = read_rgba(f)
        rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        out.append(torch.from_numpy(np.ascontiguousarray(rgb)).float().permute(2, 0, 1))
    return out, [f.name for f in files]


@torch.no_grad()
def render_poses(trainer, poses, intrinsics, h: int, w: int) -> list[torch.Tensor]:
    """``trainer``'s renders ``(3, h, w)`` from cameras ``poses`` ``(n, 4, 4)`` with ``intrinsics`` ``(4,)``
    (inference settings)."""
    intr = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float32)
    return [render_image(trainer.field, trainer.occ, torch.as_tensor(np.asarray(p), dtype=torch.float32), intr, h, w,
                         trainer.settings(inference=True), chunk=trainer.cfg.render.chunk)["rgb"]
            .permute(2, 0, 1).contiguous().cpu() for p in poses]


def render_views(trainer, scene, n: int | None = None) -> list[torch.Tensor]:
    """``trainer``'s renders ``(3, H, W)`` of ``scene``'s first ``n`` cameras (inference settings)."""
    k = scene.num_views if n is None else min(n, scene.num_views)
    return [render_poses(trainer, scene.c2w[i:i + 1], scene.intrinsics[i], *scene.hw(i))[0] for i in range(k)]


__all__ = ["ATTACKS", "Attack", "DECODER_FORMAT", "FALSE_POSITIVE", "MESSAGE_BITS", "MIN_AGREEMENT", "MIN_VIEWS_ADVISED", "WatermarkConfig",
           "WatermarkDecoder", "WatermarkLoss", "center_crop", "decoder_path", "embed", "jpeg", "load_decoder",
           "load_image_dir", "message_bits", "noise", "novel_poses", "read_images", "render_poses", "render_views", "resize",
           "save_decoder", "score", "tiles", "view_logits"]
