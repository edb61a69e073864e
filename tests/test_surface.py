"""The surface field (privnerf.fields.surface_field): VolSDF density, finite-difference eikonal/curvature, the
Du-NeRF coupling in the training step, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from privnerf.fields.grid_field import GridFieldConfig
from privnerf.fields.surface_field import SurfaceField, SurfaceFieldConfig, laplace_density

BOX = torch.tensor([[-1.0] * 3, [1.0] * 3])


def make(mode="dual", **kw) -> SurfaceField:
    return SurfaceField(GridFieldConfig(num_voxels_start=48**3), SurfaceFieldConfig(mode=mode, **kw), BOX, False, 0.02)


def test_laplace_density_is_volsdf():
    beta = torch.tensor(0.05)
    s = torch.tensor([-1.0, -0.05, 0.0, 0.05, 1.0])
    sigma = laplace_density(s, beta)
    assert float(sigma[2]) == pytest.approx(1 / (2 * 0.05))
    assert float(sigma[0]) == pytest.approx(1 / 0.05, rel=1e-6)  # deep inside: 1 / beta
    assert float(sigma[4]) < 1e-6  # far outside: empty
    # Psi(-s) + Psi(s) = 1 (the Laplace CDF is symmetric)
    assert float(sigma[1] + sigma[3]) * 0.05 == pytest.approx(1.0, rel=1e-6)
    assert torch.all(sigma[:-1] >= sigma[1:])  # monotone in s


def test_initial_sdf_is_a_sphere_with_unit_gradient():
    f = make(init_radius=0.5, box_margin=0.0)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.8, 0.0]])
    s = f.sdf(pts)
    assert torch.allclose(s, torch.tensor([-0.5, 0.0, 0.3]), atol=0.02)
    xs = torch.tensor([[0.3, 0.2, -0.4], [-0.6, 0.1, 0.1]])
    grad, lap = f.sdf_derivatives(xs)
    assert torch.allclose(grad.norm(dim=-1), torch.ones(2), atol=0.03)
    assert torch.allclose(grad / grad.norm(dim=-1, keepdim=True), xs / xs.norm(dim=-1, keepdim=True), atol=0.03)
    # Laplacian of |x| - r is 2 / |x|
    assert torch.allclose(lap, 2 / xs.norm(dim=-1), rtol=0.15)
    reg = f.regularizers(torch.rand(100, 3) - 0.5, torch.Generator().manual_seed(0), 1.0)
    assert float(reg["eikonal"].detach()) < 0.05 * f.scfg.eikonal_weight  # a true distance: eikonal ~ 0
    # a squashed field (|grad s| = 0.5) is penalised
    with torch.no_grad():
        f.sdf_grid.data.mul_(0.5)
    assert float(f.regularizers(torch.zeros(0, 3), torch.Generator().manual_seed(0), 1.0)["eikonal"]) > 0.2 * f.scfg.eikonal_weight


def test_modes_pick_the_rendering_density_and_carry_the_sdf():
    x = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.9, 0.9]])
    d = torch.nn.functional.normalize(torch.ones(2, 3), dim=-1)
    for mode in ("dual", "sdf"):
        f = make(mode)
        sigma, values = f(x, d)
        assert values.shape == (2, f.cfg.feature_dim + 1)
        # dual mode before the birth: the SDF is neither read nor trained (zeros ride along)
        assert torch.allclose(values[:, -1], f.sdf(x) if mode == "sdf" else torch.zeros(2))
        if mode == "sdf":
            assert torch.allclose(sigma, laplace_density(f.sdf(x), f.beta))
        else:  # the density grid's (near-transparent at start), not the SDF's
            assert float(sigma[0]) < 1.0
        # marching sees both branches in dual mode, once the SDF is born (warm start)
        if mode == "dual":
            assert not f.sdf_active and float(f.density(x)[0]) < 1.0
            f.warm.fill_(True)
            assert torch.allclose(f(x, d)[1][:, -1], f.sdf(x))
        dens = f.density(x)
        assert float(dens[0]) >= float(laplace_density(f.sdf(x[:1]), f.beta)) - 1e-5
        rgb = f.finish(values, torch.ones(2), d)
        assert rgb.shape == (2, 3)


def test_warm_start_is_the_signed_distance_to_the_density_solid():
    f = make()
    with torch.no_grad():  # a density ball of radius 0.4
        pts = f._grid_points(f.density_grid).reshape(-1, 3)
        f.density_grid.data.copy_(torch.where(pts.norm(dim=-1, keepdim=True) < 0.4, 10.0, -10.0).reshape(f.density_grid.data.shape))
    seen = (f._grid_points(f.sdf_grid).norm(dim=-1) > 0.4).numpy()
    for seen_empty in (None, seen):
        info = f.warm_start(0.05, seen_empty)
        assert info["warm_started"] and f.sdf_active
        s = f.sdf(torch.tensor([[0.0, 0.0, 0.0], [0.7, 0.0, 0.0], [0.0, 0.4, 0.0]]))
        assert float(s[0]) == pytest.approx(-0.4, abs=1.5 * f.voxel)
        assert float(s[1]) == pytest.approx(0.3, abs=1.5 * f.voxel)
        assert abs(float(s[2])) < 1.5 * f.voxel
        assert float(f.beta) == pytest.approx(f.voxel, rel=1e-4)


def test_beta_is_floored_by_the_voxel():
    f = make(beta_min_voxels=0.5)
    with torch.no_grad():
        f.log_beta.fill_(math.log(1e-6))
    assert float(f.beta) == pytest.approx(0.5 * f.voxel)


@pytest.mark.parametrize("mode", ["dual", "sdf"])
def test_training_step_runs_the_surface_terms_and_resumes(tmp_path, mode):
    from privnerf.data.builtin import make_builtin_scene
    from privnerf.train.config import TrainConfig
    from privnerf.train.trainer import Trainer, trainer_from_checkpoint

    scene = make_builtin_scene("train", size=32, n_train=6, n_val=1, n_test=1, supersample=1)
    cfg = TrainConfig(steps=6)
    cfg.field.kind = "surface"
    cfg.field.surface.mode = mode
    cfg.optim.batch_rays = 256
    cfg.field.grid.num_voxels_start = 32**3
    cfg.field.surface.warm_start_steps = 2
    cfg.field.surface.warm_start_after_growth = False  # the grid grows only after 48 steps
    cfg.field.surface.coupling_until = 1.0  # coupled to the end
    cfg.field.surface.coupling_weight = 1.0
    cfg.field.surface.warm_start_progress = 0.0
    t = Trainer(cfg, scene, tmp_path)
    assert len(t.grid_opt.grids) == 3 and t.grid_opt.lrs[2] == pytest.approx(
        cfg.field.surface.lr_sdf * t.field.diagonal / 2)
    for _ in range(3):
        t.step()
    assert t.field.sdf_active  # dual: born from the density branch at step 2
    before = t.field.sdf_grid.data.detach().clone()
    t.maintenance()
    batch = t.sample_batch()
    loss, mse, out = t.compute_loss(batch)
    assert "eikonal" in out["terms"] and ("coupling" in out["terms"]) == (mode == "dual")
    assert ("photo_sdf" in out["terms"]) == (mode == "dual")  # the SDF branch's own photometric loss
    t.apply_loss(loss, mse, out, batch[0].shape[0])
    assert not torch.equal(before, t.field.sdf_grid.data)  # the SDF trains
    for _ in range(3):
        t.step()
    t.save_checkpoint()
    back = trainer_from_checkpoint(tmp_path)
    assert isinstance(back.field, SurfaceField) and back.field.scfg.mode == mode
    assert torch.equal(back.field.sdf_grid.data, t.field.sdf_grid.data)
    assert float(back.field.log_beta) == float(t.field.log_beta)
    assert [e["step"] for e in back.events] == [e["step"] for e in t.events] == ([2] if mode == "dual" else [])


def _tiny_surface_trainer(set_up):
    """A 10-step surface-field trainer on a 24 px built-in scene; ``set_up(cfg)`` adjusts the config."""
    from privnerf.data.builtin import make_builtin_scene
    from privnerf.train.config import TrainConfig
    from privnerf.train.trainer import Trainer

    scene = make_builtin_scene("train", size=24, n_train=4, n_val=1, n_test=1, supersample=1)
    cfg = TrainConfig(steps=10)
    cfg.field.kind = "surface"
    cfg.optim.batch_rays = 128
    cfg.field.grid.num_voxels_start = 16**3
    cfg.field.surface.warm_start_progress = 0.0  # born at warm_start_steps
    cfg.field.surface.coupling_weight = 1.0
    set_up(cfg)
    return Trainer(cfg, scene, None)


def test_warm_start_waits_for_the_last_growth():
    def set_up(cfg):
        cfg.field.grid.num_voxels = 24**3
        cfg.field.grid.grow_at = (0.5,)
        cfg.render.occ_warmup_steps = 0
        cfg.field.surface.warm_start_steps = 2

    t = _tiny_surface_trainer(set_up)
    born = None
    for _ in range(8):
        t.step()
        if born is None and t.field.sdf_active:
            born = t.step_count
    # grows at step 5 (progress 0.5); the SDF is born in the same maintenance pass, not at step 2
    assert int(t.field.grow_count) == 1 and born == 6


def test_warm_start_waits_for_progress_and_is_recorded():
    """warm_start_progress holds the birth back until training is that far; until then the density branch
    alone gives the march's density (the fused kernel applies); the birth is an event with its step."""
    def set_up(cfg):
        cfg.field.surface.warm_start_steps = 2
        cfg.field.surface.warm_start_after_growth = False
        cfg.field.surface.warm_start_progress = 0.6

    t = _tiny_surface_trainer(set_up)
    born = None
    for _ in range(8):
        assert t.field.density_is_grid == (not t.field.sdf_active)
        t.step()
        if born is None and t.field.sdf_active:
            born = t.step_count
    assert born == 7  # the maintenance pass of step 7 (progress 0.6), not step 2
    assert not t.field.density_is_grid
    assert [e["event"] for e in t.events] == ["sdf_warm_start"] and t.events[0]["step"] == 6
    assert t.events[0]["warm_started"] and t.events[0]["duration_s"] >= 0


