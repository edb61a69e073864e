"""Crowd datasets: masks, occlusion, determinism, partitions, presets, the written files, bad input."""

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from privnerf.data import SceneError, load_scene
from privnerf.data.crowd import CrowdConfig, generate_crowd, load_crowd_source, preset_variants, write_crowd
from privnerf.data.crowd.figures import Figure, FigureStyle, insert_figures
from privnerf.data.crowd.generate import assign_views

SMALL = "builtin:size=48,n_train=24,n_val=2,n_test=2"


def _camera(size=64, dist=4.0):
    """A camera on the -y axis at height 0.5 looking along +y (OpenGL: -Z forward), 40 degree FOV."""
    c2w = np.eye(4, dtype=np.float32)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2] = [1, 0, 0], [0, 0, 1], [0, -1, 0]  # right, up, back
    c2w[:3, 3] = [0, -dist, 0.5]
    f = 0.5 * size / math.tan(math.radians(20))
    return c2w, np.array([f, f, size / 2, size / 2], np.float32)


def _person(x=0.0, y=0.0, height=1.0):
    style = FigureStyle(shirt=(0.9, 0.1, 0.1), trousers=(0.1, 0.1, 0.6), skin=(0.9, 0.7, 0.6))
    return Figure(position=(x, y), ground_z=0.0, yaw=0.3, height=height, style=style)


def _centre_hits(fig, c2w, intr, size):
    from privnerf.data.cameras import image_rays

    o, d, _ = image_rays(torch.from_numpy(c2w), torch.from_numpy(intr), size, size)
    t = torch.full((o.shape[0],), float("inf"))
    for prim, _ in fig.primitives():
        t = torch.minimum(t, prim.intersect(o, d))
    return torch.isfinite(t).reshape(size, size).numpy()


def _ring(mask):
    """Pixels within one pixel of the mask's boundary (inside or outside)."""
    grown = mask.copy()
    shrunk = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(mask, dy, 0), dx, 1)
            shrunk &= np.roll(np.roll(mask, dy, 0), dx, 1)
    return grown & ~shrunk


def test_masks_cover_exactly_the_inserted_figures():
    size = 64
    c2w, intr = _camera(size)
    img = np.full((size, size, 3), 1.0, np.float32)
    empty = np.zeros((size, size), np.float32)
    far = np.full((size, size), np.inf, np.float32)
    figs = [_person(-0.5), _person(0.6, 0.5, 0.8)]
    out, label, cover = insert_figures(img, empty, far, figs, [3, 7], c2w, intr, (1.0, 1.0, 1.0), supersample=4)
    changed = np.abs(out - img).max(-1) > 1e-6
    assert changed.any() and set(np.unique(label)) == {0, 3, 7}
    assert np.array_equal(label > 0, cover >= 0.5)  # the mask is the at-least-half-covered pixels
    assert not (changed & ~(label > 0) & ~_ring(label > 0)).any()  # nothing changes away from the mask edge
    assert changed[label > 0].all()
    for fig, value in zip(figs, (3, 7)):
        hits = _centre_hits(fig, c2w, intr, size)
        # each label is exactly its figure's silhouette, up to the one-pixel anti-aliased edge
        assert not (((label == value) ^ hits) & ~_ring(hits)).any()


