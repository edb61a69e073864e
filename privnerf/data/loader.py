"""Pick the right parser for a data source.

``source`` is ``"builtin"`` (optionally ``"builtin:seed=3"``), a directory holding Blender
``transforms_{split}.json``, nerfstudio ``transforms.json`` or LLFF ``poses_bounds.npy``, or a tiny-NeRF
``.npz`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privnerf.data.errors import SceneError
from privnerf.data.scene import Scene

SPLITS = ("train", "val", "test")


def detect_format(source: str | Path) -> str:
    """Return ``"builtin"``, ``"blender"``, ``"nerfstudio"``, ``"llff"`` or ``"npz"``."""
    s = str(source)
    if s == "builtin" or s.startswith("builtin:"):
        return "builtin"
    p = Path(s)
    if not p.exists():
        raise SceneError(p, "no such file or directory")
    if p.is_file():
        if p.suffix == ".npz":
            return "npz"
        if p.name == "transforms.json":
            return "nerfstudio"
        raise SceneError(p, "not a dataset: expected a directory or a .npz file")
    if (p / "transforms_train.json").exists():
        return "blender"
    if (p / "transforms.json").exists():
        return "nerfstudio"
    if (p / "poses_bounds.npy").exists():
        return "llff"
    raise SceneError(
        p, "no transforms_train.json, transforms.json or poses_bounds.npy found: unknown dataset format"
    )


def _builtin_kwargs(source: str) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if ":" in source:
        for item in source.split(":", 1)[1].split(","):
            if not item:
                continue
            key, _, val = item.partition("=")
            try:
                kw[key] = int(val)
            except ValueError as exc:
                raise SceneError(source, f"builtin option {item!r} must be key=<int>") from exc
    return kw


def load_scene(source: str | Path, split: str = "train", **options: Any) -> Scene:
    """Load one split of a dataset.

    Args:
        source: see the module docstring.
        split: ``"train"``, ``"val"`` or ``"test"``.
        **options: passed to the parser (e.g. ``background=(1, 1, 1)`` for Blender, ``factor=8`` for LLFF).
    """
    if split not in SPLITS:
        raise SceneError(source, f"unknown split {split!r}; expected one of {SPLITS}")
    fmt = detect_format(source)
    if fmt == "builtin":
        from privnerf.data.builtin import make_builtin_scene

        return make_builtin_scene(split=split, **{**_builtin_kwargs(str(source)), **options})
    path = Path(source)
    if fmt == "blender":
        from privnerf.data.blender import load_blender

        return load_blender(path, split, **options)
    if fmt == "nerfstudio":
        from privnerf.data.nerfstudio import load_nerfstudio

        return load_nerfstudio(path, split, **options)
    if fmt == "llff":
        from privnerf.data.llff import load_llff

        return load_llff(path, split, **options)
    from privnerf.data.npz import load_npz

    return load_npz(path, split, **options)
