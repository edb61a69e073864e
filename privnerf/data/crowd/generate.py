"""Crowd datasets: split a scene's views among users and put each user's people into their photos.

The model of a crowd capture (after DecentNeRF's "Novel Blender" data, which was never released):

* every **user** owns a set of source views (their photos of the place), chosen by a **partition**:
  ``yaw-slices`` (user k gets the views whose camera yaw falls in the k-th of K equal slices; DecentNeRF's
  non-IID layout: 20 users x 18 degrees), ``random`` (an even random split) or ``overlap:DEG`` (yaw slices
  widened by DEG degrees, so neighbours share viewpoints; a shared view is written once per user, each
  copy with that user's people);
* **personal content**: ``static`` — one person per user standing at the same spot in all of that user's
  photos (the paper's personal content: multi-view consistent, so a NeRF can learn it); ``transient`` —
  people that change from photo to photo; ``both``;
* optional **appearance** change per photo (exposure and white balance, as between phones).

Output (``DIR``): a nerfstudio dataset whose ``train`` frames are the users' photos, with per-frame
``user_id``, ``source_view``, ``personal_fraction``, ``mask_path`` and ``clean_path`` (``clean/*.png``: the same
view with no people and no appearance change, the reference that tells what a person-free model scores on the
leakage measure), and whose ``test`` frames are the clean evaluation views; ``crowd.json`` (every parameter, every figure, per-user view counts and personal-pixel
fractions); ``contact_sheet.png``.

Mask convention (``masks/*.png``, 8-bit): 0 = the scene, ``k + 1`` = user k's static person, 255 = a
transient person. Nonzero means personal, as in :class:`privnerf.data.scene.Scene`. Note that nerfstudio
reads ``mask_path`` the other way round (black = ignore): to train nerfstudio on the clean pixels only,
invert the masks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from privnerf.data.builtin import hsv_colour
from privnerf.data.crowd.figures import PATTERNS, Figure, FigureStyle, insert_figures
from privnerf.data.crowd.source import CrowdSource, load_crowd_source
from privnerf.data.io import atomic_directory, atomic_write_json, write_image
from privnerf.data.scene import Scene

TRANSIENT_LABEL = 255
SKIN_TONES = ((0.96, 0.80, 0.69), (0.88, 0.67, 0.52), (0.76, 0.55, 0.38), (0.55, 0.37, 0.24), (0.38, 0.25, 0.16))


@dataclass
class CrowdConfig:
    """Everything that defines a crowd dataset (all of it is recorded in ``crowd.json``)."""

    scene: str = "builtin"
    users: int = 20
    partition: str = "yaw-slices"
    """``yaw-slices``, ``random`` or ``overlap:DEG``."""
    personal: str = "static"
    """``static``, ``transient`` or ``both``."""
    transient_per_view: int = 5
    seed: int = 0
    appearance: float = 0.0
    """Strength of per-photo exposure / white-balance change (0 = none, 1 = +-0.5 stops, +-8% per channel)."""
    figure_scale: float = 1.0
    supersample: int = 3
    slices: list[tuple[float, float]] | None = None
    """Explicit per-user yaw slices ``(centre_deg, width_deg)``; overrides ``partition`` (presets use it)."""
    occlusion: list[str] | None = None
    """Per user ``"heavy"`` (a bigger person close in, more transient people) or ``"light"``; ``None``: normal."""

    def check(self, n_views: int | None = None) -> None:
        """Raise ``ValueError`` on bad settings; with ``n_views``, also when the source has too few views."""
        if self.users < 1:
            raise ValueError(f"--users must be >= 1, got {self.users}")
        if self.users >= TRANSIENT_LABEL:
            raise ValueError(f"--users must be below {TRANSIENT_LABEL} (mask labels are 8-bit), got {self.users}")
        if self.personal not in ("static", "transient", "both"):
            raise ValueError(f"--personal must be static, transient or both, got {self.personal!r}")
        if not (self.partition in ("yaw-slices", "random") or self.partition.startswith("overlap:")):
            raise ValueError(f"--partition must be yaw-slices, random or overlap:DEG, got {self.partition!r}")
        if self.partition.startswith("overlap:"):
            try:
                deg = float(self.partition.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"--partition overlap:DEG needs a number of degrees, got {self.partition!r}") from None
            if not 0 <= deg < 360:
                raise ValueError(f"overlap must be in [0, 360) degrees, got {deg}")
        if n_views is not None and self.users > n_views:
            raise ValueError(f"--users {self.users} is more than the {n_views} views the source has; "
                             "every user needs at least one photo")
        if self.slices is not None and len(self.slices) != self.users:
            raise ValueError(f"{len(self.slices)} slices given for {self.users} users")
        if self.occlusion is not None and len(self.occlusion) != self.users:
            raise ValueError(f"{len(self.occlusion)} occlusion levels given for {self.users} users")
        if self.supersample < 1 or self.transient_per_view < 0 or self.figure_scale <= 0 or self.appearance < 0:
            raise ValueError("supersample >= 1, transient_per_view >= 0, figure_scale > 0 and appearance >= 0 required")


# -- partition ------------------------------------------------------------------------------------------
def user_slices(cfg: CrowdConfig) -> list[tuple[float, float]] | None:
    """Per-user ``(centre, width)`` yaw slices in degrees, or ``None`` for the random partition."""
    if cfg.slices is not None:
        return [(float(c), float(w)) for c, w in cfg.slices]
    if cfg.partition == "random":
        return None
    width = 360.0 / cfg.users
    extra = float(cfg.partition.split(":", 1)[1]) if cfg.partition.startswith("overlap:") else 0.0
    return [((k + 0.5) * width, width + extra) for k in range(cfg.users)]


def assign_views(azimuths: np.ndarray, cfg: CrowdConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Source view indices of each user (a view may go to several users when slices overlap)."""
    n = len(azimuths)
    slices = user_slices(cfg)
    if slices is None:
        return [np.sort(p) for p in np.array_split(rng.permutation(n), cfg.users)]
    out = []
    for k, (centre, width) in enumerate(slices):
        delta = (azimuths - centre + 180.0) % 360.0 - 180.0
        views = np.nonzero((delta >= -width / 2) & (delta < width / 2))[0]
        if len(views) == 0:
            raise ValueError(f"user {k} gets no views: no source camera has a yaw within {width:g} degrees "
                             f"around {centre:g} (the source has {n} views); use fewer users or wider slices")
        out.append(views)
    return out


