"""JacobiNeRF: the closed-form Jacobian, the MI-gradient loss against a loop over anchors, the threshold."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from privnerf.fields.grid_field import GridField, GridFieldConfig
from privnerf.semantics.jacobian import head_activation, last_layer, perturbed_response, ray_jacobians
from privnerf.semantics.shaping import AdaptiveThreshold, gradient_norm_loss, mi_gradient_loss


def _field_and_rays(n=6, seed=0):
    torch.manual_seed(seed)
    f = GridField(GridFieldConfig(), torch.tensor([[-1.0] * 3, [1.0] * 3]), False, 0.02)
    with torch.no_grad():
        f.feature_grid.data.normal_(0, 0.5)
        for p in f.rgb_net.parameters():
            p.normal_(0, 0.3)
    composited = torch.randn(n, f.cfg.feature_dim)
    opacity = torch.rand(n) * 0.9 + 0.1
    dirs = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    return f, composited, opacity, dirs


def test_closed_form_jacobian_equals_autograd_of_the_rendered_mean_rgb():
    f, comp, op, dirs = _field_and_rays()
    W = last_layer(f).weight
    a = head_activation(f, comp, dirs)
    J = ray_jacobians(a, op)
    for i in range(comp.shape[0]):
        colour = f.finish(comp[i:i + 1], op[i:i + 1], dirs[i:i + 1])  # the grid field's deferred shading
        (g,) = torch.autograd.grad(colour.mean(), W)
        assert torch.allclose(J[i], g, atol=1e-6)


def test_a_zero_view_jacobian_is_the_same_from_every_camera_and_a_ray_view_one_is_not():
    f, comp, op, dirs = _field_and_rays()
    one = comp[:1].expand(len(dirs), -1)  # one point's composited features, seen along six directions
    ray = ray_jacobians(head_activation(f, one, dirs), op[:1].expand(len(dirs)))
    zero = ray_jacobians(head_activation(f, one, dirs, view="zero"), op[:1].expand(len(dirs)))
    assert torch.allclose(zero, zero[:1].expand_as(zero), atol=1e-6)
    assert not torch.allclose(ray, ray[:1].expand_as(ray), atol=1e-3)
    with pytest.raises(ValueError, match="Jacobian view 'side': expected one of ray, zero"):
        head_activation(f, one, dirs, view="side")
    from privnerf.cli.semantics import VIEWS as CLI_VIEWS
    from privnerf.semantics.jacobian import VIEWS
    assert CLI_VIEWS == VIEWS


def test_the_response_to_a_perturbation_is_exact():
    f, comp, op, dirs = _field_and_rays()
    layer = last_layer(f)
    G = torch.randn(3, layer.in_features)
    t = 0.1
    with torch.no_grad():
        before = f.finish(comp, op, dirs)
        layer.weight += t * G
        after = f.finish(comp, op, dirs)
        layer.weight -= t * G
    a = head_activation(f, comp, dirs).detach()
    assert torch.allclose(perturbed_response(a, op, G, t), (after - before).abs().mean(-1), atol=1e-5)


def _loop_loss(J, feats, tau):
    """The official code's per-anchor loop, written out."""
    n = J.shape[0]
    j = J.reshape(n, -1)
    terms = []
    for i in range(n):
        sp = sn = 0.0
        for k in range(n):
            cos = float(j[i] @ j[k] / (j[i].norm() * j[k].norm()))
            e = math.exp(abs(cos))
            if float(feats[i] @ feats[k]) > tau[i]:
                sp += e
            else:
                sn += e
        if sp > 0 and sn > 0:
            terms.append(-math.log(sp / (sp + sn)))
    return sum(terms) / len(terms) if terms else 0.0, len(terms)


