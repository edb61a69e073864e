"""Geometry metrics: a predicted mesh against reference surface points (Chamfer, normal consistency, F-score).

Both surfaces are compared as point sets: ``n_samples`` area-uniform points (with their face normals) on the
predicted mesh, and the reference points (with normals when known). With nearest-neighbour distances
``d(p -> R)`` from each predicted point to the reference set and ``d(r -> P)`` back:

* accuracy = mean ``d(p -> R)`` (how far the prediction is from the truth; penalises floaters),
* completion = mean ``d(r -> P)`` (how much of the truth is covered; penalises holes),
* Chamfer-L1 = (accuracy + completion) / 2,
* normal consistency = mean ``|cos|`` between each point's normal and its nearest neighbour's, averaged over
  both directions (sign-blind, so the winding of either surface does not matter),
* precision / recall = share of ``d(p -> R)`` / ``d(r -> P)`` below ``tau``; F-score = 2PR / (P + R).

Every distance is also given as a share of the box diagonal (keys ending in ``_frac``), which makes scores
comparable across scenes of different size.

Worked example: a sphere of radius 1.05 against points on the unit sphere is everywhere 0.05 away, so
accuracy = completion = Chamfer-L1 ~= 0.05, normal consistency ~= 1, and the F-score is 0 at ``tau = 0.01``
but 1 at ``tau = 0.1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from privnerf.export.mesh import MESH_SUFFIXES


@dataclass
class Reference:
    """Reference surface samples.

    Attributes:
        points: ``(n, 3)`` float64.
        normals: ``(n, 3)`` float64 unit normals, or ``None`` when the source has none.
        box: ``(2, 3)`` the box distances are measured against (the scene box for the built-in scene, the
            file's ``box`` array for a .npz that has one, else the points' bounding box).
        source: what was loaded (the spec).
    """

    points: np.ndarray
    normals: np.ndarray | None
    box: np.ndarray
    source: str

    @property
    def diagonal(self) -> float:
        return float(np.linalg.norm(self.box[1] - self.box[0]))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def sample_mesh(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-uniform points on ``mesh`` ``(n, 3)`` and the normals of their faces ``(n, 3)``, float64."""
    faces = np.asarray(mesh.faces)
    if faces.ndim != 2 or len(faces) == 0 or not float(mesh.area) > 0:
        raise ValueError("the mesh has no faces (or zero area): nothing to sample")
    pts, face_idx = trimesh.sample.sample_surface(mesh, int(n), seed=int(seed))
    return np.asarray(pts, dtype=np.float64), np.asarray(mesh.face_normals[face_idx], dtype=np.float64)


def mesh_metrics(pred: trimesh.Trimesh, ref_points: np.ndarray, ref_normals: np.ndarray | None, tau: float,
                 diagonal: float, n_samples: int = 200_000, seed: int = 0) -> dict[str, Any]:
    """Accuracy, completion, Chamfer-L1, normal consistency and precision / recall / F-score at ``tau``.

    Args:
        pred: the predicted mesh (world coordinates, same frame as the reference).
        ref_points: ``(m, 3)`` reference surface points.
        ref_normals: ``(m, 3)`` their normals, or ``None`` (then ``normal_consistency`` is ``None``).
        tau: distance threshold of precision / recall, in scene units.
        diagonal: the box diagonal the ``*_frac`` keys divide by.
        n_samples: points sampled on ``pred``.
        seed: seed of that sampling.
    Returns:
        A dict of floats: ``accuracy``, ``completion``, ``chamfer_l1``, ``normal_consistency``, ``precision``,
        ``recall``, ``fscore``, ``tau``, ``diagonal``, the distances as shares of ``diagonal``
        (``accuracy_frac``, ``completion_frac``, ``chamfer_l1_frac``, ``tau_frac``), and the counts
        ``n_pred_samples``, ``n_ref_points``. Example: identical surfaces give Chamfer ~0 and F-score 1.
    """
    from scipy.spatial import cKDTree

    ref = np.asarray(ref_points, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] != 3 or len(ref) == 0:
        raise ValueError(f"reference points must be a non-empty (m, 3) array, got shape {ref.shape}")
    tau, diagonal = float(tau), float(diagonal)
    if not tau > 0 or not diagonal > 0:
        raise ValueError(f"tau and diagonal must be positive, got tau={tau}, diagonal={diagonal}")
    pts, nrm = sample_mesh(pred, n_samples, seed)
    d_pr, i_pr = cKDTree(ref).query(pts, workers=1)  # prediction -> reference
    d_rp, i_rp = cKDTree(pts).query(ref, workers=1)  # reference -> prediction
    acc, comp = float(d_pr.mean()), float(d_rp.mean())
    nc = None
    if ref_normals is not None:
        rn = _unit(np.asarray(ref_normals, dtype=np.float64))
        if rn.shape != ref.shape:
            raise ValueError(f"reference normals {rn.shape} do not match the points {ref.shape}")
        pn = _unit(nrm)
        nc = float(0.5 * (np.abs((pn * rn[i_pr]).sum(1)).mean() + np.abs((rn * pn[i_rp]).sum(1)).mean()))
    precision, recall = float((d_pr < tau).mean()), float((d_rp < tau).mean())
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    chamfer = 0.5 * (acc + comp)
    return {
        "accuracy": acc, "completion": comp, "chamfer_l1": chamfer, "normal_consistency": nc,
        "precision": precision, "recall": recall, "fscore": float(fscore), "tau": tau, "diagonal": diagonal,
        "accuracy_frac": acc / diagonal, "completion_frac": comp / diagonal, "chamfer_l1_frac": chamfer / diagonal,
        "tau_frac": tau / diagonal, "n_pred_samples": int(len(pts)), "n_ref_points": int(len(ref)),
    }