# -- people ---------------------------------------------------------------------------------------------


def user_style(k: int, rng: np.random.Generator) -> FigureStyle:
    """A recognisable outfit for user ``k``: the shirt hue steps by the golden ratio, so neighbours differ."""
    hue = (k * 0.618034 + rng.uniform(-0.03, 0.03)) % 1.0
    return FigureStyle(
        shirt=hsv_colour(hue, rng.uniform(0.6, 0.85), rng.uniform(0.75, 0.95)),
        trousers=hsv_colour(hue + 0.5, rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.45)),
        skin=SKIN_TONES[int(rng.integers(len(SKIN_TONES)))],
        pattern=PATTERNS[k % len(PATTERNS)],
        pattern_colour=hsv_colour(hue + 0.15, rng.uniform(0.1, 0.4), rng.uniform(0.85, 1.0)),
        hat=hsv_colour(hue + 0.33, 0.7, 0.6) if rng.uniform() < 0.5 else None,
        build=float(rng.uniform(0.85, 1.2)),
    )


def random_style(rng: np.random.Generator) -> FigureStyle:
    return user_style(int(rng.integers(1000)), rng)


def _figure(rng, src: CrowdSource, style: FigureStyle, scale: float, owner: int, transient: bool) -> Figure:
    return Figure(
        position=(0.0, 0.0), ground_z=src.ground_z, yaw=float(rng.uniform(0, 2 * math.pi)),
        height=float(src.content_height * rng.uniform(0.38, 0.5) * scale), style=style,
        arm_angles=(float(rng.uniform(-0.5, 0.8)), float(rng.uniform(-0.5, 0.8))),
        arm_spread=float(rng.uniform(0.05, 0.5)), stride=float(rng.uniform(-0.3, 0.3)),
        owner=owner, transient=transient,
    )


