"""The black-box watermark (IPR-NeRF's black-box half): the message from a key, the attack layer, a decoder that
learns a planted message, the embedding fine-tune through the trainer and the command line's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from privnerf.data.errors import SceneError
from privnerf.ownership.signature import new_key, write_key
from privnerf.ownership.watermark import (MIN_AGREEMENT, Attack, WatermarkDecoder, center_crop, jpeg, load_decoder,
                                          load_image_dir, message_bits, read_images, resize, save_decoder)


def test_the_message_is_derived_from_the_secret_alone_and_apart_from_the_signature_bits():
    a, b = new_key("alice", seed=1), new_key("alice", seed=2)  # same name, other secret
    ma = message_bits(a)
    assert ma.shape == (48,) and set(ma.tolist()) == {0.0, 1.0}
    assert torch.equal(ma, message_bits(new_key("alice", seed=1)))
    assert not torch.equal(ma, message_bits(b))
    assert 10 < int((ma != message_bits(b)).sum()) < 38  # unrelated keys differ in about half the bits


def test_jpeg_changes_the_pixels_but_passes_the_gradient_straight_through():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = jpeg(x, 50)
    assert float((y - x).detach().abs().mean()) > 0.02  # noise images lose a lot at quality 50
    (y * torch.arange(32.0)).sum().backward()
    assert torch.allclose(x.grad, torch.arange(32.0).expand(2, 3, 32, 32))
    smooth = F.interpolate(torch.rand(1, 3, 4, 4), size=(32, 32), mode="bilinear", align_corners=False)
    assert float((jpeg(smooth, 95) - smooth).abs().mean()) < 0.02  # smooth images pass nearly unchanged
    assert resize(x, 0.5).shape == x.shape and center_crop(x, 0.25).shape == (2, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    sizes = {tuple(Attack()(x[:1], g).shape[-2:]) for _ in range(40)}
    assert (32, 32) in sizes and len(sizes) > 1  # crops shrink some images, the other attacks keep the size


def _scenes(n: int, g: torch.Generator) -> torch.Tensor:
    """``(n, 3, 48, 48)`` smooth random images (upsampled noise), the stand-in for renders."""
    return F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(48, 48), mode="bilinear", align_corners=False)


def test_a_decoder_learns_a_planted_message_and_reads_it_through_jpeg_while_clean_images_read_near_zero():
    """The decoder's half of the joint training, with the field's half replaced by a fixed planted texture
    (diagonal stripes of amplitude 0.06: the decoder pools over space, so what it can learn is a texture or a
    colour cast, not a pattern at one place): 120 steps read the message through JPEG 75; clean images of the
    same kind read with agreement near zero once calibrated, far under the bar."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    key = new_key("owner", seed=7)
    m = message_bits(key)
    xx = torch.arange(48.0)
    pattern = 0.06 * torch.sin(2 * torch.pi * (xx[None, :] + xx[:, None]) / 8).expand(1, 3, 48, 48)
    dec = WatermarkDecoder(width=16, patch=48)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    targets = torch.cat([m.expand(4, -1), torch.full((4, 48), 0.5)])
    for _ in range(120):
        clean = _scenes(8, g)
        logits = dec(torch.cat([(clean[:4] + pattern).clamp(0, 1), clean[4:]]))
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        dec.null.copy_(dec(_scenes(32, g)).mean(0))
    clean = _scenes(6, torch.Generator().manual_seed(99))
    marked = [jpeg((c[None] + pattern).clamp(0, 1), 75)[0] for c in clean]
    r = read_images(dec, key, marked)
    assert r["bit_accuracy"] == 1.0 and r["agreement"] > 5 * MIN_AGREEMENT and r["verified"]
    n = read_images(dec, key, list(clean))
    assert abs(n["agreement"]) < MIN_AGREEMENT / 2 and not n["verified"]
    other = read_images(dec, new_key("stranger", seed=8), marked)  # the right images, another owner's message
    assert not other["verified"]


