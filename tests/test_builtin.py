"""The built-in procedural scene: determinism, geometry/label consistency, splits, export."""

from __future__ import annotations

import importlib.util
import json
import math
import time

import numpy as np
import pytest
import torch

from privnerf.data import SceneError, load_scene
from privnerf.data import builtin, primitives
from privnerf.data.builtin import BACKGROUND, CLASS_CATALOG, make_builtin_scene
from privnerf.data.cameras import image_rays

SMALL = dict(size=32, n_train=8, n_val=2, n_test=2, supersample=2)


def _world_points(scene, i):
    """World points ``(H*W, 3)`` of the centre rays of view ``i`` at the stored depth (inf on background)."""
    h, w = scene.hw(i)
    o, d, zs = image_rays(torch.from_numpy(scene.c2w[i]), torch.from_numpy(scene.intrinsics[i]), h, w)
    depth = torch.from_numpy(scene.depths[i]).reshape(-1)
    return (o + (depth * zs)[:, None] * d).numpy()


def test_shapes_types_and_meta():
    sc = make_builtin_scene("train", seed=1, **SMALL)
    assert sc.num_views == 8 and sc.scene_type == "bounded" and sc.background == BACKGROUND
    assert sc.c2w.shape == (8, 4, 4) and sc.intrinsics.shape == (8, 4)
    for img, dep, sem, ins in zip(sc.images, sc.depths, sc.semantics, sc.instances):
        assert img.shape == (32, 32, 3) and img.dtype == np.float32
        assert dep.shape == (32, 32) and dep.dtype == np.float32
        assert sem.dtype == np.int32 and ins.dtype == np.int32
        assert 0.0 <= img.min() and img.max() <= 1.0
    m = sc.meta
    assert m["source"] == "builtin" and m["split"] == "train" and m["seed"] == 1
    assert m["classes"][:2] == ["background", "ground"]
    objects = m["classes"][2:]
    assert 4 <= len(objects) <= 6 and len(set(objects)) == len(objects)
    assert set(objects) <= set(CLASS_CATALOG)
    assert [inst["id"] for inst in m["instances"]] == list(range(1, len(objects) + 2))
    assert 0 < sc.near < sc.far
    assert np.all(sc.aabb[0] < sc.aabb[1])
    # the aabb holds every instance
    for inst in m["instances"]:
        lo, hi = np.array(inst["bbox"])
        assert np.all(lo >= sc.aabb[0] - 1e-6) and np.all(hi <= sc.aabb[1] + 1e-6)


def test_deterministic_and_seed_dependent():
    a = make_builtin_scene("train", seed=3, **SMALL)
    fresh = builtin._render_all.__wrapped__(3, 32, 8, 2, 2, 2)["train"]  # bypass the cache
    for x, y in zip(a.images + a.depths + a.semantics, fresh.images + fresh.depths + fresh.semantics):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.c2w, fresh.c2w)
    assert a.meta["instances"] == fresh.meta["instances"]
    b = make_builtin_scene("train", seed=4, **SMALL)
    assert a.meta["instances"] != b.meta["instances"]
    assert not np.array_equal(np.stack(a.images), np.stack(b.images))


def test_objects_depend_on_seed_only():
    a = make_builtin_scene("train", seed=2, **SMALL)
    b = make_builtin_scene("test", seed=2, size=24, n_train=3, n_val=1, n_test=1, supersample=1)
    assert a.meta["instances"] == b.meta["instances"] and a.meta["classes"] == b.meta["classes"]


def test_returned_scene_is_a_copy():
    a = make_builtin_scene("train", seed=5, **SMALL)
    a.images[0][:] = 0.0
    a.meta["classes"].append("junk")
    b = make_builtin_scene("train", seed=5, **SMALL)
    assert b.images[0].max() > 0.0 and "junk" not in b.meta["classes"]