def test_mi_loss_equals_the_loop_with_self_positives_anchor_counting_and_the_adaptive_threshold():
    g = torch.Generator().manual_seed(1)
    n = 40
    J = torch.randn(n, 3, 8, generator=g)
    feats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    feats[:10] = feats[0]  # a group of identical features: positives beyond the anchor itself
    th = AdaptiveThreshold()
    ref = AdaptiveThreshold()
    taus = ref.per_anchor(feats @ feats.T).tolist()
    loss, info = mi_gradient_loss(J, feats, th)
    want, counted = _loop_loss(J, feats, taus)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert info["anchors"] == counted == n
    assert th.value == pytest.approx(ref.value)
    # an anchor with no negatives (every feature alike) is not counted: with one group the loss is zero
    same = torch.zeros(n, 4)
    same[:, 0] = 1.0
    zero, info = mi_gradient_loss(J, same, AdaptiveThreshold(adaptive=False))
    assert float(zero) == 0.0 and info["anchors"] == 0


def test_adaptive_threshold_moves_per_anchor_and_stays_in_its_range():
    n = 64
    few = torch.eye(n)  # each anchor alike only to itself: 1 positive < int(0.05 n) = 3 -> tau falls
    th = AdaptiveThreshold()
    taus = th.per_anchor(few)
    assert taus[0] == pytest.approx(0.8) and taus[1] == pytest.approx(0.799) and th.value == pytest.approx(0.8 - 0.064)
    for _ in range(10):
        th.per_anchor(few)
    assert th.value >= 0.5 - 1e-9
    many = torch.ones(n, n)  # everything alike: tau rises, up to 0.9
    for _ in range(10):
        th.per_anchor(many)
    assert 0.9 - 1e-9 <= th.value <= 0.9 + 0.001 + 1e-9


def test_gradient_norm_loss_is_zero_for_unit_jacobians():
    J = torch.nn.functional.normalize(torch.randn(5, 3, 4).reshape(5, -1), dim=-1).reshape(5, 3, 4)
    assert float(gradient_norm_loss(J)) == pytest.approx(0.0, abs=1e-10)
    assert float(gradient_norm_loss(2 * J)) == pytest.approx(1.0)
    # a shaping batch without an opaque ray gives zeros, not NaN
    empty = torch.zeros(0, 3, 4)
    assert float(gradient_norm_loss(empty)) == 0.0
    loss, info = mi_gradient_loss(empty, torch.zeros(0, 5), AdaptiveThreshold())
    assert float(loss) == 0.0 and info["anchors"] == 0


def _tiny_scene():
    import numpy as np

    from privnerf.data.scene import Scene

    sem = np.zeros((8, 10), np.int32)
    sem[2:5, 3:6] = 2
    sem[6:, :] = 1
    return Scene(images=[np.zeros((8, 10, 3), np.float32)] * 2, c2w=np.stack([np.eye(4)] * 2),
                 intrinsics=np.array([[10.0, 10.0, 5.0, 4.0]] * 2), near=0.1, far=5.0,
                 aabb=np.array([[-1.0] * 3, [1.0] * 3]), names=["a", "b"], semantics=[sem, sem],
                 meta={"classes": ["background", "ground", "ball"]})


def test_clicks_file_errors_name_the_file_and_the_click(tmp_path):
    import json

    from privnerf.semantics.propagate import clicks_from_labels, read_clicks, write_clicks

    scene = _tiny_scene()
    path = tmp_path / "clicks.json"
    cases = [({"clicks": [{"view": "a", "pixel": [10, 0], "label": "x"}]}, "outside view 0's 10x8"),
             ({"clicks": [{"view": "a", "pixel": [-1, 0], "label": "x"}]}, "outside"),
             ({"clicks": [{"view": "zz", "pixel": [1, 1], "label": "x"}]}, "unknown view 'zz'"),
             ({"clicks": [{"view": 2, "pixel": [1, 1], "label": "x"}]}, "unknown view 2"),
             ({"clicks": [{"view": "a", "pixel": [1, 1], "label": ""}]}, "label must be"),
             ({"clicks": [{"view": "a", "pixel": [1.5, 1], "label": "x"}]}, "integers"),
             ({"clicks": [{"view": "a", "label": "x"}]}, "needs view, pixel and label"),
             ({"clicks": []}, "expected")]
    for doc, what in cases:
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=what) as e:
            read_clicks(path, scene)
        assert str(path) in str(e.value)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        read_clicks(path, scene)
    with pytest.raises(FileNotFoundError, match="no such clicks file"):
        read_clicks(tmp_path / "missing.json", scene)
    # one click per class but void, drawn inside the class; written and read back unchanged
    clicks = clicks_from_labels(scene, view=1, seed=3)
    assert sorted(c.label for c in clicks) == ["ball", "ground"]
    assert all(int(scene.semantics[1][c.v, c.u]) == scene.meta["classes"].index(c.label) for c in clicks)
    write_clicks(clicks, scene, path)
    assert read_clicks(path, scene) == clicks


