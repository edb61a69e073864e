"""Dataset parsers: synthetic datasets built in tmp_path, bad-input errors, and the real data in shared/data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from privnerf.data import SceneError, load_scene
from privnerf.data.blender import load_blender
from privnerf.data.io import atomic_write_json, read_image, read_mask
from privnerf.data.llff import average_pose, load_llff
from privnerf.data.nerfstudio import load_nerfstudio, write_nerfstudio
from privnerf.data.npz import load_npz
from privnerf.data.scene import Scene

# ------------------------------------------------------------------------------------------------ helpers


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr)).save(path)
    return path


def _rand_u8(rng, h, w, c):
    return rng.integers(0, 256, size=(h, w, c) if c else (h, w), dtype=np.uint8)


def _look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenGL c2w at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(x, float) for x in (eye, target, up))
    z = eye - target
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def _ring(n, radius=4.0, height=1.0):
    angles = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return [_look_at((radius * math.cos(a), radius * math.sin(a), height)) for a in angles]


def _raises(fn, *names):
    """Run fn, expect a SceneError whose message contains every given name; return the message."""
    with pytest.raises(SceneError) as info:
        fn()
    msg = str(info.value)
    for name in names:
        assert str(name) in msg, msg
    return msg


def _make_blender(root: Path, split="train", n=3, h=8, w=8, angle=0.5, seed=0, depth=False):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        rgba = _rand_u8(rng, h, w, 4)
        _png(root / split / f"r_{i}.png", rgba)
        if depth:
            _png(root / split / f"r_{i}_depth_0001.png", _rand_u8(rng, h, w, 4))
        frames.append({"file_path": f"./{split}/r_{i}", "rotation": 0.1 * i, "transform_matrix": _ring(n)[i].tolist()})
    (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
    return frames


# ------------------------------------------------------------------------------------------------ io


def test_read_image_and_mask_errors(tmp_path):
    _raises(lambda: read_image(tmp_path / "nope.png"), "nope.png", "not found")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    _raises(lambda: read_image(bad), "bad.png", "corrupt")
    _raises(lambda: read_mask(bad), "bad.png")
    m = _png(tmp_path / "m.png", np.array([[0, 7], [255, 3]], np.uint8))
    np.testing.assert_array_equal(read_mask(m), [[0, 7], [255, 3]])
    _raises(lambda: read_mask(m, expected_hw=(3, 2)), "m.png", "differs")


def test_read_image_composite_and_downscale(tmp_path):
    rgba = np.zeros((2, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :2, 3] = 255  # left half opaque red, right half transparent
    p = _png(tmp_path / "a.png", rgba)
    img = read_image(p, background=(0.0, 0.0, 1.0))
    np.testing.assert_allclose(img[0, 0], [1, 0, 0])
    np.testing.assert_allclose(img[0, 3], [0, 0, 1])
    small = read_image(p, background=(0.0, 0.0, 1.0), downscale=2)
    assert small.shape == (1, 2, 3) and small.dtype == np.float32
    np.testing.assert_allclose(small[0], [[1, 0, 0], [0, 0, 1]])


# ------------------------------------------------------------------------------------------------ Blender


def test_blender_cameras_intrinsics_composite(tmp_path):
    frames = _make_blender(tmp_path, n=3, h=8, w=8, angle=0.5)
    scene = load_blender(tmp_path, "train", background=(1.0, 1.0, 1.0))
    assert scene.num_views == 3 and scene.hw(0) == (8, 8)
    f = 0.5 * 8 / math.tan(0.25)
    np.testing.assert_allclose(scene.intrinsics, [[f, f, 4.0, 4.0]] * 3, rtol=1e-6)
    np.testing.assert_allclose(scene.c2w, np.array([fr["transform_matrix"] for fr in frames]), atol=1e-6)
    raw = np.asarray(Image.open(tmp_path / "train" / "r_1.png"), np.float32) / 255.0
    expect = raw[..., :3] * raw[..., 3:] + (1.0 - raw[..., 3:])
    np.testing.assert_allclose(scene.images[1], expect, atol=1e-6)
    assert scene.background == (1.0, 1.0, 1.0) and scene.scene_type == "bounded"
    assert (scene.near, scene.far) == (2.0, 6.0)
    np.testing.assert_allclose(scene.aabb, [[-1.5] * 3, [1.5] * 3])
    assert scene.frame_meta[2] == {"rotation": pytest.approx(0.2)}
    assert scene.names[0] == "train/r_0.png"
    assert load_scene(tmp_path, "train").num_views == 3  # dispatch


def test_blender_downscale_black_background_and_depth_paths(tmp_path):
    _make_blender(tmp_path, split="test", n=2, h=8, w=6, angle=0.7, depth=True)
    scene = load_blender(tmp_path, "test", background=(0.0, 0.0, 0.0), downscale=2)
    assert scene.hw(0) == (4, 3)
    f = 0.5 * 3 / math.tan(0.35)  # focal from the width actually loaded
    np.testing.assert_allclose(scene.intrinsics[0], [f, f, 1.5, 2.0], rtol=1e-6)
    raw = np.asarray(Image.open(tmp_path / "test" / "r_0.png"), np.float64) / 255.0
    comp = raw[..., :3] * raw[..., 3:]
    np.testing.assert_allclose(scene.images[0][1, 2], comp[2:4, 4:6].mean((0, 1)), atol=1e-5)
    assert scene.depths is None
    assert scene.frame_meta[1]["depth_path"].endswith("r_1_depth_0001.png")
    assert scene.background == (0.0, 0.0, 0.0)


def test_blender_bad_inputs(tmp_path):
    root = tmp_path / "b"
    _make_blender(root, n=2)
    jpath = root / "transforms_train.json"
    good = json.loads(jpath.read_text())

    def write(obj):
        jpath.write_text(json.dumps(obj))

    _raises(lambda: load_blender(root, "val"), "transforms_val.json", "not found")
    jpath.write_text('{"camera_angle_x": 0.5,\n "frames": [,]}')
    _raises(lambda: load_blender(root, "train"), "transforms_train.json", "line 2", "column")
    write({"frames": good["frames"]})
    _raises(lambda: load_blender(root, "train"), "transforms_train.json", "camera_angle_x")
    write({"camera_angle_x": 0.5})
    _raises(lambda: load_blender(root, "train"), "transforms_train.json", "frames")
    write({"camera_angle_x": 0.5, "frames": []})
    _raises(lambda: load_blender(root, "train"), "transforms_train.json", "empty split")
    bad = json.loads(json.dumps(good))
    bad["frames"][1]["transform_matrix"] = bad["frames"][1]["transform_matrix"][:3]
    write(bad)
    _raises(lambda: load_blender(root, "train"), "transforms_train.json", "4x4", "frame 1")
    bad = json.loads(json.dumps(good))
    bad["frames"][0]["transform_matrix"][0][3] = float("nan")
    write(bad)
    _raises(lambda: load_blender(root, "train"), "transforms_train.json", "NaN")
    bad = json.loads(json.dumps(good))
    del bad["frames"][0]["file_path"]
    write(bad)
    _raises(lambda: load_blender(root, "train"), "transforms_train.json", "file_path")
    write(good)
    assert load_blender(root, "train").num_views == 2
    (root / "train" / "r_1.png").write_bytes(b"garbage")
    _raises(lambda: load_blender(root, "train"), "r_1.png", "corrupt")
    _png(root / "train" / "r_1.png", np.zeros((8, 9, 4), np.uint8))
    _raises(lambda: load_blender(root, "train"), "r_1.png", "9x8", "differs")
    (root / "train" / "r_1.png").unlink()
    _raises(lambda: load_blender(root, "train"), "r_1.png", "not found")


# ------------------------------------------------------------------------------------------------ nerfstudio


def _make_ns(root: Path, n=3, h=6, w=8, per_frame=False, extra_top=None, frame_extra=None, seed=0):
    rng = np.random.default_rng(seed)
    top = {"camera_model": "OPENCV", "fl_x": 10.0, "fl_y": 11.0, "cx": 4.5, "cy": 3.25, "w": w, "h": h, "k1": 0.0}
    frames = []
    for i, c2w in enumerate(_ring(n)):
        _png(root / "imgs" / f"f{i}.png", _rand_u8(rng, h, w, 3))
        fr = {"file_path": f"imgs/f{i}.png", "transform_matrix": c2w.tolist()}
        if per_frame:
            fr.update({"fl_x": 20.0 + i, "cx": 4.0})
        if frame_extra:
            fr.update(frame_extra(i))
        frames.append(fr)
    top["frames"] = frames
    top.update(extra_top or {})
    (root / "transforms.json").write_text(json.dumps(top))
    return top


def test_nerfstudio_intrinsics_and_interval_split(tmp_path):
    top = _make_ns(tmp_path, n=10, per_frame=True)
    tr = load_nerfstudio(tmp_path, "train")
    te = load_nerfstudio(tmp_path / "transforms.json", "test")  # the json itself works too
    assert te.meta["split"] == "test" and [n for n in te.names] == ["imgs/f0.png", "imgs/f8.png"]
    assert tr.num_views == 8 and "imgs/f1.png" in tr.names
    # per-frame fl_x, cx override the top level; fl_y, cy shared
    np.testing.assert_allclose(te.intrinsics, [[20.0, 11.0, 4.0, 3.25], [28.0, 11.0, 4.0, 3.25]])
    np.testing.assert_allclose(te.c2w[1], np.array(top["frames"][8]["transform_matrix"]), atol=1e-6)
    assert te.hw(0) == (6, 8) and te.masks is None and te.depths is None
    assert te.meta["camera_model"] == "OPENCV" and te.meta["distortion"] == {"k1": 0.0}
    # bounds from cameras: a ring of radius 4 at height 1 looking at the origin
    assert te.scene_type == "unbounded"
    r = math.hypot(4.0, 1.0)
    np.testing.assert_allclose(te.aabb, [[-r] * 3, [r] * 3], atol=1e-4)
    assert te.near == pytest.approx(0.05 * r, rel=1e-4) and te.far == pytest.approx(1000 * r, rel=1e-4)
    ds = load_nerfstudio(tmp_path, "test", downscale=2)
    assert ds.hw(0) == (3, 4)
    np.testing.assert_allclose(ds.intrinsics[0], [10.0, 5.5, 2.0, 1.625])
    assert load_scene(tmp_path, "val").num_views == 2


def test_nerfstudio_splits_from_lists_and_fields(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _make_ns(a, n=4, extra_top={"train_filenames": ["imgs/f1.png", "./imgs/f3.png"], "test_filenames": ["imgs/f2.png"]})
    assert load_nerfstudio(a, "train").names == ["imgs/f1.png", "imgs/f3.png"]
    assert load_nerfstudio(a, "val").names == ["imgs/f2.png"]  # val falls back to the test list
    assert load_nerfstudio(a, "train", eval_mode="all").num_views == 4
    _make_ns(b, n=4, frame_extra=lambda i: {"split": "train" if i % 2 else "val", "user_id": f"u{i}"})
    val = load_nerfstudio(b, "test")
    assert val.names == ["imgs/f0.png", "imgs/f2.png"]
    assert val.frame_meta == [{"split": "val", "user_id": "u0"}, {"split": "val", "user_id": "u2"}]


def test_nerfstudio_masks_depths_and_bounds_keys(tmp_path):
    top = _make_ns(
        tmp_path,
        n=2,
        extra_top={"aabb": [[-1, -2, -3], [1, 2, 3]], "near": 0.5, "far": 9.0, "scene_type": "bounded"},
        frame_extra=lambda i: {"mask_path": f"m/{i}.png", "depth_file_path": f"d/{i}.png" if i == 0 else f"d/{i}.npy"},
    )
    labels = np.array([[0, 1, 2, 3, 0, 0, 0, 200]] * 6, np.uint8)
    for i in range(2):
        _png(tmp_path / "m" / f"{i}.png", labels)
    mm = np.full((6, 8), 1500, np.uint16)
    mm[0, 0] = 0
    _png(tmp_path / "d" / "0.png", mm)
    np.save(tmp_path / "d" / "1.npy", np.full((6, 8), 2.25, np.float32))
    scene = load_nerfstudio(tmp_path, "train", eval_mode="all")
    assert scene.scene_type == "bounded" and (scene.near, scene.far) == (0.5, 9.0)
    np.testing.assert_allclose(scene.aabb, top["aabb"])
    assert scene.masks[0].dtype == np.uint8 and scene.masks[0].shape == (6, 8)
    np.testing.assert_array_equal(scene.masks[1], labels)
    assert scene.depths[0].dtype == np.float32
    assert scene.depths[0][0, 0] == np.inf and scene.depths[0][1, 1] == pytest.approx(1.5)
    assert scene.depths[1][2, 2] == pytest.approx(2.25)


def test_nerfstudio_bad_inputs(tmp_path):
    root = tmp_path / "ns"
    top = _make_ns(root, n=3)
    jpath = root / "transforms.json"

    def write(obj):
        jpath.write_text(json.dumps(obj))

    def load(split="train", **kw):
        return load_nerfstudio(root, split, eval_mode="all", **kw)

    jpath.write_text('{"frames": [\n\n  {"file_path" "x"}]}')
    _raises(load, "transforms.json", "line 3", "column")
    write({k: v for k, v in top.items() if k != "frames"})
    _raises(load, "transforms.json", "frames")
    write({**top, "frames": []})
    _raises(load, "transforms.json", "empty split")
    write({k: v for k, v in top.items() if k != "fl_x"})
    _raises(load, "transforms.json", "fl_x")
    bad = json.loads(json.dumps(top))
    bad["frames"][2]["transform_matrix"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    write(bad)
    _raises(load, "transforms.json", "4x4", "f2.png")
    bad["frames"][2]["transform_matrix"] = np.eye(4).tolist()
    bad["frames"][2]["transform_matrix"][1][3] = float("inf")
    write(bad)
    _raises(load, "transforms.json", "NaN or Inf")
    write({**top, "camera_model": "OPENCV_FISHEYE"})
    _raises(load, "transforms.json", "OPENCV_FISHEYE")
    write({**top, "train_filenames": ["imgs/nope.png"]})
    _raises(lambda: load_nerfstudio(root, "train"), "transforms.json", "imgs/nope.png")
    write({**top, "frames": top["frames"][:1]})
    _raises(lambda: load_nerfstudio(root, "train"), "transforms.json", "empty split")  # 1 frame: it is eval
    write({**top, "w": 9})
    _raises(load, "f0.png", "differs")
    bad = json.loads(json.dumps(top))
    bad["frames"][0]["mask_path"] = "m.png"
    write(bad)
    _png(root / "m.png", np.zeros((5, 8), np.uint8))
    _raises(load, "m.png", "differs from its image size")
    write(top)
    (root / "imgs" / "f1.png").unlink()
    _raises(load, "f1.png", "not found")
    _raises(lambda: load_nerfstudio(tmp_path / "missing", "train"), "missing")


def _roundtrip_scene(seed=0) -> Scene:
    rng = np.random.default_rng(seed)
    n, h, w = 3, 5, 7
    images = [rng.random((h, w, 3), dtype=np.float32) for _ in range(n)]
    depths = [rng.uniform(0.5, 20.0, (h, w)).astype(np.float32) for _ in range(n)]
    depths[1][0, 0] = np.inf
    return Scene(
        images=images,
        c2w=np.stack(_ring(n)).astype(np.float32),
        intrinsics=np.array([[9.5, 9.0, 3.5, 2.5], [8.0, 8.0, 3.0, 2.0], [12.25, 12.5, 3.6, 2.4]], np.float32),
        near=0.1,
        far=20.0,
        aabb=np.array([[-2, -2, -1], [2, 2, 1]], np.float32),
        scene_type="unbounded",
        background=None,
        masks=[rng.integers(0, 4, (h, w), dtype=np.uint8) for _ in range(n)],
        depths=depths,
        frame_meta=[{"user_id": f"alice{i}", "exposure": 0.5 * i, "tags": ["a", i]} for i in range(n)],
        meta={"split": "train"},
    )


def test_nerfstudio_write_read_roundtrip(tmp_path):
    scene = _roundtrip_scene()
    out = write_nerfstudio(scene, tmp_path / "out")
    assert out == tmp_path / "out" / "transforms.json"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary leftovers
    back = load_nerfstudio(out.parent, "train")
    assert back.num_views == 3
    np.testing.assert_allclose(back.c2w, scene.c2w, atol=1e-7)
    np.testing.assert_allclose(back.intrinsics, scene.intrinsics, atol=1e-7)
    for a, b in zip(back.images, scene.images):
        assert np.abs(a - b).max() <= 0.5 / 255 + 1e-6
    for a, b in zip(back.masks, scene.masks):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(back.depths, scene.depths):
        fin = np.isfinite(b)
        np.testing.assert_array_equal(np.isfinite(a), fin)
        assert np.abs(a[fin] - b[fin]).max() <= 0.0005 + 1e-6
    assert back.frame_meta == scene.frame_meta
    assert (back.near, back.far, back.scene_type, back.background) == (0.1, 20.0, "unbounded", None)
    np.testing.assert_allclose(back.aabb, scene.aabb)
    # overwriting an earlier output is allowed; an unrelated non-empty folder is not
    write_nerfstudio(scene, tmp_path / "out", image_format="jpg")
    assert load_nerfstudio(tmp_path / "out", "train").names[0].endswith(".jpg")
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_nerfstudio(scene, other)


def test_nerfstudio_writer_is_atomic_on_failure(tmp_path):
    scene = _roundtrip_scene()
    scene.frame_meta[2] = {"bad": object()}  # not JSON: fails at the very end
    with pytest.raises(TypeError):
        write_nerfstudio(scene, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"a": float("nan")})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_blender_to_nerfstudio_roundtrip_multi_split(tmp_path):
    _make_blender(tmp_path / "bl", "train", n=2)
    _make_blender(tmp_path / "bl", "test", n=2, seed=1, depth=True)
    tr, te = load_blender(tmp_path / "bl", "train"), load_blender(tmp_path / "bl", "test")
    out = write_nerfstudio({"train": tr, "test": te}, tmp_path / "ns")
    back_te = load_nerfstudio(out, "test")
    assert back_te.background == (1.0, 1.0, 1.0) and back_te.scene_type == "bounded"
    assert (back_te.near, back_te.far) == (2.0, 6.0)
    np.testing.assert_allclose(back_te.intrinsics, te.intrinsics)
    np.testing.assert_allclose(back_te.c2w, te.c2w)
    assert back_te.frame_meta[0]["rotation"] == te.frame_meta[0]["rotation"]
    assert np.abs(back_te.images[1] - te.images[1]).max() <= 0.5 / 255 + 1e-6
    assert load_nerfstudio(out, "train").num_views == 2


# ------------------------------------------------------------------------------------------------ LLFF


def _make_llff(root: Path, c2ws, factor=2, h_full=8, w_full=12, focal_full=10.0, near=2.0, far=10.0, masks=False):
    """Write poses_bounds.npy (LLFF columns [down, right, backwards]) and images_{factor}."""
    rows = []
    rng = np.random.default_rng(0)
    for i, m in enumerate(c2ws):
        llff = np.stack([-m[:3, 1], m[:3, 0], m[:3, 2], m[:3, 3], [h_full, w_full, focal_full]], axis=1)
        rows.append(np.concatenate([llff.reshape(-1), [near + 0.1 * i, far]]))
        _png(root / f"images_{factor}" / f"img{i:03d}.png", _rand_u8(rng, h_full // factor, w_full // factor, 3))
        if masks:
            _png(root / f"masks_{factor}" / f"img{i:03d}.png", _rand_u8(rng, h_full // factor, w_full // factor, 0))
    np.save(root / "poses_bounds.npy", np.asarray(rows))
    return np.asarray(c2ws)


def _forward_cams(n):
    return [_look_at((0.3 * math.cos(a), 0.2 * math.sin(a), 5.0), target=(0, 0, 0), up=(0, 1, 0)) for a in np.linspace(0, 6, n)]


def test_llff_axes_intrinsics_split(tmp_path):
    c2ws = _make_llff(tmp_path, _forward_cams(10))
    te = load_llff(tmp_path, "test", factor=2, recenter=False, bd_factor=None)
    assert te.meta["indices"] == [0, 8] and te.names == ["images_2/img000.png", "images_2/img008.png"]
    np.testing.assert_allclose(te.c2w, c2ws[[0, 8]], atol=1e-6)  # axis reorder recovers OpenGL c2w
    np.testing.assert_allclose(te.intrinsics[0], [5.0, 5.0, 3.0, 2.0])
    assert te.hw(0) == (4, 6) and te.scene_type == "forward" and te.masks is None
    assert te.near == pytest.approx(1.8) and te.far == pytest.approx(10.0)
    assert te.frame_meta[1] == {"near_bound": pytest.approx(2.8), "far_bound": 10.0}
    tr = load_llff(tmp_path, "train", factor=2)
    assert tr.num_views == 8 and tr.meta["indices"] == [1, 2, 3, 4, 5, 6, 7, 9]
    # recentred + scaled: the average pose of all views is the identity, nearest bound 1/0.75
    allv = load_llff(tmp_path, "train", factor=2, holdout=0)
    np.testing.assert_allclose(average_pose(allv.c2w.astype(np.float64)), np.eye(4), atol=1e-5)
    sc = 1.0 / (2.0 * 0.75)
    assert allv.near == pytest.approx(0.9 * 2.0 * sc) and allv.far == pytest.approx(10.0 * sc)
    world = np.asarray(allv.meta["world_transform"])
    np.testing.assert_allclose(world @ c2ws[3][:, 3], allv.c2w[3][:, 3], atol=1e-5)
    # the aabb holds every camera and the scene centre (the origin of the old world)
    centre = (world @ [0, 0, 0, 1])[:3]
    for p in list(allv.c2w[:, :3, 3]) + [centre]:
        assert np.all(p >= allv.aabb[0] - 1e-5) and np.all(p <= allv.aabb[1] + 1e-5)
    assert load_scene(tmp_path, "test", factor=2).num_views == 2


def test_llff_surround_capture_is_unbounded_with_masks(tmp_path):
    _make_llff(tmp_path, _ring(12, radius=4.0, height=1.0), near=3.0, far=5.0, masks=True)
    sc = load_llff(tmp_path, "train", factor=2)
    assert sc.scene_type == "unbounded" and sc.masks is not None and sc.masks[0].shape == (4, 6)
    raw = np.asarray(Image.open(tmp_path / "masks_2" / "img001.png"))
    np.testing.assert_array_equal(sc.masks[0], raw)
    world = np.asarray(sc.meta["world_transform"])
    centre = (world @ [0, 0, 0, 1])[:3]
    assert np.all(centre > sc.aabb[0]) and np.all(centre < sc.aabb[1])


def test_llff_bad_inputs(tmp_path):
    root = tmp_path / "ll"
    _make_llff(root, _forward_cams(4), masks=True)
    pb_path = root / "poses_bounds.npy"
    good = np.load(pb_path)
    load = lambda: load_llff(root, "train", factor=2)  # noqa: E731
    assert load().num_views == 3
    np.save(pb_path, good[:, :15])
    _raises(load, "poses_bounds.npy", "N x 17")
    bad = good.copy()
    bad[2, 3] = np.nan
    np.save(pb_path, bad)
    _raises(load, "poses_bounds.npy", "NaN", "row 2")
    np.save(pb_path, good[:3])
    _raises(load, "images_2", "4 images", "3 rows")
    bad = good.copy()
    bad[:, 4] = 16  # H = 16 full-res -> 8 expected at factor 2, images have 4
    np.save(pb_path, bad)
    _raises(load, "img001.png", "disagrees")
    np.save(pb_path, good)
    _raises(lambda: load_llff(root, "train", factor=4), "images_4", "not found")
    _png(root / "masks_2" / "img002.png", np.zeros((3, 6), np.uint8))
    _raises(load, "img002.png", "differs")
    pb_path.write_bytes(b"not numpy")
    _raises(load, "poses_bounds.npy")


# ------------------------------------------------------------------------------------------------ npz


def test_npz_splits_and_intrinsics(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "t.npz"
    poses = np.stack(_ring(10)).astype(np.float32)
    imgs = _rand_u8(rng, 10 * 4, 6, 3).reshape(10, 4, 6, 3)
    np.savez(p, images=imgs, poses=poses, focal=np.float64(7.5), names=np.array([f"v{i}" for i in range(10)]))
    te = load_npz(p, "test")
    assert te.names == ["v0", "v8"] and te.background is None and te.meta["background_known"] is False
    np.testing.assert_allclose(te.intrinsics, [[7.5, 7.5, 3.0, 2.0]] * 2)
    np.testing.assert_allclose(te.images[1], imgs[8] / 255.0, atol=1e-7)
    np.testing.assert_allclose(te.c2w, poses[[0, 8]])
    assert load_npz(p, "train", test_indices=[1, 2]).names == ["v0"] + [f"v{i}" for i in range(3, 10)]
    assert (te.near, te.far, te.scene_type) == (2.0, 6.0, "bounded")
    big = tmp_path / "big.npz"
    alphas = np.zeros((103, 2, 2), np.float32)
    alphas[:, 0, 0] = 1.0
    images = np.zeros((103, 2, 2, 3), np.float32)
    images[:, 0, 0] = 0.7
    poses = np.tile(np.eye(4, dtype=np.float32), (103, 1, 1))
    np.savez(big, images=images, poses=poses, focal=2.0, alphas=alphas)
    assert load_npz(big, "train").num_views == 100
    bt = load_scene(big, "test")
    assert bt.meta["indices"] == [100, 101, 102] and bt.background == (0.0, 0.0, 0.0)


def test_npz_bad_inputs(tmp_path):
    p = tmp_path / "t.npz"
    poses = np.tile(np.eye(4, dtype=np.float32), (9, 1, 1))
    imgs = np.zeros((9, 2, 2, 3), np.float32)
    _raises(lambda: load_npz(tmp_path / "none.npz", "train"), "none.npz", "not found")
    np.savez(p, images=imgs, poses=poses)
    _raises(lambda: load_npz(p, "train"), "t.npz", "focal")
    np.savez(p, images=imgs, poses=poses[:, :3], focal=1.0)
    _raises(lambda: load_npz(p, "train"), "t.npz", "poses")
    bad = poses.copy()
    bad[4, 0, 3] = np.inf
    np.savez(p, images=imgs, poses=bad, focal=1.0)
    _raises(lambda: load_npz(p, "train"), "t.npz", "NaN or Inf", "view 4")
    np.savez(p, images=imgs[..., :2], poses=poses, focal=1.0)
    _raises(lambda: load_npz(p, "train"), "t.npz", "images")
    np.savez(p, images=imgs[:1], poses=poses[:1], focal=1.0)
    _raises(lambda: load_npz(p, "train"), "t.npz", "empty split")
    p.write_bytes(b"PK\x03\x04 broken zip")
    _raises(lambda: load_npz(p, "train"), "t.npz")


# ------------------------------------------------------------------------------------------------ real data


def _need(shared_data: Path, rel: str) -> Path:
    path = shared_data / rel
    if not path.exists():
        pytest.skip(f"{rel} not found at {path}; set PRIVNERF_DATA")
    return path


def test_real_lego_blender(shared_data):
    root = _need(shared_data, "nerf_synthetic/lego")
    scene = load_blender(root, "train", indices=[0, 99])  # two images keep the test fast
    assert scene.meta["num_frames_in_file"] == 100
    assert scene.hw(0) == (400, 400)
    # 0.5 * 400 / tan(0.5 * 0.6911112) = 555.555 (1111.111 at the original 800 px)
    assert scene.intrinsics[0, 0] == pytest.approx(555.5555, rel=1e-5)
    np.testing.assert_allclose(scene.intrinsics[0, 2:], [200.0, 200.0])
    np.testing.assert_allclose(scene.images[0][0, 0], [1.0, 1.0, 1.0], atol=1e-6)  # white composite corner
    assert scene.names == ["train/r_0.png", "train/r_99.png"]
    test = load_blender(root, "test", indices=[0])
    assert test.frame_meta[0]["depth_path"].endswith("test/r_0_depth_0001.png")


def test_real_tiny_lego_npz(shared_data):
    path = _need(shared_data, "tiny_lego/lego_tiny_100.npz")
    tr, te = load_npz(path, "train"), load_npz(path, "test")
    assert (tr.num_views, te.num_views) == (100, 6)
    assert tr.intrinsics[0, 0] == pytest.approx(138.889, abs=1e-3)
    assert te.names == ["test/r_0", "test/r_33", "test/r_66", "test/r_100", "test/r_133", "test/r_166"]
    assert te.background == (0.0, 0.0, 0.0) and te.hw(0) == (100, 100)


def test_real_fern_llff(shared_data):
    root = _need(shared_data, "nerf_llff_data/fern")
    te = load_llff(root, "test", factor=8)
    assert te.meta["indices"] == [0, 8, 16] and te.hw(0) == (378, 504)
    assert te.intrinsics[0, 0] == pytest.approx(407.57, abs=0.01)
    np.testing.assert_allclose(te.intrinsics[0, 2:], [252.0, 189.0])
    assert te.scene_type == "forward"
    assert te.near == pytest.approx(0.9 / 0.75, rel=1e-5)
    assert np.all(te.aabb[0] < te.aabb[1])


def test_real_ethiopian_head_llff(shared_data):
    root = _need(shared_data, "nerd_ethiopian_head")
    te = load_llff(root, "test", factor=8)
    assert te.meta["indices"] == list(range(0, 66, 8)) and te.hw(0) == (500, 500)
    assert te.intrinsics[0, 0] == pytest.approx(7543.575 / 8, abs=0.01)
    assert te.scene_type == "unbounded"
    assert te.masks is not None and te.masks[0].shape == (500, 500) and te.masks[0].dtype == np.uint8
    assert te.masks[0].max() == 255 and te.masks[0].min() == 0
    # the head (the masks' foreground) is at the focus point inside the aabb, the cameras outside it
    centre = te.aabb.mean(0)
    assert np.all(np.linalg.norm(te.c2w[:, :3, 3] - centre, axis=-1) > (te.aabb[1] - te.aabb[0]).max() / 2)