def test_coupling_confidence_drops_half_transparent_rays():
    """With coupling_confidence c, only rays whose density-branch opacity is below c or above 1 - c carry the
    coupling: the term is the per-ray error summed over those rays, over all rays."""
    from privnerf.render.renderer import render_rays
    from privnerf.render.volume import accumulate, composite, weights_from_density

    def set_up(cfg):
        cfg.field.surface.warm_start_steps = 0
        cfg.field.surface.coupling_until = 1.0

    t = _tiny_surface_trainer(set_up)
    for _ in range(4):
        t.step()
    t.maintenance()
    o, d, _ = t.sample_batch()
    out = render_rays(t.field, t.occ, o, d, t.settings(), jitter=False, keep_samples=True)
    s, v, n = out["samples"], out["values"].detach(), o.shape[0]
    bg = t.settings().background
    w_d = out["weights"].detach()
    op_d = accumulate(w_d, None, s.ray_idx, n)
    label = composite(accumulate(w_d, v[:, :3], s.ray_idx, n), op_d, bg)
    w_s, _ = weights_from_density(t.field.sdf_density(v[:, -1]), s.delta, s.ray_idx, n)
    pred = composite(accumulate(w_s, v[:, :3], s.ray_idx, n), accumulate(w_s, None, s.ray_idx, n), bg)
    err = ((pred - label) ** 2).mean(-1)
    cut = float(op_d.max()) / 2 + 1e-3  # rays below half the largest opacity count, the others do not
    for conf, keep in ((0.0, torch.ones(n, dtype=torch.bool)), (cut, (op_d < cut) | (op_d > 1 - cut))):
        t.field.scfg.coupling_confidence = conf
        o2 = dict(out)
        t._surface_terms(o2, o, d, t.settings())
        assert o2["terms"]["coupling"] == pytest.approx(float((err * keep).mean()), rel=1e-4, abs=1e-9)
    assert 0 < int(keep.sum()) < n  # the cut dropped some rays and kept others