def test_depth_and_labels_match_geometry():
    sc = make_builtin_scene("train", seed=0, **SMALL)
    insts = {inst["id"]: inst for inst in sc.meta["instances"]}
    n_ground = 0
    for i in range(sc.num_views):
        pts = _world_points(sc, i)
        dep, sem, ins = sc.depths[i].reshape(-1), sc.semantics[i].reshape(-1), sc.instances[i].reshape(-1)
        bg = ~np.isfinite(dep)
        assert np.array_equal(bg, sem == 0) and np.array_equal(bg, ins == 0)
        assert np.all(dep[~bg] > 0)
        ground = ins == 1
        n_ground += ground.sum()
        assert np.abs(pts[ground, 2]).max() < 1e-3  # ground hits lie in z = 0 ...
        assert np.hypot(pts[ground, 0], pts[ground, 1]).max() <= builtin.GROUND_RADIUS + 1e-3  # ... on the disk
        for k in np.unique(ins[ins >= 2]):  # object hits lie inside the object's bounding box
            lo, hi = np.array(insts[int(k)]["bbox"])
            p = pts[ins == k]
            assert np.all(p >= lo - 2e-3) and np.all(p <= hi + 2e-3)
        ball = [v for v in insts.values() if v["class"] == "ball"]
        for b in ball:  # sphere hits lie on the sphere
            part = b["parts"][0]
            p = pts[ins == b["id"]]
            if len(p):
                r = np.linalg.norm(p - np.array(part["centre"]), axis=1)
                assert np.abs(r - part["radius"]).max() < 1e-3
        # pixels whose whole 3x3 neighbourhood is background are exactly the background colour
        bgm = bg.reshape(sc.hw(i))
        inner = np.ones_like(bgm)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                inner &= np.roll(np.roll(bgm, dy, 0), dx, 1)
        inner[[0, -1], :] = False
        inner[:, [0, -1]] = False
        assert inner.any()
        np.testing.assert_array_equal(sc.images[i][inner], np.broadcast_to(BACKGROUND, (inner.sum(), 3)))
    assert n_ground > 0


def test_every_class_visible_and_instances_map_to_classes():
    for seed in (0, 1, 2):
        sc = make_builtin_scene("train", seed=seed, **SMALL)
        classes = sc.meta["classes"]
        seen = set(np.unique(np.concatenate([s.reshape(-1) for s in sc.semantics])).tolist())
        assert seen == set(range(len(classes))), (seed, classes, seen)
        for inst in sc.meta["instances"]:
            assert classes[inst["class_id"]] == inst["class"]
            for sem, ins in zip(sc.semantics, sc.instances):
                assert np.all(sem[ins == inst["id"]] == inst["class_id"])


