"""HG3-NeRF sparse-view guidance (privnerf.sparse): band sampling around prior depths, the widening band, the
multi-scale and semantic losses, the sparse-point loaders' errors, guidance off = the plain trainer, the CLI."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from privnerf.data.cameras import rays_from_pixels
from privnerf.data.errors import SceneError
from privnerf.data.loader import load_scene
from privnerf.sparse.guidance import HG3Config, HG3Trainer
from privnerf.sparse.losses import band_radius, band_samples, multiscale_mse, semantic_distance
from privnerf.sparse.points import (SparsePrior, colmap_prior, parse_views, prior_from_points, read_points3d_bin,
                                    spread_views, subset_views)
from privnerf.train.config import TrainConfig
from privnerf.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
SMALL = "builtin:size=48,n_train=8,n_test=2"


@pytest.fixture(scope="module")
def scene():
    return load_scene(SMALL, "train")


def gt_prior(scene, per_view: int = 40, seed: int = 0, offset: float = 0.0) -> SparsePrior:
    """Prior pixels from the constructed scene's exact depth (tests only), shifted by ``offset``."""
    rng = np.random.default_rng(seed)
    views, us, vs, ds = [], [], [], []
    for i in range(scene.num_views):
        z = scene.depths[i]
        rows, cols = np.nonzero(np.isfinite(z))
        pick = rng.choice(len(rows), per_view, replace=False)
        v, u = rows[pick], cols[pick]
        _, _, zs = rays_from_pixels(torch.from_numpy(scene.c2w[i]), torch.from_numpy(scene.intrinsics[i]),
                                    torch.from_numpy(u), torch.from_numpy(v))
        views.append(np.full(per_view, i))
        us.append(u)
        vs.append(v)
        ds.append((z[v, u] * zs.numpy() + offset).astype(np.float32))
    return SparsePrior(np.concatenate(views), np.concatenate(us), np.concatenate(vs), np.concatenate(ds), "exact")


def small_cfg(**kw) -> TrainConfig:
    cfg = TrainConfig(data=SMALL, steps=40, threads=2, **kw)
    cfg.optim.batch_rays = 1024
    return cfg


def test_band_samples_lie_in_the_band_and_are_stratified():
    o = torch.zeros(3, 3)
    d = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    depth = torch.tensor([2.0, 3.0, 5.0])
    radius = torch.tensor([0.1, 0.3, 10.0])
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 4.0]])
    s = band_samples(o, d, depth, radius, near=0.5, far=6.0, box=box, step=0.02, max_samples=16,
                     generator=torch.Generator().manual_seed(0))
    for r, (lo, hi, k) in enumerate([(1.9, 2.1, 10), (2.7, 3.3, 16), (0.5, 4.0, 16)]):  # the last: clipped to box/near
        t = s.t[s.ray_idx == r]
        assert len(t) == k
        assert float(t.min()) >= lo - 1e-6 and float(t.max()) <= hi + 1e-6
        assert torch.all(torch.diff(t) > 0)  # one sample per stratum, in order
        assert torch.allclose(s.delta[s.ray_idx == r], torch.full((k,), (hi - lo) / k), atol=1e-5)


def test_the_band_widens_from_local_to_global():
    d = torch.tensor([4.0])
    r = [float(band_radius(d, p, 0.05, 0.5)) for p in (0.0, 0.1, 0.25, 0.4, 0.49)]
    assert r[0] == pytest.approx(0.2)
    assert all(b > a for a, b in zip(r, r[1:]))
    assert r[-1] < 4.0 and r[-1] > 3.0
    assert torch.isinf(band_radius(d, 0.5, 0.05, 0.5)).all() and torch.isinf(band_radius(d, 0.9, 0.05, 0.5)).all()
    with pytest.raises(ValueError, match="band_start"):
        band_radius(d, 0.0, 0.0, 0.5)


def test_depth_guided_sampling_puts_prior_rays_samples_around_the_given_depths(scene):
    prior = gt_prior(scene, offset=0.3)  # a biased prior: the samples follow it, not the surface
    hg3 = HG3Config(photometric=False, semantic=False, prior_share=0.25, band_start=0.05)
    t = HG3Trainer(small_cfg(), scene, None, hg3, prior)
    for _ in range(3):
        t.step()
    origins, dirs, _ = t.sample_batch()
    info = t._batch_info
    a, b = info["prior"]
    assert (a, b) == (1024 - 256, 1024)
    out = t.render_batch(origins, dirs, t.settings(), keep_samples=True)
    s = out["samples"]
    on_prior = s.ray_idx >= a
    depth = info["prior_depth"][s.ray_idx[on_prior] - a]
    radius = band_radius(depth, t.progress(), hg3.band_start, hg3.band_global_at)
    assert on_prior.sum() > 0 and (s.ray_idx < a).sum() > 0
    assert torch.all((s.t[on_prior] - depth).abs() <= radius + 1e-4)
    # every prior ray has band samples (none culled before any density blocks them, the band is short)
    assert len(torch.unique(s.ray_idx[on_prior])) == b - a
    # the plain rays are marched through the box, far beyond any one band
    spread = s.t[~on_prior].max() - s.t[~on_prior].min()
    assert float(spread) > 4 * float(radius.max())
    # the prior pixels' colours are the ones the batch trains on
    flat = t.pixels.offsets[torch.from_numpy(prior.view)] + torch.from_numpy(prior.v * 48 + prior.u)
    colours = t.pixels.rgb[flat]
    _, _, target = t.sample_batch()
    assert all(bool((colours - c).abs().sum(1).min() < 1e-6) for c in target[a:b])


