"""ProvNeRF provenance (issue 29 item 5): the fIMLE loss, multi-modal provenance, visibility truth, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from privnerf.provenance.field import ProvenanceConfig, ProvenanceField, fimle_loss, train_provenance
from privnerf.provenance.metrics import auc_ap
from privnerf.provenance.queries import visibility_scores
from privnerf.provenance.samples import ProvenanceSamples

ROOT = Path(__file__).resolve().parents[1]
BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def test_fimle_min_never_above_mean_and_k1_is_regression():
    g = torch.Generator().manual_seed(0)
    D, t = torch.randn(6, 50, 3, generator=g), torch.rand(6, 50, generator=g) * 4
    d = torch.nn.functional.normalize(torch.randn(50, 3, generator=g), dim=-1)
    t_obs, trans = torch.rand(50, generator=g) * 4, torch.rand(50, generator=g)
    l_dir, l_t = fimle_loss(D, t, d, t_obs, trans, 4.0)
    mean_dir = ((D - (trans[:, None] * d)[None]) ** 2).sum(-1).mean(0).mean()
    mean_t = (trans * (((t - t_obs[None]) / 4.0) ** 2).mean(0)).mean()
    assert l_dir <= mean_dir and l_t <= mean_t
    assert l_dir < mean_dir  # with 6 random samples the nearest one is strictly better somewhere
    k1_dir, _ = fimle_loss(D[:1], t[:1], d, t_obs, trans, 4.0)
    assert torch.isclose(k1_dir, ((D[0] - trans[:, None] * d) ** 2).sum(-1).mean())


def _two_camera_samples(n: int = 4000) -> ProvenanceSamples:
    """Points near the origin, each seen (T = 1) by camera A on +x half the time and camera B on +y otherwise."""
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(n, 3, generator=g) - 0.5) * 0.2
    from_a = torch.rand(n, generator=g) < 0.5
    cam = torch.where(from_a[:, None], torch.tensor([3.0, 0, 0]), torch.tensor([0, 3.0, 0]))
    d = torch.nn.functional.normalize(x - cam, dim=-1)
    t = (x - cam).norm(dim=-1)
    return ProvenanceSamples(x, d, t, torch.ones(n), from_a.long(), from_a.long())


def _fit(k: int) -> ProvenanceField:
    pf = ProvenanceField(ProvenanceConfig(samples=k, steps=400, batch=256, width=64, multires=2, redraw_every=100,
                                          field_features=False, lr=3e-3), BOX, 0.5, 6.0)
    train_provenance(pf, _two_camera_samples())
    return pf


def test_point_seen_by_two_cameras_has_two_modes():
    x = torch.zeros(1, 3)
    dirs = {"A": torch.tensor([-1.0, 0, 0]), "B": torch.tensor([0, -1.0, 0])}
    D, t = _fit(8).draw(x, draws=2)  # (16, 1, 3)
    Dh = torch.nn.functional.normalize(D[:, 0], dim=-1)
    for name, v in dirs.items():
        best = (Dh @ v).max()
        assert best > 0.9, f"no provenance sample points from camera {name} (best cosine {best:.2f})"
    assert (D[:, 0].norm(dim=-1) > 0.5).sum() >= 2
    # the deterministic field (K = 1) can only give the mean of the two: a single direction between them
    D1, _ = _fit(1).draw(x, draws=1)
    d1 = torch.nn.functional.normalize(D1[0, 0], dim=0)
    assert (d1 @ dirs["A"]) < 0.9 and (d1 @ dirs["B"]) < 0.9
    # visibility: cameras on +x and +y score high, one on -x low
    sc = visibility_scores(_fit(8), x, torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [-3.0, 0, 0]]), kappa=5.0)[:, 0]
    assert sc[0] > 0.5 and sc[1] > 0.5 and sc[2] < 0.1


def test_contributor_shares_separate_users():
    """Two users who observed two different places: each place's share goes to its user; unobserved space is even."""
    g = torch.Generator().manual_seed(2)
    n = 3000
    x = torch.cat([torch.rand(n, 3, generator=g) * 0.3 - 0.8, torch.rand(n, 3, generator=g) * 0.3 + 0.5])
    user = torch.cat([torch.zeros(n), torch.ones(n)]).long()
    d = torch.nn.functional.normalize(torch.ones(2 * n, 3), dim=-1)
    s = ProvenanceSamples(x, d, torch.ones(2 * n), torch.ones(2 * n), user, user)
    pf = ProvenanceField(ProvenanceConfig(field_features=False), BOX, 0.5, 6.0, users=2)
    pf.set_contributors(s, voxel=0.1)
    sh = pf.user_shares(torch.tensor([[-0.65, -0.65, -0.65], [0.65, 0.65, 0.65], [0.0, 0.0, 0.0]]))
    assert sh[0, 0] > 0.95 and sh[1, 1] > 0.95 and torch.allclose(sh[2], torch.tensor([0.5, 0.5]))
    assert torch.allclose(sh.sum(1), torch.ones(3))
    back = ProvenanceField.from_state(pf.state())
    assert torch.allclose(back.user_shares(x[:10]), pf.user_shares(x[:10]))