def test_decoder_files_round_trip_and_refuse_another_key(tmp_path):
    key, other = new_key("a", seed=1), new_key("b", seed=2)
    dec = WatermarkDecoder(width=8, patch=32)
    dec.null.fill_(0.25)
    path = save_decoder(dec, key, tmp_path / "a.decoder.pt")
    back = load_decoder(path, key)
    x = torch.rand(1, 3, 40, 40)
    assert torch.allclose(back.read(x), dec.read(x)) and (path.stat().st_mode & 0o777) == 0o600
    with pytest.raises(SceneError, match="trained for another key"):
        load_decoder(path, other)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SceneError, match="not a watermark decoder"):
        load_decoder(tmp_path / "junk.pt")
    with pytest.raises(SceneError, match="no .png"):
        load_image_dir(tmp_path)


def test_watermark_cli_embeds_a_run_and_refuses_bad_input(tmp_path, capsys):
    """``privnerf ownership watermark`` on a tiny built-in run writes a run directory ``privnerf eval`` reads and
    the decoder beside the key; ``watermark-verify`` reads renders and images, and names the file on bad input.
    (A few seconds of embedding: a smoke test of the pipeline; the lego benchmark measures the watermark.)"""
    from privnerf.cli.main import main

    key_path = write_key(new_key("alice", seed=3), tmp_path / "alice.json")
    run = tmp_path / "run"
    assert main(["train", "--data", "builtin:size=48,n_train=6,n_val=1,n_test=1", "--steps", "60", "--output", str(run),
                 "--eval-max-images", "1", "--field.grid.num-voxels", "32768"]) == 0
    assert main(["ownership", "watermark-verify", "--checkpoint", str(run), "--key", str(key_path)]) == 2
    assert f"{tmp_path / 'alice.decoder.pt'}: no watermark decoder here" in capsys.readouterr().err
    marked = tmp_path / "marked"
    assert main(["ownership", "watermark", "--checkpoint", str(run), "--key", str(key_path), "--out", str(marked),
                 "--seconds", "3", "--patch", "32"]) == 0
    assert (tmp_path / "alice.decoder.pt").is_file() and (marked / "checkpoints" / "last.pt").is_file()
    assert main(["ownership", "watermark", "--checkpoint", str(run), "--key", str(key_path), "--out",
                 str(tmp_path / "again"), "--seconds", "3"]) == 2  # the decoder is never overwritten
    assert "never overwritten" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(marked), "--max-images", "1"]) == 0
    capsys.readouterr()
    rc = main(["ownership", "watermark-verify", "--checkpoint", str(marked), "--key", str(key_path), "--views", "2",
               "--json", str(tmp_path / "v.json")])
    assert rc in (0, 1) and json.loads((tmp_path / "v.json").read_text())["views"] == 2
    assert "alice:" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ownership", "watermark-verify", "--images", str(empty), "--key", str(key_path)]) == 2
    assert f"{empty}: no .png/.jpg images" in capsys.readouterr().err
    (empty / "broken.png").write_bytes(b"not a png")
    assert main(["ownership", "watermark-verify", "--images", str(empty), "--key", str(key_path)]) == 2
    assert f"{empty / 'broken.png'}: unreadable" in capsys.readouterr().err
    assert main(["ownership", "watermark-verify", "--checkpoint", str(tmp_path), "--key", str(key_path)]) == 2
    assert "is it a privnerf run directory" in capsys.readouterr().err
    other = write_key(new_key("bob", seed=4), tmp_path / "bob.json")
    assert main(["ownership", "watermark-verify", "--checkpoint", str(marked), "--key", str(other), "--decoder",
                 str(tmp_path / "alice.decoder.pt")]) == 2
    assert "trained for another key" in capsys.readouterr().err
    assert np.isfinite(json.loads((tmp_path / "v.json").read_text())["agreement"])
