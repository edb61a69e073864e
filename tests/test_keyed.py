"""The client key (privnerf.fields.keyed): a smooth, position-dependent rotation of the cut that the field
trains through and that decodes only with the key it was trained with."""

from __future__ import annotations

import pytest
import torch

from privnerf.cli.train import load_split, train_and_evaluate
from privnerf.eval.metrics import psnr
from privnerf.fields.keyed import KeyedRotation
from privnerf.privacy.split_attack import constant_colour_psnr, render_with_head
from privnerf.split.config import SplitConfig
from privnerf.split.cut import ClientHead, render_activations
from privnerf.train.trainer import trainer_from_checkpoint

DATA = "builtin:size=40,n_train=12,n_val=1,n_test=2"


def test_keyed_rotation_is_a_smooth_position_dependent_rotation():
    torch.manual_seed(0)
    box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    key = KeyedRotation(13, 5, box)
    h, xs = torch.randn(2000, 13), torch.rand(2000, 3) * 2 - 1
    out = key(h, xs)
    assert torch.allclose(out.norm(dim=1), h.norm(dim=1), atol=1e-5)  # orthogonal at every point
    assert not torch.allclose(out, h, atol=1e-2)
    v = torch.randn(1, 13).repeat(2, 1)
    far = key(v, torch.tensor([[-0.9] * 3, [0.9] * 3]))
    near = key(v, torch.tensor([[0.1] * 3, [0.101] * 3]))
    assert float((far[0] - far[1]).norm()) > 0.5 * float(v[0].norm())  # another place, another map
    assert float((near[0] - near[1]).norm()) < 0.05 * float(v[0].norm())  # but a slowly varying one
    key.make_trainable()  # what an attacker fitting its own key does
    trained_path = key(h, xs)  # the pure-PyTorch interpolation (the buffer above may use the compiled kernel)
    assert torch.allclose(trained_path, out, atol=1e-5)
    trained_path.pow(2).mul(torch.linspace(0, 1, 13)).sum().backward()
    assert key.angles.grad is not None and float(key.angles.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="cells"):
        KeyedRotation(13, 1, box)


def test_a_keyed_field_trains_and_decodes_only_with_its_key(tmp_path):
    """Centralized training through the key reaches a usable render, and the same trained head with another
    key (the head without the key) renders far worse: the key, not the head alone, decodes the grids."""
    cfg = SplitConfig(data=DATA, steps=150, decoder="full", eval_max_images=1, threads=2).train_config()
    cfg.field.grid.key_cells = 5
    cfg.optim.batch_rays = 1024
    cfg.output = tmp_path / "run"
    cfg.checkpoint_every_s = 1e9
    train_and_evaluate(cfg, quiet=True)
    trainer = trainer_from_checkpoint(tmp_path / "run")
    field, test = trainer.field, load_split(cfg, "test")
    shift = float(field.shift)
    head_state = {k: v for k, v in field.state_dict().items() if k.split(".")[0] in ("rgb_net", "feature_out", "key")}

    def render(head):
        return psnr(render_with_head(trainer, head, shift, test.c2w[0], test.intrinsics[0], *test.hw(0)),
                    test.images[0])

    own = ClientHead(cfg.field.grid, field.space.box)
    own.load_state_dict(head_state)
    const = constant_colour_psnr([test.images[0]])
    utility = render(own)
    assert utility > const + 5.0, (utility, const)
    torch.manual_seed(123)
    wrong = ClientHead(cfg.field.grid, field.space.box)
    wrong.load_state_dict({k: v for k, v in head_state.items() if not k.startswith("key.")}, strict=False)
    assert render(wrong) < utility - 3.0
    with pytest.raises(ValueError, match="positions"):  # a keyed head cannot decode without them
        render_activations(own, shift, torch.zeros(1, 13), None, torch.zeros(1, 3), torch.ones(3))


def test_a_keyed_head_is_refused_where_it_cannot_work():
    from privnerf.fields.grid_field import GridFieldConfig, make_key

    with pytest.raises(ValueError, match="decoder full"):
        make_key(GridFieldConfig(decoder="linear", key_cells=5), torch.tensor([[-1.0] * 3, [1.0] * 3]))
    key = make_key(GridFieldConfig(decoder="full", key_cells=5), None)  # a split client learns the box at setup
    with pytest.raises(ValueError, match="no working box"):
        key(torch.zeros(4, 13), torch.zeros(4, 3))
    key.place(torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert key(torch.ones(4, 13), torch.zeros(4, 3)).shape == (4, 13)


def test_a_keyed_split_run_decodes_by_position_and_every_attack_scores_it(tmp_path):
    """End to end through the split protocol: the server sends each sample's position and the working box, the
    keyed client trains on them; the offline attacks include the per-block direction attack and, with a
    leaked photo, an attacker head with a trainable key of its own."""
    from privnerf.privacy.split_attack import AttackConfig
    from privnerf.split.run import evaluate_attack, run_split

    cfg = SplitConfig(data=DATA, steps=100, decoder="full", private_head=True, key_cells=5, defense="none",
                      threads=2, eval_max_images=1, output=tmp_path / "run")
    cfg.train.optim.batch_rays = 512
    cfg.train.checkpoint_every_s = 1e9
    cfg.attack.kinds = ("replay",)
    res = run_split(cfg, quiet=True)
    assert res["psnr"] > res["constant_colour_psnr"] + 3.0, (res["psnr"], res["constant_colour_psnr"])
    assert set(res["attack"]["local_direction"]["psnr_per_blocks"]) == {"4", "8"}
    sa = evaluate_attack(tmp_path / "run", leaked=1, quiet=True, attack_cfg=AttackConfig(finetune_steps=5))
    assert torch.isfinite(torch.tensor(sa["sa_sma_keyed"]["psnr"]))
