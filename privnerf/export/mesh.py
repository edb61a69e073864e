"""Surface meshes from scalar fields: marching cubes on a regular grid, and writing PLY / OBJ files.

A scalar field is any function of world points ``(n, 3)`` (torch float32) to values ``(n,)``: a signed
distance (negative inside, surface at level 0) or a density (large inside, surface at a threshold).
:func:`extract_mesh` samples it on a grid of cubic voxels over a box, runs marching cubes
(:func:`skimage.measure.marching_cubes`) and returns a :class:`trimesh.Trimesh` in world coordinates whose
faces are wound so that their normals point out of the inside region. :func:`mesh_from_run` does this for a
trained run: the zero level set of its signed distance when the field has one (``field.sdf``), otherwise a
density level set.

Worked example (a unit sphere as an SDF, 64 points along each axis of the box ``[-1.2, 1.2]^3``)::

    box = torch.tensor([[-1.2] * 3, [1.2] * 3])
    mesh = extract_mesh(lambda x: x.norm(dim=-1) - 1.0, box, 64)
    # voxel = 2.4 / 63 = 0.038; every vertex lies within 0.0002 of radius 1 and
    # mesh.vertex_normals point along the vertices' own directions (outward).

The same sphere as a density ``100 * sigmoid((1 - |x|) / 0.05)`` (50 on the sphere) is
``extract_mesh(density, box, 64, level=50.0, inside="above")``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import trimesh

from privnerf.data.io import atomic_write_bytes

MESH_SUFFIXES = (".ply", ".obj")
"""File types :func:`write_mesh` writes (lower case)."""

DEFAULT_CHUNK = 1 << 18
"""Points per call of the scalar / colour function."""

ScalarFn = Callable[[torch.Tensor], torch.Tensor]


def sampling_grid(box, resolution: int) -> tuple[np.ndarray, float, tuple[int, int, int]]:
    """The regular grid :func:`extract_mesh` samples: cubic voxels, ``resolution`` points along the longest axis.

    The longest axis is covered end to end; the others get as many points as fit inside the box at the same
    spacing, centred (so no point lies outside the box).

    Args:
        box: ``(2, 3)`` min and max corner (tensor or array).
        resolution: grid points along the longest axis (>= 2).
    Returns:
        ``origin`` ``(3,)`` float64 (the first grid point), the voxel size, and the shape ``(nx, ny, nz)``.
        Example: the box ``[[0, 0, 0], [2, 1, 1]]`` at resolution 5 has voxel 0.5, shape ``(5, 3, 3)`` and
        origin ``(0, 0, 0)``; the box ``[[0, 0, 0], [2, 1.2, 1]]`` the same shape and origin ``(0, 0.1, 0)``.
    """
    b = np.asarray(box.detach().cpu() if torch.is_tensor(box) else box, dtype=np.float64)
    if b.shape != (2, 3) or not np.all(np.isfinite(b)):
        raise ValueError(f"mesh extraction box must be a finite (2, 3) array of min and max corners, got {b.tolist()}")
    extent = b[1] - b[0]
    if np.any(extent <= 0):
        raise ValueError(f"mesh extraction box {b.tolist()} is empty along an axis (max <= min)")
    resolution = int(resolution)
    if resolution < 2:
        raise ValueError(f"mesh resolution must be >= 2 points along the longest axis, got {resolution}")
    voxel = float(extent.max()) / (resolution - 1)
    shape = tuple(max(int(math.floor(e / voxel + 1e-6)) + 1, 2) for e in extent)
    origin = (b[0] + b[1]) / 2 - voxel * (np.array(shape) - 1) / 2
    return origin, voxel, shape  # type: ignore[return-value]


@torch.no_grad()
def evaluate_on_grid(scalar_fn: ScalarFn, origin: np.ndarray, voxel: float, shape: tuple[int, int, int],
                     chunk: int = DEFAULT_CHUNK, device: str | torch.device | None = None) -> np.ndarray:
    """``scalar_fn`` at every point of a grid, without gradient: ``(nx, ny, nz)`` float32.

    Grid point ``(i, j, k)`` is ``origin + voxel * (i, j, k)``; points go to ``scalar_fn`` in chunks of
    ``chunk`` as ``(m, 3)`` float32 tensors on ``device`` (default CPU), and it must return ``(m,)`` values.
    """
    nx, ny, nz = shape
    total = nx * ny * nz
    out = np.empty(total, dtype=np.float32)
    dev = torch.device("cpu" if device is None else device)
    org = torch.tensor(origin, dtype=torch.float64, device=dev)
    for s in range(0, total, max(int(chunk), 1)):
        idx = torch.arange(s, min(s + int(chunk), total), device=dev)
        ijk = torch.stack([idx // (ny * nz), (idx // nz) % ny, idx % nz], dim=-1)
        pts = (org + voxel * ijk.double()).float()
        v = scalar_fn(pts)
        if not torch.is_tensor(v) or v.numel() != pts.shape[0]:
            got = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"the scalar function must return one value per point: {pts.shape[0]} points gave {got}")
        out[s : s + pts.shape[0]] = v.reshape(-1).float().cpu().numpy()
    return out.reshape(shape)


@torch.no_grad()
def evaluate_colours(colour_fn: Callable[[torch.Tensor], torch.Tensor], points: np.ndarray,
                     chunk: int = DEFAULT_CHUNK, device: str | torch.device | None = None) -> np.ndarray:
    """``colour_fn`` ``(m, 3) -> (m, 3)`` in [0, 1] at ``points`` ``(n, 3)``: ``(n, 3)`` uint8 colours."""
    dev = torch.device("cpu" if device is None else device)
    cols = np.zeros((points.shape[0], 3), dtype=np.float32)
    pts = torch.as_tensor(np.ascontiguousarray(points), dtype=torch.float32)
    for s in range(0, points.shape[0], max(int(chunk), 1)):
        c = colour_fn(pts[s : s + int(chunk)].to(dev))
        cols[s : s + int(chunk)] = c.reshape(-1, 3).float().cpu().numpy()
    return np.round(np.clip(np.nan_to_num(cols), 0.0, 1.0) * 255.0).astype(np.uint8)


def extract_mesh(
    scalar_fn: ScalarFn,
    box,
    resolution: int,
    level: float = 0.0,
    inside: str = "below",
    colour_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device | None = None,
) -> trimesh.Trimesh:
    """The ``level`` set of a scalar field as a triangle mesh in world coordinates.

    Args:
        scalar_fn: world points ``(m, 3)`` float32 → values ``(m,)``; called in chunks, without gradient.
        box: ``(2, 3)`` world box to search (see :func:`sampling_grid` for the grid).
        resolution: grid points along the box's longest axis (cubic voxels).
        level: the iso-value of the surface.
        inside: ``"below"``: values below ``level`` are inside (a signed distance); ``"above"``: values above
            are (a density).
        colour_fn: optional world points ``(m, 3)`` → RGB ``(m, 3)`` in [0, 1], evaluated at the vertices and
            stored as uint8 vertex colours.
        chunk: points per call of ``scalar_fn`` / ``colour_fn``.
        device: where the points are made (the field's device; default CPU).
    Returns:
        A :class:`trimesh.Trimesh` (vertices ``(V, 3)`` float64 world coordinates, faces ``(F, 3)``) wound so
        that face normals point out of the inside region. ``mesh.metadata["extraction"]`` records the grid
        (``origin``, ``voxel``, ``shape``), ``level``, ``inside`` and the value range seen.
    Raises:
        ValueError: when the field never crosses ``level`` in the box (the message names the smallest and
            largest values seen), on NaN values, or a bad box / resolution / ``inside``.
    """
    if inside not in ("below", "above"):
        raise ValueError(f"inside must be 'below' (signed distance) or 'above' (density), got {inside!r}")
    level = float(level)
    origin, voxel, shape = sampling_grid(box, resolution)
    vol = evaluate_on_grid(scalar_fn, origin, voxel, shape, chunk, device)
    n_nan = int(np.isnan(vol).sum())
    if n_nan:
        raise ValueError(f"the scalar field is NaN at {n_nan} of {vol.size} grid points")
    big = np.float32(1e30)
    vol = np.clip(vol, -big, big)  # +-inf (e.g. far from an analytic surface) would break the interpolation
    vmin, vmax = float(vol.min()), float(vol.max())
    if not vmin < level < vmax:
        raise ValueError(
            f"no surface: the field never crosses level {level:g} in the box (values from {vmin:g} to {vmax:g} "
            f"on a {shape[0]}x{shape[1]}x{shape[2]} grid)")
    from skimage.measure import marching_cubes

    # one orientation rule: inside below the level. For a density, negate (inside above -> inside below).
    vol_b, level_b = (vol, level) if inside == "below" else (-vol, -level)
    # with the object below the level, skimage's "descent" winding gives outward normals (checked in tests)
    verts, faces, _, _ = marching_cubes(vol_b, level_b, spacing=(voxel, voxel, voxel), gradient_direction="descent",
                                        allow_degenerate=False)
    mesh = trimesh.Trimesh(vertices=verts.astype(np.float64) + origin, faces=faces, process=False)
    if colour_fn is not None:
        mesh.visual.vertex_colors = evaluate_colours(colour_fn, mesh.vertices, chunk, device)
    mesh.metadata["extraction"] = {"origin": origin.tolist(), "voxel": voxel, "shape": list(shape), "level": level,
                                   "inside": inside, "value_range": [vmin, vmax]}
    return mesh


# ------------------------------------------------------------------------------------------------ files


def check_mesh_path(path: str | Path) -> Path:
    """``path`` as a Path if it ends in .ply or .obj; a ValueError naming it otherwise."""
    p = Path(path)
    if p.suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"{p}: a mesh file must end in {' or '.join(MESH_SUFFIXES)}")
    return p


def write_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` as binary PLY or OBJ (by ``path``'s suffix), with vertex colours if it has them.

    The parent directory is created. The file is encoded in memory and written atomically (a temporary file
    beside the target, then renamed), so an interrupted or failed write leaves neither a partial file nor
    the temporary one.

    Raises:
        ValueError: for a suffix other than .ply / .obj (nothing is written).
        OSError: naming ``path`` when the file or its folder cannot be written.
    """
    p = check_mesh_path(path)
    data = mesh.export(file_type=p.suffix.lower()[1:])
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        return atomic_write_bytes(p, data)
    except OSError as exc:
        raise OSError(f"{p}: cannot write the mesh ({exc.strerror or exc})") from exc


POINT_CLOUD_SUFFIXES = (".ply", ".npz")


def write_point_cloud(path: str | Path, points: np.ndarray, normals: np.ndarray | None = None,
                      **extra: Any) -> Path:
    """Write points ``(n, 3)`` (and unit normals ``(n, 3)``) atomically as .npz or binary PLY.

    .npz holds ``points`` and ``normals`` as float32 plus any ``extra`` arrays (e.g. ``box``); PLY holds
    float32 vertex properties ``x y z`` (and ``nx ny nz``) with no faces, and ignores ``extra``.

    Raises:
        ValueError: for another suffix or mismatched shapes; OSError naming ``path`` if it cannot be written.
    """
    import io

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in POINT_CLOUD_SUFFIXES:
        raise ValueError(f"{p}: a point cloud file must end in {' or '.join(POINT_CLOUD_SUFFIXES)}")
    pts = np.asarray(points, dtype=np.float32)
    nrm = None if normals is None else np.asarray(normals, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3 or (nrm is not None and nrm.shape != pts.shape):
        raise ValueError(f"{p}: points must be (n, 3) and normals the same shape, got {pts.shape} and "
                         f"{None if nrm is None else nrm.shape}")
    if suffix == ".npz":
        buf = io.BytesIO()
        arrays = {"points": pts, **({"normals": nrm} if nrm is not None else {}),
                  **{k: np.asarray(v) for k, v in extra.items()}}
        np.savez(buf, **arrays)
        data = buf.getvalue()
    else:
        names = ["x", "y", "z"] + (["nx", "ny", "nz"] if nrm is not None else [])
        rows = np.ascontiguousarray(pts if nrm is None else np.concatenate([pts, nrm], axis=1), dtype="<f4")
        header = ("ply\nformat binary_little_endian 1.0\ncomment privnerf point cloud\n"
                  f"element vertex {pts.shape[0]}\n" + "".join(f"property float {n}\n" for n in names) + "end_header\n")
        data = header.encode("ascii") + rows.tobytes()
    try:
        return atomic_write_bytes(p, data)
    except OSError as exc:
        raise OSError(f"{p}: cannot write the point cloud ({exc.strerror or exc})") from exc


# ------------------------------------------------------------------------------------------------ runs


def extraction_box(field) -> torch.Tensor:
    """The world box ``(2, 3)`` to extract a run's surface in.

    Bounded scenes: the field's grid box (``field.density_grid.aabb``, which the grid field may have shrunk to
    its content during training; the working box is world coordinates there), or its working box
    ``field.space.box`` when it has no grid. Contracted scenes (``field.space.contraction``): the scene
    ``aabb`` ``field.space.aabb``, the part of the world that the contraction leaves uncompressed (content
    beyond it is not extracted).
    """
    space = field.space
    if space.contraction:
        return space.aabb.detach().float().cpu()
    grid = getattr(field, "density_grid", None)
    box = grid.aabb if grid is not None else space.box
    return box.detach().float().cpu()


DENSITY_LEVEL_STEPS = 4.0
"""The density mesh's default level: half opacity over this many inference render steps. Over one step
(``ln 2 / step``) was the rule until lego 400's density field (600 s, 2026-12-06) peaked at 98.1 against a
level of 97.9 and gave a 16-face mesh (an earlier run peaked at 68 and gave none): the density field's
surfaces are a few render steps of haze, not a single opaque step. Over four steps the three lego runs of
2026-12-07 (600 s each) gave whole meshes, 216k-221k faces at 256 voxels."""


def density_threshold(step: float, steps: float = DENSITY_LEVEL_STEPS) -> float:
    """The density whose opacity over ``steps`` render steps of length ``step`` is 0.5:
    ``1 - exp(-sigma * steps * step) = 0.5``, i.e. ``sigma = ln 2 / (steps * step)``. Example: a step of
    0.01 gives 17.3 (69.3 with ``steps=1``)."""
    return math.log(2.0) / (float(steps) * float(step))


@torch.no_grad()
def field_vertex_colours(field, vertices: np.ndarray, normals: np.ndarray, chunk: int = DEFAULT_CHUNK,
                         device: str | torch.device | None = None) -> np.ndarray | None:
    """Vertex colours ``(V, 3)`` uint8 from a radiance field, or ``None`` if it gives fewer than 3 values.

    The colour of vertex ``v`` is ``field(v, d)[1][:, :3]`` (clipped to [0, 1]) with ``d = -normal``: the
    surface seen head-on from outside (``(0, 0, -1)``, looking down, where a normal is zero). For grid fields
    those channels are the view-independent diffuse colour, so ``d`` does not change them.
    """
    dev = torch.device("cpu" if device is None else device)
    nrm = np.asarray(normals, dtype=np.float64)
    length = np.linalg.norm(nrm, axis=1, keepdims=True)
    view = np.where(length > 1e-12, -nrm / np.maximum(length, 1e-12), np.array([0.0, 0.0, -1.0]))
    pts = torch.as_tensor(np.ascontiguousarray(vertices), dtype=torch.float32)
    dirs = torch.as_tensor(view, dtype=torch.float32)
    cols = np.zeros((pts.shape[0], 3), dtype=np.float32)
    for s in range(0, pts.shape[0], max(int(chunk), 1)):
        _, values = field(pts[s : s + int(chunk)].to(dev), dirs[s : s + int(chunk)].to(dev))
        if values.ndim != 2 or values.shape[1] < 3:
            return None
        cols[s : s + int(chunk)] = values[:, :3].float().cpu().numpy()
    return np.round(np.clip(np.nan_to_num(cols), 0.0, 1.0) * 255.0).astype(np.uint8)


def mesh_from_run(run_dir: str | Path, resolution: int = 256, threshold: float | None = None,
                  device: str = "cpu", chunk: int = DEFAULT_CHUNK) -> tuple[trimesh.Trimesh, dict[str, Any]]:
    """The surface a trained run learned, as a coloured mesh in the scene's world frame.

    Rebuilds the run with :func:`~privnerf.train.trainer.trainer_from_checkpoint` and extracts, over
    :func:`extraction_box`:

    * if the field has ``sdf(x)`` (world points ``(n, 3)`` → signed distance ``(n,)``, negative inside, as
      the surface field gives): its level set at ``threshold`` (default 0, the surface itself);
    * otherwise its density ``field.density(x)`` at ``threshold``, by default :func:`density_threshold` of
      the inference render step ``trainer.settings(inference=True).step``: where four render steps of the
      medium are half opaque (:data:`DENSITY_LEVEL_STEPS`), i.e. about where a ray rendering the run
      meets the surface.

    Vertex colours are the field's ``values[:, :3]`` from ``field(x, d)`` with ``d`` = minus the vertex
    normal (the surface seen head-on from outside); for grid fields those channels are the view-independent
    diffuse colour, so ``d`` does not change them. A personal (per-view) field, if the run has one, is not
    part of the mesh.

    Args:
        run_dir: run directory (holds ``checkpoints/last.pt``).
        resolution: grid points along the box's longest axis.
        threshold: the level (density, or signed distance in SDF mode); ``None`` for the defaults above.
        device: where the field runs.
        chunk: points per field call.
    Returns:
        ``(mesh, info)``: the mesh (world coordinates: the frame of the checkpoint's cameras) and a dict with
        ``mode`` (``"sdf"`` or ``"density"``), ``level``, ``level_rule``, ``render_step``, ``box``, ``grid``
        (``shape``, ``voxel``), ``colour``, ``vertices``, ``faces``, ``step`` (training steps) and ``run_dir``.
    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``. ValueError: no surface at the level (the message
        names the value range, so a better ``threshold`` can be chosen).
    """
    from privnerf.train.trainer import trainer_from_checkpoint

    trainer = trainer_from_checkpoint(Path(run_dir), device)
    field = trainer.field
    box = extraction_box(field)
    step = float(trainer.settings(inference=True).step)
    sdf = getattr(field, "sdf", None)
    if callable(sdf):
        mode, fn, inside = "sdf", sdf, "below"
        level = 0.0 if threshold is None else float(threshold)
        rule = "zero level set of field.sdf" if threshold is None else "given"
    else:
        mode, fn, inside = "density", field.density, "above"
        level = density_threshold(step) if threshold is None else float(threshold)
        rule = (f"ln 2 / ({DENSITY_LEVEL_STEPS:g} inference render steps) (opacity 0.5 over {DENSITY_LEVEL_STEPS:g} "
                "steps)" if threshold is None else "given")
    try:
        mesh = extract_mesh(fn, box, resolution, level=level, inside=inside, chunk=chunk, device=trainer.device)
    except ValueError as exc:
        raise ValueError(f"{run_dir}: {mode} mesh: {exc}") from exc
    colours = field_vertex_colours(field, mesh.vertices, mesh.vertex_normals, chunk, trainer.device)
    if colours is not None:
        mesh.visual.vertex_colors = colours
    ext = mesh.metadata["extraction"]
    info = {
        "run_dir": str(run_dir), "step": int(trainer.step_count), "mode": mode, "level": level, "level_rule": rule,
        "render_step": step, "box": box.tolist(), "resolution": int(resolution),
        "grid": {"shape": ext["shape"], "voxel": ext["voxel"]}, "value_range": ext["value_range"],
        "colour": "field values[:, :3] seen along -vertex normal" if colours is not None else None,
        "vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
        "frame": "world (the checkpoint's camera frame)",
    }
    return mesh, info