def test_auc_ap():
    assert auc_ap([0.1, 0.9], [0, 1]) == (1.0, 1.0)
    assert auc_ap([0.9, 0.1], [0, 1])[0] == 0.0
    assert auc_ap([0.5, 0.5, 0.5], [0, 1, 1])[0] == 0.5
    auc, ap = auc_ap([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0])
    assert auc == 0.75 and abs(ap - (1 + 2 / 3) / 2) < 1e-12


def test_builtin_visibility_matches_depth_maps():
    from privnerf.data.builtin import builtin_visibility, make_builtin_scene, sample_builtin_surface
    from privnerf.data.cameras import project_points

    test = make_builtin_scene("test")
    pts, nrm = sample_builtin_surface(1500, seed=3)
    vis = builtin_visibility(pts, nrm, test.c2w[:2], test.intrinsics[:2], test.hw(0))
    assert 0.3 < vis.mean() < 0.95
    u, v, z = project_points(test.c2w[0], test.intrinsics[0], pts)
    inside = (u >= 0) & (u < 100) & (v >= 0) & (v < 100) & (z > 0)
    zmap = test.depths[0][v[inside].long().clamp(0, 99).numpy(), u[inside].long().clamp(0, 99).numpy()]
    close = np.abs(zmap - z[inside].numpy()) < 0.05
    seen = vis[0][inside.numpy()]
    # visible points sit on the depth map; points well behind it are visible only at silhouettes, where the
    # pixel centre's ray hits the object in front and the point itself peeks out within the pixel
    assert close[seen].mean() > 0.9
    behind = zmap < z[inside].numpy() - 0.2
    assert behind.sum() > 50 and seen[behind].mean() < 0.1


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "privnerf", *args], cwd=ROOT, capture_output=True, text=True)


def test_provenance_cli_on_a_crowd(tiny_crowd, tmp_path):
    run = tmp_path / "run"
    r = _run("train", "--data", str(tiny_crowd), "--max-time", "6", "--output", str(run), "--eval-max-images", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "prov"
    r = _run("provenance", "--checkpoint", str(run), "--data", str(tiny_crowd), "--out", str(out), "--steps", "60",
             "--views", "1", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "provenance.json").read_text())
    assert s["users"] == 3 and s["samples"] > 1000
    assert sorted(s["views_per_user"]) == ["0", "1", "2"] and sum(s["views_per_user"].values()) == s["training_views"]
    v = s["views"][0]
    assert 0 <= v["single_user_share_of_foreground"] <= 1 and v["foreground_share"] > 0.05
    assert (out / "views" / "view_00.png").stat().st_size > 5000 and "single-user" in (out / "report.html").read_text()
    pf = torch.load(out / "provenance.pt", weights_only=False)
    assert pf["format"] == "privnerf-provenance/1" and pf["users"] == 3
    # the wrong data: a run's frames that are not this crowd's
    bad = _run("provenance", "--checkpoint", str(run), "--data", "builtin", "--out", str(tmp_path / "p2"))
    assert bad.returncode == 2 and "user_id" in bad.stderr


def test_provenance_cli_bad_checkpoint(tmp_path):
    r = _run("provenance", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no checkpoint" in r.stderr
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    r = _run("provenance", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a privnerf checkpoint" in r.stderr
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))
    # an unrelated non-empty directory as --out is refused before any work, and left as it was
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    r = _run("provenance", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "mine"))
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    assert [f.name for f in (tmp_path / "mine").iterdir()] == ["notes.txt"]