def test_top_down_centre_ray_hits_and_misses():
    world = builtin._make_world(7)
    o = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0], [2.0, 2.0, 5.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    t, pid = builtin._trace(o, d, world.objects)
    assert pid[0] >= 0 and 0 < t[0] <= 5.0 + 1e-5  # straight down onto the scene centre: hits something
    assert pid[1] == -1 and pid[2] == -1  # up into the sky, and down beside the disk: miss
    # and in a rendered view: the highest train camera looks at the scene centre and sees something there
    sc = make_builtin_scene("train", seed=7, **SMALL)
    top = int(np.argmax(sc.c2w[:, 2, 3]))
    assert sc.c2w[top, 2, 3] > 3.0  # elevation > ~50 degrees
    c = sc.depths[top][16, 16]
    assert np.isfinite(c) and 2.5 < c < builtin.CAMERA_RADIUS + 0.5
    assert sc.semantics[top][16, 16] >= 1


def test_primitives_analytic():
    o = torch.tensor([[0.0, 0.0, 5.0], [3.0, 0.0, 0.5]])
    d = torch.tensor([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    sph = primitives.Sphere((0.0, 0.0, 0.5), 0.5)
    np.testing.assert_allclose(sph.intersect(o, d).numpy(), [4.0, 2.5], atol=1e-5)
    box = primitives.Box((0.0, 0.0, 0.5), (0.2, 0.3, 0.5), yaw=math.pi / 2)  # rotated: x half-extent is 0.3
    np.testing.assert_allclose(box.intersect(o, d).numpy(), [4.0, 2.7], atol=1e-5)
    cyl = primitives.Cylinder(0.0, 0.0, 0.25, 0.0, 1.0)
    np.testing.assert_allclose(cyl.intersect(o, d).numpy(), [4.0, 2.75], atol=1e-5)
    cone = primitives.Cone(0.0, 0.0, 0.5, 0.0, 1.0)  # at z = 0.5 the radius is 0.25; the apex is at z = 1
    np.testing.assert_allclose(cone.intersect(o, d).numpy(), [4.0, 2.75], atol=1e-5)
    p = torch.tensor([[0.0, 0.0, 1.0], [0.25, 0.0, 0.5]])
    np.testing.assert_allclose(cyl.normal(p).numpy(), [[0, 0, 1], [1, 0, 0]], atol=1e-6)
    n = cone.normal(torch.tensor([[0.25, 0.0, 0.5]])).numpy()[0]
    np.testing.assert_allclose(n, np.array([1.0, 0.0, 0.5]) / math.sqrt(1.25), atol=1e-6)
    disk = primitives.Disk(1.0)
    t = disk.intersect(torch.tensor([[0.5, 0.0, 2.0], [1.5, 0.0, 2.0]]), torch.tensor([[0.0, 0.0, -1.0]] * 2))
    assert t[0] == pytest.approx(2.0) and math.isinf(t[1])


def test_objects_do_not_overlap():
    for seed in range(40):
        objs = builtin._make_world(seed).objects[1:]
        assert 4 <= len(objs) <= 6 and len({o.class_name for o in objs}) == len(objs)
        for a in range(len(objs)):
            assert math.hypot(*objs[a].xy) + objs[a].footprint < builtin.GROUND_RADIUS
            for b in range(a):
                dist = math.dist(objs[a].xy, objs[b].xy)
                assert dist > objs[a].footprint + objs[b].footprint


def test_splits_are_novel_views():
    tr = make_builtin_scene("train", seed=0, **SMALL)
    va = make_builtin_scene("val", seed=0, **SMALL)
    te = make_builtin_scene("test", seed=0, **SMALL)
    assert va.num_views == 2 and te.num_views == 2
    pos = {k: s.c2w[:, :3, 3] for k, s in (("train", tr), ("val", va), ("test", te))}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        dist = np.linalg.norm(pos[a][:, None] - pos[b][None], axis=-1)
        assert dist.min() > 0.1
    for s in (tr, va, te):  # every camera looks at the scene centre, at the camera radius
        fwd = -s.c2w[:, :3, 2]
        to_c = np.array(builtin.LOOK_AT) - s.c2w[:, :3, 3]
        np.testing.assert_allclose(np.linalg.norm(to_c, axis=1), builtin.CAMERA_RADIUS, rtol=1e-5)
        np.testing.assert_allclose((fwd * to_c).sum(1) / builtin.CAMERA_RADIUS, 1.0, atol=1e-5)
        elev = np.degrees(np.arcsin(-fwd[:, 2]))
        assert np.all((elev > 9) & (elev < 71))


def test_options_and_loader():
    with pytest.raises(SceneError, match="unknown option"):
        make_builtin_scene("train", sede=3)
    with pytest.raises(SceneError, match="split"):
        make_builtin_scene("holdout", **SMALL)
    with pytest.raises(SceneError, match="size"):
        make_builtin_scene("train", size=0)
    with pytest.raises(SceneError, match="unknown option"):
        load_scene("builtin:colour=3")
    a = load_scene("builtin:seed=3,size=32,n_train=8,n_val=2,n_test=2", split="val")
    b = make_builtin_scene("val", seed=3, **SMALL)
    np.testing.assert_array_equal(np.stack(a.images), np.stack(b.images))


def test_default_scene_generation_time():
    t0 = time.perf_counter()
    scenes = builtin._render_all.__wrapped__(0, 100, 60, 8, 8, 2)  # uncached
    dt = time.perf_counter() - t0
    assert [scenes[s].num_views for s in ("train", "val", "test")] == [60, 8, 8]
    assert dt < 15.0, f"default builtin scene took {dt:.1f} s"


@pytest.mark.skipif(
    importlib.util.find_spec("privnerf.data.nerfstudio") is None, reason="privnerf.data.nerfstudio not available"
)
def test_export_round_trip(tmp_path):
    from PIL import Image

    from privnerf.data.builtin import export_builtin
    from privnerf.data.nerfstudio import load_nerfstudio

    out = tmp_path / "ds"
    path = export_builtin(out, seed=1, size=24, n_train=4, n_val=2, n_test=2, supersample=1)
    assert path == out / "transforms.json"
    meta = json.loads((out / "builtin_meta.json").read_text())
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        ref = make_builtin_scene(split, seed=1, size=24, n_train=4, n_val=2, n_test=2, supersample=1)
        got = load_nerfstudio(out, split)
        assert got.num_views == n
        np.testing.assert_allclose(got.c2w, ref.c2w, atol=1e-6)
        np.testing.assert_allclose(got.intrinsics, ref.intrinsics, atol=1e-6)
        for i in range(n):
            np.testing.assert_allclose(got.images[i], ref.images[i], atol=1 / 255 + 1e-6)
            fin = np.isfinite(ref.depths[i])
            assert np.array_equal(np.isfinite(got.depths[i]), fin)
            np.testing.assert_allclose(got.depths[i][fin], ref.depths[i][fin], atol=1e-3)
            fm = got.frame_meta[i]
            assert fm["split"] == split
            sem = np.array(Image.open(out / fm["semantic_path"]))
            ins = np.array(Image.open(out / fm["instance_path"]))
            np.testing.assert_array_equal(sem, ref.semantics[i])
            np.testing.assert_array_equal(ins, ref.instances[i])
    assert meta["classes"] == ref.meta["classes"]
