"""``privnerf ownership keygen|verify``: white-box ownership signatures (IPR-NeRF; :mod:`privnerf.ownership`).

* ``privnerf ownership keygen --owner NAME --out KEY.json [--bits 64] [--slot K --slots N]
  [--carrier-size 6784]``: a fresh key (a 256-bit secret from the OS); prints its commitment, the SHA-256 of
  the secret, to publish before training. In a federation of N owners each takes its own slot (disjoint
  positions). Train with it: ``privnerf train --ownership.key KEY.json``.
* ``privnerf ownership verify --checkpoint RUN --key KEY.json [--key ...] [--commitment HEX] [--json OUT]``:
  bit accuracy, the chance of that many matching bits without the signature, and a verdict per key (exit 0
  when every key verifies, 1 otherwise). ``--commitment`` also checks the key against the commitment
  published earlier.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

USAGE = ("usage: privnerf ownership keygen --owner NAME --out KEY.json [--bits B] [--slot K --slots N]\n"
         "       privnerf ownership verify --checkpoint RUN --key KEY.json [--key ...] [--commitment HEX] [--json OUT]")


def _keygen(argv: list[str]) -> int:
    from privnerf.ownership.signature import new_key, write_key

    p = argparse.ArgumentParser(prog="privnerf ownership keygen", description="a fresh signature key")
    p.add_argument("--owner", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bits", type=int, default=64, help="bits of the signature (default %(default)s)")
    p.add_argument("--slot", type=int, default=0, help="this owner's slot (federations: 0..N-1)")
    p.add_argument("--slots", type=int, default=1, help="owners sharing the model (default %(default)s)")
    p.add_argument("--carrier-size", type=int, default=6784,
                   help="weights of the colour head (default %(default)s: the grid field's default head)")
    a = p.parse_args(argv)
    if a.out.exists():
        raise FileExistsError(f"{a.out}: exists; a key is never overwritten")
    key = new_key(a.owner, a.bits, a.slot, a.slots, a.carrier_size)
    write_key(key, a.out)
    print(f"key of {a.owner!r} -> {a.out} (keep it secret)\ncommitment (publish it now): {key.commitment}")
    return 0


def _verify(argv: list[str]) -> int:
    from privnerf.ownership.signature import read_key, verify
    from privnerf.train.trainer import trainer_from_checkpoint

    p = argparse.ArgumentParser(prog="privnerf ownership verify", description="check owners' signatures in a run")
    p.add_argument("--checkpoint", required=True, type=Path, help="run directory (holds checkpoints/last.pt)")
    p.add_argument("--key", required=True, type=Path, action="append", help="a key file (repeatable)")
    p.add_argument("--commitment", action="append", default=None,
                   help="the commitment published for each --key, in order (optional)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    keys = [read_key(k) for k in a.key]
    if a.commitment is not None and len(a.commitment) != len(keys):
        raise ValueError(f"{len(a.commitment)} --commitment for {len(keys)} --key")
    field = trainer_from_checkpoint(a.checkpoint).field
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


def run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmds = {"keygen": _keygen, "verify": _verify}
    if argv[0] not in cmds:
        print(USAGE)
        raise ValueError(f"unknown ownership command {argv[0]!r} (keygen, verify)")
    return cmds[argv[0]](argv[1:])
