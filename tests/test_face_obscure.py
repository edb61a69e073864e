"""Identity-Obscured NeRF, the person's side: the operator σ, the obscured dataset, the attacks' building blocks.

Tests that need the Ethiopian head (``<data>/nerd_ethiopian_head``) skip when the shared data is absent. The head
is obscured once per module with a given face direction (dlib detection on all 66 views takes about a minute;
one test runs the automatic direction on three views only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from privnerf.data.errors import SceneError
from privnerf.face.operators import (
    OPERATORS,
    OperatorSpec,
    apply_operator,
    dequantize,
    margin,
    obscure,
    preview,
    quantize,
    to_gray,
)

HEAD = "nerd_ethiopian_head"
#: centre → camera of DSC_0072 (the most frontal view) in the loaded head's world frame.
FACE_DIR = "-0.767,0.613,0.189"


# ------------------------------------------------------------------------------------------- operators


def test_spec_validation():
    with pytest.raises(ValueError, match="known operators: gradmag, signed"):
        OperatorSpec(name="sobel")
    for bad in ({"levels": 1}, {"levels": 300}, {"blur_sigma": -1.0}, {"clip": 0.0}, {"levels": 2.5}):
        with pytest.raises(ValueError):
            OperatorSpec(**bad)
    with pytest.raises(ValueError, match="at least 3 levels"):
        OperatorSpec("signed", levels=2)
    assert OperatorSpec().levels == 2 and OperatorSpec("signed").levels == 4  # per-operator defaults
    s = OperatorSpec("signed", 1.5, 8, 0.1)
    assert OperatorSpec.from_dict(s.to_dict()) == s and s.channels == 2 and OperatorSpec().channels == 1
    assert OPERATORS == ("gradmag", "signed")


def test_to_gray_bt601():
    rgb = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    np.testing.assert_allclose(to_gray(rgb), [1.0, 0.299, 0.587, 0.114], atol=1e-6)
    t = torch.tensor(rgb.T.reshape(1, 3, 2, 2), requires_grad=True)
    g = to_gray(t, channel_axis=1)
    assert g.shape == (1, 2, 2)
    assert to_gray(t, channel_axis=1, keepdim=True).shape == (1, 1, 2, 2)
    assert to_gray(rgb.reshape(2, 2, 3), keepdim=True).shape == (2, 2, 1)
    g.sum().backward()
    assert t.grad is not None
    np.testing.assert_allclose(to_gray(np.full((2, 2, 3), 255, np.uint8)), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", OPERATORS)
def test_linear_ramp_gives_constant_gradient(name):
    spec = OperatorSpec(name, blur_sigma=2.0, clip=0.05)
    h, w, slope = 48, 64, 0.01
    x = torch.arange(w, dtype=torch.float64)
    img = (0.2 + slope * x).expand(h, w)[None, None]
    out = apply_operator(spec, img)
    assert out.shape == (1, spec.channels, h, w)
    m = margin(spec)
    inner = out[0, :, m:-m, m:-m]
    if name == "gradmag":
        expect = np.sqrt(slope**2 + 1e-8) / spec.clip
        np.testing.assert_allclose(inner.numpy(), expect, rtol=1e-9)
    else:
        np.testing.assert_allclose(inner[0].numpy(), slope / spec.clip, rtol=1e-9)
        np.testing.assert_allclose(inner[1].numpy(), 0.0, atol=1e-12)
    # the same ramp along the rows (+y down) gives gy
    out_y = apply_operator(spec, img.transpose(-1, -2).contiguous())
    if name == "signed":
        np.testing.assert_allclose(out_y[0, 1, m:-m, m:-m].numpy(), slope / spec.clip, rtol=1e-9)


def test_gradmag_rotation_invariant_on_disc():
    from scipy.ndimage import map_coordinates

    n, r0, width = 129, 36.0, 4.0
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    r = np.hypot(xx - 64, yy - 64)
    img = 0.5 + 0.4 * np.tanh((r0 - r) / width)
    spec = OperatorSpec("gradmag", blur_sigma=1.5, clip=0.05)
    g = apply_operator(spec, torch.from_numpy(img)[None, None])[0, 0].numpy()
    ang = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    vals = map_coordinates(g, [64 + r0 * np.sin(ang), 64 + r0 * np.cos(ang)], order=1)
    assert vals.mean() > 0.5
    assert vals.std() / vals.mean() < 0.03  # same magnitude in every direction (central differences: ~1 %)


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("levels", [16, 7, 256])
def test_quantize_round_trip(name, levels):
    spec = OperatorSpec(name, levels=levels)
    rng = np.random.default_rng(0)
    if name == "gradmag":
        x, step = rng.uniform(0.0, 1.0, 5000), 1.0 / (levels - 1)
    else:
        h = levels // 2
        x, step = rng.uniform(-1.0, (levels - 1 - h) / h, 5000), 1.0 / h
    codes = quantize(spec, x)
    assert codes.dtype == np.uint8 and codes.max() < levels
    back = dequantize(spec, codes)
    assert np.abs(back - x).max() <= step / 2 + 1e-6  # within half a level (one level, with margin)
    assert dequantize(spec, quantize(spec, np.zeros(3)))[0] == 0.0  # zero (flat / background) is exact
    # torch in → torch out; saturation beyond the range
    t = quantize(spec, torch.tensor([-5.0, 5.0]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8
    assert int(t.max()) == levels - 1
    if levels < 256:
        with pytest.raises(ValueError, match="out of range"):
            dequantize(spec, np.array([levels], np.uint8))


@pytest.mark.parametrize("name", OPERATORS)
def test_apply_operator_differentiable(name):
    spec = OperatorSpec(name, blur_sigma=1.0, clip=0.05)
    torch.manual_seed(0)
    x = torch.rand(2, 1, 9, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_operator(spec, t), (x,), eps=1e-6, atol=1e-5)
    target = dequantize(spec, quantize(spec, apply_operator(spec, torch.rand(2, 1, 9, 10, dtype=torch.float64))))
    loss = (apply_operator(spec, x) - target.to(x.dtype)).abs().mean()
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # a flat patch (the black background) still has finite gradients (eps under the square root)
    flat = torch.zeros(1, 1, 8, 8, requires_grad=True)
    apply_operator(spec, flat).sum().backward()
    assert torch.isfinite(flat.grad).all()
    with pytest.raises(ValueError):
        apply_operator(spec, torch.rand(1, 3, 8, 8))


def test_obscure_and_preview_shapes():
    img = np.random.default_rng(1).random((20, 30, 3)).astype(np.float32)
    for name in OPERATORS:
        spec = OperatorSpec(name)
        c = obscure(spec, img)
        assert c.shape == (spec.channels, 20, 30) and c.dtype == np.uint8
        p = preview(spec, c)
        assert p.dtype == np.uint8 and p.shape == ((20, 30) if name == "gradmag" else (20, 30, 3))


# -------------------------------------------------------------------------------------------- attacks


def test_poisson_recovers_signed_gradient():
    from privnerf.face.operators import _blur
    from privnerf.privacy.face_attacks import codes_to_gradients, poisson_reconstruct

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:70, 0:90].astype(np.float64)
    img = 0.5 + 0.25 * np.sin(xx / 6.0) * np.cos(yy / 9.0) + 0.2 * rng.random((70, 90))
    spec = OperatorSpec("signed", blur_sigma=2.0, clip=1.0)
    t = torch.from_numpy(img)[None, None]
    g = apply_operator(spec, t)[0].numpy() * spec.clip
    rec = poisson_reconstruct(g[0], g[1])
    ref = _blur(spec, t)[0, 0].numpy()  # σ sees the blurred image
    err = (rec - rec.mean()) - (ref - ref.mean())
    psnr = -10 * np.log10(np.mean(err**2))
    assert psnr > 40, psnr
    # the raw (unblurred) image is recovered too when σ does not blur
    spec0 = OperatorSpec("signed", blur_sigma=0.0, clip=1.0)
    g0 = apply_operator(spec0, t)[0].numpy()
    rec0 = poisson_reconstruct(g0[0], g0[1])
    err0 = (rec0 - rec0.mean()) - (img - img.mean())
    assert -10 * np.log10(np.mean(err0**2)) > 40
    with pytest.raises(ValueError, match="no Poisson inverse"):
        codes_to_gradients(OperatorSpec("gradmag"), np.zeros((1, 4, 4), np.uint8))


def test_masked_metrics_match_full_image_metrics():
    from privnerf.eval.metrics import psnr, ssim
    from privnerf.privacy.face_attacks import calibrate, constant_grey, masked_psnr, masked_ssim

    rng = np.random.default_rng(2)
    a, b = rng.random((40, 50)), rng.random((40, 50))
    full = np.ones((40, 50), bool)
    assert masked_psnr(a, b, full) == pytest.approx(psnr(a, b), abs=1e-9)
    assert masked_ssim(a, b, full) == pytest.approx(ssim(a, b), abs=1e-9)
    m = np.zeros((40, 50), bool)
    m[10:30, 10:40] = True
    c = constant_grey(b, m)
    assert np.allclose(c[m], b[m].mean()) and np.all(c[~m] == 0)
    cal = calibrate(2 * b + 3, b, m)
    assert np.allclose(cal[m], b[m])


def test_models_found_without_importing_package():
    import sys

    from privnerf.privacy.face_attacks import models_dir, verification

    d = models_dir()
    for f in ("mmod_human_face_detector.dat", "shape_predictor_5_face_landmarks.dat",
              "shape_predictor_68_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat"):
        assert (d / f).is_file()
    assert "face_recognition_models" not in sys.modules
    e = np.zeros(128)
    v = verification([e + 0.01], [e, e + 1.0])
    assert v["verified"] and v["min_distance"] == pytest.approx(0.01 * np.sqrt(128))
    assert not verification([e + 1.0], [e])["verified"]
    assert verification([], [e]) == {"min_distance": None, "verified": False, "threshold": 0.6, "n_probe": 0,
                                     "n_subject": 1}


def test_learned_inverse_tiny(tmp_path):
    from privnerf.privacy.face_attacks import invert, load_inverse, save_inverse, train_inverse

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = [rng.random((40, 56, 3)).astype(np.float32), rng.random((80, 60, 3)).astype(np.float32)]
    for name in OPERATORS:
        spec = OperatorSpec(name)
        model = train_inverse(spec, images, steps=3, seed=0, batch=2, crop_range=(32, 48), quiet=True)
        codes = obscure(spec, images[0])
        out = invert(model, codes)
        assert out.shape == (40, 56) and np.all((out >= 0) & (out <= 1))
        p = save_inverse(model, tmp_path / f"{name}.pt")
        np.testing.assert_allclose(invert(load_inverse(p), codes), out, atol=1e-6)
    rgb = train_inverse(OperatorSpec(), images, steps=1, batch=1, crop_range=(32, 32), rgb=True, quiet=True)
    assert invert(rgb, obscure(OperatorSpec(), images[1])).shape == (80, 60, 3)


# ------------------------------------------------------------------------------------ head (shared data)


@pytest.fixture(scope="module")
def head_root(shared_data) -> Path:
    root = shared_data / HEAD
    if not (root / "poses_bounds.npy").is_file():
        pytest.skip(f"{root} not found (shared data without the Ethiopian head)")
    return root


@pytest.fixture(scope="module")
def obscured_dir(head_root, tmp_path_factory) -> Path:
    from privnerf.cli.main import main

    out = tmp_path_factory.mktemp("obscured") / "head-signed"
    rc = main(["face", "obscure", "--data", str(head_root), "--out", str(out), "--operator", "signed",
               f"--face-direction={FACE_DIR}", "--quiet"])
    assert rc == 0
    return out


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def _block_hashes(plane: np.ndarray, stride: int) -> np.ndarray:
    """64-bit polynomial hashes of the 8x8 windows of a uint8 plane (every ``stride``-th position)."""
    a = np.uint64(0x9E3779B97F4A7C15)
    b = np.uint64(0xC2B2AE3D27D4EB4F)
    p = plane.astype(np.uint64)
    h, w = p.shape
    with np.errstate(over="ignore"):
        row = np.zeros((h, w - 7), np.uint64)
        for j in range(8):
            row = row * a + p[:, j : j + w - 7]
        out = np.zeros((h - 7, w - 7), np.uint64)
        for i in range(8):
            out = out * b + row[i : i + h - 7]
    return out[::stride, ::stride]


def _raw_blocks(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hashes and blocks of the aligned 8x8 blocks of ``plane`` that hold at least 8 distinct values."""
    h, w = (plane.shape[0] // 8) * 8, (plane.shape[1] // 8) * 8
    blocks = plane[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 64)
    srt = np.sort(blocks, axis=1)
    distinct = 1 + (np.diff(srt.astype(np.int16), axis=1) != 0).sum(1)
    keep = distinct >= 8
    hashes = _block_hashes(plane, 8)[: h // 8, : w // 8].reshape(-1)
    return hashes[keep], blocks[keep]


def _decoded_planes(path: Path) -> list[np.ndarray]:
    if path.suffix == ".png":
        arr = np.asarray(Image.open(path))
        arrs = [arr]
    elif path.suffix == ".npz":
        with np.load(path) as z:
            arrs = [np.asarray(z[k]) for k in z.files]
    else:
        return []
    planes = []
    for a in arrs:
        assert a.dtype == np.uint8, (path, a.dtype)
        if a.ndim == 2:
            planes.append(a)
        elif a.ndim == 3 and a.shape[-1] in (3, 4):
            planes.extend(a[..., k] for k in range(a.shape[-1]))
        else:
            planes.extend(a.reshape(-1, *a.shape[-2:]))
    return planes


def _json_numbers(obj, lists: list) -> int:
    if isinstance(obj, dict):
        return sum(_json_numbers(v, lists) for v in obj.values())
    if isinstance(obj, list):
        lists.append(len(obj))
        return sum(_json_numbers(v, lists) for v in obj)
    return int(isinstance(obj, (int, float)) and not isinstance(obj, bool))


def test_obscure_writes_no_raw_sensitive_pixel(obscured_dir, head_root):
    from privnerf.data.io import to_uint8_image
    from privnerf.face.head import load_head

    doc = json.loads((obscured_dir / "obscured.json").read_text())
    sens = [f for f in doc["frames"] if f["kind"] == "sensitive"]
    assert doc["counts"] == {"neutral": 39, "sensitive": 27} and len(sens) == 27
    assert {f["name"] for f in sens} >= {"DSC_0007", "DSC_0071", "DSC_0072", "DSC_0073"}
    scene = load_head(head_root)
    stems = [Path(n).stem for n in scene.names]
    files = sorted(p for p in obscured_dir.rglob("*") if p.is_file())
    file_bytes = {p: p.read_bytes() for p in files}

    raw_h, raw_b, raw_frames = [], [], set()
    for f in sens:
        jpg = head_root / "images_8" / f"{f['name']}.jpg"
        raw = np.asarray(Image.open(jpg).convert("RGB"))
        comp = to_uint8_image(scene.images[stems.index(f["name"])])
        grey = np.clip(np.rint(to_gray(raw) * 255), 0, 255).astype(np.uint8)
        raw_frames.update(hashlib.sha256(np.ascontiguousarray(fr[..., k]).tobytes()).digest()
                          for fr in (raw, comp) for k in range(3))
        assert all(jpg.read_bytes() != b for b in file_bytes.values())  # no copy of the photo file
        for plane in [raw[..., k] for k in range(3)] + [comp[..., k] for k in range(3)] + [grey]:
            h, b = _raw_blocks(plane)
            raw_h.append(h)
            raw_b.append(b)
    raw_h, raw_b = np.concatenate(raw_h), np.concatenate(raw_b)
    order = np.argsort(raw_h)
    raw_h, raw_b = raw_h[order], raw_b[order]
    assert len(raw_h) > 10000  # the faces hold plenty of informative blocks

    n_planes = 0
    for p in files:
        if p.suffix == ".json":
            continue
        assert p.suffix in (".png", ".npz"), p
        for plane in _decoded_planes(p):
            n_planes += 1
            # no decoded plane equal to a channel of a raw frame
            assert hashlib.sha256(np.ascontiguousarray(plane).tobytes()).digest() not in raw_frames, p
            grid = _block_hashes(plane, 1)
            flat = grid.reshape(-1)
            pos = np.minimum(np.searchsorted(raw_h, flat), len(raw_h) - 1)
            for idx in np.flatnonzero(raw_h[pos] == flat):  # exact check of the hash hits
                y, x = divmod(int(idx), grid.shape[1])
                blk = plane[y : y + 8, x : x + 8].reshape(-1)
                i0, i1 = np.searchsorted(raw_h, flat[idx]), np.searchsorted(raw_h, flat[idx], side="right")
                assert not any(np.array_equal(blk, raw_b[k]) for k in range(i0, i1)), (p, y, x)
    assert n_planes > 66

    lists: list[int] = []
    n_numbers = _json_numbers(doc, lists)
    assert max(lists) <= 66 and n_numbers < 66 * 40  # camera data only: no array of pixel values
    assert all(n <= 16 for n in lists if n != len(doc["frames"]))


def test_load_obscured_round_trip(obscured_dir):
    from privnerf.face.obscure import SensitiveView, load_obscured

    d = load_obscured(obscured_dir)
    assert d.spec == OperatorSpec("signed")
    assert d.neutral.num_views == 39 and len(d.sensitive) == 27
    assert d.neutral.scene_type == "bounded" and d.neutral.background == (0.0, 0.0, 0.0)
    assert d.neutral.masks is not None and d.neutral.images[0].shape == (500, 500, 3)
    v = d.sensitive[0]
    assert isinstance(v, SensitiveView)
    c2w, intr, codes, mask, name = v
    assert c2w.shape == (4, 4) and intr.shape == (4,) and codes.shape == (2, 500, 500) and codes.dtype == np.uint8
    assert mask.shape == (500, 500) and mask.dtype == np.uint8 and name.startswith("DSC_")
    assert d.spec.levels == 4 and codes.max() < 4 and len(np.unique(codes)) >= 3  # both signs and zero
    assert d.meta["format"] == "privnerf-obscured" and len(d.meta["frames"]) == 66
    box = np.asarray(d.meta["aabb"])
    assert np.all(box[1] - box[0] < 1.0) and d.neutral.near < d.neutral.far
    # the dequantised codes are on apply_operator's scale
    assert np.abs(dequantize(d.spec, codes)).max() <= 1.0


def test_load_obscured_errors(obscured_dir, tmp_path):
    from privnerf.face.obscure import load_obscured

    with pytest.raises(SceneError, match="obscured.json"):
        load_obscured(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(obscured_dir, bad)
    doc = json.loads((bad / "obscured.json").read_text())
    sens = next(f for f in doc["frames"] if f["kind"] == "sensitive")
    (bad / sens["file"]).unlink()
    with pytest.raises(SceneError, match=sens["name"] + ".npz"):
        load_obscured(bad)
    for f in doc["frames"]:
        f["kind"] = "sensitive"
        f["file"] = f"sensitive/{f['name']}.npz"
    (bad / "obscured.json").write_text(json.dumps(doc))
    with pytest.raises(SceneError, match="no neutral view"):
        load_obscured(bad)
    (bad / "obscured.json").write_text("{ not json")
    with pytest.raises(SceneError, match="obscured.json.*malformed"):
        load_obscured(bad)


def test_load_head_bounded_with_visual_hull(head_root):
    from privnerf.face.head import load_head, project

    s = load_head(head_root)
    assert s.scene_type == "bounded" and s.background == (0.0, 0.0, 0.0) and s.num_views == 66
    assert s.masks is not None
    i = 5
    m = s.masks[i]
    assert np.all(s.images[i][m == 0] == 0)  # composited on black
    ext = s.aabb[1] - s.aabb[0]
    loose = np.asarray(s.meta["loader_aabb"])
    assert np.all(ext < 0.5 * (loose[1] - loose[0]))
    # every view's silhouette lies inside the projection of the box
    corners = np.array([[x, y, z] for x in s.aabb[:, 0] for y in s.aabb[:, 1] for z in s.aabb[:, 2]])
    for i in range(0, 66, 13):
        u, v, d = project(corners, s.c2w[i], s.intrinsics[i])
        ys, xs = np.nonzero(s.masks[i] >= 128)
        assert np.all(d > 0)
        assert u.min() <= xs.min() and u.max() >= xs.max() + 1 and v.min() <= ys.min() and v.max() >= ys.max() + 1


def test_auto_face_direction_three_views(head_root):
    from privnerf.face.head import load_head
    from privnerf.face.obscure import auto_face_direction, scene_up, yaw_degrees

    torch.set_num_threads(1)
    s = load_head(head_root)
    idx = [s.names.index(f"images_8/{n}.jpg") for n in ("DSC_0071", "DSC_0072", "DSC_0073")]
    sub = s.subset(idx)
    centre = s.aabb.mean(0)
    fdir, found = auto_face_direction(sub, centre, quiet=True)
    assert found and {f["method"] for f in found} <= {"cnn", "hog"}
    yaw = yaw_degrees(fdir, s.c2w[idx, :3, 3], centre, scene_up(s.c2w))
    assert yaw.max() < 20


def _run_cli(args, capsys) -> tuple[int, str]:
    from privnerf.cli.main import main

    rc = main(["face", "obscure", *args, "--quiet"])
    return rc, capsys.readouterr().err


def _link_copy(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir()
    for n in names:
        os.symlink(src / n, dst / n)
    return dst


def test_obscure_errors_leave_nothing(head_root, tmp_path, capsys):
    out = tmp_path / "out"

    no_masks = _link_copy(head_root, tmp_path / "no_masks", ["images_8", "poses_bounds.npy"])
    rc, err = _run_cli(["--data", str(no_masks), "--out", str(out), f"--face-direction={FACE_DIR}"], capsys)
    assert rc == 2 and "masks_8" in err and str(no_masks) in err and err.count("error:") == 1

    no_poses = _link_copy(head_root, tmp_path / "no_poses", ["images_8", "masks_8"])
    rc, err = _run_cli(["--data", str(no_poses), "--out", str(out), f"--face-direction={FACE_DIR}"], capsys)
    assert rc == 2 and "poses_bounds.npy" in err and str(no_poses) in err

    rc, err = _run_cli(["--data", str(head_root), "--out", str(out), "--operator", "sobel"], capsys)
    assert rc == 2 and "unknown operator 'sobel'" in err and "gradmag, signed" in err

    rc, err = _run_cli(["--data", str(head_root), "--out", str(out), "--face-direction", "1,2"], capsys)
    assert rc == 2 and "--face-direction" in err

    rc, err = _run_cli(["--data", str(head_root), "--out", str(out), f"--face-direction={FACE_DIR}",
                        "--neutral-angle", "180"], capsys)
    assert rc == 2 and "no neutral view" in err

    assert not out.exists() and _leftovers(tmp_path, "out") == []

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, err = _run_cli(["--data", str(head_root), "--out", str(out), f"--face-direction={FACE_DIR}"], capsys)
    assert rc == 2 and "not empty" in err
    rc, err = _run_cli(["--data", str(head_root), "--out", str(out), f"--face-direction={FACE_DIR}",
                        "--overwrite"], capsys)
    assert rc == 2 and "no obscured.json" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and _leftovers(tmp_path, "out") == []


def test_face_cli_dispatch(capsys):
    from privnerf.cli.face import run

    assert run(["--help"]) == 0 and "obscure" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown face command"):
        run(["nope"])
