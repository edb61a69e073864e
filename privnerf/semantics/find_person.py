"""Find my person: one click on the user's own person in one of their photos → that person's mask in all of
the user's photos, computed on the user's device with JacobiNeRF (issue 28, part 6).

Everything runs where the photos are: the device trains a field on the user's own photos alone (the crowd's
other users' photos are not there), shapes it (:mod:`privnerf.semantics.shaping`), and propagates the one
click (:mod:`privnerf.semantics.propagate`'s resonance: the response of every pixel to a perturbation of the
colour head along the click's Jacobian). The masks stay on the device; DecentNeRF reads them there
(``FedConfig.private_masks``: the masked pixels never enter the user's training, so never its upload).

Decisions the paper leaves open (one click, one label, so its softmax over labels has nothing to choose
between), chosen on three users of ``decentnerf-lego-20`` (0-2) and applied unchanged to the other 17 and to
the demo crowd (docs/semantics.md):

* **Normalisation by the click.** Each view's response map is divided by the clicked pixel's own response
  (not by the view's maximum, which in a view where the person is absent makes whatever resonates most the
  person), after the code's clip and 3x3 blur.
* **Hysteresis and one object, where the click is.** A pixel is the person's if it lies in a connected region
  of response ``>= low`` that reaches ``>= high`` somewhere (scikit-image's hysteresis threshold). The field
  gives the clicked pixel a depth, so the click is a 3D point; in each photo the region kept is the one the
  point projects into, else the nearest within ``anchor_radius`` of the image diagonal, else none (the
  person is out of the photo or hidden). The response alone picks up whatever looks like the click (a
  yellow shirt resonates with the yellow digger: ``decentnerf-lego-20`` user 2, IoU 0.02 with the largest
  region kept).
* **Dilation for privacy.** The masks DecentNeRF uses are dilated by ``dilate`` pixels (a missed edge
  leaks; an extra background pixel costs little when other users photograph the same place); the IoU is
  measured before dilation.

``masks/<view>.png`` (255 = the person), ``overlays/<view>.png`` and ``find_person.json`` are written into
the output folder, whole or not at all (:func:`~privnerf.data.io.atomic_directory`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np
import torch

from privnerf.data.io import atomic_directory
from privnerf.semantics.jacobian import DEFAULT_VIEW
from privnerf.semantics.propagate import Click
from privnerf.semantics.shaping import ShapingConfig


@dataclass
class FindPersonConfig:
    train_time_s: float = 90.0
    """Seconds of ordinary training of the device's field on the user's photos (at most ``train_steps``)."""
    train_steps: int = 3000
    shaping: ShapingConfig = dc_field(default_factory=lambda: ShapingConfig(steps=400, quiet=True))
    """The shaping fine-tune (400 steps: a tenth of the built-in benchmark's budget per view is enough on 10
    photos)."""
    high: float = 0.6
    """Hysteresis: a region must reach this share of the click's own response somewhere."""
    low: float = 0.2
    """... and extends over pixels at this share or more."""
    min_opacity: float = 0.5
    """Pixels the field renders less opaque than this are never the person."""
    anchor_radius: float = 0.05
    """How far (share of the image diagonal) from the click's projection the kept region may lie."""
    object_radius: float | None = 0.08
    """Only pixels whose rendered surface point lies within this share of the scene box's diagonal of the
    click's 3D point can be the person (``None``: no 3D limit). A person is a bounded object; without the
    limit the region grows into whatever it touches and resonates alike (the digger's plate). 0.08 with
    ``low`` 0.2 was the best of radii 0.05-0.1 (and none) x ``high`` 0.5-0.7 x ``low`` 0.2-0.4 on lego-20 users
    0-2 (mean IoU 0.55 against 0.44 without the limit)."""
    dilate: int = 2
    """Pixels of dilation of the masks written for DecentNeRF (0 = none)."""
    t: float = 0.1
    seed: int = 0


