"""End-to-end: training on the built-in scene beats the untrained model; checkpoints resume exactly; the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from privnerf.data import load_scene
from privnerf.eval.evaluate import evaluate_split
from privnerf.train.config import TrainConfig
from privnerf.train.trainer import Trainer, trainer_from_checkpoint

DATA = "builtin:size=40,n_train=24,n_val=2,n_test=3"


def small_config(steps: int, **kw) -> TrainConfig:
    cfg = TrainConfig(data=DATA, steps=steps, seed=0, **kw)
    cfg.field.grid.num_voxels = 64**3
    cfg.field.grid.num_voxels_start = 32**3
    cfg.optim.batch_rays = 1024
    cfg.render.occ_resolution = 64
    return cfg


def psnr_on_test(trainer: Trainer, scene) -> float:
    return evaluate_split(trainer.field, trainer.occ, trainer.settings(), scene, with_lpips=False, quiet=True)["psnr"]


@pytest.mark.slow
def test_training_beats_untrained_model():
    train, test = load_scene(DATA, "train"), load_scene(DATA, "test")
    trainer = Trainer(small_config(300), train)
    before = psnr_on_test(trainer, test)
    trainer.train(quiet=True)
    after = psnr_on_test(trainer, test)
    assert after > before + 8.0, (before, after)
    assert after > 20.0, after


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    train = load_scene(DATA, "train")
    straight = Trainer(small_config(60), train)
    straight.train(quiet=True)

    first = Trainer(small_config(60), train, tmp_path)  # the same run, "killed" after 30 steps
    for _ in range(30):
        first.step()
    first.save_checkpoint()
    resumed = Trainer(small_config(60), train, tmp_path)
    resumed.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert resumed.step_count == 30
    resumed.train(quiet=True)
    for a, b in zip(straight.field.state_dict().values(), resumed.field.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    from privnerf.train import checkpoint

    path = tmp_path / "c.pt"
    checkpoint.atomic_torch_save({"a": 1}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        checkpoint.atomic_torch_save({"a": 2}, path)
    assert torch.load(path)["a"] == 1  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "privnerf", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_cli_bad_data_is_a_clear_error(tmp_path):
    r = _cli("train", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "run"), "--steps", "1")
    assert r.returncode == 2
    assert "error:" in r.stderr and "nope" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "transforms_train.json").write_text("{ not json")
    r = _cli("train", "--data", str(bad), "--output", str(tmp_path / "run2"), "--steps", "1")
    assert r.returncode == 2 and "transforms_train.json" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_train_eval_render(tmp_path):
    run = tmp_path / "run"
    r = _cli("train", "--data", DATA, "--output", str(run), "--steps", "40", "--field.grid.num-voxels", str(48**3),
             "--field.grid.num-voxels-start", str(24**3), "--optim.batch-rays", "512")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((run / "results.json").read_text())
    for key in ("psnr", "ssim", "lpips", "num_images", "split", "steps", "train_time_s"):
        assert key in res
    assert res["steps"] == 40 and res["split"] == "test" and res["num_images"] == 3
    assert len(list((run / "renders" / "test").glob("*_depth.png"))) == 3
    # a second train into the same folder without --resume refuses instead of overwriting
    r = _cli("train", "--data", DATA, "--output", str(run), "--steps", "40")
    assert r.returncode == 2 and "--resume" in r.stderr
    r = _cli("eval", "--checkpoint", str(run), "--split", "val", "--no-renders")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "eval-val.json").read_text())["num_images"] == 2
    r = _cli("render", "--checkpoint", str(run), "--out", str(tmp_path / "orbit.gif"), "--frames", "4", "--size", "24")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "orbit.gif").stat().st_size > 0
    trainer = trainer_from_checkpoint(run)
    assert trainer.step_count == 40


@pytest.mark.slow
def test_forward_facing_scene_trains_with_contraction(shared_data):
    """LLFF fern (real photos): the contracted grid and the disparity-spaced sampler learn something."""
    fern = shared_data / "nerf_llff_data" / "fern"
    if not fern.exists():
        pytest.skip(f"fern not found at {fern}; set PRIVNERF_DATA")
    scene = load_scene(fern, "train")
    assert scene.scene_type == "forward"
    scene = scene.subset([0, 1, 2, 3])
    cfg = TrainConfig(data=str(fern), steps=60, seed=0)
    cfg.field.grid.num_voxels = 48**3
    cfg.field.grid.num_voxels_start = 32**3
    cfg.optim.batch_rays = 1024
    cfg.render.occ_resolution = 32
    trainer = Trainer(cfg, scene)
    assert trainer.field.space.contraction
    view = scene.subset([0])
    before = psnr_on_test(trainer, view)
    trainer.train(quiet=True)
    after = psnr_on_test(trainer, view)
    assert after > before + 3.0, (before, after)


@pytest.mark.slow
def test_pure_pytorch_path_trains(tmp_path):
    """The path CUDA (and a machine without a compiler) takes: no compiled kernels, dense Adam on grids."""
    code = (
        "import os, json, sys\n"
        "from privnerf.fields.ext import load_grid_ext\n"
        "assert load_grid_ext() is None\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_train import small_config, psnr_on_test, DATA\n"
        "from privnerf.data import load_scene\n"
        "from privnerf.train.trainer import Trainer\n"
        "train, test = load_scene(DATA, 'train'), load_scene(DATA, 'test')\n"
        "t = Trainer(small_config(120), train)\n"
        "assert not t.field.density_grid.sparse\n"
        "before = psnr_on_test(t, test); t.train(quiet=True); after = psnr_on_test(t, test)\n"
        "print(json.dumps({'before': before, 'after': after}))\n"
    )
    env = {**__import__("os").environ, "PRIVNERF_NO_EXT": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["after"] > res["before"] + 5.0, res


def test_core_loss_adds_the_distortion_term_in_render_steps():
    """The core loss is the colour MSE plus ``optim.distortion_weight`` times the mean per-ray distortion, with
    distances in render steps; weight 0 leaves the MSE alone. Split and federated training keep it off by
    default (split clients' losses have no such term, federated clients' NeRF-W loss takes it only when set, and
    their centralized references must train the same objective)."""
    from privnerf.fed.config import FedConfig
    from privnerf.render.volume import distortion_loss
    from privnerf.split.config import SplitConfig

    trainer = Trainer(small_config(30), load_scene(DATA, "train"))
    trainer.train(quiet=True)  # past the first steps, so rays carry several weighted samples
    batch = trainer.sample_batch()
    weight = trainer.cfg.optim.distortion_weight
    assert weight > 0  # the default
    torch.manual_seed(5)  # the marcher's jitter
    loss, mse, out = trainer.compute_loss(batch)
    s, w, step = out["samples"], out["weights"], trainer.settings().step
    expected = distortion_loss(w, s.t / step, s.delta / step, s.ray_idx, batch[0].shape[0]).mean()
    assert float(expected) > 0
    assert torch.allclose(loss - mse, weight * expected, rtol=1e-4)
    trainer.cfg.optim.distortion_weight = 0.0
    torch.manual_seed(5)
    loss0, mse0, out0 = trainer.compute_loss(batch)
    assert float(loss0) == float(mse0) == float(mse)
    assert "weights" not in out0
    assert SplitConfig(data=DATA).train_config().optim.distortion_weight == 0.0
    assert FedConfig(data=DATA).client_train_config().optim.distortion_weight == 0.0