def test_negative_box_margin_is_an_error():
    from privnerf.fields.grid_field import GridFieldConfig

    with pytest.raises(ValueError, match="box-margin"):
        SurfaceField(GridFieldConfig(), SurfaceFieldConfig(box_margin=-0.1), torch.tensor([[-1.] * 3, [1.] * 3]), False, 0.02)


@pytest.mark.parametrize("bad, flag", [({"warm_start_progress": 1.0}, "warm-start-progress"),
                                       ({"warm_start_progress": -0.1}, "warm-start-progress"),
                                       ({"coupling_confidence": 0.7}, "coupling-confidence"),
                                       ({"coupling_confidence": -0.1}, "coupling-confidence"),
                                       ({"cull_weight": -1e-4}, "cull-weight"),
                                       ({"cull_weight": 1.0}, "cull-weight")])
def test_out_of_range_birth_and_confidence_are_errors(bad, flag):
    """A birth at progress 1 would never come (the mesh would silently be the initial sphere)."""
    with pytest.raises(ValueError, match=flag):
        make(**bad)


def test_coupling_switches_off_at_coupling_until():
    def set_up(cfg):
        cfg.field.surface.warm_start_steps = 0
        cfg.field.surface.coupling_until = 0.3
        cfg.field.surface.coupling_confidence = 0.0

    t = _tiny_surface_trainer(set_up)
    seen = []
    for _ in range(6):
        t.maintenance()
        b = t.sample_batch()
        loss, mse, out = t.compute_loss(b)
        seen.append("coupling" in out["terms"])
        t.apply_loss(loss, mse, out, b[0].shape[0])
    assert seen == [True, True, True, False, False, False]  # progress 0, 0.1, 0.2 on; 0.3 on off