def test_guidance_off_is_the_plain_trainer(scene):
    off = HG3Config(depth=False, photometric=False, semantic=False)
    plain = Trainer(small_cfg(), scene)  # each trainer seeds torch; the marcher's jitter draws from it
    a = [plain.step() for _ in range(4)]
    guided = HG3Trainer(small_cfg(), scene, None, off, None)
    b = [guided.step() for _ in range(4)]
    assert [(x["loss"], x["samples"]) for x in a] == [(x["loss"], x["samples"]) for x in b]
    for p, q in zip(plain.field.parameters(), guided.field.parameters()):
        assert torch.equal(p, q)


def test_guidance_trains_with_every_component(scene):
    t = HG3Trainer(small_cfg(), scene, None, HG3Config(patch=16, depth_loss=0.1), gt_prior(scene))
    for _ in range(6):
        stats = t.step()
    assert np.isfinite(stats["loss"])
    assert {"hpg", "hsg", "depth", "band_samples"} <= set(t.guidance_stats)
    assert t.patch_stride() == 4  # coarse first
    t.step_count = 39
    assert t.patch_stride() == 1


def test_multiscale_loss_is_zero_for_identical_patches_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g)
    assert float(multiscale_mse(x, x.clone(), (1, 2, 4))) == 0.0
    y = x + 0.1
    assert float(multiscale_mse(x, y, (1, 2, 4))) == pytest.approx(3 * 0.01, rel=1e-4)
    # high-frequency noise nearly averages out at coarse scales: the coarse terms see the layout, not the noise
    noise = x + 0.2 * torch.sign(torch.rand(1, 3, 16, 16, generator=g) - 0.5)
    assert float(multiscale_mse(x, noise, (4,))) < 0.25 * float(multiscale_mse(x, noise, (1,)))
    with pytest.raises(ValueError, match="does not divide"):
        multiscale_mse(x, y, (3,))


