"""The CUDA path: centralized training, rendering, metrics, the split server's half and a DecentNeRF user's local
round on a GPU. Every test skips without one (CI has none); run them where a GPU is lent:
``python -m pytest -q tests/test_cuda.py``.

On CUDA the grids use the pure-PyTorch kernels (``trilinear_torch``, dense Adam, the vectorised marcher) instead of
the compiled CPU extension, so these tests also check that the two paths agree on the same weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from privnerf.data import load_scene
from privnerf.eval.evaluate import evaluate_split
from privnerf.eval.metrics import psnr, ssim
from privnerf.train.config import TrainConfig
from privnerf.train.trainer import Trainer, trainer_from_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the CUDA path needs a GPU)")

DATA = "builtin:size=40,n_train=24,n_val=2,n_test=3"
ROOT = Path(__file__).resolve().parents[1]


def small_config(steps: int, device: str, **kw) -> TrainConfig:
    cfg = TrainConfig(data=DATA, steps=steps, seed=0, device=device, **kw)
    cfg.field.grid.num_voxels = 64**3
    cfg.field.grid.num_voxels_start = 32**3
    cfg.optim.batch_rays = 1024
    cfg.render.occ_resolution = 64
    return cfg


def test_grid_field_trains_on_cuda_and_its_checkpoint_renders_the_same_on_the_cpu(tmp_path):
    train, test = load_scene(DATA, "train"), load_scene(DATA, "test")
    trainer = Trainer(small_config(300, "cuda"), train, tmp_path)
    assert all(p.is_cuda for p in trainer.field.parameters())
    before = evaluate_split(trainer.field, trainer.occ, trainer.settings(), test, with_lpips=False, quiet=True)
    trainer.train(quiet=True)
    after = evaluate_split(trainer.field, trainer.occ, trainer.settings(), test, with_lpips=False, quiet=True)
    assert after["psnr"] > before["psnr"] + 8.0 and after["psnr"] > 20.0, (before["psnr"], after["psnr"])
    trainer.save_checkpoint()
    # the checkpoint is device-free: the CPU path (compiled kernels where they build) renders the same images
    on_cpu = trainer_from_checkpoint(tmp_path, "cpu")
    assert not any(p.is_cuda for p in on_cpu.field.parameters())
    cpu = evaluate_split(on_cpu.field, on_cpu.occ, on_cpu.settings(), test, out_dir=tmp_path / "cpu",
                         with_lpips=False, quiet=True)
    gpu = evaluate_split(trainer.field, trainer.occ, trainer.settings(), test, out_dir=tmp_path / "gpu",
                         with_lpips=False, quiet=True)
    assert abs(cpu["psnr"] - gpu["psnr"]) < 0.05, (cpu["psnr"], gpu["psnr"])


def test_metrics_agree_on_cuda_and_cpu():
    from privnerf.eval.lpips import lpips, lpips_available

    rng = np.random.default_rng(0)
    a = rng.random((64, 48, 3), dtype=np.float32)
    b = np.clip(a + rng.normal(0, 0.05, a.shape).astype(np.float32), 0, 1)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert abs(psnr(ta.cuda(), tb.cuda()) - psnr(ta, tb)) < 1e-4
    assert abs(ssim(ta.cuda(), tb.cuda()) - ssim(ta, tb)) < 1e-4
    if lpips_available():
        assert abs(lpips(a, b, device="cuda") - lpips(a, b, device="cpu")) < 1e-4


def test_split_server_half_runs_on_cuda_across_the_process_boundary(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "privnerf", "split", "train", "--data", "builtin:size=40,n_train=12,n_val=1,n_test=2",
           "--transport", "grpc", "--device", "cuda", "--eval-max-images", "1", "--output", str(out),
           "--train.optim.batch-rays", "512", "--defense", "s2nerf", "--c", "0.1", "--steps", "30"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 30 and res["transport"] == "grpc"
    assert np.isfinite(res["psnr"]) and np.isfinite(res["attack"]["sma"]["psnr"])


def test_decentnerf_user_round_on_cuda_uploads_cpu_arrays(tiny_crowd, tmp_path):
    from privnerf.fed.config import FedConfig
    from privnerf.fed.local import LocalUser
    from privnerf.fed import messages

    cfg = FedConfig(data=str(tiny_crowd), aggregator="learned").client_train_config()
    cfg.device = "cuda"
    user = LocalUser(0, str(tiny_crowd), cfg, tmp_path / "state", rounds=2, epochs=0.5)
    start = messages.global_arrays(Trainer(user.cfg, user.scene).field)
    for _ in range(2):  # the second round runs the personal warm-up
        weights, info = user.train(start, 0.5, personal_warmup=0.5, warmup_after=1, warmup_extra=True)
        user.save_state()
        start = weights
    assert all(isinstance(w, np.ndarray) and np.isfinite(w).all() for w in weights)
    assert info["local_steps"] > 0 and np.isfinite(info["train_psnr"])
    assert user.gradient_energy is None or isinstance(user.gradient_energy, np.ndarray)
    grads, loss = user.loss_gradient(weights, batches=1)
    assert all(isinstance(g, np.ndarray) for g in grads) and np.isfinite(loss)
    reloaded = LocalUser(0, str(tiny_crowd), cfg, tmp_path / "state", rounds=2, epochs=0.5)
    assert reloaded.state.rounds == 2 and all(not v.is_cuda for v in reloaded.state.personal.values())