def test_coupling_moves_only_the_sdf():
    """In dual mode the coupling term's gradient reaches the SDF grid and beta, never the colours."""
    from privnerf.data.builtin import make_builtin_scene
    from privnerf.train.config import TrainConfig
    from privnerf.train.trainer import Trainer

    scene = make_builtin_scene("train", size=32, n_train=6, n_val=1, n_test=1, supersample=1)
    cfg = TrainConfig(steps=4)
    cfg.field.kind = "surface"
    cfg.field.surface.eikonal_weight = 0.0
    cfg.field.surface.curvature_weight = 0.0
    cfg.field.grid.num_voxels_start = 32**3
    cfg.optim.batch_rays = 256
    cfg.optim.distortion_weight = 0.0
    cfg.field.surface.warm_start_steps = 0
    cfg.field.surface.coupling_until = 1.0
    cfg.field.surface.coupling_weight = 1.0
    cfg.field.surface.coupling_confidence = 0.0
    t = Trainer(cfg, scene)
    for _ in range(3):
        t.step()
    t.maintenance()
    batch = t.sample_batch()
    settings = t.settings()
    from privnerf.render.renderer import render_rays

    out = render_rays(t.field, t.occ, batch[0], batch[1], settings, jitter=True, keep_samples=True)
    for g in t.field.grids():
        g.grad_buffer().zero_()
        g.touched_mask().zero_()
    f = t.field
    f.log_beta.grad = None
    coupling = t._surface_terms(out, batch[0], batch[1], settings)  # the trainer's own coupling term
    assert out["terms"]["coupling"] > 0 and out["terms"]["eikonal"] == 0 and "curvature" not in out["terms"]
    coupling.backward()
    assert float(f.sdf_grid.grad_buffer().abs().sum()) > 0
    assert float(f.feature_grid.grad_buffer().abs().sum()) == 0
    assert float(f.density_grid.grad_buffer().abs().sum()) == 0
    # the SDF branch's photometric term moves only the SDF too, unless photo_reaches_colours
    f.scfg.coupling_weight = 0.0
    f.scfg.photo_colour_share = 0.0
    for reaches in (False, True):
        f.scfg.photo_reaches_colours = reaches
        out = render_rays(t.field, t.occ, batch[0], batch[1], settings, jitter=True, keep_samples=True)
        for g in t.field.grids():
            g.grad_buffer().zero_()
        for p in f.rgb_net.parameters():
            p.grad = None
        t._surface_terms(out, batch[0], batch[1], settings, batch[2]).backward()
        assert out["terms"]["photo_sdf"] > 0 and float(f.sdf_grid.grad_buffer().abs().sum()) > 0
        assert (float(f.feature_grid.grad_buffer().abs().sum()) > 0) == reaches
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in f.rgb_net.parameters()) == reaches
        assert all(p.requires_grad for p in f.parameters())  # frozen only while the term was formed
    # a colour share: a scaled part of the gradient reaches the colour grids, none the shading network
    f.scfg.photo_reaches_colours = False
    feature_grads = []
    for share in (0.1, 1.0):
        f.scfg.photo_colour_share = share
        for g in t.field.grids():
            g.grad_buffer().zero_()
        for p in f.rgb_net.parameters():
            p.grad = None
        out = render_rays(t.field, t.occ, batch[0], batch[1], settings, jitter=False, keep_samples=True)
        t._surface_terms(out, batch[0], batch[1], settings, batch[2]).backward()
        feature_grads.append(float(f.feature_grid.grad_buffer().abs().sum()))
        assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in f.rgb_net.parameters())
    assert feature_grads[0] > 0 and feature_grads[0] == pytest.approx(0.1 * feature_grads[1], rel=0.05)