def test_semantic_distance_is_zero_for_identical_patches_and_positive_otherwise():
    from privnerf.eval.lpips import get_model, lpips_available

    if not lpips_available():
        pytest.skip("LPIPS AlexNet weights not cached (make setup)")
    m = get_model("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    assert float(semantic_distance(m, x, x.clone())) < 1e-5
    far = float(semantic_distance(m, x, torch.rand(1, 3, 32, 32, generator=g)))
    near = float(semantic_distance(m, x, (x + 0.02).clamp(0, 1)))
    assert far > 0.05 and near < far
    p = x.clone().requires_grad_(True)
    semantic_distance(m, p, torch.rand(1, 3, 32, 32, generator=g)).backward()
    assert p.grad is not None and float(p.grad.abs().sum()) > 0


def _points3d_bin(path: Path, points: list[tuple[tuple[float, float, float], list[int]]]) -> Path:
    b = struct.pack("<Q", len(points))
    for k, (xyz, ids) in enumerate(points):
        b += struct.pack("<QdddBBBdQ", k + 1, *xyz, 0, 0, 0, 0.5, len(ids))
        for i in ids:
            b += struct.pack("<ii", i, 0)
    path.write_bytes(b)
    return path


def test_the_sparse_point_loader_reads_colmap_and_refuses_bad_input(tmp_path, scene):
    good = _points3d_bin(tmp_path / "points3D.bin", [((0.0, 0.0, 0.5), [1, 2]), ((0.1, 0.0, 0.5), [3, 3])])
    xyz, tracks = read_points3d_bin(good)
    assert xyz.shape == (2, 3) and tracks[0].tolist() == [1, 2] and tracks[1].tolist() == [3]
    with pytest.raises(SceneError, match="no such file"):
        read_points3d_bin(tmp_path / "missing.bin")
    (tmp_path / "trunc.bin").write_bytes(good.read_bytes()[:-5])
    with pytest.raises(SceneError, match="trunc.bin.*not a COLMAP points3D.bin"):
        read_points3d_bin(tmp_path / "trunc.bin")
    (tmp_path / "long.bin").write_bytes(good.read_bytes() + b"xx")
    with pytest.raises(SceneError, match="trailing bytes"):
        read_points3d_bin(tmp_path / "long.bin")
    with pytest.raises(ValueError, match="needs an LLFF scene"):
        colmap_prior(scene, good)
    bad = gt_prior(scene)
    bad.u[3] = 48
    with pytest.raises(ValueError, match="pixel outside its image"):
        bad.check(scene)
    bad = gt_prior(scene)
    bad.depth[0] = -1
    with pytest.raises(ValueError, match="finite and positive"):
        bad.check(scene)
    empty = prior_from_points(scene, np.zeros((0, 3)), np.zeros((0, scene.num_views), bool))
    with pytest.raises(ValueError, match="no prior pixels"):
        empty.check(scene)
    with pytest.raises(ValueError, match="need a sparse depth prior"):
        HG3Trainer(small_cfg(), scene, None, HG3Config(), None)
    with pytest.raises(ValueError, match="outside the training split"):
        parse_views("0,8", 8)
    with pytest.raises(ValueError, match="listed twice"):
        parse_views("1,1", 8)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_views("a,b", 8)


def test_points_project_back_to_their_pixels_and_views_spread(scene):
    prior = gt_prior(scene, per_view=5)
    pts, seen = [], []
    for i, u, v, d in zip(prior.view, prior.u, prior.v, prior.depth):
        o, dr, _ = rays_from_pixels(torch.from_numpy(scene.c2w[i]), torch.from_numpy(scene.intrinsics[i]),
                                    torch.tensor([u]), torch.tensor([v]))
        pts.append((o + d * dr)[0].numpy())
        row = np.zeros(scene.num_views, bool)
        row[i] = True
        seen.append(row)
    back = prior_from_points(scene, np.array(pts), np.array(seen))
    order = np.lexsort((prior.u, prior.v, prior.view))
    border = np.lexsort((back.u, back.v, back.view))
    assert np.array_equal(back.u[border], prior.u[order]) and np.array_equal(back.v[border], prior.v[order])
    assert np.allclose(back.depth[border], prior.depth[order], atol=1e-3)
    views = spread_views(scene, 3)
    assert len(views) == 3 and views == sorted(set(views)) and 0 in views
    assert spread_views(scene, 3) == views
    sub = subset_views(scene, views)
    assert sub.num_views == 3 and sub.meta["sparse_views"] == views
    with pytest.raises(ValueError, match="--num-views 9"):
        spread_views(scene, 9)


def test_fern_colmap_prior_uses_tracks_seen_by_the_training_views(shared_data):
    fern = shared_data / "nerf_llff_data" / "fern"
    if not (fern / "sparse" / "0" / "points3D.bin").is_file():
        pytest.skip(f"no COLMAP model at {fern}/sparse/0")
    train = load_scene(fern, "train")
    sub = subset_views(train, spread_views(train, 3))
    two = colmap_prior(sub, fern / "sparse" / "0")
    one = colmap_prior(sub, fern / "sparse" / "0", min_views=1)
    two.check(sub)
    assert 0 < len(two) < len(one)
    assert set(two.view.tolist()) == {0, 1, 2}
    assert sub.near * 0.9 < float(np.median(two.depth)) < sub.far


def test_the_triangulated_prior_lies_on_the_constructed_surface():
    """Lego's prior recipe (SIFT matches guided by the known poses, triangulated, confirmed in a third view) on
    the built-in scene, whose exact depth is known: enough pixels, and their depths on the surface."""
    pytest.importorskip("pycolmap", reason="the 'sparse' extra is not installed (pip install -e '.[sparse]')")
    from privnerf.sparse.points import triangulated_prior

    sc = load_scene("builtin:size=128,n_train=8,n_test=1", "train")
    prior = triangulated_prior(sc, min_views=3, confirm_cos=0.9)
    prior.check(sc)
    assert len(prior) >= 30 and len(set(prior.view.tolist())) >= 4
    _, _, zs = rays_from_pixels(torch.from_numpy(sc.c2w[prior.view]), torch.from_numpy(sc.intrinsics[prior.view]),
                                torch.from_numpy(prior.u), torch.from_numpy(prior.v))
    truth = np.array([sc.depths[i][v, u] for i, u, v in zip(prior.view, prior.u, prior.v)]) * zs.numpy()
    on = np.isfinite(truth)
    assert on.mean() > 0.9
    rel = np.abs(prior.depth[on] - truth[on]) / truth[on]
    assert np.median(rel) < 0.02 and np.mean(rel < 0.05) > 0.85


def test_cli_trains_on_chosen_views_and_refuses_bad_ones(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "privnerf", "sparse", "train", "--data", SMALL, "--views", "0,3,6", "--steps", "8",
           "--hg3.no-depth", "--hg3.patch", "16", "--optim.batch-rays", "1024", "--output", str(out),
           "--threads", "2"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    rec = json.loads((out / "sparse.json").read_text())
    assert rec["views"] == [0, 3, 6] and rec["hg3"]["depth"] is False
    assert json.loads((out / "results.json").read_text())["steps"] == 8
    r = subprocess.run(cmd[:7] + ["--views", "0,99", "--steps", "1", "--output", str(tmp_path / "bad")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--views '0,99'" in r.stderr and "outside the training split" in r.stderr