def train_device_field(scene, cfg: FindPersonConfig, base=None, quiet: bool = True):
    """The device's field: a grid-field :class:`~privnerf.train.trainer.Trainer` trained on ``scene`` (the
    user's photos only) for ``cfg.train_time_s`` seconds or ``cfg.train_steps`` steps."""
    from tqdm.auto import tqdm

    from privnerf.train.config import TrainConfig
    from privnerf.train.trainer import Trainer

    tc = base if base is not None else TrainConfig()
    tc.steps, tc.seed = cfg.train_steps, cfg.seed
    trainer = Trainer(tc, scene)
    t0 = time.perf_counter()
    with tqdm(total=cfg.train_steps, disable=quiet, desc="device field") as bar:
        while trainer.step_count < cfg.train_steps and time.perf_counter() - t0 < cfg.train_time_s:
            trainer.maintenance()
            trainer.step()
            bar.update(1)
    trainer.train_time = time.perf_counter() - t0
    return trainer


def click_response(trainer, click: Click, view: str = DEFAULT_VIEW) -> tuple[torch.Tensor, float]:
    """The click's direction ``G`` ``(3, width)`` and its own (blurred, clipped) response, the unit of every
    view's map (the head at ``view``, as the field was shaped)."""
    from privnerf.semantics.propagate import label_directions

    _, G = label_directions(trainer, [click], view)
    sc = trainer.scene
    r = raw_response(trainer, G[0], sc.c2w[click.view], sc.intrinsics[click.view], *sc.hw(click.view), view=view)[0]
    return G[0], float(r[click.v, click.u])


@torch.no_grad()
def click_point(trainer, click: Click) -> np.ndarray | None:
    """The clicked pixel's surface point ``(3,)`` in the scene's frame (the field's expected depth along its
    ray), or ``None`` where the field renders nothing."""
    from privnerf.semantics.shaping import pixel_rays, render_composited

    o, d = pixel_rays(trainer, torch.tensor([click.view]), torch.tensor([click.u]), torch.tensor([click.v]))
    _, r = render_composited(trainer, o, d)
    depth = float(r["depth"][0])
    if not np.isfinite(depth):
        return None
    return (o[0] + depth * d[0]).cpu().numpy()


def project(point: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray) -> tuple[float, float] | None:
    """Pixel ``(u, v)`` (column, row; pixel centres at +0.5 as :func:`rays_from_pixels` casts them) of a world
    point in an OpenGL camera, or ``None`` behind it."""
    c2w = np.asarray(c2w, np.float64)
    p = c2w[:3, :3].T @ (np.asarray(point, np.float64) - c2w[:3, 3])
    if p[2] >= 0:
        return None
    fx, fy, cx, cy = np.asarray(intrinsics, np.float64)
    return float(fx * p[0] / -p[2] + cx - 0.5), float(-fy * p[1] / -p[2] + cy - 0.5)


def raw_response(trainer, G: torch.Tensor, c2w, intrinsics, h: int, w: int, t: float = 0.1, with_depth: bool = False,
                 view: str = DEFAULT_VIEW):
    """Response ``(h, w)`` of one camera to the perturbation ``G`` (clipped at 0.8, 3x3 Gaussian blur, as the
    official code) and the rendered opacity ``(h, w)`` (with ``with_depth`` also the ray distance, ``inf``
    where empty)."""
    from privnerf.semantics.propagate import clip_blur, view_activations, view_responses

    a, op, depth = view_activations(trainer, c2w, intrinsics, h, w, with_depth=True, view=view)
    r = clip_blur(view_responses(a, op, G[None], t))[0]
    return (r, op, depth) if with_depth else (r, op)


def near_click(depth: np.ndarray, c2w, intrinsics, point: np.ndarray, radius: float) -> np.ndarray:
    """Boolean ``(h, w)``: pixels whose rendered surface point (ray distance ``depth``) lies within ``radius``
    (scene units) of the click's point."""
    from privnerf.data.cameras import image_rays

    h, w = depth.shape
    o, d, _ = image_rays(torch.as_tensor(np.asarray(c2w), dtype=torch.float32),
                         torch.as_tensor(np.asarray(intrinsics), dtype=torch.float32), h, w)
    dep = torch.as_tensor(np.asarray(depth, np.float32)).reshape(-1, 1)
    x = o + torch.where(torch.isfinite(dep), dep, torch.zeros_like(dep)) * d
    close = (x - torch.as_tensor(point, dtype=torch.float32)).norm(dim=-1) <= radius
    return (close & torch.isfinite(dep[:, 0])).reshape(h, w).numpy()