def test_culling_keeps_what_either_branch_weights():
    """After the birth, a ray through an SDF solid in front of the density branch's surface keeps the
    samples the density branch weights (culled by the summed density, they would be lost behind the SDF)."""
    from privnerf.render.occupancy import OccupancyGrid
    from privnerf.render.renderer import RenderSettings, select_samples

    f = make(box_margin=0.0)
    with torch.no_grad():
        pts = f._grid_points(f.density_grid).reshape(-1, 3)
        # density branch: a slab at x in [0.3, 0.5]; SDF: solid for x > 0 (in front of it along -x rays)
        f.density_grid.data.copy_(torch.where((pts[:, :1] > 0.3) & (pts[:, :1] < 0.5), 20.0, -20.0)
                                  .reshape(f.density_grid.data.shape))
        f.sdf_grid.data.copy_(-pts[:, :1].reshape(f.sdf_grid.data.shape))
        f.log_beta.fill_(-10.0)  # floored at half a voxel: the SDF's inside is opaque within 0.1
        f.warm.fill_(True)
    o = torch.tensor([[0.0, 0.0, 0.0]]).repeat(4, 1)
    d = torch.tensor([[1.0, 0.0, 0.0]]).repeat(4, 1)
    occ = OccupancyGrid(f.space.box, 16)
    settings = RenderSettings(near=0.0, far=3.0, step=0.01, background=torch.ones(3), weight_threshold=1e-3)
    s = select_samples(f, occ, o, d, settings)
    xs = s.t
    assert bool(((xs > 0.3) & (xs < 0.5)).any())  # the density branch's slab survives the SDF in front
    assert bool((xs < 0.05).any())  # and the SDF branch's own surface at x = 0


