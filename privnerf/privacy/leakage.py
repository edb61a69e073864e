"""Personal-content leakage: how well a model the server can access reproduces a user's personal content.

DecentNeRF's measure (Sec. 6, Fig. 7): render the server-accessible model at a user's *training* views and
score it against the user's photo only inside the personal-content mask. Higher PSNR = more leakage. Our
exact definition (the paper leaves it open): per view, PSNR over the pixels of that user's static person
(mask label ``user + 1``), from the mean squared error of 8-bit-rounded colours; per user, the mean over
its views; overall, the mean over users. Only the masked pixels' rays are rendered, so it is cheap.

A number alone says little: how far a person's colours are from what stands behind them decides it. The
**person-free reference** (:func:`person_free_psnr`) scores the crowd's clean copy of each training view (no
people, no appearance change; ``clean_path`` in the crowd dataset) the same way: it is what a perfect model of
the shared scene, with nobody in it, scores. Leakage near the reference means the server's model shows the
place and not the person; above it, some of the person is there. (It is the leakage analogue of the split
attacks' constant-colour image.) On the built-in 5-user crowd the reference is 12.3 dB (pale figures on a
pale stage), on ``decentnerf-lego-20`` 4.6 dB (dark figures on white), so a target in absolute dB, such as the
paper's 9 dB, means different things on different crowds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from privnerf.data.cameras import rays_from_pixels
from privnerf.data.errors import SceneError
from privnerf.data.io import read_image
from privnerf.data.scene import Scene
from privnerf.render.renderer import RenderSettings, render_rays


def masked_psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR of ``(m, 3)`` colours in [0, 1] after 8-bit rounding. Identical colours score 54.15 dB (the error
    is floored at half an 8-bit step), so that a mean over views stays finite: an untrained white model in
    front of a white background matches the person-free view exactly."""
    p = np.round(np.clip(pred, 0, 1) * 255) / 255
    t = np.round(np.clip(target, 0, 1) * 255) / 255
    mse = max(float(np.mean((p - t) ** 2)), (0.5 / 255) ** 2)
    return -10 * math.log10(mse)


@torch.no_grad()
def render_pixels(field, occ, settings: RenderSettings, scene: Scene, view: int, vs: np.ndarray, us: np.ndarray,
                  chunk: int = 16384) -> np.ndarray:
    """Render pixels ``(v, u)`` of ``view`` → ``(m, 3)`` colours."""
    c2w = torch.from_numpy(scene.c2w[view]).float()
    intr = torch.from_numpy(scene.intrinsics[view]).float()
    u = torch.from_numpy(us.astype(np.int64))
    v = torch.from_numpy(vs.astype(np.int64))
    o, d, _ = rays_from_pixels(c2w.expand(len(u), 4, 4), intr.expand(len(u), 4), u, v)
    dev = settings.background.device
    out = [render_rays(field, occ, o[i : i + chunk].to(dev), d[i : i + chunk].to(dev), settings)["rgb"].cpu()
           for i in range(0, len(u), chunk)]
    return torch.cat(out).numpy() if out else np.zeros((0, 3), np.float32)


def personal_views(scene: Scene, user: int, max_views: int | None = None) -> list[int]:
    """The user's views in which its static personal content is visible (mask label ``user + 1``)."""
    if scene.masks is None:
        raise ValueError("personal-content leakage needs the crowd dataset's masks")
    views = [i for i, m in enumerate(scene.frame_meta)
             if m.get("user_id") is not None and int(m["user_id"]) == user and np.any(scene.masks[i] == user + 1)]
    return views[:max_views] if max_views else views


def _personal_pixels(scene: Scene, user: int, max_views: int | None):
    """``(view, vs, us)`` for each of the user's views with its personal content: the pixels of its mask."""
    for view in personal_views(scene, user, max_views):
        vs, us = np.nonzero(scene.masks[view] == user + 1)
        yield view, vs, us


def personal_content_psnr(field, occ, settings: RenderSettings, scene: Scene, user: int,
                          max_views: int | None = 3) -> tuple[float | None, float | None]:
    """``(leakage, scene_psnr)`` for one user: the mean PSNR over its views inside its personal-content mask
    against its photos (``None`` if it has no such view), and the same renders against the person-free copies
    (``None`` without clean copies). A render that shows the place behind the person scores high on the second
    and low on leakage; one that shows the person, the other way round; a blurred render scores middling on
    both (which is why leakage alone, against its reference, is hard to read).
    """
    scores, scene_scores = [], []
    for view, vs, us in _personal_pixels(scene, user, max_views):
        pred = render_pixels(field, occ, settings, scene, view, vs, us)
        scores.append(masked_psnr(pred, scene.images[view][vs, us]))
        clean = clean_view(scene, view)
        if clean is not None:
            scene_scores.append(masked_psnr(pred, clean[vs, us]))
    if not scores:
        return None, None
    return float(np.mean(scores)), (float(np.mean(scene_scores)) if len(scene_scores) == len(scores) else None)


def clean_view(scene: Scene, view: int) -> np.ndarray | None:
    """The crowd's person-free copy of training ``view`` at the scene's resolution, or ``None`` if the dataset
    has none (crowds written before ``clean_path`` existed)."""
    rel = scene.frame_meta[view].get("clean_path")
    source = scene.meta.get("source")
    if rel is None or source is None:
        return None
    path = Path(source).parent / str(rel)
    if not path.exists():
        raise SceneError(path, f"clean copy of training view {view} named in the dataset is missing")
    img = read_image(path, downscale=int(scene.meta.get("downscale", 1) or 1))
    if img.shape[:2] != scene.hw(view):
        raise SceneError(path, f"clean copy is {img.shape[1]}x{img.shape[0]}, the view is "
                               f"{scene.hw(view)[1]}x{scene.hw(view)[0]}")
    return img


def person_free_copy(scene: Scene) -> Scene:
    """``scene`` with every photo replaced by the crowd's person-free copy (same cameras, masks and metadata):
    the training set of the ``oracle`` baseline. Raises :class:`SceneError` naming the dataset, or the missing
    file, when a view has no clean copy."""
    from dataclasses import replace

    images = []
    for i in range(scene.num_views):
        clean = clean_view(scene, i)
        if clean is None:
            raise SceneError(scene.meta.get("source", "dataset"),
                             f"training view {i} ({scene.names[i]}) has no person-free copy (clean_path); "
                             "make the crowd again with privnerf data crowd")
        images.append(clean)
    return replace(scene, images=images)


def person_free_psnr(scene: Scene, user: int, max_views: int | None = 3) -> float | None:
    """The leakage a perfect person-free model would score: the mean over the same views as
    :func:`personal_content_psnr` of the masked PSNR of the clean copy (``None`` without clean copies or
    without personal views)."""
    scores = []
    for view, vs, us in _personal_pixels(scene, user, max_views):
        clean = clean_view(scene, view)
        if clean is None:
            return None
        scores.append(masked_psnr(clean[vs, us], scene.images[view][vs, us]))
    return float(np.mean(scores)) if scores else None
