"""The two-stage face trainer (privnerf.face.train): the σ patches line up with their rays, the gradient loss is
zero on a matching render, stage 2 reads nothing outside the obscured folder, bad input fails clearly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from privnerf.data.paths import data_root
from privnerf.face.obscure import SensitiveView
from privnerf.face.operators import OperatorSpec, apply_operator, dequantize, quantize, to_gray
from privnerf.face.train import SensitivePatches

HEAD = data_root() / "nerd_ethiopian_head"
needs_head = pytest.mark.skipif(not HEAD.exists(), reason=f"{HEAD} not found (set PRIVNERF_DATA to ../shared/data)")


def test_patches_carry_the_sigma_of_their_own_pixels():
    spec = OperatorSpec("gradmag")
    rng = np.random.default_rng(0)
    gray = torch.from_numpy(rng.random((1, 1, 40, 50)).astype(np.float32))
    codes = quantize(spec, apply_operator(spec, gray))[0]
    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 15:40] = 255
    c2w = np.eye(4, dtype=np.float32)
    intr = np.array([40.0, 40.0, 25.0, 20.0], np.float32)
    sp = SensitivePatches([SensitiveView(c2w, intr, codes.numpy() if torch.is_tensor(codes) else codes, mask, "v")],
                          spec, patch=8)
    o, d, target, pm = sp.sample(3, torch.Generator().manual_seed(1))
    assert o.shape == (3 * 64, 3) and target.shape == (3, 1, 8, 8) and pm.shape == (3, 8, 8)
    full = dequantize(spec, torch.as_tensor(codes))
    # recover each patch's pixel coordinates from its rays (pinhole, camera at the origin looking down -z)
    for k in range(3):
        dk = d[k * 64:(k + 1) * 64]
        u = (dk[:, 0] / -dk[:, 2] * 40 + 25 - 0.5).round().long().reshape(8, 8)
        v = (-dk[:, 1] / -dk[:, 2] * 40 + 20 - 0.5).round().long().reshape(8, 8)
        assert torch.equal(target[k, 0], full[0, v, u])
        assert pm[k].max() > 0  # patches overlap the mask


def test_gradient_loss_is_zero_on_the_source_and_grows_with_error():
    spec = OperatorSpec("signed", blur_sigma=2.0, levels=256)  # margin 7 px on a 24 px patch
    img = torch.rand(1, 3, 24, 24)
    target = dequantize(spec, quantize(spec, apply_operator(spec, to_gray(img, channel_axis=1, keepdim=True))))
    m = 7

    def loss(x):
        return (apply_operator(spec, to_gray(x, channel_axis=1, keepdim=True)) - target)[..., m:-m, m:-m].abs().mean()

    assert float(loss(img)) < 1.5 / 255  # only the quantisation error
    x = img.clone().requires_grad_(True)
    worse = loss(torch.roll(img, 3, dims=-1))
    assert float(worse) > 10 * float(loss(img))
    loss(x).backward()
    assert x.grad is not None


@needs_head
def test_stage2_reads_only_the_obscured_folder(tmp_path):
    from privnerf.cli.main import main

    obs = tmp_path / "obs"
    assert main(["face", "obscure", "--data", str(HEAD), "--out", str(obs), "--face-direction=-0.768,0.612,0.191"]) == 0
    opened: list[str] = []
    state = {"on": True}

    def hook(event, args):
        if not state["on"]:
            return
        if event == "open" and args and isinstance(args[0], (str, bytes, Path)):
            opened.append(str(args[0] if not isinstance(args[0], bytes) else args[0].decode()))
        elif event in ("os.listdir", "os.scandir") and args and args[0] is not None:
            opened.append(str(args[0]))

    sys.addaudithook(hook)
    run = tmp_path / "run"
    try:
        rc = main(["face", "train", "--data", str(obs), "--output", str(run), "--stage1-steps", "2",
                   "--stage2-steps", "2", "--patches", "2", "--mesh-resolution", "24", "--quiet", "--threads", "2"])
    finally:
        state["on"] = False  # audit hooks cannot be removed: this one stops recording
    assert rc == 0
    assert (run / "mesh.ply").exists() and (run / "results.json").exists()
    data = str(data_root().resolve())
    raw = [p for p in opened if str(Path(p).resolve()).startswith(data)]
    assert raw == [], f"stage 2 opened the raw data: {raw[:5]}"
    dataish = [p for p in opened if Path(p).suffix.lower() in (".png", ".jpg", ".jpeg", ".npz", ".npy", ".json")]
    outside = [p for p in dataish if not (str(Path(p).resolve()).startswith(str(obs.resolve()))
                                          or str(Path(p).resolve()).startswith(str(run.resolve()))
                                          or "site-packages" in p or "/usr/" in p or ".cache" in p)]
    assert outside == [], f"face train read files outside DIR and RUN: {outside[:5]}"


@needs_head
def test_bad_input_fails_clearly(tmp_path, capsys):
    from privnerf.cli.main import main

    assert main(["face", "train", "--data", str(tmp_path / "nothing"), "--output", str(tmp_path / "r")]) == 2
    assert "nothing" in capsys.readouterr().err
    obs = tmp_path / "obs"
    assert main(["face", "obscure", "--data", str(HEAD), "--out", str(obs), "--face-direction=-0.768,0.612,0.191"]) == 0
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    assert main(["face", "train", "--data", str(obs), "--output", str(run), "--stage1-steps", "1"]) == 2
    assert "not empty" in capsys.readouterr().err


@needs_head
def test_face_train_checkpoints_and_resumes(tmp_path, capsys):
    from privnerf.cli.main import main

    obs = tmp_path / "obs"
    assert main(["face", "obscure", "--data", str(HEAD), "--out", str(obs), "--face-direction=-0.768,0.612,0.191"]) == 0
    run = tmp_path / "run"
    flags = ["--data", str(obs), "--output", str(run), "--stage1-steps", "2", "--stage2-steps", "2", "--patches", "2",
             "--mesh-resolution", "24", "--quiet", "--threads", "2"]
    assert main(["face", "train", *flags]) == 0
    face = torch.load(run / "checkpoints" / "face.pt", weights_only=False)
    assert face["step"] == 4 and face["s1_grid"] is not None  # stage 2's reference survives a restart
    # the same folder without --resume is refused; with other settings too; with the same flags it continues
    assert main(["face", "train", *flags]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["face", "train", *flags[:-5], "--mesh-resolution", "32", "--quiet", "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err
    before = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"]
    grid_before = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["field"]["sdf_grid.data"]
    assert main(["face", "train", *flags, "--resume"]) == 0
    after = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    # it continued the finished run (nothing left to train), not a fresh one from the sphere
    assert before == after["step"] == 4 and torch.equal(grid_before, after["field"]["sdf_grid.data"])
    import json

    assert json.loads((run / "results.json").read_text())["steps"] == 4


def test_patch_too_small_for_the_blur_is_refused():
    from privnerf.face.train import FaceTrainConfig, FaceTrainer, patch_margin

    spec = OperatorSpec("gradmag", blur_sigma=4.0)  # compared 9 px inside each border
    assert patch_margin(spec) == 9
    codes = np.zeros((1, 40, 40), np.uint8)
    view = SensitiveView(np.eye(4, dtype=np.float32), np.array([40.0, 40.0, 20.0, 20.0], np.float32), codes,
                         np.full((40, 40), 255, np.uint8), "v")
    with pytest.raises(ValueError, match="--patch 22 or more"):
        FaceTrainer(FaceTrainConfig(stage1_steps=1, stage2_steps=1, patch=16), _tiny_masked_scene(), [view], spec, None)


def test_refused_settings_leave_no_run_folder(tmp_path):
    """run_face creates the run folder before the trainer checks its settings; a refusal removes it again."""
    from privnerf.face.train import FaceTrainConfig, run_face

    spec = OperatorSpec("gradmag", blur_sigma=4.0)
    codes = np.zeros((1, 40, 40), np.uint8)
    view = SensitiveView(np.eye(4, dtype=np.float32), np.array([40.0, 40.0, 20.0, 20.0], np.float32), codes,
                         np.full((40, 40), 255, np.uint8), "v")
    out = tmp_path / "runs" / "obscured"
    with pytest.raises(ValueError, match="--patch 22 or more"):
        run_face(FaceTrainConfig(stage1_steps=1, stage2_steps=1, patch=16), _tiny_masked_scene(), [view], spec,
                 out, "obscured")
    assert not out.exists()


def _tiny_masked_scene():
    """Four 32 px views of a bounded box with full masks (enough to build a trainer)."""
    from privnerf.data.scene import Scene

    c2w = np.stack([np.eye(4, dtype=np.float32)] * 4)
    c2w[:, 2, 3] = 3.0
    imgs = [np.zeros((32, 32, 3), np.float32)] * 4
    return Scene(images=imgs, c2w=c2w, intrinsics=np.tile(np.array([32.0, 32.0, 16.0, 16.0], np.float32), (4, 1)),
                 aabb=np.array([[-1.0] * 3, [1.0] * 3], np.float32), near=1.0, far=5.0, scene_type="bounded",
                 background=(0.0, 0.0, 0.0), masks=[np.full((32, 32), 255, np.uint8)] * 4)


def test_silhouette_loss_moves_the_surface_toward_the_mask():
    from privnerf.face.train import silhouette_loss
    from privnerf.fields.grid_field import GridFieldConfig
    from privnerf.fields.surface_field import SurfaceField, SurfaceFieldConfig

    f = SurfaceField(GridFieldConfig(), SurfaceFieldConfig(), torch.tensor([[-1.0] * 3, [1.0] * 3]), False, 0.02)
    # a ray through the initial sphere's centre that the mask calls background, one beside it that it calls head
    o, d = torch.tensor([[0.0, 0.0, -3.0], [0.9, 0.9, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]] * 2)
    loss = silhouette_loss(f, o, d, torch.tensor([0.0, 1.0]), 64, 0.05, torch.Generator().manual_seed(0))
    loss.backward()
    g = f.sdf_grid.grad_buffer() if f.sdf_grid.sparse else f.sdf_grid.data.grad  # the compiled kernel's buffer
    assert g is not None and float(g.abs().sum()) > 0
    # gradient descent raises the SDF on the centre ray (carves) and lowers it on the outer one (fills)
    idx = f.sdf_grid.world_to_index(torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.9, 0.0]])).round().long()

    def near(i):  # the gradient summed over the voxels around a ray's closest approach
        x, y, z = idx[i].tolist()
        return float(g[x - 2:x + 3, y - 2:y + 3, z - 2:z + 3].sum())

    assert near(0) < 0 < near(1)


def test_mask_hull_carve_empties_what_the_masks_exclude_and_keeps_the_rest():
    """The hull carve (s = max(s, d_hull)) makes solid outside the masks empty, leaves the solid inside the
    masks as it was, and needs ``hull_min_views`` views to agree."""
    from privnerf.face.head import MaskHull
    from privnerf.face.train import FaceTrainConfig, FaceTrainer

    scene = _tiny_masked_scene()
    half = np.zeros((32, 32), np.uint8)
    half[:, :16] = 255  # every view: only the left half (x < 0 at the box's centre plane) is the object
    scene.masks = [half] * 4
    pts = np.array([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])
    assert MaskHull([(scene.c2w[i], scene.intrinsics[i], half) for i in range(4)], 1, 4).outside(pts).tolist() == [False, True]
    assert not MaskHull([(scene.c2w[i], scene.intrinsics[i], half) for i in range(4)], 1, 5).outside(pts).any()

    ft = FaceTrainer(FaceTrainConfig(stage1_steps=1, stage2_steps=0, hull_tolerance_px=1, hull_min_views=2), scene, [], None, None)
    f = ft.field
    assert ft.carve() is None  # the SDF not born yet: nothing to carve
    f.warm.fill_(True)
    with torch.no_grad():
        f.sdf_grid.data.fill_(-0.3)  # all solid
    info = ft.carve()
    with torch.no_grad():
        s = f.sdf_space(torch.tensor(pts, dtype=torch.float32))
    assert info["solid_removed"] > 0.2
    assert float(s[0]) == pytest.approx(-0.3) and float(s[1]) > 0


@needs_head
def test_sigma_weight_zero_renders_no_patches_but_keeps_the_lipschitz_term(tmp_path, monkeypatch):
    from privnerf.cli.main import main
    from privnerf.face.obscure import load_obscured
    from privnerf.face.train import FaceTrainConfig, FaceTrainer, SensitivePatches

    obs = tmp_path / "obs"
    assert main(["face", "obscure", "--data", str(HEAD), "--out", str(obs), "--face-direction=-0.768,0.612,0.191"]) == 0
    data = load_obscured(obs)

    def no_patches(*a, **k):
        raise AssertionError("σ patches rendered at σ weight 0")

    monkeypatch.setattr(SensitivePatches, "sample", no_patches)
    ft = FaceTrainer(FaceTrainConfig(stage1_steps=1, stage2_steps=1, grad_weight=0.0, quiet=True), data.neutral,
                     data.sensitive, data.spec, None)
    ft.step()
    stats = ft.step()
    assert stats["stage"] == 2 and "grad" not in stats and "lipschitz" in stats


def test_mask_hull_refuses_a_negative_tolerance_or_no_views():
    from privnerf.face.head import MaskHull

    view = (np.eye(4), np.array([8.0, 8.0, 4.0, 4.0]), np.full((8, 8), 255, np.uint8))
    with pytest.raises(ValueError, match="tolerance"):
        MaskHull([view], -1.0)
    with pytest.raises(ValueError, match="min views"):
        MaskHull([view], 2.0, 0)