@pytest.mark.parametrize("mode,cull", [("dual", 1e-4), ("sdf", 1e-4), ("dual", 3e-3), ("sdf", 3e-3)])
def test_fused_cull_of_both_branches_matches_the_two_pass_path(mode, cull):
    """The compiled march-and-cull kernel with the SDF branch keeps exactly the samples the two-pass path
    (march, both branches' weights without gradient, keep what either weights) keeps, with the SDF branch's
    own threshold (``cull_weight``) above the render settings' too."""
    from privnerf.fields.ext import load_grid_ext
    from privnerf.render.occupancy import OccupancyGrid
    from privnerf.render.renderer import RenderSettings, select_samples

    if load_grid_ext() is None:
        pytest.skip("no compiled CPU kernels here (no compiler): the fused path does not run")
    f = make(mode=mode, box_margin=0.0, cull_weight=cull)
    with torch.no_grad():
        pts = f._grid_points(f.density_grid).reshape(-1, 3)
        f.density_grid.data.copy_((8.0 - 30.0 * (pts - 0.2).norm(dim=-1, keepdim=True)).reshape(f.density_grid.data.shape))
        f.sdf_grid.data.copy_((pts + 0.1).norm(dim=-1, keepdim=True).sub(0.4).reshape(f.sdf_grid.data.shape))
        f.log_beta.fill_(math.log(0.03))
        f.warm.fill_(True)
    g = torch.Generator().manual_seed(0)
    o = torch.tensor([0.0, 0.0, 2.5]) + torch.randn(400, 3, generator=g) * 0.2
    d = torch.nn.functional.normalize(torch.randn(400, 3, generator=g) * 0.3 - o, dim=-1)
    occ = OccupancyGrid(f.space.box, 16)
    settings = RenderSettings(near=0.0, far=5.0, step=0.01, background=torch.ones(3), weight_threshold=1e-4)
    fused = select_samples(f, occ, o, d, settings)
    f.sdf_branch = lambda: None  # the two-pass path
    ref = select_samples(f, occ, o, d, settings)
    assert len(fused) > 1000
    assert torch.equal(fused.ray_idx, ref.ray_idx)
    assert torch.allclose(fused.t, ref.t, atol=1e-5)
    if cull > settings.weight_threshold:  # the SDF branch's tail in front of its surface is dropped
        del f.sdf_branch
        f.scfg.cull_weight = settings.weight_threshold
        assert len(select_samples(f, occ, o, d, settings)) > len(fused)


def test_surface_box_has_room_under_the_scene_box():
    """The surface field's box is the scene box grown by box_margin of its longest side (an SDF needs room on
    both sides of a surface on the scene box's face), and a shrunk box keeps that margin around the content."""
    from privnerf.fields.grid_field import GridFieldConfig

    aabb = torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]])
    f = SurfaceField(GridFieldConfig(num_voxels_start=16**3), SurfaceFieldConfig(box_margin=0.05), aabb, False, 0.05)
    assert torch.allclose(f.space.box, torch.tensor([[-1.1, -1.1, -0.1], [1.1, 1.1, 1.1]]))
    f.grow(torch.tensor([[-0.5, -0.5, 0.0], [0.5, 0.5, 0.5]]))
    assert torch.allclose(f.density_grid.aabb, torch.tensor([[-0.6, -0.6, -0.1], [0.6, 0.6, 0.6]]), atol=1e-5)
    assert torch.equal(f.sdf_grid.aabb, f.density_grid.aabb)


