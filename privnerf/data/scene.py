"""The scene abstraction every parser returns.

A :class:`Scene` is one split of a multi-view dataset: plain numpy arrays plus metadata. It knows nothing
about fields, rendering or training.

Conventions
-----------
* ``c2w`` is camera-to-world in the **OpenGL / Blender / nerfstudio** convention: the camera looks down
  its local -Z axis, +Y is up in the image, +X is right.
* ``intrinsics`` are pinhole ``(fx, fy, cx, cy)`` in pixels of the image *as loaded*, with pixel centres at
  ``(u + 0.5, v + 0.5)`` (nerfstudio's convention).
* Images are float32 RGB in [0, 1], already composited on ``background`` when the source had alpha.
* ``aabb`` bounds the content for ``scene_type == "bounded"``; for ``"forward"`` and ``"unbounded"`` it bounds
  the foreground region that a scene contraction maps to the unit ball.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

SCENE_TYPES = ("bounded", "forward", "unbounded")


@dataclass
class Scene:
    """One split of a multi-view dataset.

    Attributes:
        images: list of N arrays, each ``(H_i, W_i, 3)`` float32 in [0, 1].
        c2w: ``(N, 4, 4)`` float32 camera-to-world, OpenGL convention.
        intrinsics: ``(N, 4)`` float32 ``fx, fy, cx, cy`` in pixels of the loaded image.
        near, far: ray distance bounds along the (unit-length) ray direction.
        aabb: ``(2, 3)`` float32, min and max corner of the content.
        scene_type: one of ``"bounded"``, ``"forward"``, ``"unbounded"``.
        background: RGB the images were composited on (``None`` for real photos without alpha).
        names: N strings identifying each view (usually the image path relative to the dataset root).
        masks: optional list of N ``(H_i, W_i)`` arrays (bool or uint8 labels; nonzero = masked region).
        depths: optional list of N ``(H_i, W_i)`` float32 metric depth along the camera -Z axis (``inf`` = none).
        semantics: optional list of N ``(H_i, W_i)`` int32 semantic class ids (0 = background).
        instances: optional list of N ``(H_i, W_i)`` int32 instance ids (0 = background).
        frame_meta: N dicts of extra per-frame fields from the source (e.g. nerfstudio ``user_id``).
        meta: dataset-level metadata (source path, split, class names, ...).
    """

    images: list[np.ndarray]
    c2w: np.ndarray
    intrinsics: np.ndarray
    near: float
    far: float
    aabb: np.ndarray
    scene_type: str = "bounded"
    background: tuple[float, float, float] | None = None
    names: list[str] = field(default_factory=list)
    masks: list[np.ndarray] | None = None
    depths: list[np.ndarray] | None = None
    semantics: list[np.ndarray] | None = None
    instances: list[np.ndarray] | None = None
    frame_meta: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        self.c2w = np.asarray(self.c2w, dtype=np.float32)
        self.intrinsics = np.asarray(self.intrinsics, dtype=np.float32)
        self.aabb = np.asarray(self.aabb, dtype=np.float32)
        if not self.names:
            self.names = [f"view_{i:04d}" for i in range(n)]
        if not self.frame_meta:
            self.frame_meta = [{} for _ in range(n)]
        if self.c2w.shape != (n, 4, 4):
            raise ValueError(f"c2w must be ({n}, 4, 4), got {self.c2w.shape}")
        if self.intrinsics.shape != (n, 4):
            raise ValueError(f"intrinsics must be ({n}, 4), got {self.intrinsics.shape}")
        if self.aabb.shape != (2, 3):
            raise ValueError(f"aabb must be (2, 3), got {self.aabb.shape}")
        if self.scene_type not in SCENE_TYPES:
            raise ValueError(f"scene_type must be one of {SCENE_TYPES}, got {self.scene_type!r}")
        for name in ("masks", "depths", "semantics", "instances"):
            extra = getattr(self, name)
            if extra is not None and len(extra) != n:
                raise ValueError(f"{name} has {len(extra)} entries for {n} images")
        if len(self.names) != n or len(self.frame_meta) != n:
            raise ValueError("names and frame_meta must have one entry per image")

    @property
    def num_views(self) -> int:
        return len(self.images)

    def hw(self, i: int) -> tuple[int, int]:
        """Height and width of view ``i``."""
        return int(self.images[i].shape[0]), int(self.images[i].shape[1])

    def subset(self, indices: list[int] | np.ndarray) -> "Scene":
        """A new Scene holding only the given views (arrays are shared, not copied)."""
        idx = [int(i) for i in indices]

        def pick(xs):
            return None if xs is None else [xs[i] for i in idx]

        return replace(
            self,
            images=[self.images[i] for i in idx],
            c2w=self.c2w[idx],
            intrinsics=self.intrinsics[idx],
            names=[self.names[i] for i in idx],
            masks=pick(self.masks),
            depths=pick(self.depths),
            semantics=pick(self.semantics),
            instances=pick(self.instances),
            frame_meta=[self.frame_meta[i] for i in idx],
            meta=dict(self.meta),
        )
