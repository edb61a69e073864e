"""``privnerf ownership keygen|verify``: white-box ownership signatures (IPR-NeRF; :mod:`privnerf.ownership`).

* ``privnerf ownership keygen --owner NAME --out KEY.json [--bits 64] [--slot K --slots N]
  [--carrier-size 6784]``: a fresh key (a 256-bit secret from the OS); prints its commitment, the SHA-256 of
  the secret, to publish before training. In a federation of N owners each takes its own slot (disjoint
  positions). Train with it: ``privnerf train --ownership.key KEY.json``.
* ``privnerf ownership keygen --federation N --out DIR``: one key per user of an N-user crowd
  (``DIR/user-XXX.json``, slot = user) and ``DIR/commitments.json`` (public); each user keeps its own file on
  its device, and ``privnerf fed run ... --signature-keys DIR`` signs the global field with every user's bits.
* ``privnerf ownership verify --checkpoint RUN --key KEY.json [--key ...] [--commitment HEX] [--json OUT]``:
  bit accuracy, the chance of that many matching bits without the signature, and a verdict per key (exit 0
  when every key verifies, 1 otherwise). ``--commitment`` also checks the key against the commitment
  published earlier. RUN is a run directory or a federated run's (its released ``server/global.pt``).
* ``privnerf ownership watermark --checkpoint RUN --key KEY.json --out RUN2 [--seconds 240]``: the black-box
  watermark (:mod:`privnerf.ownership.watermark`): fine-tunes RUN into the run directory RUN2 with the key's
  48-bit message in its renders, and writes the decoder that reads it to ``KEY.decoder.pt`` (``--decoder``),
  the owner's private verification material beside the key.
* ``privnerf ownership watermark-verify (--images DIR | --checkpoint RUN) --key KEY.json [--views 8] [--json OUT]``:
  reads the message from image files alone, or from RUN's renders of ``--views`` novel cameras around its
  training cameras; prints the bits, their agreement with the message, the chance figure and a verdict (exit 0
  verified, 1 not).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from privnerf.data.errors import SceneError

USAGE = ("usage: privnerf ownership keygen (--owner NAME | --federation N) --out KEY.json|DIR [--bits B] [--slot K --slots N]\n"
         "       privnerf ownership verify --checkpoint RUN --key KEY.json [--key ...] [--commitment HEX] [--json OUT]\n"
         "       privnerf ownership watermark --checkpoint RUN --key KEY.json --out RUN2 [--seconds S] [--decoder PATH]\n"
         "       privnerf ownership watermark-verify (--images DIR | --checkpoint RUN) --key KEY.json [--decoder PATH] "
         "[--views N] [--json OUT]")


def _keygen(argv: list[str]) -> int:
    from privnerf.ownership.signature import new_key, write_key

    p = argparse.ArgumentParser(prog="privnerf ownership keygen", description="fresh signature keys")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--owner", help="one owner's key, written to --out")
    who.add_argument("--federation", type=int, help="one key per user 0..N-1 (slot = user), written into --out/")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bits", type=int, default=64, help="bits of each signature (default %(default)s)")
    p.add_argument("--slot", type=int, default=0, help="this owner's slot (federations: 0..N-1)")
    p.add_argument("--slots", type=int, default=1, help="owners sharing the model (default %(default)s)")
    p.add_argument("--carrier-size", type=int, default=6784,
                   help="weights of the colour head (default %(default)s: the grid field's default head)")
    a = p.parse_args(argv)
    if a.federation is not None and a.federation < 1:
        raise ValueError(f"--federation {a.federation}: a federation has at least one user")
    if a.out.exists() and (a.owner is not None or not a.out.is_dir() or any(a.out.iterdir())):
        raise FileExistsError(f"{a.out}: exists; keys are never overwritten")
    if a.owner is not None:
        key = new_key(a.owner, a.bits, a.slot, a.slots, a.carrier_size)
        write_key(key, a.out)
        print(f"key of {a.owner!r} -> {a.out} (keep it secret)\ncommitment (publish it now): {key.commitment}")
        return 0
    from privnerf.data.io import atomic_directory
    from privnerf.train.checkpoint import atomic_write_text

    keys = [new_key(f"user-{k:03d}", a.bits, k, a.federation, a.carrier_size) for k in range(a.federation)]
    with atomic_directory(a.out) as tmp:
        for k, key in enumerate(keys):
            write_key(key, tmp / f"user-{k:03d}.json")
        atomic_write_text(tmp / "commitments.json", json.dumps(
            {"slots": a.federation, "bits": a.bits, "commitments": {key.owner: key.commitment for key in keys}},
            indent=1) + "\n")
    print(f"{a.federation} keys -> {a.out}/user-XXX.json (give each user its own; never the server) and the "
          f"public {a.out}/commitments.json")
    return 0


def _verify(argv: list[str]) -> int:
    from privnerf.ownership.signature import read_key, read_released_weights, verify

    p = argparse.ArgumentParser(prog="privnerf ownership verify", description="check owners' signatures in a run")
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="a run directory (checkpoints/last.pt), a federated run's (server/global.pt) or the file")
    p.add_argument("--key", required=True, type=Path, action="append", help="a key file (repeatable)")
    p.add_argument("--commitment", action="append", default=None,
                   help="the commitment published for each --key, in order (optional)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    keys = [read_key(k) for k in a.key]
    if a.commitment is not None and len(a.commitment) != len(keys):
        raise ValueError(f"{len(a.commitment)} --commitment for {len(keys)} --key")
    field = read_released_weights(a.checkpoint)
    rows = []
    for i, (path, key) in enumerate(zip(a.key, keys)):
        r = verify(field, key) | {"key": str(path)}
        if a.commitment is not None:
            r["commitment_matches"] = a.commitment[i].lower() == key.commitment
            r["verified"] = r["verified"] and r["commitment_matches"]
        rows.append(r)
        verdict = "VERIFIED" if r["verified"] else "NOT verified"
        extra = "" if a.commitment is None else ("; commitment matches" if r["commitment_matches"]
                                                  else "; commitment DOES NOT match")
        print(f"{key.owner}: {r['matches']}/{r['bits']} bits ({100 * r['bit_accuracy']:.1f} %), chance without the "
              f"signature {r['false_positive_probability']:.2e}{extra} -> {verdict}")
    if a.json is not None:
        from privnerf.train.checkpoint import atomic_write_text

        atomic_write_text(a.json, json.dumps({"checkpoint": str(a.checkpoint), "keys": rows}, indent=1) + "\n")
    return 0 if all(r["verified"] for r in rows) else 1


def _watermark(argv: list[str]) -> int:
    from privnerf.ownership.signature import read_key
    from privnerf.ownership.watermark import WatermarkConfig, decoder_path, embed, save_decoder
    from privnerf.train.trainer import set_threads

    p = argparse.ArgumentParser(prog="privnerf ownership watermark",
                                description="fine-tune a run so that its renders carry the key's message")
    p.add_argument("--checkpoint", required=True, type=Path, help="the trained run directory to watermark")
    p.add_argument("--key", required=True, type=Path, help="the owner's key file (privnerf ownership keygen)")
    p.add_argument("--out", required=True, type=Path, help="the watermarked run directory (new)")
    p.add_argument("--decoder", type=Path, default=None, help="where the decoder goes (default KEY.decoder.pt)")
    p.add_argument("--seconds", type=float, default=240.0, help="fine-tune time (default %(default)s)")
    p.add_argument("--weight", type=float, default=WatermarkConfig.weight, help="starting lambda (default %(default)s)")
    p.add_argument("--target-margin", type=float, default=WatermarkConfig.target_margin,
                   help="the separation lambda adapts to hold (default %(default)s)")
    p.add_argument("--patch", type=int, default=WatermarkConfig.patch,
                   help="side of the rendered patches the decoder learns on (default %(default)s)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    key = read_key(a.key)
    dec_path = a.decoder or decoder_path(a.key)
    for path, what in ((dec_path, "a decoder"), (a.out, "a run")):
        if path.exists():
            raise FileExistsError(f"{path}: exists; {what} is never overwritten (choose another path)")
    set_threads(a.threads)
    cfg = WatermarkConfig(weight=a.weight, target_margin=a.target_margin, patch=a.patch)
    t, decoder, stats = embed(a.checkpoint, key, a.out, a.seconds, cfg, quiet=False, progress_every=30.0)
    save_decoder(decoder, key, dec_path, {"run": str(a.out), "base": str(a.checkpoint), **stats})
    print(f"watermarked run -> {a.out} ({stats['steps']} steps, {stats['train_time_s']:.0f}s)\n"
          f"decoder -> {dec_path} (keep it with the key: it is the verification material)")
    return 0


def _watermark_verify(argv: list[str]) -> int:
    from privnerf.ownership.signature import read_key
    from privnerf.ownership.watermark import (MIN_VIEWS_ADVISED, decoder_path, load_decoder, load_image_dir,
                                              novel_poses, read_images, render_poses)

    p = argparse.ArgumentParser(prog="privnerf ownership watermark-verify",
                                description="read the key's watermark from images or from a run's renders")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="a folder of rendered images (.png/.jpg)")
    src.add_argument("--checkpoint", type=Path, help="a run directory: its renders of --views novel cameras are read")
    p.add_argument("--key", required=True, type=Path)
    p.add_argument("--decoder", type=Path, default=None, help="the key's decoder (default KEY.decoder.pt)")
    p.add_argument("--views", type=int, default=8, help="novel cameras rendered from --checkpoint (default %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = p.parse_args(argv)
    key = read_key(a.key)
    decoder = load_decoder(a.decoder or decoder_path(a.key), key)
    if a.images is not None:
        images, names = load_image_dir(a.images)
        source = str(a.images)
    else:
        import numpy as np

        from privnerf.train.trainer import scene_from_info, trainer_from_checkpoint

        if not (a.checkpoint / "checkpoints" / "last.pt").is_file():
            raise SceneError(a.checkpoint, "no checkpoints/last.pt (is it a privnerf run directory?)")
        t = trainer_from_checkpoint(a.checkpoint)
        scene = scene_from_info(torch.load(a.checkpoint / "checkpoints" / "last.pt", map_location="cpu",
                                           weights_only=False)["scene_info"])
        poses = novel_poses(scene, a.views, np.random.default_rng(12345))
        images = render_poses(t, poses, scene.intrinsics[0], *scene.hw(0))
        names, source = [f"novel-{i}" for i in range(len(images))], str(a.checkpoint)
    r = read_images(decoder, key, images)
    verdict = "VERIFIED" if r["verified"] else "NOT verified"
    print(f"{key.owner}: {r['matches']}/{r['bits']} bits ({100 * r['bit_accuracy']:.1f} %) from {r['views']} images "
          f"(per image {100 * r['per_view_bit_accuracy_mean']:.1f} % on average), agreement {r['agreement']:.2f} "
          f"(bar {r['agreement_bar']}), binomial chance {r['chance_probability']:.1e} -> {verdict}")
    if r["views"] < MIN_VIEWS_ADVISED:
        print(f"note: {r['views']} image(s): a single image is weak evidence (a training photo alone has read "
              f"1.24); verify from {MIN_VIEWS_ADVISED} or more views (docs/ownership.md)")
    if a.json is not None:
        from privnerf.train.checkpoint import atomic_write_text

        atomic_write_text(a.json, json.dumps({"source": source, "images": names, **r}, indent=1) + "\n")
    return 0 if r["verified"] else 1


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmds = {"keygen": _keygen, "verify": _verify, "watermark": _watermark, "watermark-verify": _watermark_verify}
    if argv[0] not in cmds:
        print(USAGE)
        raise ValueError(f"unknown ownership command {argv[0]!r} (keygen, verify, watermark, watermark-verify)")
    return cmds[argv[0]](argv[1:])
