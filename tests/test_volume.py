"""Volume rendering on known densities (the worked example of privnerf.render.volume and friends)."""

import math

import torch

from privnerf.render.volume import accumulate, composite, expected_depth, weights_from_density


def test_worked_example_two_samples():
    sigma = torch.tensor([math.log(2.0), math.log(2.0)])
    delta = torch.ones(2)
    ray = torch.zeros(2, dtype=torch.long)
    w, trans = weights_from_density(sigma, delta, ray, 1)
    assert torch.allclose(w, torch.tensor([0.5, 0.25]))
    assert torch.allclose(trans, torch.tensor([1.0, 0.5]))
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    acc = accumulate(w, None, ray, 1)
    col = composite(accumulate(w, rgb, ray, 1), acc, torch.ones(3))
    assert torch.allclose(acc, torch.tensor([0.75]))
    assert torch.allclose(col, torch.tensor([[0.75, 0.5, 0.25]]))


def test_packed_rays_are_independent():
    # ray 0: an opaque wall at t=2; ray 1: empty; ray 2: one half-transparent sample
    sigma = torch.tensor([0.0, 1e4, 5.0, 0.0, 0.0, math.log(2.0) / 0.5])
    delta = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.5])
    t = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0, 4.0])
    ray = torch.tensor([0, 0, 0, 1, 1, 2])
    w, _ = weights_from_density(sigma, delta, ray, 3)
    acc = accumulate(w, None, ray, 3)
    assert torch.allclose(acc, torch.tensor([1.0, 0.0, 0.5]), atol=1e-6)
    assert w[2] < 1e-6  # behind the wall
    depth = expected_depth(w, t, ray, 3)
    assert abs(float(depth[0]) - 2.0) < 1e-4 and math.isinf(float(depth[1])) and abs(float(depth[2]) - 4.0) < 1e-6


def test_weights_match_dense_formula_and_have_gradients():
    g = torch.Generator().manual_seed(0)
    n_rays, n_s = 5, 7
    sigma = (torch.rand(n_rays, n_s, generator=g) * 3).requires_grad_()
    delta = torch.rand(n_rays, n_s, generator=g) * 0.3
    ray = torch.arange(n_rays).repeat_interleave(n_s)
    w, _ = weights_from_density(sigma.reshape(-1), delta.reshape(-1), ray, n_rays)
    alpha = 1 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones(n_rays, 1), 1 - alpha[:, :-1]], 1), 1)
    assert torch.allclose(w.reshape(n_rays, n_s), trans * alpha, atol=1e-6)
    w.sum().backward()
    assert sigma.grad is not None and torch.isfinite(sigma.grad).all()


def test_distortion_loss_matches_the_double_sum():
    from privnerf.render.volume import distortion_loss

    g = torch.Generator().manual_seed(3)
    ray = torch.tensor([0, 0, 0, 1, 1, 3, 3, 3, 3])  # ray 2 has no samples
    t = torch.tensor([1.0, 2.0, 4.0, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0])
    delta = torch.rand(9, generator=g)
    w = torch.rand(9, generator=g, requires_grad=True)
    got = distortion_loss(w, t, delta, ray, 4)
    want = []
    for r in range(4):
        m = ray == r
        wr, tr, dr = w[m], t[m], delta[m]
        want.append((wr[:, None] * wr[None] * (tr[:, None] - tr[None]).abs()).sum() + (wr**2 * dr).sum() / 3)
    assert torch.allclose(got, torch.stack(want), atol=1e-5)
    assert got[2] == 0
    got.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_distortion_loss_prefers_concentrated_weight():
    from privnerf.render.volume import distortion_loss

    ray = torch.zeros(10, dtype=torch.long)
    t = torch.arange(10.0)
    delta = torch.ones(10)
    spread = torch.full((10,), 0.1)
    peaked = torch.zeros(10)
    peaked[4] = 1.0
    assert distortion_loss(peaked, t, delta, ray, 1) < distortion_loss(spread, t, delta, ray, 1)
