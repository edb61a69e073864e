"""Mesh export, mesh metrics and the built-in scene's analytic surface (all fast, CPU)."""

import json
import math
import os

import numpy as np
import pytest
import torch
import trimesh

from privnerf.cli.main import main
from privnerf.data.builtin import _make_world, builtin_box, builtin_sdf, sample_builtin_surface
from privnerf.data.primitives import Box, Capsule, Cone, Cylinder, Disk, Sphere
from privnerf.eval.mesh import load_reference, mesh_metrics
from privnerf.export.mesh import extract_mesh, sampling_grid, write_mesh, write_point_cloud

BOX = torch.tensor([[-1.2] * 3, [1.2] * 3])


def sphere_sdf(x: torch.Tensor) -> torch.Tensor:
    return x.norm(dim=-1) - 1.0


def sphere_density(x: torch.Tensor) -> torch.Tensor:
    return 100.0 * torch.sigmoid((1.0 - x.norm(dim=-1)) / 0.05)


def unit_sphere_points(n: int, seed: int = 0, radius: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    v = np.random.default_rng(seed).normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return radius * v, v


def check_sphere(mesh: trimesh.Trimesh, voxel: float) -> None:
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(r.mean() - 1.0) < 0.01 * voxel, (r.mean(), voxel)
    assert np.abs(r - 1.0).max() < 0.05 * voxel
    radial = mesh.vertices / r[:, None]
    assert (mesh.vertex_normals * radial).sum(1).mean() > 0.99
    centres = mesh.triangles_center / np.linalg.norm(mesh.triangles_center, axis=1, keepdims=True)
    assert (mesh.face_normals * centres).sum(1).mean() > 0.99
    assert mesh.is_watertight and mesh.volume > 0  # consistently wound outward


# ------------------------------------------------------------------------------------------------ extraction


def test_sampling_grid_is_cubic_and_inside_the_box():
    origin, voxel, shape = sampling_grid(np.array([[0.0, 0, 0], [2, 1.2, 1]]), 5)
    assert voxel == 0.5 and shape == (5, 3, 3)
    assert np.allclose(origin, [0.0, 0.1, 0.0])
    with pytest.raises(ValueError, match="empty"):
        sampling_grid(np.array([[0.0, 0, 0], [1, 0, 1]]), 8)


def test_marching_cubes_of_a_sphere_sdf():
    mesh = extract_mesh(sphere_sdf, BOX, 64)
    check_sphere(mesh, 2.4 / 63)
    assert mesh.metadata["extraction"]["shape"] == [64, 64, 64]


def test_marching_cubes_of_a_sphere_density():
    mesh = extract_mesh(sphere_density, BOX, 64, level=50.0, inside="above")
    check_sphere(mesh, 2.4 / 63)


def test_vertex_colours_and_empty_level_is_a_clear_error():
    mesh = extract_mesh(sphere_sdf, BOX, 24, colour_fn=lambda x: (x + 1) / 2)
    cols = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float)
    assert np.allclose(cols, np.clip((mesh.vertices + 1) / 2, 0, 1) * 255, atol=1.01)
    with pytest.raises(ValueError, match=r"never crosses level 5 in the box \(values from -0\.86\d* to 1\.078"):
        extract_mesh(sphere_sdf, BOX, 16, level=5.0)
    with pytest.raises(ValueError, match="inside"):
        extract_mesh(sphere_sdf, BOX, 16, inside="outside")


def test_write_mesh_round_trip_and_errors(tmp_path):
    mesh = extract_mesh(sphere_sdf, BOX, 16, colour_fn=lambda x: torch.full_like(x, 0.5))
    for name in ("a/b/m.ply", "m.obj"):
        path = write_mesh(mesh, tmp_path / name)
        back = trimesh.load(path, process=False)
        assert len(back.faces) == len(mesh.faces)
        assert np.allclose(back.vertices, mesh.vertices, atol=1e-5)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match=r"m\.stl.*\.ply or \.obj"):
        write_mesh(mesh, tmp_path / "m.stl")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"file/sub/m\.ply: cannot write"):
        write_mesh(mesh, blocker / "sub" / "m.ply")
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["file"])