def test_figure_behind_content_is_hidden_where_the_content_is_nearer():
    size = 64
    c2w, intr = _camera(size)
    img = np.full((size, size, 3), 1.0, np.float32)
    img[:, : size // 2] = (0.2, 0.8, 0.2)  # a green wall on the left half of the view
    alpha = np.zeros((size, size), np.float32)
    alpha[:, : size // 2] = 1.0
    wall_depth = np.full((size, size), np.inf, np.float32)
    fig = _person(0.0, 0.0)  # straddles the wall's edge, 4 units from the camera
    hits = _centre_hits(fig, c2w, intr, size)
    assert hits[:, : size // 2].any() and hits[:, size // 2 :].any()
    for depth, hidden_left in ((3.0, True), (5.0, False)):  # wall in front of / behind the person
        wall_depth[:, : size // 2] = depth
        out, label, _ = insert_figures(img, alpha, wall_depth, [fig], [1], c2w, intr, (1.0, 1.0, 1.0))
        left = slice(0, size // 2 - 1)
        if hidden_left:
            assert not label[:, left].any()
            assert np.allclose(out[:, left], img[:, left])
        else:
            assert label[:, left].any()
        assert label[:, size // 2 + 1 :].any()  # the uncovered half always shows the person


@pytest.fixture(scope="module")
def small_source():
    return load_crowd_source(SMALL)


def test_generation_is_deterministic_from_the_seed(small_source):
    cfg = CrowdConfig(scene=SMALL, users=3, personal="both", transient_per_view=2, seed=5, appearance=1.0)
    a = generate_crowd(cfg, small_source, quiet=True)
    b = generate_crowd(cfg, small_source, quiet=True)
    c = generate_crowd(CrowdConfig(**{**cfg.__dict__, "seed": 6}), small_source, quiet=True)
    assert all(np.array_equal(x, y) for x, y in zip(a.train.images, b.train.images))
    assert all(np.array_equal(x, y) for x, y in zip(a.train.masks, b.train.masks))
    assert json.dumps(a.info, sort_keys=True) == json.dumps(b.info, sort_keys=True)
    assert not all(np.array_equal(x, y) for x, y in zip(a.train.images, c.train.images))
    # one static person per user, the same in all of that user's photos; transient ones are labelled 255
    for u in range(3):
        frames = [i for i, m in enumerate(a.train.frame_meta) if m["user_id"] == u]
        assert any((a.train.masks[i] == u + 1).any() for i in frames)
        assert all(not np.isin(a.train.masks[i], [k + 1 for k in range(3) if k != u]).any() for i in frames)
    assert any((m == 255).any() for m in a.train.masks)


def test_partitions():
    rng = np.random.default_rng(0)
    az = np.arange(0, 360, 10.0)  # 36 views
    yaw = assign_views(az, CrowdConfig(users=4), rng)
    assert [len(v) for v in yaw] == [9, 9, 9, 9] and np.array_equal(np.sort(np.concatenate(yaw)), np.arange(36))
    assert all((az[v] >= 90 * k).all() and (az[v] < 90 * (k + 1)).all() for k, v in enumerate(yaw))
    ov = assign_views(az, CrowdConfig(users=4, partition="overlap:40"), rng)
    assert [len(v) for v in ov] == [13, 13, 13, 13]  # 90 + 40 degrees each: neighbours share views
    rnd = assign_views(az, CrowdConfig(users=5, partition="random"), rng)
    assert sorted(len(v) for v in rnd) == [7, 7, 7, 7, 8] and len(np.unique(np.concatenate(rnd))) == 36


def test_written_dataset_reads_back_through_the_nerfstudio_parser(small_source, tmp_path):
    cfg = CrowdConfig(scene=SMALL, users=2, personal="static", seed=1)
    res = generate_crowd(cfg, small_source, quiet=True)
    out = write_crowd(res, tmp_path / "crowd")
    train = load_scene(out, "train")
    test = load_scene(out, "test")
    assert train.num_views == res.train.num_views and test.num_views == small_source.eval_scene.num_views
    assert [m["user_id"] for m in train.frame_meta] == [m["user_id"] for m in res.train.frame_meta]
    assert all(np.array_equal(a, b) for a, b in zip(train.masks, res.train.masks))
    assert all(np.abs(a - b).max() <= 0.5 / 255 + 1e-6 for a, b in zip(train.images, res.train.images))
    info = json.loads((out / "crowd.json").read_text())
    assert info["config"]["users"] == 2 and len(info["users"]) == 2
    assert sum(u["views"] for u in info["users"]) == train.num_views
    assert 0 < info["personal_fraction"] < 0.5
    assert (out / "contact_sheet.png").stat().st_size > 1000


def test_person_free_reference_scores_the_clean_copy_inside_the_personal_mask(small_source, tmp_path):
    from privnerf.privacy.leakage import clean_view, masked_psnr, person_free_psnr, personal_views

    cfg = CrowdConfig(scene=SMALL, users=2, personal="static", seed=1, appearance=1.0)
    res = generate_crowd(cfg, small_source, quiet=True)
    train = load_scene(write_crowd(res, tmp_path / "crowd"), "train")
    names = list(small_source.scene.names)
    for i, meta in enumerate(train.frame_meta):
        clean = clean_view(train, i)
        src = small_source.scene.images[names.index(meta["source_view"])]  # no people, no appearance change
        assert np.abs(clean - src).max() <= 0.5 / 255 + 1e-6
        if (train.masks[i] > 0).any():
            assert np.abs(clean - train.images[i])[train.masks[i] > 0].max() > 0.1  # people were drawn over it
    for k in range(2):
        views = personal_views(train, k, 3)
        want = np.mean([masked_psnr(clean_view(train, v)[train.masks[v] == k + 1],
                                    train.images[v][train.masks[v] == k + 1]) for v in views])
        got = person_free_psnr(train, k, 3)
        assert got == pytest.approx(want) and 0 < got < 30
    # a crowd written without clean copies has no reference; a missing file named by the dataset is an error
    for m in train.frame_meta:
        m.pop("clean_path")
    assert person_free_psnr(train, 0) is None
    train.frame_meta[personal_views(train, 0, 1)[0]]["clean_path"] = "clean/nope.png"
    with pytest.raises(SceneError, match="nope.png"):
        person_free_psnr(train, 0)


def test_presets_expand_to_the_papers_layouts(small_source):
    assert len(preset_variants("leakage-users")) == 10 and len(preset_variants("leakage-overlap")) == 9
    (_, lego20), = preset_variants("decentnerf-lego-20")
    assert lego20.scene == "lego" and lego20.users == 20 and lego20.personal == "both"
    (_, lego20r), = preset_variants("decentnerf-lego-20-random")  # the prototype's layout: only the deal differs
    assert lego20r.partition == "random" and replace(lego20r, partition="yaw-slices") == lego20
    (_, abl), = preset_variants("decentnerf-ablation-8", scene=SMALL)
    views = assign_views(small_source.azimuths(), abl, np.random.default_rng(0))
    assert all(np.array_equal(views[k], views[k + 4]) for k in range(4))  # users 4-7 overlap users 0-3
    res = generate_crowd(abl, small_source, quiet=True)
    frac = [u["personal_fraction"] for u in res.info["users"]]
    assert min(frac[:4]) > max(frac[4:])  # heavily occluded users have more personal pixels
    with pytest.raises(ValueError, match="unknown preset"):
        preset_variants("decentnerf-ship-30")


def test_bad_arguments_give_clear_errors(small_source, tmp_path):
    with pytest.raises(ValueError, match="more than the 24 views"):
        generate_crowd(CrowdConfig(scene=SMALL, users=30), small_source)
    with pytest.raises(ValueError, match="partition"):
        generate_crowd(CrowdConfig(scene=SMALL, users=2, partition="slices"), small_source)
    # a Blender-style source without depth renders
    from PIL import Image

    (tmp_path / "nodepth" / "test").mkdir(parents=True)
    Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(tmp_path / "nodepth" / "test" / "r_0.png")
    (tmp_path / "nodepth" / "transforms_test.json").write_text(json.dumps(
        {"camera_angle_x": 0.7, "frames": [{"file_path": "./test/r_0", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(SceneError, match="no depth render"):
        load_crowd_source(str(tmp_path / "nodepth"))
    r = subprocess.run([sys.executable, "-m", "privnerf.cli.main", "data", "crowd", "--preset", "nope", "--out",
                        str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown preset 'nope'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
    r = subprocess.run([sys.executable, "-m", "privnerf.cli.main", "data", "crowd", "--preset", "leakage-users",
                        "--users", "3", "--out", str(tmp_path / "y")], capture_output=True, text=True)
    assert r.returncode == 2 and "drop --users" in r.stderr and not (tmp_path / "y").exists()


def test_lego_depth_decoding_lands_on_the_object_and_agrees_across_views(shared_data):
    from privnerf.data.blender import decode_blender_depth, load_blender
    from privnerf.data.cameras import image_rays, project_points

    root = shared_data / "nerf_synthetic" / "lego"
    if not root.exists():
        pytest.skip(f"{root} not found; set PRIVNERF_DATA")
    scene = load_blender(root, "test", indices=[0, 8])
    pts = []
    for i in range(2):
        from PIL import Image

        alpha = np.asarray(Image.open(root / scene.names[i]))[..., 3].astype(np.float32) / 255
        d = decode_blender_depth(scene.frame_meta[i]["depth_path"], scene.intrinsics[i], alpha)
        assert np.isfinite(d[alpha > 0]).all() and np.isinf(d[alpha == 0]).all()
        o, dirs, zs = image_rays(torch.from_numpy(scene.c2w[i]), torch.from_numpy(scene.intrinsics[i]), *d.shape)
        z = torch.from_numpy(d).reshape(-1)
        ok = torch.isfinite(z)
        pts.append((o[ok] + dirs[ok] * (z[ok] * zs[ok])[:, None]).numpy())
    p = np.concatenate(pts)
    lo, hi = np.percentile(p, 1, axis=0), np.percentile(p, 99, axis=0)
    assert np.all(lo > [-0.8, -1.3, -0.5]) and np.all(hi < [0.8, 1.3, 1.1])  # the lego's extent
    assert np.all(lo < [-0.4, -0.8, -0.2]) and np.all(hi > [0.4, 0.8, 0.7])
    # view 0's surface points, seen from view 8, lie on view 8's decoded surface
    u, v, depth = (t.numpy() for t in project_points(scene.c2w[1], scene.intrinsics[1], pts[0]))
    u, v = np.floor(u).astype(int), np.floor(v).astype(int)
    d8 = decode_blender_depth(scene.frame_meta[1]["depth_path"], scene.intrinsics[1])
    inside = (u >= 0) & (u < d8.shape[1]) & (v >= 0) & (v < d8.shape[0])
    err = np.abs(depth[inside] - d8[v[inside], u[inside]])
    assert np.median(err[np.isfinite(err)]) < 0.05