def test_segmentation_metrics_ignore_void_and_unclicked_classes():
    import numpy as np

    from privnerf.semantics.propagate import segmentation_metrics

    gt = np.array([[0, 1, 1, 2, 3]])
    pred = np.array([[2, 1, 2, 2, 1]])  # void and class 3 (no click) do not count
    m = segmentation_metrics([pred], [gt], classes=[1, 2])
    assert m["pixels"] == 3
    assert m["total_accuracy"] == pytest.approx(2 / 3)
    assert m["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)  # class 1: 1/(2+1-1); class 2: 1/(1+2-1)


def test_shape_and_propagate_from_the_command_line_and_bad_clicks_leave_nothing(tmp_path, capsys):
    """A short built-in run, shaped and propagated through ``privnerf semantics``: label maps, overlays,
    points and metrics are written; a click on an unknown view fails before anything is written."""
    import json

    from privnerf.cli.main import main

    plain, shaped, out = tmp_path / "plain", tmp_path / "shaped", tmp_path / "labels"
    assert main(["train", "--data", "builtin", "--steps", "150", "--output", str(plain), "--eval-max-images", "1"]) == 0
    assert main(["semantics", "shape", "--checkpoint", str(plain), "--output", str(shaped), "--steps", "20",
                 "--jacobian-view", "zero", "--quiet"]) == 0
    info = json.loads((shaped / "shaping.json").read_text())
    assert info["shaping"]["jacobian_view"] == "zero"
    assert info["history"] == [] or info["history"][-1]["shaping_rays"] > 0
    assert (shaped / "checkpoints" / "last.pt").exists() and info["shaping_time_s"] > 0
    clicks = tmp_path / "clicks.json"
    assert main(["semantics", "clicks", "--data", "builtin", "--out", str(clicks)]) == 0
    assert main(["semantics", "propagate", "--checkpoint", str(shaped), "--clicks", str(clicks), "--out", str(out),
                 "--views", "2", "--quiet"]) == 0
    doc = json.loads((out / "propagation.json").read_text())
    assert doc["jacobian_view"] == "zero"  # propagation takes the view the run was shaped with
    assert len(doc["views"]) == 2 and set(doc["labels"]) == {c["label"] for c in json.loads(clicks.read_text())["clicks"]}
    assert 0.0 <= doc["metrics"]["miou"] <= 1.0 and doc["metrics"]["pixels"] > 0
    assert len(list((out / "labels").glob("*.png"))) == 2 and len(list((out / "overlays").glob("*.png"))) == 2
    assert (out / "points.ply").stat().st_size > 0
    dense = tmp_path / "dense.json"  # the dense setting: every labelled pixel of view 0, seeds and an aggregator
    assert main(["semantics", "clicks", "--data", "builtin", "--per-class", "0", "--out", str(dense)]) == 0
    assert main(["semantics", "propagate", "--checkpoint", str(shaped), "--clicks", str(dense), "--out",
                 str(tmp_path / "dense-labels"), "--views", "1", "--aggregate", "--quiet"]) == 0
    ddoc = json.loads((tmp_path / "dense-labels" / "propagation.json").read_text())
    assert ddoc["setting"].startswith("dense") and 0.0 <= ddoc["metrics"]["miou"] <= 1.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"clicks": [{"view": "nope", "pixel": [1, 1], "label": "x"}]}))
    assert main(["semantics", "propagate", "--checkpoint", str(shaped), "--clicks", str(bad), "--out", str(tmp_path / "x")]) != 0
    assert f"{bad}: click 0: unknown view 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_the_response_aggregator_learns_which_class_answers_where():
    from privnerf.semantics.aggregator import DensePropagation, clicks_label_map, train_aggregator
    from privnerf.semantics.propagate import Click

    # class 0 answers on the left half, class 1 on the right, but class 1's responses are 3x weaker: an argmax
    # of raw responses is wrong on the right, the learned aggregator is not
    resp = torch.zeros(2, 2, 6, 6)
    resp[:, 0, :, :3], resp[:, 0, :, 3:] = 0.6, 0.3
    resp[:, 1, :, 3:] = 0.2
    labels = torch.zeros(6, 6, dtype=torch.long)
    labels[:, 3:] = 1
    assert (resp[0].argmax(0) == labels).float().mean() == 0.5
    agg = train_aggregator(resp, labels, steps=300, lr=1e-2)
    assert torch.equal(agg.predict(resp[0]), labels)
    with pytest.raises(ValueError, match="span 2 views"):
        clicks_label_map([Click(0, 1, 1, "a"), Click(1, 1, 1, "b")], ["a", "b"], 4, 4)
    assert clicks_label_map([Click(0, 1, 2, "b")], ["a", "b"], 4, 4)[2, 1] == 1
    with pytest.raises(RuntimeError, match="before fit"):
        DensePropagation(None).predict(None, None, 4, 4)