def test_seen_empty_covers_every_point_in_front_of_the_surface():
    """Grid points between the (sparse) lattice rays count too, and nothing behind an opaque block does."""
    from privnerf.data.builtin import make_builtin_scene
    from privnerf.data.cameras import project_points
    from privnerf.train.config import TrainConfig
    from privnerf.train.trainer import Trainer

    scene = make_builtin_scene("train", size=32, n_train=4, n_val=1, n_test=1, supersample=1)
    cfg = TrainConfig(steps=1)
    cfg.field.grid.num_voxels_start = 40**3
    t = Trainer(cfg, scene, None)
    g = t.field.density_grid
    pts = SurfaceField._grid_points(g).reshape(-1, 3)
    with torch.no_grad():
        g.data.fill_(-30.0)  # empty everywhere
    seen = t.seen_empty(g, rays_per_view=16).reshape(-1)  # 4 x 4 rays per view: far sparser than the grid
    u, v, z = project_points(torch.from_numpy(scene.c2w[0]).float(), scene.intrinsics[0], pts)
    h, w = scene.hw(0)
    visible = ((u >= 0) & (u < w) & (v >= 0) & (v < h) & (z > t.near)).numpy()
    assert visible.sum() > 1000 and seen[visible].all()
    # an opaque block at the centre: its inside is never seen empty
    centre = (g.aabb[0] + g.aabb[1]) / 2
    half = 0.15 * float((g.aabb[1] - g.aabb[0]).min())
    block = ((pts - centre).abs() <= half).all(-1).reshape(*g.resolution, 1)
    with torch.no_grad():
        g.data.copy_(torch.where(block, torch.tensor(30.0), torch.tensor(-30.0)))
    seen = t.seen_empty(g, rays_per_view=1024).reshape(-1)  # a lattice ray per pixel: the block is 3-4 px wide
    core = ((pts - centre).abs() <= 0.6 * half).all(-1)
    assert core.any() and not seen[core.numpy()].any()
    assert seen[visible].mean() > 0.5


def test_timeline_records_steps_against_training_time_and_survives_a_resume(tmp_path):
    """``Trainer.timeline`` marks (time, step) as training goes, ends at the last step, and a resumed run
    continues it rather than starting over."""
    from privnerf.train.trainer import Trainer

    t = _tiny_surface_trainer(lambda cfg: setattr(cfg, "steps", 6))
    t.run_dir = tmp_path
    t.TIMELINE_EVERY_S = 1e-9  # a mark after every step
    t.train(quiet=True)
    marks = t.timeline
    assert marks[0] == {"time_s": 0.0, "step": 0} and marks[-1]["step"] == 6 == t.step_count
    assert [m["step"] for m in marks] == sorted(m["step"] for m in marks) and len(marks) >= 7
    assert all(b["time_s"] >= a["time_s"] for a, b in zip(marks, marks[1:]))
    again = Trainer(t.cfg, t.scene, tmp_path)
    again.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert again.timeline == marks
    again.cfg.steps = 8
    again.TIMELINE_EVERY_S = 1e-9
    again.train(quiet=True)
    assert again.timeline[: len(marks)] == marks and again.timeline[-1]["step"] == 8


def test_the_benchmarks_same_window_step_rate_reads_a_timeline():
    """benchmarks/surface.py's step-cost bar: steps per second of a run between two training times, linearly
    interpolated in its timeline; None outside it (a run that stopped earlier has no rate there)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_surface", Path(__file__).resolve().parents[1] / "benchmarks" / "surface.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    timeline = [{"time_s": 0.0, "step": 0}, {"time_s": 10.0, "step": 100}, {"time_s": 20.0, "step": 150}]
    assert bench.steps_at(timeline, 15.0) == pytest.approx(125.0)
    assert bench.steps_at(timeline, 25.0) is None and bench.steps_at([], 1.0) is None
    assert bench.same_window_rate({"timeline": timeline}, 5.0, 15.0) == pytest.approx(7.5)  # 50 .. 125
    assert bench.same_window_rate({"timeline": timeline}, 15.0, 30.0) is None
    assert bench.same_window_rate({}, 0.0, 10.0) is None
