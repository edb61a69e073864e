"""IPR-NeRF signatures through DecentNeRF (issue 29, items 1 and 6): 20 users, each with its own key in its own
slot, on Flower's Simulation Engine with SecAgg+; every user's bit accuracy in the released global field and
what signing cost the global model.

Two runs of the same crowd and budget, kept as they finish in ``benchmarks/results/ipr-fed.json`` (a rerun
skips finished runs; ``--fresh`` starts over): ``plain`` (no keys) and ``signed`` (``--signature-keys``, one
key per user from ``privnerf ownership keygen --federation 20``). The crowd is the ``decentnerf-lego-20``
layout on the built-in scene (20 users, yaw slices, static and transient people): lego 400 takes hours a
round here (docs/notes/benchmarks-decentnerf.md).

Usage (2026-12-07): ``python benchmarks/ipr_fed.py --rounds 4``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import git_commit as commit  # noqa: E402
from engine import machine  # noqa: E402

from privnerf.train.checkpoint import atomic_write_text  # noqa: E402

OUT = ROOT / "outputs" / "bench-ipr-fed"
RESULTS = ROOT / "benchmarks" / "results" / "ipr-fed.json"



def crowd() -> Path:
    from privnerf.data.crowd import generate_crowd, load_crowd_source, preset_variants, write_crowd

    d = OUT / "crowd"
    if not (d / "transforms.json").exists():
        (_, cfg), = preset_variants("decentnerf-lego-20", "builtin")
        write_crowd(generate_crowd(cfg, load_crowd_source(cfg.scene), quiet=True), d)
    return d


def main() -> int:
    from privnerf.fed.config import FedConfig
    from privnerf.fed.run import run_federated, user_ids
    from privnerf.fed.local import load_dataset
    from privnerf.ownership.signature import new_key, read_released_weights, verify, write_key

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-epochs", type=float, default=1.0)
    p.add_argument("--fresh", action="store_true")
    a = p.parse_args()
    doc = {} if a.fresh or not RESULTS.exists() else json.loads(RESULTS.read_text())
    if doc.get("rounds") not in (None, a.rounds):
        raise SystemExit(f"{RESULTS} holds a {doc['rounds']}-round run; pass --fresh to replace it")
    data = crowd()
    users = user_ids(load_dataset(str(data), "train"))
    keys_dir = OUT / "keys"
    keys = [new_key(f"user-{k:03d}", 64, k, len(users), seed=k) for k in users]
    keys_dir.mkdir(parents=True, exist_ok=True)
    for k, key in zip(users, keys):
        write_key(key, keys_dir / f"user-{k:03d}.json")
    doc.update({"rounds": a.rounds, "local_epochs": a.local_epochs, "users": len(users), "machine": machine(),
                "crowd": "decentnerf-lego-20 layout on the built-in scene", "aggregator": "learned",
                "command": "benchmarks/ipr_fed.py " + " ".join(sys.argv[1:])})
    doc.setdefault("runs", {})
    for name in ("plain", "signed"):
        if name in doc["runs"]:
            continue
        out = OUT / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S") / name
        cfg = FedConfig(data=str(data), aggregator="learned", rounds=a.rounds, local_epochs=a.local_epochs,
                        output=out, signature_keys=str(keys_dir) if name == "signed" else None)
        t0 = time.perf_counter()
        res = run_federated(cfg, quiet=True)
        weights = read_released_weights(out)
        per_user = [verify(weights, key) for key in keys]
        doc["runs"][name] = {
            "psnr": res["psnr"], "ssim": res["ssim"], "leakage_psnr": res.get("leakage_psnr"),
            "wall_s": round(time.perf_counter() - t0, 1), "commit": commit(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bit_accuracy_per_user": [r["bit_accuracy"] for r in per_user],
            "min_bit_accuracy": min(r["bit_accuracy"] for r in per_user),
            "users_verified": sum(r["verified"] for r in per_user)}
        atomic_write_text(RESULTS, json.dumps(doc, indent=1, default=str) + "\n")
        print(name, {k: v for k, v in doc["runs"][name].items() if k != "bit_accuracy_per_user"}, flush=True)
    r = doc["runs"]
    doc["fidelity_cost_db"] = r["plain"]["psnr"] - r["signed"]["psnr"]
    doc["targets"] = {"100 % bits for every user": r["signed"]["min_bit_accuracy"] == 1.0,
                      "no user verifies without keys": r["plain"]["users_verified"] == 0}
    atomic_write_text(RESULTS, json.dumps(doc, indent=1, default=str) + "\n")
    print(json.dumps(doc["targets"]), f"fidelity cost {doc['fidelity_cost_db']:.3f} dB", f"-> {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