def test_write_mesh_failure_leaves_nothing(tmp_path, monkeypatch):
    mesh = extract_mesh(sphere_sdf, BOX, 12)

    def fail(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("privnerf.data.io.os.replace", fail)
    with pytest.raises(OSError, match=r"m\.ply: cannot write the mesh \(No space left"):
        write_mesh(mesh, tmp_path / "m.ply")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------ metrics


def test_identical_surfaces_score_perfectly():
    mesh = trimesh.creation.icosphere(subdivisions=4)
    pts, face = trimesh.sample.sample_surface(mesh, 20_000, seed=0)  # what mesh_metrics samples
    r = mesh_metrics(mesh, pts, mesh.face_normals[face], tau=0.01, diagonal=2 * math.sqrt(3), n_samples=20_000)
    assert r["chamfer_l1"] < 1e-12 and r["fscore"] == 1.0
    assert r["normal_consistency"] == pytest.approx(1.0)
    assert r["chamfer_l1_frac"] == pytest.approx(r["chamfer_l1"] / (2 * math.sqrt(3)))
    # independent samples of the same surface: Chamfer is the sampling floor, half the mean spacing
    # (0.5 sqrt(area / n) = 0.004 here), and every point is within tau of the other set
    pts2, nrm2 = unit_sphere_points(200_000)
    r2 = mesh_metrics(trimesh.creation.icosphere(subdivisions=5), pts2, nrm2, tau=0.02, diagonal=1.0,
                      n_samples=200_000)
    assert r2["chamfer_l1"] < 0.005 and r2["fscore"] > 0.999 and r2["normal_consistency"] > 0.999


def test_offset_sphere_scores_its_offset():
    big = trimesh.creation.icosphere(subdivisions=5, radius=1.05)
    pts, nrm = unit_sphere_points(50_000)
    tight = mesh_metrics(big, pts, nrm, tau=0.01, diagonal=1.0, n_samples=50_000)
    assert tight["chamfer_l1"] == pytest.approx(0.05, rel=0.05)
    assert tight["accuracy"] == pytest.approx(0.05, rel=0.05) and tight["completion"] == pytest.approx(0.05, rel=0.05)
    assert tight["fscore"] == 0.0 and tight["normal_consistency"] > 0.99
    loose = mesh_metrics(big, pts, None, tau=0.1, diagonal=1.0, n_samples=50_000)
    assert loose["fscore"] == 1.0 and loose["normal_consistency"] is None


# ------------------------------------------------------------------------------------------------ ground truth


@pytest.mark.parametrize("prim", [
    Sphere((0.1, -0.2, 0.3), 0.4),
    Box((0.2, 0.1, 0.3), (0.3, 0.2, 0.1), yaw=0.7),
    Cylinder(0.1, -0.1, 0.25, 0.05, 0.6),
    Cone(-0.1, 0.2, 0.3, 0.1, 0.5),
    Capsule((0.0, 0.0, 0.1), (0.3, 0.2, 0.5), 0.1),
], ids=lambda p: p.kind)
def test_primitive_samples_sdf_and_area(prim):
    rng = np.random.default_rng(0)
    pts, nrm = prim.sample_surface(40_000, rng)
    p = torch.from_numpy(pts)
    assert prim.sdf(p).abs().max() < 1e-9
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1.0)
    # outward: a step along the normal leaves the solid by that step (away from edges)
    step = prim.sdf(torch.from_numpy(pts + 1e-3 * nrm))
    assert (step > 0).all() and torch.median(step) == pytest.approx(1e-3, rel=1e-3)
    if not isinstance(prim, Capsule):  # agrees with the ray tracer's normals
        agree = (prim.normal(p.float()).double().numpy() * nrm).sum(1)
        assert np.median(agree) > 0.9999 and (agree > 0.99).mean() > 0.999
    # exact distance: |sdf| of off-surface points is their distance to the (dense) surface samples
    from scipy.spatial import cKDTree

    q = rng.uniform(-1.0, 1.0, size=(300, 3))
    nearest = cKDTree(pts).query(q)[0]
    d = prim.sdf(torch.from_numpy(q)).abs().numpy()
    assert (d <= nearest + 1e-9).all() and np.abs(nearest - d).max() < 0.02
    # signs: a step against the normal enters the solid (except within the step of an acute edge)
    assert (prim.sdf(torch.from_numpy(pts - 1e-5 * nrm)) < 0).double().mean() > 0.999


def test_primitive_areas():
    assert Sphere((0, 0, 0), 2.0).area() == pytest.approx(16 * math.pi)
    assert Box((0, 0, 0), (0.5, 1.0, 1.5)).area() == pytest.approx(2 * (1 * 2 + 1 * 3 + 2 * 3))
    assert Cylinder(0, 0, 1.0, 0.0, 2.0).area() == pytest.approx(4 * math.pi + 2 * math.pi)
    assert Cone(0, 0, 3.0, 0.0, 4.0).area() == pytest.approx(math.pi * 3 * 5 + 9 * math.pi)
    assert Disk(2.0).area() == pytest.approx(4 * math.pi)
    assert Capsule((0, 0, 0), (0, 0, 2), 1.0).area() == pytest.approx(4 * math.pi + 4 * math.pi)