def test_person_mask_keeps_the_strongest_connected_region_above_the_hysteresis():
    """find-person's mask rule: regions of response >= low that reach high, the one with the largest summed
    response kept; pixels the field renders transparent never count; IoU of masks."""
    from privnerf.semantics.find_person import FindPersonConfig, dilate, mask_iou, person_mask

    r = np.zeros((40, 40), np.float32)
    r[5:15, 5:12] = 0.5
    r[8, 8] = 1.0  # the person: a plateau at 0.5 that peaks above high
    r[25:35, 20:38] = 0.5  # a wider plateau that never reaches high: dropped by the hysteresis
    r[30:32, 2:4] = 0.9  # a small strong blob: reaches high, but sums to less than the person
    op = np.ones_like(r)
    cfg = FindPersonConfig(high=0.6, low=0.3)
    m = person_mask(r, op, cfg)
    truth = np.zeros_like(r, bool)
    truth[5:15, 5:12] = True
    assert mask_iou(m, truth) == 1.0
    op[5:15, 5:12] = 0.0  # transparent there: the person is gone, the small blob is what is left
    m2 = person_mask(r, op, cfg)
    assert m2[30:32, 2:4].all() and m2.sum() == 4
    assert not person_mask(np.zeros_like(r), op, cfg).any()
    # anchored at the click's projection: the region there, the nearest within the radius, or none
    op[:] = 1.0
    assert person_mask(r, op, cfg, (2.5, 31.0), anchored=True).sum() == 4
    assert mask_iou(person_mask(r, op, cfg, (12.0, 16.0), anchored=True), truth) == 1.0  # 2.2 px off the region
    assert not person_mask(r, op, cfg, (39.0, 0.0), anchored=True).any()
    assert not person_mask(r, op, cfg, None, anchored=True).any()  # behind the camera
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) is None
    assert dilate(truth, 1).sum() > truth.sum()


def test_a_point_on_a_pixels_ray_projects_back_to_the_pixel():
    from privnerf.data.cameras import rays_from_pixels
    from privnerf.semantics.find_person import project

    c2w = torch.tensor([[0.0, -0.6, 0.8, 3.0], [1.0, 0.0, 0.0, 0.2], [0.0, 0.8, 0.6, 1.5], [0, 0, 0, 1.0]])
    intr = torch.tensor([50.0, 52.0, 31.5, 20.0])
    o, d, _ = rays_from_pixels(c2w, intr, torch.tensor([7, 40]), torch.tensor([3, 33]))
    for k, (u, v) in enumerate([(7, 3), (40, 33)]):
        uv = project((o[k] + 2.7 * d[k]).numpy(), c2w.numpy(), intr.numpy())
        assert abs(uv[0] - u) < 1e-4 and abs(uv[1] - v) < 1e-4
    assert project((o[0] - 1.0 * d[0]).numpy(), c2w.numpy(), intr.numpy()) is None


