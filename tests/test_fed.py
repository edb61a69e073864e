"""DecentNeRF pieces that need no Flower run: SecAgg+ scaling, the personal field and its compositing, the
alpha update, the message schema checks, and the baseline server's rejection of bad updates."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from privnerf.fed import messages
from privnerf.fed.local import AlphaRule, LocalUser, UserState
from privnerf.fed.secure import next_bounds, quantization_bound, scale_for_secagg, unscale_sum
from privnerf.fields.grid_field import GridField, GridFieldConfig
from privnerf.fields.personal_field import PersonalField, PersonalFieldConfig
from privnerf.render.occupancy import OccupancyGrid
from privnerf.render.renderer import RenderSettings, render_rays, render_rays_personal

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def small_field(seed: int = 0) -> GridField:
    torch.manual_seed(seed)
    f = GridField(GridFieldConfig(num_voxels_start=16**3), BOX, contraction=False, step_size=0.05)
    with torch.no_grad():
        f.density_grid.data.normal_(0, 2.0)
        f.feature_grid.data.normal_(0, 0.5)
    return f


# -- SecAgg+ scaling ------------------------------------------------------------------------------------
def test_scaling_round_trip_counts_clipping_and_refuses_nan():
    rng = np.random.default_rng(0)
    users = [[rng.normal(0, 1, 50).astype(np.float32), rng.normal(0, 0.01, 7)] for _ in range(3)]
    bounds = [1.5, 0.05]
    scaled, clipped = zip(*(scale_for_secagg(u, bounds) for u in users))
    assert all(s.dtype == np.float64 for sc in scaled for s in sc)
    assert all(np.abs(s).max() <= 8.0 for sc in scaled for s in sc)
    expect_clipped = [int(sum((np.abs(a) > b).sum() for a, b in zip(u, bounds))) for u in users]
    assert list(clipped) == expect_clipped and sum(clipped) > 0  # N(0,1) exceeds 1.5 in ~13 % of draws
    mean = [sum(sc[j] for sc in scaled) / 3 for j in range(2)]
    total = unscale_sum(mean, bounds, 3)
    for j, b in enumerate(bounds):
        np.testing.assert_allclose(total[j], sum(np.clip(u[j], -b, b) for u in users), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="NaN/Inf"):
        scale_for_secagg([np.array([1.0, np.nan])], [1.0])
    assert quantization_bound([1.0], 4)[0] == pytest.approx(4 * 2 / 2**22)
    assert next_bounds([np.array([0.5, -3.0])], [1.0], 2.0) == [6.0]
    assert next_bounds(None, [1.5], 2.0) == [1.5]


# -- personal field and NeRF-W compositing --------------------------------------------------------------
def test_personal_density_is_bounded_by_its_grid_term():
    pf = PersonalField(PersonalFieldConfig(resolution=12), BOX, num_images=3, global_dim=12, step_size=0.05)
    with torch.no_grad():
        pf.density_grid.data.normal_(0, 3.0)
    xs = torch.rand(500, 3) * 2 - 1
    sigma, rgb, beta = pf(xs, torch.randn(500, 12), torch.randint(0, 3, (500,)))
    assert torch.all(sigma <= pf.density_bound(xs) + 1e-6)
    assert rgb.shape == (500, 3) and torch.all((rgb >= 0) & (rgb <= 1)) and torch.all(beta >= 0)


def test_empty_personal_field_renders_exactly_the_global_field():
    field = small_field()
    pf = PersonalField(PersonalFieldConfig(resolution=8), field.space.box, num_images=2, global_dim=12, step_size=0.05)
    with torch.no_grad():
        pf.density_grid.data.fill_(-1e4)  # no personal density anywhere
    occ = OccupancyGrid(field.space.box, 16)
    occ.update(field.density_space, 0.05, 1e-3)
    settings = RenderSettings(0.0, 4.0, 0.02, torch.tensor([1.0, 1.0, 1.0]))
    torch.manual_seed(1)
    origins = torch.tensor([[0.0, 0.0, 3.0]]).repeat(64, 1)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3) * 0.2 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    with torch.no_grad():
        a = render_rays(field, occ, origins, dirs, settings)
        b = render_rays_personal(field, pf, occ, origins, dirs, torch.zeros(64, dtype=torch.long), settings)
        torch.manual_seed(2)
        a_s = render_rays(field, occ, origins, dirs, settings, jitter=True, keep_samples=True)
        torch.manual_seed(2)  # the same jitter, so the same samples
        b_s = render_rays_personal(field, pf, occ, origins, dirs, torch.zeros(64, dtype=torch.long), settings,
                                   jitter=True, keep_samples=True)
    torch.testing.assert_close(b["rgb"], a["rgb"], atol=1e-5, rtol=1e-5)
    # the global weights a sample loss reads are the single-field weights when no person stands anywhere
    torch.testing.assert_close(b_s["samples"].t, a_s["samples"].t)
    torch.testing.assert_close(b_s["weights_global"], a_s["weights"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b["beta"], torch.full((64,), pf.cfg.beta_min))
    assert float(b["personal_opacity"].abs().max()) < 1e-6


def test_personal_content_occludes_the_global_field():
    """An opaque personal blob in front of the global content hides it (transmittance through both fields)."""
    field = small_field()
    pf = PersonalField(PersonalFieldConfig(resolution=8, appearance=False), field.space.box, 1, 12, 0.05)
    with torch.no_grad():
        pf.density_grid.data.fill_(200.0)  # opaque everywhere
        pf.mlp[-1].bias.copy_(torch.tensor([20.0, -20.0, 20.0, -20.0, 0.0]))  # gate open, colour (0, 1, 0)
    occ = OccupancyGrid(field.space.box, 16)
    settings = RenderSettings(0.0, 4.0, 0.02, torch.tensor([1.0, 1.0, 1.0]))
    origins = torch.tensor([[0.0, 0.0, 3.0]]).repeat(8, 1)
    dirs = torch.tensor([[0.0, 0.0, -1.0]]).repeat(8, 1)
    with torch.no_grad():
        out = render_rays_personal(field, pf, occ, origins, dirs, torch.zeros(8, dtype=torch.long), settings,
                                   keep_samples=True)
    torch.testing.assert_close(out["rgb"], torch.tensor([[0.0, 1.0, 0.0]]).repeat(8, 1), atol=2e-3, rtol=0)
    assert float(out["personal_opacity"].min()) > 0.99
    # the global field's weights (what the clients' distortion term reads) are its share only: behind an
    # opaque person nearly nothing, although the joint opacity is ~1
    per_ray = torch.zeros(8).index_add_(0, out["samples"].ray_idx, out["weights_global"])
    assert float(per_ray.max()) < 0.05 and float(out["opacity"].min()) > 0.99


def test_personal_exclusion_keeps_the_personal_field_off_what_the_aggregate_holds():
    """``exclude_alpha``: zero personal density inside the cells the received aggregate occupies, unchanged
    elsewhere; the render then composites no personal content there (the unfused path, which honours it)."""
    from privnerf.fed.local import aggregate_occupancy

    field = small_field()
    with torch.no_grad():  # the aggregate holds a slab z < 0 and nothing above it
        z = torch.linspace(-1, 1, field.density_grid.data.shape[2])
        field.density_grid.data[...] = torch.where(z < 0, 50.0, -50.0).view(1, 1, -1, 1)
    pf = PersonalField(PersonalFieldConfig(resolution=8, appearance=False, exclude_alpha=0.05), field.space.box,
                       1, 12, 0.05)
    with torch.no_grad():
        pf.density_grid.data.fill_(200.0)  # the personal field would fill the whole box
    occ_g = aggregate_occupancy(field, 16, 0.05, pf.cfg.exclude_alpha)
    xs = torch.rand(4000, 3) * 1.8 - 0.9
    with torch.no_grad():
        before = pf.density_bound(xs)
        pf.set_exclusion(occ_g)
        after = pf.density_bound(xs)
    held = occ_g.query(xs)
    assert held.any() and (~held).any()
    assert float(after[held].abs().max()) == 0.0
    torch.testing.assert_close(after[~held], before[~held])
    assert "_exclusion" not in "".join(pf.state_dict())  # device-side, rebuilt each round, never saved
    # rays from above meet personal content in the empty half and stop there: the global slab stays hidden,
    # rays from below start inside the slab, where the personal field may not be, and see the global colour
    settings = RenderSettings(0.0, 4.0, 0.02, torch.tensor([1.0, 1.0, 1.0]))
    occ = OccupancyGrid(field.space.box, 16)
    down = torch.tensor([[0.0, 0.0, -1.0]]).repeat(4, 1)
    with torch.no_grad():
        top = render_rays_personal(field, pf, occ, torch.tensor([[0.0, 0.0, 3.0]]).repeat(4, 1), down,
                                   torch.zeros(4, dtype=torch.long), settings)
        inside = render_rays_personal(field, pf, occ, torch.tensor([[0.0, 0.0, -0.5]]).repeat(4, 1), down,
                                      torch.zeros(4, dtype=torch.long), settings)
    assert float(top["personal_opacity"].min()) > 0.99
    assert float(inside["personal_opacity"].max()) < 1e-3
    # the fused CPU culling reads the personal grid itself, so it declines while an exclusion is set
    from privnerf.fields.ext import load_grid_ext
    from privnerf.render.sampler import march_culled

    args = (torch.tensor([[0.0, 0.0, 3.0]]).repeat(4, 1), down, 0.0, 4.0, field, occ, 0.02, False, 1e-4)
    assert march_culled(*args, extra=pf) is None
    pf.set_exclusion(None)
    assert pf.exclusion is None
    if load_grid_ext() is not None:  # without the compiled kernels there is no fused path to decline
        assert march_culled(*args, extra=pf) is not None


# -- the alpha update -----------------------------------------------------------------------------------
def _user_with(alpha: float, previous: list[np.ndarray]) -> LocalUser:
    u = LocalUser.__new__(LocalUser)
    u.user = 0
    u.state = UserState(alpha=alpha, previous_global=previous)
    return u


def test_centred_alpha_gradient_counts_only_the_voxels_a_user_touched():
    """With coverage weighting the aggregate is sum alpha m g / sum alpha m per voxel, so the alpha-weighted
    centred differences m_k (g_k - g) sum to zero: no d_k carries the aggregate's movement on voxels that
    user never touched (that term grew with what a user did not see and pushed every alpha over its bound)."""
    rng = np.random.default_rng(0)
    old = rng.normal(size=(3, 4, 5, 2)).astype(np.float32)
    alphas = [0.2, 0.3, 0.5]
    masks = [(rng.random((3, 4, 5)) < p).astype(np.float32) for p in (0.2, 0.5, 0.9)]
    mine = [np.where(m[..., None] > 0, old + rng.normal(size=old.shape), old).astype(np.float32) for m in masks]
    num = sum(a * m[..., None] * w for a, m, w in zip(alphas, masks, mine))
    den = sum(a * m for a, m in zip(alphas, masks))[..., None]
    agg = np.where(den > 0, num / np.where(den > 0, den, 1.0), old).astype(np.float32)
    grad_sum = [rng.normal(size=old.shape)]
    ds = []
    for a, m, w in zip(alphas, masks, mine):
        u = _user_with(a, [w])
        u.state.previous_mask = m
        ds.append(u.update_alpha(grad_sum, 1.0, [agg], 1.0, AlphaRule(eta=2.0)))
    assert abs(sum(a * d for a, d in zip(alphas, ds))) < 1e-4 * sum(abs(d) for d in ds)
    # unmasked, the least-covering user's d is dominated by everyone else's movement
    u = _user_with(alphas[0], [mine[0]])
    unmasked = u.update_alpha(grad_sum, 1.0, [agg], 1.0, AlphaRule(eta=2.0))
    assert abs(unmasked - ds[0]) > abs(ds[0])
    # the earlier rule ignores the mask it holds
    u = _user_with(alphas[0], [mine[0]])
    u.state.previous_mask = masks[0]
    assert u.update_alpha(grad_sum, 1.0, [agg], 1.0, AlphaRule(gradient="centred-all")) == pytest.approx(unmasked)
    with pytest.raises(ValueError, match="alpha.gradient"):
        AlphaRule(gradient="centered")


def test_coverage_weight_is_zero_where_training_left_a_voxel_and_gradient_scales_the_rest(caplog):
    """``m_k`` of the coverage-weighted mean: 1 on touched voxels (``touched``) or the user's RMS gradient there
    scaled to a maximum of 1 (``gradient``), 0 on voxels the round's training did not move (even where Adam
    holds old moments), so a voxel one user pins down outweighs one another user grazed."""
    field = small_field()
    keys, received = messages.global_keys(field), messages.global_arrays(field)
    mine = [a.copy() for a in received]
    mine[0][1, 2, 3, 0] += 0.5   # density moved at one voxel
    mine[1][4, 5, 6, 7] -= 0.25  # one feature channel moved at another
    mine[2] = mine[2] + 1.0      # MLP weights never enter the voxel map
    sq = torch.ones(field.density_grid.data.shape)
    sq[1, 2, 3] = 4.0            # the first voxel's gradients were twice as large (RMS)
    moments = [{"exp_avg_sq": sq}, {"exp_avg_sq": torch.ones(field.feature_grid.data.shape)}]
    trainer = SimpleNamespace(grid_opt=SimpleNamespace(state=moments), field=field)
    u = _user_with(0.5, None)
    u.gradient_energy = LocalUser._gradient_energy(trainer)
    assert u.gradient_energy.max() == pytest.approx(1.0) and u.gradient_energy[1, 2, 3] == pytest.approx(1.0)
    assert u.gradient_energy[4, 5, 6] == pytest.approx(2.0 / 3.0)  # (1 + 1) / (2 + 1)
    t = u.coverage_weight(keys, mine, received, "touched")
    assert t.shape == field.density_grid.data.shape[:3] and t.sum() == 2 and t[1, 2, 3] == t[4, 5, 6] == 1.0
    g = u.coverage_weight(keys, mine, received, "gradient")
    assert g[1, 2, 3] == pytest.approx(1.0) and g[4, 5, 6] == pytest.approx(2.0 / 3.0)
    assert np.count_nonzero(g) == 2  # the energy elsewhere is not the round's training
    with pytest.raises(ValueError, match="coverage_weight"):
        u.coverage_weight(keys, mine, received, "fisher")
    # without this round's moments the client says so and falls back to the touched mask
    u.gradient_energy = None
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(u.coverage_weight(keys, mine, received, "gradient"), t)
    assert "coverage weight 'touched' used instead" in caplog.text


def test_alpha_is_capped_at_the_secure_sums_bound(caplog):
    from privnerf.fed.messages import ALPHA_BOUND

    u = _user_with(0.9, [np.array([-1.0], np.float32)])
    with caplog.at_level("WARNING"):
        u.update_alpha([np.array([1.0])], 0.01, [np.zeros(1, np.float32)], 1.0, AlphaRule(eta=8.0))
    assert u.state.alpha == ALPHA_BOUND and "capped" in caplog.text


def test_alpha_grows_for_users_whose_weights_lower_everyones_loss():
    g = [np.zeros(4, np.float32)]
    grad_sum = [np.array([1.0, 0.0, 0.0, 0.0])]  # loss rises along +x0
    good = _user_with(0.5, [np.array([-0.1, 0, 0, 0], np.float32)])   # moved downhill
    bad = _user_with(0.5, [np.array([0.1, 0, 0, 0], np.float32)])     # moved uphill
    rule = AlphaRule(eta=2.0)
    d_good = good.update_alpha(grad_sum, 1.0, g, 1.0, rule)
    d_bad = bad.update_alpha(grad_sum, 1.0, g, 1.0, rule)
    assert d_good < 0 < d_bad
    assert good.state.alpha > 0.5 > bad.state.alpha > 0
    # renormalisation by the broadcast sum, and a skipped update when last round's weights cannot be matched
    odd = _user_with(0.3, [np.zeros(4, np.float32)])
    assert odd.update_alpha([np.zeros(8)], 1.0, [np.zeros(8, np.float32)], 0.6, rule) is None
    assert odd.state.alpha == pytest.approx(0.5)
    # centred vs the paper's raw gradient differ by <sumG, g>
    g1 = [np.array([1.0, 0, 0, 0], np.float32)]
    c = _user_with(0.5, [np.array([1.0, 0, 0, 0], np.float32)]).update_alpha(grad_sum, 1.0, g1, 1.0, rule)
    r = _user_with(0.5, [np.array([1.0, 0, 0, 0], np.float32)]).update_alpha(
        grad_sum, 1.0, g1, 1.0, AlphaRule(gradient="raw"))
    assert c == pytest.approx(0.0) and r == pytest.approx(1.0)


def test_alpha_update_runs_across_a_grid_growth():
    """When the server grew the grids since last round, the user's own grids are regridded as the server grew
    the aggregate (DenseGrid.resample, same box), and the update uses that difference instead of skipping."""
    from privnerf.fields.encoding import DenseGrid, regrid_values

    gen = torch.Generator().manual_seed(0)
    aabb = torch.tensor([[-1.0, -2.0, 0.0], [1.0, 2.0, 3.0]])
    old_agg, mine = torch.randn(4, 5, 3, 2, generator=gen), torch.randn(4, 5, 3, 2, generator=gen)
    grid = DenseGrid((4, 5, 3), 2, aabb)
    grid.data = torch.nn.Parameter(old_agg.clone())
    grid.resample((7, 9, 5))  # the server's growth step
    grown = grid.data.detach()
    torch.testing.assert_close(regrid_values(old_agg, (7, 9, 5)), grown, atol=0, rtol=0)  # one code path
    # a new box takes the world-space path: the upper half in x, [0, 1] of [-1, 1], at 3 points puts new x
    # planes 0, 1, 2 at old index 1.5, 2.25 and 3 (y and z unchanged)
    moved = DenseGrid((4, 5, 3), 2, aabb)
    moved.data = torch.nn.Parameter(old_agg.clone())
    moved.resample((3, 5, 3), torch.tensor([[0.0, -2.0, 0.0], [1.0, 2.0, 3.0]]))
    got = moved.data.detach()
    torch.testing.assert_close(got[0], 0.5 * (old_agg[1] + old_agg[2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], 0.75 * old_agg[2] + 0.25 * old_agg[3], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[2], old_agg[3], atol=1e-5, rtol=0)
    grad_sum = [torch.randn(7, 9, 5, 2, generator=gen).double().numpy(), np.array([0.5])]
    mlp_prev, mlp_now = np.array([1.0], np.float32), np.array([0.25], np.float32)
    user = _user_with(0.5, [mine.numpy(), mlp_prev])
    d = user.update_alpha(grad_sum, 1.0, [grown.numpy(), mlp_now], 1.0, AlphaRule(eta=0.1))
    expected = float((grad_sum[0] * (regrid_values(mine - old_agg, (7, 9, 5))).double().numpy()).sum()) + 0.5 * 0.75
    assert d == pytest.approx(expected, rel=1e-4)
    assert user.state.alpha != pytest.approx(0.5)


# -- message schema --------------------------------------------------------------------------------------
def test_global_arrays_round_trip_and_bad_arrays_are_named():
    f = small_field(0)
    arrays = messages.global_arrays(f)
    keys = messages.global_keys(f)
    assert keys[0] == "density_grid.data" and keys[1] == "feature_grid.data"
    assert all(k.startswith(messages.GLOBAL_PREFIXES) for k in keys)
    g = small_field(1)
    messages.load_global(g, arrays)
    for a, b in zip(messages.global_arrays(g), arrays):
        np.testing.assert_array_equal(a, b)
    # a grown grid from the server replaces the local one
    bigger = [np.zeros((20, 20, 20, a.shape[-1]), np.float32) if k.endswith("grid.data") else a
              for k, a in zip(keys, arrays)]
    messages.load_global(g, bigger)
    assert g.density_grid.resolution == (20, 20, 20)
    bad = [a.copy() for a in arrays]
    bad[2].flat[0] = np.inf
    with pytest.raises(ValueError, match=rf"{keys[2]} has 1 NaN/Inf"):
        messages.check_arrays(f, bad, "update")
    with pytest.raises(ValueError, match="expected"):
        messages.check_arrays(f, arrays[:-1], "update")
    wrong = list(arrays)
    wrong[1] = np.zeros((3, 3, 3, 5), np.float32)
    with pytest.raises(ValueError, match="feature_grid.data has shape"):
        messages.check_arrays(f, wrong, "update")


def test_baseline_server_rejects_nan_and_misshapen_updates(caplog, tmp_path):
    pytest.importorskip("flwr")
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from privnerf.fed.config import FedConfig
    from privnerf.fed.server import DecentServer, RoundStrategy

    f = small_field(0)
    good = messages.global_arrays(f)
    nan = [a.copy() for a in good]
    nan[0][0, 0, 0, 0] = np.nan
    shaped = list(good)
    shaped[-1] = np.zeros(7, np.float32)

    def res(arrays, user):
        return (SimpleNamespace(node_id=100 + user),
                FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 10, {"user": user}))

    strategy = RoundStrategy(3)
    strategy.results = [res(good, 0), res(nan, 1), res(shaped, 2)]
    server = DecentServer(FedConfig(aggregator="fednerf"), f, tmp_path)
    with caplog.at_level(logging.ERROR):
        mean, individual, n = server._plain_mean(strategy, 1)
    assert n == 1 and list(individual) == [0]
    for a, b in zip(mean, good):
        np.testing.assert_allclose(a, b)
    text = caplog.text
    assert "node 101" in text and "NaN/Inf" in text and "rejected" in text
    assert "node 102" in text and "shape" in text


def test_clients_scale_the_grid_learning_rate_and_centralized_does_not():
    """Federated clients train the global grids at client_lr_scale x the configured rate (averaging dilutes their
    updates); the centralized baseline, which averages nothing, trains at the configured rate."""
    from privnerf.fed.config import FedConfig

    cfg = FedConfig(data="unused")
    base = (cfg.train.optim.lr_density, cfg.train.optim.lr_features)
    for agg in ("learned", "fedavg", "fednerf"):
        cfg.aggregator = agg
        o = cfg.client_train_config().optim
        assert (o.lr_density, o.lr_features) == (base[0] * cfg.client_lr_scale, base[1] * cfg.client_lr_scale)
    assert cfg.client_lr_scale * base[0] == pytest.approx(1.0)  # the measured client rate (docs/decentnerf.md)
    for agg in ("centralized", "oracle"):
        cfg.aggregator = agg
        o = cfg.client_train_config().optim
        assert (o.lr_density, o.lr_features) == base
    assert cfg.train.optim.lr_density == base[0]  # the config itself is not changed
    # a JSON round trip (how Deployment Engine apps get the config) keeps the scale
    cfg.client_lr_scale = 3.0
    assert FedConfig.from_json(cfg.to_json()).client_lr_scale == 3.0