def test_builtin_surface_samples_lie_on_the_visible_surface():
    pts, nrm = sample_builtin_surface(30_000, seed=1)
    assert pts.shape == nrm.shape == (30_000, 3)
    assert np.abs(builtin_sdf(pts)).max() < 1e-6
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1.0)
    outside = builtin_sdf(torch.from_numpy(pts + 1e-4 * nrm))
    assert (outside > 0).float().mean() > 0.99  # normals point out (the rest: crevices under the ball etc.)
    assert (pts[:, 2] >= -1e-12).all()  # nothing under the ground, no object bottoms
    ground = np.abs(pts[:, 2]) < 1e-12
    assert np.allclose(nrm[ground], [0, 0, 1])
    # no sample inside another primitive (e.g. the tree trunk inside its cone, tops of posts under a lintel)
    inner = torch.from_numpy(pts - 1e-4 * nrm)
    assert (builtin_sdf(inner[~ground]) < 0).all()
    box = builtin_box()
    assert (pts >= box[0] - 1e-6).all() and (pts <= box[1] + 1e-6).all()
    again, _ = sample_builtin_surface(30_000, seed=1)
    assert np.array_equal(pts, again)


def test_builtin_surface_excludes_hidden_faces():
    world = _make_world(0)
    pts, nrm = sample_builtin_surface(50_000, seed=2)
    # the visible area share of the ground is its area minus the objects' footprints on it, over the total
    prims = [p for p in world.prims if not isinstance(p, Disk)]
    bottoms = np.abs(pts[:, 2]) < 1e-9
    assert not (bottoms & (nrm[:, 2] < -0.5)).any()  # no downward faces on the ground
    for prim in prims:  # every object is represented
        on = prim.sdf(torch.from_numpy(pts)).abs() < 1e-9
        assert on.any(), prim.describe()


def test_builtin_sdf_sign_and_slab():
    world = _make_world(0)
    ball = next(p for p in world.prims if p.kind == "sphere")
    centre = ball.c.double()[None]
    assert builtin_sdf(centre)[0] == pytest.approx(-ball.r, abs=1e-6)
    below = torch.tensor([[0.0, 0.0, -0.01]], dtype=torch.float64)
    assert builtin_sdf(below)[0] == pytest.approx(0.01)  # zero-thickness ground: unsigned
    assert builtin_sdf(below, ground_thickness=0.05)[0] == pytest.approx(-0.01)
    assert isinstance(builtin_sdf(np.zeros((2, 3))), np.ndarray)


# ------------------------------------------------------------------------------------------------ references / CLI


def test_load_reference_formats_and_errors(tmp_path):
    pts, nrm = unit_sphere_points(500)
    write_point_cloud(tmp_path / "s.npz", pts, nrm)
    write_point_cloud(tmp_path / "s.ply", pts, nrm)
    for name in ("s.npz", "s.ply"):
        ref = load_reference(tmp_path / name, 10_000)
        assert ref.points.shape == (500, 3) and np.allclose(ref.normals, nrm, atol=1e-6)
        assert ref.diagonal == pytest.approx(np.linalg.norm(pts.max(0) - pts.min(0)), rel=1e-5)
    assert load_reference(tmp_path / "s.npz", 100).points.shape == (100, 3)
    write_mesh(trimesh.creation.icosphere(3), tmp_path / "m.obj")
    ref = load_reference(tmp_path / "m.obj", 2000)
    assert ref.points.shape == (2000, 3) and ref.normals is not None
    b = load_reference("builtin", 1000)
    assert b.diagonal == pytest.approx(float(np.linalg.norm(builtin_box()[1] - builtin_box()[0])))
    with pytest.raises(FileNotFoundError, match="nope.ply"):
        load_reference(tmp_path / "nope.ply", 10)
    np.savez(tmp_path / "empty.npz", points=np.zeros((0, 3)))
    with pytest.raises(ValueError, match="empty.npz: no points"):
        load_reference(tmp_path / "empty.npz", 10)
    (tmp_path / "bad.ply").write_bytes(b"not a ply")
    with pytest.raises(ValueError, match="bad.ply"):
        load_reference(tmp_path / "bad.ply", 10)
    with pytest.raises(ValueError, match="seed"):
        load_reference("builtin:size=3", 10)