def _fits(fig: Figure, xy: np.ndarray, src: CrowdSource, others: list[Figure]) -> bool:
    r = fig.footprint_radius()
    if np.linalg.norm(xy - src.centre) + r > src.stage_radius:
        return False
    for lo, hi in src.obstacles:
        nearest = np.clip(xy, lo, hi)
        if np.linalg.norm(xy - nearest) < r + 0.02:
            return False
    return all(np.linalg.norm(xy - np.asarray(o.position)) > r + o.footprint_radius() for o in others)


def place(fig: Figure, rng, src: CrowdSource, azimuth: float, spread: float, others: list[Figure],
          radius_range: tuple[float, float] = (0.25, 1.0)) -> Figure | None:
    """Stand ``fig`` on the stage at a yaw within ``spread`` degrees of ``azimuth`` (about the centre),
    clear of the content and of ``others``; ``None`` if no spot was found in 300 tries."""
    for _ in range(300):
        a = math.radians(azimuth + rng.uniform(-spread, spread))
        r = src.stage_radius * rng.uniform(*radius_range)
        xy = src.centre + r * np.array([math.cos(a), math.sin(a)])
        if _fits(fig, xy, src, others):
            return replace(fig, position=(float(xy[0]), float(xy[1])), _prims=[])
    return None


def _circular_mean(deg: np.ndarray) -> float:
    r = np.radians(deg)
    return float(np.degrees(math.atan2(np.sin(r).mean(), np.cos(r).mean())) % 360.0)


# -- generation -----------------------------------------------------------------------------------------
@dataclass
class CrowdResult:
    train: Scene
    eval: Scene
    info: dict[str, Any] = field(default_factory=dict)
    clean: list[np.ndarray] = field(default_factory=list)
    """Per training frame, the same view without any person and without the appearance change: what a perfect
    person-free model of the scene renders there (the reference of the leakage measure)."""