def person_mask(response: np.ndarray, opacity: np.ndarray, cfg: FindPersonConfig,
                anchor: tuple[float, float] | None = None, anchored: bool = False,
                near: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``(h, w)`` mask from a click-normalised response map (see the module docstring). With
    ``anchored``, the region at (or within ``cfg.anchor_radius`` of) ``anchor`` (column, row; ``None``: the
    click's point is behind this camera) is kept; otherwise the region with the largest summed response.
    ``near`` (boolean ``(h, w)``, :func:`near_click`) limits the mask to pixels close to the click in 3D."""
    from skimage.filters import apply_hysteresis_threshold
    from skimage.measure import label

    keep = opacity >= cfg.min_opacity if near is None else (opacity >= cfg.min_opacity) & near
    m = apply_hysteresis_threshold(np.where(keep, response, 0.0), cfg.low, cfg.high)
    if not m.any() or (anchored and anchor is None):
        return np.zeros_like(m)
    lab = label(m, connectivity=2)
    if not anchored:
        sums = np.bincount(lab.ravel(), weights=response.ravel())
        sums[0] = -1.0
        return lab == int(np.argmax(sums))
    h, w = m.shape
    ys, xs = np.nonzero(m)
    dist = np.hypot(xs - anchor[0], ys - anchor[1])
    j = int(np.argmin(dist))
    if dist[j] > cfg.anchor_radius * math.hypot(h, w):
        return np.zeros_like(m)
    return lab == lab[ys[j], xs[j]]


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return mask
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=pixels)


def find_person(trainer, click: Click, cfg: FindPersonConfig, views: list[int] | None = None) -> dict:
    """Masks of the clicked person in the trainer's training views (all, or ``views``): ``{"masks": [bool
    (h, w)], "responses": [float (h, w)], "click_response": float, "click_point": [x, y, z], "anchors":
    [(u, v) or None]}``."""
    view = cfg.shaping.jacobian_view
    G, unit = click_response(trainer, click, view)
    point = click_point(trainer, click)
    if unit <= 0 or point is None:
        raise ValueError(f"the click at pixel ({click.u}, {click.v}) of view {click.view} has no response: the "
                         "field renders nothing there (click on the person)")
    sc = trainer.scene
    masks, responses, anchors = [], [], []
    radius = None if cfg.object_radius is None else cfg.object_radius * float(np.linalg.norm(np.ptp(sc.aabb, axis=0)))
    for i in views if views is not None else range(sc.num_views):
        r, op, depth = raw_response(trainer, G, sc.c2w[i], sc.intrinsics[i], *sc.hw(i), t=cfg.t, with_depth=True,
                                    view=view)
        r = (r / unit).numpy()
        anchor = project(point, sc.c2w[i], sc.intrinsics[i])
        near = None if radius is None else near_click(depth.numpy(), sc.c2w[i], sc.intrinsics[i], point, radius)
        responses.append(r)
        anchors.append(anchor)
        masks.append(person_mask(r, op.numpy(), cfg, anchor, anchored=True, near=near))
    return {"masks": masks, "responses": responses, "click_response": unit, "click_point": point.tolist(),
            "anchors": anchors}


def interior_click(scene, user: int, label: str = "me") -> Click:
    """The simulated user's click: the most interior pixel of its person (mask label ``user + 1``) over all of
    its photos, the image border counting as outside, so the click lands where the person is seen best (the
    first photo showing it may hold a 13-pixel sliver at the border: ``decentnerf-lego-20`` user 5). Benchmarks
    only: the ground-truth mask stands in for the person's eye."""
    from scipy.ndimage import distance_transform_edt

    if scene.masks is None:
        raise ValueError("simulating a click needs the crowd's masks")
    best = None
    for i in range(scene.num_views):
        m = np.asarray(scene.masks[i]) == user + 1
        if m.any():
            d = distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
            j = int(np.argmax(d))
            if best is None or d.flat[j] > best[0]:
                v, u = np.unravel_index(j, d.shape)
                best = (float(d.flat[j]), Click(i, int(u), int(v), label))
    if best is None:
        raise ValueError(f"user {user}'s photos never show its person")
    return best[1]


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """IoU of two boolean masks; ``None`` when both are empty."""
    union = np.logical_or(pred, gt).sum()
    return None if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def find_person_run(data: str, user: int, click: Click | None, out: Path, cfg: FindPersonConfig,
                    quiet: bool = False) -> dict:
    """``privnerf semantics find-person``: train the device field on user ``user``'s photos of crowd ``data``,
    shape it, propagate ``click`` (or, when ``None``, the simulated interior click) and write the masks."""
    import imageio.v3 as iio

    from privnerf.fed.local import load_user_scene
    from privnerf.semantics.shaping import ShapingTrainer

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; choose another --out")
    scene = load_user_scene(data, user)
    if click is None:
        click = interior_click(scene, user)
    if not 0 <= click.view < scene.num_views:
        raise ValueError(f"click view {click.view}: user {user} has {scene.num_views} photos")
    h, w = scene.hw(click.view)
    if not (0 <= click.u < w and 0 <= click.v < h):
        raise ValueError(f"click pixel ({click.u}, {click.v}) lies outside the {w}x{h} photo {click.view}")
    t0 = time.perf_counter()
    trainer = train_device_field(scene, cfg, quiet=quiet)
    t1 = time.perf_counter()
    ShapingTrainer(trainer, replace(cfg.shaping, quiet=quiet)).train()
    t2 = time.perf_counter()
    found = find_person(trainer, click, cfg)
    t3 = time.perf_counter()
    names = [Path(n).stem for n in scene.names]
    doc = {"data": str(data), "user": user, "click": {"view": scene.names[click.view], "pixel": [click.u, click.v]},
           "views": scene.names, "config": asdict(cfg), "click_response": found["click_response"],
           "click_point": found["click_point"],
           "times_s": {"field": t1 - t0, "shaping": t2 - t1, "propagation": t3 - t2}, "field_steps": trainer.step_count}
    if scene.masks is not None:
        ious = [mask_iou(m, np.asarray(g) == user + 1) for m, g in zip(found["masks"], scene.masks)]
        doc["iou_per_view"] = ious
        kept = [x for x in ious if x is not None]
        doc["iou"] = float(np.mean(kept)) if kept else None
    tint = np.array([230.0, 25.0, 75.0])
    with atomic_directory(out) as tmp:
        (tmp / "masks").mkdir()
        (tmp / "overlays").mkdir()
        for i, m in enumerate(found["masks"]):
            iio.imwrite(tmp / "masks" / f"{names[i]}.png", (dilate(m, cfg.dilate) * 255).astype(np.uint8))
            photo = np.clip(np.asarray(scene.images[i], np.float32), 0, 1) * 255
            a = 0.6 * m[..., None]
            iio.imwrite(tmp / "overlays" / f"{names[i]}.png", (photo * (1 - a) + tint * a).astype(np.uint8))
        (tmp / "find_person.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return doc


def read_private_masks(folder: Path, scene) -> list[np.ndarray]:
    """The user's own masks (``masks/<view stem>.png`` as :func:`find_person_run` writes them) for each of its
    training views, boolean ``(h, w)``; a clear error names a missing or misshapen file."""
    from privnerf.data.errors import SceneError
    from privnerf.data.io import read_image

    folder = Path(folder)
    out = []
    for i, name in enumerate(scene.names):
        path = folder / "masks" / f"{Path(name).stem}.png"
        if not path.exists():
            raise SceneError(path, f"no private mask for training view {name}")
        m = read_image(path)
        m = (m if m.ndim == 2 else m[..., 0]) > 0.5
        if m.shape != tuple(scene.hw(i)):
            raise SceneError(path, f"mask is {m.shape[1]}x{m.shape[0]}, the view is {scene.hw(i)[1]}x{scene.hw(i)[0]}")
        out.append(m)
    return out


__all__ = ["FindPersonConfig", "click_point", "find_person", "find_person_run", "interior_click", "mask_iou",
           "person_mask", "project", "read_private_masks", "train_device_field"]