# ------------------------------------------------------------------------------------------------ references


def _builtin_seed(spec: str) -> int:
    """The scene seed of ``"builtin"`` (0) or ``"builtin:seed=S"``."""
    seed = 0
    if ":" in spec:
        for item in spec.split(":", 1)[1].split(","):
            if not item:
                continue
            key, _, val = item.partition("=")
            if key != "seed":
                raise ValueError(f"{spec}: the builtin reference takes only seed=<int> (the scene's seed), "
                                 f"got {item!r}")
            try:
                seed = int(val)
            except ValueError as exc:
                raise ValueError(f"{spec}: seed must be an integer, got {val!r}") from exc
    return seed


def _subsample(pts: np.ndarray, nrm: np.ndarray | None, n: int | None, seed: int):
    if n is None or len(pts) <= n:
        return pts, nrm
    keep = np.random.default_rng(seed).choice(len(pts), size=int(n), replace=False)
    return pts[keep], None if nrm is None else nrm[keep]


def _finish(path: Path, pts: np.ndarray, nrm: np.ndarray | None, box: np.ndarray | None) -> Reference:
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"{path}: points must be (n, 3), got {pts.shape}")
    if len(pts) == 0:
        raise ValueError(f"{path}: no points")
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"{path}: non-finite point coordinates")
    if nrm is not None:
        nrm = np.asarray(nrm, dtype=np.float64)
        if nrm.shape != pts.shape:
            raise ValueError(f"{path}: normals {nrm.shape} do not match the points {pts.shape}")
        nrm = _unit(nrm)
    if box is None:
        box = np.stack([pts.min(0), pts.max(0)])
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (2, 3):
        raise ValueError(f"{path}: box must be (2, 3), got {box.shape}")
    return Reference(pts, nrm, box, str(path))


def load_reference(spec: str | Path, n_points: int = 200_000, seed: int = 0) -> Reference:
    """Reference surface points (and normals) from a mesh file, a point cloud file or the built-in scene.

    Args:
        spec: ``"builtin"`` / ``"builtin:seed=S"``: exact samples of the built-in scene's visible surface
            (:func:`~privnerf.data.builtin.sample_builtin_surface`, box = the scene box); a mesh file
            (.ply with faces, .obj): ``n_points`` area-uniform samples with face normals; a point cloud
            (.ply without faces, normals read from ``nx ny nz`` when present, or .npz with ``points`` and
            optional ``normals`` and ``box``): its points, at most ``n_points`` of them (a seeded subset).
        n_points: how many points to sample / keep.
        seed: seed of the sampling.
    Returns:
        A :class:`Reference`. Example: ``load_reference("builtin", 1000).diagonal`` is about 4.2.
    Raises:
        FileNotFoundError naming a missing file; ValueError naming an unreadable, empty or unsupported one.
    """
    s = str(spec)
    if s == "builtin" or s.startswith("builtin:"):
        from privnerf.data.builtin import builtin_box, sample_builtin_surface

        scene_seed = _builtin_seed(s)
        pts, nrm = sample_builtin_surface(int(n_points), seed=seed, scene_seed=scene_seed)
        return Reference(pts, nrm, builtin_box(scene_seed).astype(np.float64), s)
    path = Path(s)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such reference file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{path}: unreadable .npz ({type(exc).__name__}: {exc})") from exc
        if "points" not in arrays:
            raise ValueError(f"{path}: no 'points' array (found {', '.join(sorted(arrays)) or 'nothing'})")
        pts, nrm = arrays["points"], arrays.get("normals")
        ref = _finish(path, pts, nrm, arrays.get("box"))
        ref.points, ref.normals = _subsample(ref.points, ref.normals, n_points, seed)
        return ref
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"{path}: a reference must be a .ply, .obj or .npz file, or 'builtin'")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many types for bad files
        raise ValueError(f"{path}: unreadable mesh / point cloud ({type(exc).__name__}: {exc})") from exc
    if isinstance(loaded, trimesh.Scene):
        geoms = list(loaded.geometry.values())
        if not geoms:
            raise ValueError(f"{path}: empty file (no geometry)")
        loaded = trimesh.util.concatenate(geoms) if len(geoms) > 1 else geoms[0]
    faces = getattr(loaded, "faces", None)
    if isinstance(loaded, trimesh.Trimesh) and faces is not None and len(faces) > 0:
        try:
            pts, nrm = sample_mesh(loaded, int(n_points), seed)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return _finish(path, pts, nrm, None)
    verts = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))))
    nrm = None
    raw = loaded.metadata.get("_ply_raw") if hasattr(loaded, "metadata") else None
    if raw is not None and "vertex" in raw:
        data = raw["vertex"]["data"]
        names = data.dtype.names or ()
        if all(k in names for k in ("nx", "ny", "nz")):
            nrm = np.stack([data["nx"], data["ny"], data["nz"]], axis=1).reshape(-1, 3)
    ref = _finish(path, verts, nrm, None)
    ref.points, ref.normals = _subsample(ref.points, ref.normals, n_points, seed)
    return ref