def test_pixel_sampler_never_draws_excluded_pixels():
    from privnerf.data.loader import load_scene
    from privnerf.train.rays import PixelSampler

    scene = load_scene("builtin:size=16,n_train=2,n_test=1", split="train")
    ex = [np.zeros(scene.hw(i), bool) for i in range(scene.num_views)]
    ex[0][:, :8] = True
    ex[1][:] = True
    s = PixelSampler(scene, torch.device("cpu"), ex)
    img, u, v = s.locate(s.pool[torch.randint(0, len(s.pool), (4000,))])
    assert (img == 0).all() and (u >= 8).all()
    o, d, rgb = s.sample(512, torch.Generator().manual_seed(0))
    assert rgb.shape == (512, 3)
    with pytest.raises(ValueError, match="every pixel"):
        PixelSampler(scene, torch.device("cpu"), [np.ones(scene.hw(i), bool) for i in range(scene.num_views)])
    with pytest.raises(ValueError, match="mask 0"):
        PixelSampler(scene, torch.device("cpu"), [np.zeros((3, 3), bool)] * scene.num_views)


def test_find_person_from_the_command_line_writes_masks_the_federation_reads(tiny_crowd, tmp_path, capsys):
    """``privnerf semantics find-person`` on one user of a tiny crowd (a few seconds of training): one mask and
    one overlay per photo of that user, in the layout ``--private-masks`` reads; two clicks, or a click on
    another user's photo, fail naming the file before anything is written."""
    import json

    from privnerf.cli.main import main
    from privnerf.fed.local import load_user_scene, user_private_masks

    masks = tmp_path / "masks"
    out = masks / "user-001"
    assert main(["semantics", "find-person", "--data", str(tiny_crowd), "--user", "1", "--simulate-click",
                 "--out", str(out), "--train-time", "4", "--shaping-steps", "10", "--quiet"]) == 0
    scene = load_user_scene(str(tiny_crowd), 1)
    doc = json.loads((out / "find_person.json").read_text())
    assert doc["views"] == list(scene.names) and doc["field_steps"] > 0
    assert doc["iou"] is None or 0.0 <= doc["iou"] <= 1.0
    assert len(list((out / "overlays").glob("*.png"))) == scene.num_views
    read = user_private_masks(scene, 1, str(masks))
    assert [m.shape for m in read] == [tuple(scene.hw(i)) for i in range(scene.num_views)]
    assert any(m.any() for m in read)  # the clicked pixel itself is the person in the click's photo

    clicks = tmp_path / "two.json"
    name = scene.names[0]
    clicks.write_text(json.dumps({"clicks": [{"view": name, "pixel": [1, 1], "label": "me"}] * 2}))
    assert main(["semantics", "find-person", "--data", str(tiny_crowd), "--user", "1", "--clicks", str(clicks),
                 "--out", str(tmp_path / "x")]) != 0
    assert f"{clicks}: find-person takes one click, got 2" in capsys.readouterr().err
    other = next(n for n in load_user_scene(str(tiny_crowd), 0).names if n not in scene.names)
    clicks.write_text(json.dumps({"clicks": [{"view": other, "pixel": [1, 1], "label": "me"}]}))
    assert main(["semantics", "find-person", "--data", str(tiny_crowd), "--user", "1", "--clicks", str(clicks),
                 "--out", str(tmp_path / "x")]) != 0
    assert f"{clicks}: click 0: unknown view" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_the_simulated_click_lands_where_the_person_is_seen_best():
    """A sliver of the person at the first photo's border loses to a whole blob in a later photo; the click is
    the blob's centre."""
    from types import SimpleNamespace

    from privnerf.semantics.find_person import interior_click

    a = np.zeros((20, 20), np.uint8)
    a[17:, 2:18] = 2  # user 1's person, cut by the bottom border
    b = np.zeros((20, 20), np.uint8)
    b[4:11, 6:13] = 2
    c = interior_click(SimpleNamespace(masks=[np.zeros((20, 20), np.uint8), a, b], num_views=3), 1)
    assert (c.view, c.u, c.v) == (2, 9, 7)
    with pytest.raises(ValueError, match="never show"):
        interior_click(SimpleNamespace(masks=[a], num_views=1), 0)