def generate_crowd(cfg: CrowdConfig, src: CrowdSource | None = None, quiet: bool = False) -> CrowdResult:
    """Build the crowd dataset in memory (see :func:`write_crowd` to save it)."""
    src = load_crowd_source(cfg.scene) if src is None else src
    cfg.check(src.scene.num_views)
    rng = np.random.default_rng([int(cfg.seed), 0xC0D])
    az = src.azimuths()
    views = assign_views(az, cfg, rng)
    slices = user_slices(cfg)
    static_on = cfg.personal in ("static", "both")
    transient_on = cfg.personal in ("transient", "both")

    users = []
    placed: list[Figure] = []
    for k in range(cfg.users):
        level = cfg.occlusion[k] if cfg.occlusion else "normal"
        scale = cfg.figure_scale * {"heavy": 1.6, "light": 0.8}.get(level, 1.0)
        aim = slices[k][0] if slices else _circular_mean(az[views[k]])
        style = user_style(k, rng)
        fig = None
        if static_on:
            near = (0.25, 0.6) if level == "heavy" else (0.25, 1.0)
            fig = place(_figure(rng, src, style, scale, k, False), rng, src, aim, 25.0, placed, near)
            if fig is None:  # crowded stage: drop the no-overlap-with-other-users rule, keep the content rule
                fig = place(_figure(rng, src, style, scale, k, False), rng, src, aim, 60.0, [], (0.2, 1.0))
            if fig is None:
                raise ValueError(f"no free spot for user {k}'s person on the stage (radius {src.stage_radius:.2f})")
            placed.append(fig)
        n_trans = {"heavy": cfg.transient_per_view + 2, "light": max(cfg.transient_per_view - 2, 0)}.get(
            level, cfg.transient_per_view) if transient_on else 0
        users.append({"user_id": k, "occlusion": level, "aim_deg": aim, "static": fig, "transients": n_trans,
                      "scale": scale, "views": views[k]})

    bg = tuple(src.scene.background or (1.0, 1.0, 1.0))
    images, masks, c2ws, intrs, names, metas, clean = [], [], [], [], [], [], []
    figures_json = []
    per_user = []
    light = src.light_dir
    total = sum(len(u["views"]) for u in users)
    bar = tqdm(total=total, desc="crowd", disable=quiet, dynamic_ncols=True)
    with torch.no_grad():
        for u in users:
            k = u["user_id"]
            fractions = []
            for v in u["views"]:
                figs, labels = [], []
                if u["static"] is not None:
                    figs.append(u["static"])
                    labels.append(k + 1)
                for _ in range(u["transients"]):
                    t = place(_figure(rng, src, random_style(rng), u["scale"], k, True), rng, src, float(az[v]),
                              70.0, figs, (0.2, 1.0))
                    if t is not None:
                        figs.append(t)
                        labels.append(TRANSIENT_LABEL)
                img, label, _ = insert_figures(
                    src.scene.images[v], src.alphas[v], src.scene.depths[v], figs, labels, src.scene.c2w[v],
                    src.scene.intrinsics[v], bg, cfg.supersample, light)
                meta: dict[str, Any] = {"user_id": k, "source_view": src.scene.names[v], "azimuth_deg": float(az[v]),
                                        "clean_path": f"clean/train_{len(images):05d}.png"}
                clean.append(np.asarray(src.scene.images[v], np.float32))
                if cfg.appearance > 0:
                    ev = float(rng.uniform(-0.5, 0.5) * cfg.appearance)
                    wb = 1.0 + rng.uniform(-0.08, 0.08, 3) * cfg.appearance
                    wb = wb / wb.mean()
                    img = np.clip(img * (2.0**ev) * wb[None, None, :], 0, 1).astype(np.float32)
                    meta["appearance"] = {"exposure_ev": ev, "white_balance": [float(x) for x in wb]}
                frac = float((label > 0).mean())
                meta["personal_fraction"] = frac
                meta["static_fraction"] = float(((label > 0) & (label != TRANSIENT_LABEL)).mean())
                trans = [f for f in figs if f.transient]
                ids = list(range(len(figures_json), len(figures_json) + len(trans)))
                figures_json += [{"id": i, "frame": len(images), **f.describe()} for i, f in zip(ids, trans)]
                meta["transient_figures"] = ids
                fractions.append(frac)
                images.append(img)
                masks.append(label)
                c2ws.append(src.scene.c2w[v])
                intrs.append(src.scene.intrinsics[v])
                names.append(f"user{k:02d}/{Path(src.scene.names[v]).stem}")
                metas.append(meta)
                bar.update(1)
            per_user.append({"user_id": k, "views": int(len(u["views"])), "occlusion": u["occlusion"],
                             "slice_deg": list(slices[k]) if slices else None,
                             "personal_fraction": float(np.mean(fractions)),
                             "static_figure": u["static"].describe() if u["static"] is not None else None,
                             "transient_per_view": u["transients"]})
    bar.close()
    train = Scene(images=images, c2w=np.stack(c2ws), intrinsics=np.stack(intrs), near=src.scene.near,
                  far=src.scene.far, aabb=src.scene.aabb, scene_type=src.scene.scene_type,
                  background=src.scene.background, names=names, masks=masks, frame_meta=metas,
                  meta={"split": "train", "source": "crowd"})
    ev_scene = replace(src.eval_scene, masks=None, depths=None, semantics=None, instances=None,
                       frame_meta=[{"clean": True} for _ in range(src.eval_scene.num_views)],
                       meta={"split": "test", "source": "crowd-eval"})
    info = {
        "config": asdict(cfg),
        "source": src.description,
        "stage": {"ground_z": src.ground_z, "centre": [float(c) for c in src.centre],
                  "radius": src.stage_radius, "content_height": src.content_height},
        "mask_labels": {"0": "scene", "1..K": "static person of user (value - 1)", "255": "transient person"},
        "num_train_frames": train.num_views,
        "num_eval_views": ev_scene.num_views,
        "personal_fraction": float(np.mean([m["personal_fraction"] for m in metas])),
        "users": per_user,
        "transient_figures": figures_json,
    }
    return CrowdResult(train, ev_scene, info, clean)


def write_crowd(result: CrowdResult, out_dir: Path) -> Path:
    """Write the dataset, ``crowd.json`` and ``contact_sheet.png`` into ``out_dir`` atomically."""
    from privnerf.data.crowd.contact_sheet import contact_sheet
    from privnerf.data.nerfstudio import write_nerfstudio

    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite_if="crowd.json") as tmp:
        write_nerfstudio({"train": result.train, "test": result.eval}, tmp)
        for meta, img in zip(result.train.frame_meta, result.clean):
            write_image(tmp / meta["clean_path"], img)
        atomic_write_json(tmp / "crowd.json", result.info)
        contact_sheet(result.train, result.info).save(tmp / "contact_sheet.png")
    return out_dir
