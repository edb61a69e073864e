"""Where crowd datasets come from: a scene with per-view depth, plus where people can stand in it.

:func:`load_crowd_source` accepts

* ``builtin`` or ``builtin:seed=3,size=100,n_train=100`` — the built-in scene (its train split is the source,
  its test split the clean evaluation set; depth, ground and object footprints are known exactly);
* ``lego`` — ``$PRIVNERF_DATA/nerf_synthetic/lego`` (the default data folder is ``../shared/data`` beside
  the repository);
* a NeRF-synthetic folder whose source split has ``*_depth_0001.png`` renders (the lego **test** split does;
  decoded by :func:`privnerf.data.blender.decode_blender_depth`), evaluated on its **val** split;
* a nerfstudio dataset with ``depth_file_path`` on every source frame.

For data other than the built-in scene, the ground is the plane through the lowest content point seen
(the 0.5th percentile of unprojected depth) and the content's footprint is the box of the unprojected
points, so figures stand beside the object, never inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from privnerf.data.errors import SceneError
from privnerf.data.paths import data_root
from privnerf.data.scene import Scene


@dataclass
class CrowdSource:
    """Source views with what insertion needs, and the stage the figures stand on.

    Attributes:
        scene: the source views; ``depths`` (camera -Z) are set for every view.
        alphas: per view ``(H, W)`` coverage of the scene content in [0, 1].
        eval_scene: the clean evaluation views.
        ground_z: height of the ground plane.
        stage_radius: figures stand within this distance of ``centre`` (xy).
        centre: ``(2,)`` xy centre of the content.
        obstacles: xy boxes ``(lo, hi)`` (each ``(2,)``) figures must not overlap.
        content_height: vertical extent of the content (sets the figures' size).
        light_dir: direction towards the light, for shading the figures like the scene.
        description: what was loaded, for ``crowd.json``.
    """

    scene: Scene
    alphas: list[np.ndarray]
    eval_scene: Scene
    ground_z: float
    stage_radius: float
    centre: np.ndarray
    obstacles: list[tuple[np.ndarray, np.ndarray]]
    content_height: float
    light_dir: tuple[float, float, float] | None = None
    description: dict = field(default_factory=dict)

    def azimuths(self) -> np.ndarray:
        """Camera yaw of each source view in degrees [0, 360), measured around +Z from +X about ``centre``."""
        pos = self.scene.c2w[:, :3, 3]
        return np.degrees(np.arctan2(pos[:, 1] - self.centre[1], pos[:, 0] - self.centre[0])) % 360.0


def load_crowd_source(spec: str) -> CrowdSource:
    """Load a source by name or path (see the module docstring); bad input raises :class:`SceneError`."""
    spec = str(spec)
    if spec == "builtin" or spec.startswith("builtin:"):
        return _builtin_source(spec)
    path = data_root() / "nerf_synthetic" / "lego" if spec == "lego" else Path(spec)
    if not path.exists():
        hint = " (set PRIVNERF_DATA to the shared data folder)" if spec == "lego" else ""
        raise SceneError(path, f"scene not found{hint}")
    if (path / "transforms_test.json").is_file() or (path / "transforms_train.json").is_file():
        return _blender_source(path)
    if (path / "transforms.json").is_file() or path.name == "transforms.json":
        return _nerfstudio_source(path)
    raise SceneError(path, "not a crowd source: expected 'builtin', 'lego', a NeRF-synthetic folder with depth "
                           "renders, or a nerfstudio dataset with depth_file_path")


def _builtin_source(spec: str) -> CrowdSource:
    from privnerf.data.loader import load_scene

    scene = load_scene(spec, "train")
    eval_scene = load_scene(spec, "test")
    alphas = [np.isfinite(d).astype(np.float32) for d in scene.depths]
    obstacles = []
    top = 0.0
    for inst in scene.meta["instances"]:
        if inst["class"] == "ground":
            continue
        c, r = np.asarray(inst["centre"][:2], np.float64), float(inst["footprint_radius"])
        obstacles.append((c - r, c + r))
        top = max(top, float(inst["bbox"][1][2]))
    return CrowdSource(
        scene=scene, alphas=alphas, eval_scene=eval_scene, ground_z=0.0,
        stage_radius=float(scene.meta["ground_radius"]), centre=np.zeros(2), obstacles=obstacles,
        content_height=top, light_dir=tuple(scene.meta["light_dir"]),
        description={"kind": "builtin", "spec": spec, "source_split": "train", "eval_split": "test"},
    )


def _blender_source(root: Path) -> CrowdSource:
    from privnerf.data.blender import decode_blender_depth, load_blender
    from privnerf.data.io import read_rgba

    split = "test"
    if not (root / "transforms_test.json").is_file():
        raise SceneError(root / "transforms_test.json", "missing: the crowd source is the split with depth renders")
    scene = load_blender(root, split, background=(1.0, 1.0, 1.0))
    depths, alphas = [], []
    for i, meta in enumerate(scene.frame_meta):
        if "depth_path" not in meta:
            raise SceneError(root / f"transforms_{split}.json",
                             f"view {scene.names[i]} has no depth render (*_depth_0001.png); the crowd generator "
                             "needs per-view depth to place people behind or in front of the content")
        rgba, has_alpha = read_rgba(root / scene.names[i])
        alpha = rgba[..., 3] if has_alpha else np.ones(rgba.shape[:2], np.float32)
        alphas.append(alpha.astype(np.float32))
        depths.append(decode_blender_depth(Path(meta["depth_path"]), scene.intrinsics[i], alpha))
    scene.depths = depths
    eval_split = "val" if (root / "transforms_val.json").is_file() else "train"
    eval_scene = load_blender(root, eval_split, background=(1.0, 1.0, 1.0))
    src = _measured_stage(scene, alphas, eval_scene)
    src.description = {"kind": "blender", "path": str(root), "source_split": split, "eval_split": eval_split,
                       "depth": "NeRF-synthetic 8-bit depth renders, decoded as ray distance "
                                "7.55 - 7.16 * value/255 (see privnerf.data.blender)"}
    return src


def _nerfstudio_source(path: Path) -> CrowdSource:
    from privnerf.data.nerfstudio import load_nerfstudio

    scene = load_nerfstudio(path, "train")
    if scene.depths is None or any(not np.isfinite(d).any() for d in scene.depths):
        raise SceneError(path, "source has no depth_file_path on every frame; the crowd generator needs per-view "
                               "depth to place people behind or in front of the content")
    eval_scene = load_nerfstudio(path, "test")  # falls back to the val list when there is no test list
    alphas = [np.isfinite(d).astype(np.float32) for d in scene.depths]
    src = _measured_stage(scene, alphas, eval_scene)
    src.description = {"kind": "nerfstudio", "path": str(path), "source_split": "train"}
    return src


def _measured_stage(scene: Scene, alphas: list[np.ndarray], eval_scene: Scene) -> CrowdSource:
    """Ground, footprint and size of the content from its unprojected depth (every 4th pixel of every view)."""
    from privnerf.data.cameras import image_rays

    import torch

    pts = []
    for i, d in enumerate(scene.depths):
        h, w = d.shape
        o, dirs, zs = image_rays(torch.from_numpy(scene.c2w[i]), torch.from_numpy(scene.intrinsics[i]), h, w)
        z = torch.from_numpy(np.ascontiguousarray(d)).reshape(-1)
        keep = torch.isfinite(z) & (torch.arange(z.numel()) % 4 == 0)
        pts.append((o[keep] + dirs[keep] * (z[keep] * zs[keep])[:, None]).numpy())
    p = np.concatenate(pts)
    if len(p) < 100:
        raise SceneError(scene.meta.get("source", "scene"), "depth maps hold almost no content; cannot place people")
    lo, hi = np.percentile(p, 0.5, axis=0), np.percentile(p, 99.5, axis=0)
    centre = 0.5 * (lo[:2] + hi[:2])
    half_diag = float(np.linalg.norm(hi[:2] - lo[:2]) / 2)
    return CrowdSource(
        scene=scene, alphas=alphas, eval_scene=eval_scene, ground_z=float(lo[2]),
        stage_radius=half_diag + 0.5 * float(hi[2] - lo[2]), centre=centre,
        obstacles=[(lo[:2] - 0.02, hi[:2] + 0.02)], content_height=float(hi[2] - lo[2]),
    )