def test_cli_eval_mesh(tmp_path, capsys):
    write_mesh(trimesh.creation.icosphere(subdivisions=4, radius=1.05), tmp_path / "m.ply")
    pts, nrm = unit_sphere_points(20_000)
    write_point_cloud(tmp_path / "ref.npz", pts, nrm)
    out = tmp_path / "res.json"
    rc = main(["eval", "mesh", "--mesh", str(tmp_path / "m.ply"), "--reference", str(tmp_path / "ref.npz"),
               "--tau", "0.1", "--points", "20000", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["fscore"] == 1.0 and r["chamfer_l1"] == pytest.approx(0.05, rel=0.1)
    assert r["tau"] == 0.1 and r["tau_given_as"] == "scene units"
    assert "chamfer_l1" in capsys.readouterr().out
    out2 = tmp_path / "b.json"
    rc = main(["eval", "mesh", "--mesh", str(tmp_path / "m.ply"), "--reference", "builtin", "--tau", "0.01",
               "--tau-frac", "--points", "5000", "--out", str(out2)])
    assert rc == 0
    r2 = json.loads(out2.read_text())
    assert r2["tau_frac"] == pytest.approx(0.01) and r2["tau"] == pytest.approx(0.01 * r2["diagonal"])
    assert main(["eval", "mesh", "--mesh", str(tmp_path / "m.stl"), "--reference", "builtin"]) == 2


def test_cli_builtin_surface(tmp_path):
    assert main(["data", "builtin-surface", "--out", str(tmp_path / "ref.npz"), "--points", "2000"]) == 0
    with np.load(tmp_path / "ref.npz") as z:
        assert z["points"].shape == (2000, 3) and z["normals"].shape == (2000, 3) and z["box"].shape == (2, 3)
    ref = load_reference(tmp_path / "ref.npz", 10_000)
    assert ref.diagonal == pytest.approx(float(np.linalg.norm(builtin_box()[1] - builtin_box()[0])), rel=1e-6)
    assert main(["data", "builtin-surface", "--out", str(tmp_path / "ref.ply"), "--points", "500"]) == 0
    assert load_reference(tmp_path / "ref.ply", 10_000).normals.shape == (500, 3)


# ------------------------------------------------------------------------------------------------ runs


def _sphere_run(tmp_path):
    """A checkpoint whose grid field's density is a ball of radius 0.5 (no training)."""
    from privnerf.data.scene import Scene
    from privnerf.train.config import TrainConfig
    from privnerf.train.trainer import Trainer

    c2w = np.eye(4, dtype=np.float32)[None].copy()
    c2w[0, 2, 3] = 3.0
    scene = Scene(images=[np.zeros((4, 4, 3), np.float32)], c2w=c2w, intrinsics=np.array([[4, 4, 2, 2]], np.float32),
                  near=0.5, far=5.0, aabb=np.array([[-1.0] * 3, [1.0] * 3], np.float32), background=(1.0, 1.0, 1.0))
    cfg = TrainConfig(data="none", steps=1, seed=0)
    cfg.field.grid.num_voxels_start = 32**3
    cfg.render.occ_resolution = 16
    trainer = Trainer(cfg, scene, tmp_path / "run")
    g = trainer.field.density_grid
    axes = [torch.linspace(float(g.aabb[0, i]), float(g.aabb[1, i]), g.resolution[i]) for i in range(3)]
    xyz = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    # raw density: at the export's default level on the sphere, 40 per unit length more inside
    level = math.log(2.0) / (4 * trainer.settings(inference=True).step)
    raw_level = math.log(math.expm1(level)) - trainer.field.shift
    with torch.no_grad():
        g.data[..., 0] = raw_level + 40.0 * (0.5 - xyz.norm(dim=-1))
        trainer.field.feature_grid.data[..., 0] = 5.0  # diffuse red ~ sigmoid(5)
    trainer.save_checkpoint()
    return trainer, tmp_path / "run"


def test_mesh_from_run_and_cli_export(tmp_path, capsys):
    from privnerf.export.mesh import density_threshold, mesh_from_run

    trainer, run = _sphere_run(tmp_path)
    mesh, info = mesh_from_run(run, resolution=48)
    assert info["mode"] == "density"
    assert info["level"] == pytest.approx(density_threshold(trainer.settings(inference=True).step))
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(r.mean() - 0.5) < 0.02 and mesh.volume > 0
    cols = np.asarray(mesh.visual.vertex_colors)
    assert (cols[:, 0] > 240).all() and (cols[:, 1] == 128).all()
    out = tmp_path / "m.obj"
    assert main(["export", "mesh", "--checkpoint", str(run), "--out", str(out), "--resolution", "32"]) == 0
    assert len(trimesh.load(out, process=False).faces) > 0
    assert "mesh:" in capsys.readouterr().out
    assert main(["export", "mesh", "--checkpoint", str(run), "--out", str(tmp_path / "m.stl")]) == 2
    assert not (tmp_path / "m.stl").exists()
    assert main(["export", "mesh", "--checkpoint", str(run), "--out", str(tmp_path / "x.ply"),
                 "--resolution", "16", "--threshold", "1e9"]) == 2
    assert not (tmp_path / "x.ply").exists()