def _two_striped_boxes(n: int, seed: int, size: int = 32):
    """Two boxes on white, each painted in diagonal stripes of two colours (red/green, blue/yellow), seen from
    ``n`` cameras around them; semantics 1 and 2 mark the boxes."""
    from privnerf.data.scene import Scene

    boxes = [(np.array([-0.45, 0.0, 0.0]), 0.25), (np.array([0.45, 0.0, 0.0]), 0.25)]
    colours = [((0.9, 0.1, 0.1), (0.1, 0.8, 0.1)), ((0.1, 0.2, 0.9), (0.95, 0.85, 0.1))]
    rng = np.random.default_rng(seed)
    f = size * 1.1
    jj, ii = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="xy")
    c2ws, images, labels = [], [], []
    for k in range(n):
        az, el = 2 * np.pi * k / n + rng.uniform(-0.1, 0.1), rng.uniform(0.3, 0.9)
        eye = 3.0 * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(right, fwd), -fwd, eye
        d = np.stack([(jj - size / 2) / f, -(ii - size / 2) / f, -np.ones_like(jj)], -1) @ c2w[:3, :3].T
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        near = np.full((size, size), np.inf)
        img, lab = np.ones((size, size, 3)), np.zeros((size, size), np.int32)
        for b, (centre, half) in enumerate(boxes):
            with np.errstate(divide="ignore", invalid="ignore"):
                t1, t2 = (centre - half - eye) / d, (centre + half - eye) / d
            tn, tf = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
            hit = (tn < tf) & (tn > 0) & (tn < near)
            p = eye + tn[..., None] * d
            stripe = (np.floor(p.sum(-1) / 0.12) % 2).astype(bool)[..., None]
            img[hit] = np.where(stripe, colours[b][0], colours[b][1])[hit]
            lab[hit], near[hit] = b + 1, tn[hit]
        c2ws.append(c2w)
        images.append(img.astype(np.float32))
        labels.append(lab)
    return Scene(images=images, c2w=np.array(c2ws), intrinsics=np.tile([f, f, size / 2, size / 2], (n, 1)), near=1.0,
                 far=5.0, aabb=np.array([[-1.0] * 3, [1.0] * 3]), background=(1.0, 1.0, 1.0),
                 names=[f"v{k}" for k in range(n)], semantics=labels, meta={"classes": ["void", "A", "B"]})


def test_two_striped_boxes_propagation_recovers_both_after_shaping_and_not_before():
    """The issue's two-boxes test. Each box has two colours, so before shaping a click on a red stripe resonates
    with red and not with the same box's green; shaping with the AlexNet features (which see each box's
    stripes as one texture) aligns a box's two colours. (With one plain colour per box propagation needs no
    shaping: distinct colours already give distinct Jacobians, docs/semantics.md.)"""
    from scipy.ndimage import distance_transform_edt

    from privnerf.semantics.propagate import Click, label_directions, propagate_view, segmentation_metrics, view_activations
    from privnerf.semantics.shaping import ShapingConfig, ShapingTrainer
    from privnerf.train.config import TrainConfig
    from privnerf.train.trainer import Trainer

    train, test = _two_striped_boxes(24, 0), _two_striped_boxes(8, 1)
    clicks = []
    for cid, name in ((1, "A"), (2, "B")):
        v, u = np.unravel_index(np.argmax(distance_transform_edt(train.semantics[0] == cid)), train.semantics[0].shape)
        clicks.append(Click(0, int(u), int(v), name))

    def miou(trainer):
        _, G = label_directions(trainer, clicks, "zero")
        preds = []
        for i in range(test.num_views):
            a, op = view_activations(trainer, test.c2w[i], test.intrinsics[i], *test.hw(i), view="zero")
            preds.append(np.array([1, 2])[propagate_view(a, op, G)[0].numpy()])
        return segmentation_metrics(preds, test.semantics, [1, 2])["miou"]

    cfg = TrainConfig()
    cfg.steps = 400
    trainer = Trainer(cfg, train)
    while trainer.step_count < cfg.steps:
        trainer.maintenance()
        trainer.step()
    before = miou(trainer)
    ShapingTrainer(trainer, ShapingConfig(steps=200, quiet=True, jacobian_view="zero")).train()
    after = miou(trainer)
    assert before < 0.7, before  # measured 0.35 (0.50 at the rays' view)
    assert after > 0.9, after  # measured 0.99
