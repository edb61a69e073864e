"""IPR-NeRF white-box signatures on lego 400 (issue 29, items 1-3 and 6): what a signature costs and what
removes it.

One process, stages in order, each result kept as it arrives in ``benchmarks/results/ipr-lego.json`` (a rerun
skips finished stages; ``--fresh`` starts over):

* ``plain`` and ``signed``: the grid field trained ``--seconds`` on lego 400 (white background, the engine
  benchmark's settings), without and with the owner's 64-bit signature (``--ownership.key``), same seed;
  test PSNR on ``--eval-views`` views. Fidelity cost = plain - signed.
* attacks on the signed run (each from its checkpoint, the attacker with full white-box access):
  ``finetune-10`` / ``finetune-50``: training on the training photos without the sign loss for 10 % / 50 % of
  the budget, learning rates restarted (the stronger attack; the run's own tail rate barely moves weights);
  ``prune-mlp-P``: the P % smallest-magnitude weights of the colour head zeroed; ``prune-grid-P``: the P %
  smallest-magnitude voxels of both grids zeroed; ``overwrite``: the attacker trains 50 % of the budget with
  its own key (another random secret) embedded; ``flip-P``: P % of the owner's signed weights negated (the
  ambiguity attack of DeepIPR: what forging the signs costs the model); ``forge``: 100,000 random keys tried
  against the model (best accuracy, how many verify); ``regrid``: both grids resampled to half and back.
  Each: the owner's bit accuracy and verdict, test PSNR (fine-tunes and overwrite: ``--eval-views`` views;
  the rest: the first 8).

``--equal-steps N`` also trains the plain / signed pair for N steps each (no time limit), the fidelity cost
without the machine's speed in it (the target uses it when present).

Usage (2026-12-07): ``python benchmarks/ipr.py --seconds 600 [--equal-steps 7000]`` (about 40 minutes on 2
cores, and 25 more for the equal-steps pair).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import DATA, grid_config, machine  # noqa: E402
from engine import git_commit as commit  # noqa: E402

from privnerf.train.checkpoint import atomic_write_text  # noqa: E402

OUT = ROOT / "outputs" / "bench-ipr"
RESULTS = ROOT / "benchmarks" / "results" / "ipr-lego.json"
LEGO = DATA / "nerf_synthetic" / "lego"



def save(doc: dict) -> None:
    atomic_write_text(RESULTS, json.dumps(doc, indent=1, default=str) + "\n")


def open_results(path: Path, fresh: bool, seconds: float) -> dict:
    """The stage document kept at ``path`` (empty when ``fresh`` or absent); exits when lego 400 is not here or
    the document holds a run of another ``seconds``."""
    if not LEGO.exists():
        raise SystemExit(f"{LEGO}: lego 400 is not here (set PRIVNERF_DATA or put ../shared/data beside the repo)")
    doc = {} if fresh or not path.exists() else json.loads(path.read_text())
    if doc.get("seconds") not in (None, seconds):
        raise SystemExit(f"{path} holds a {doc['seconds']} s run; pass --fresh to replace it")
    return doc


def evaluate(trainer, scene, views: int) -> float:
    from privnerf.eval.evaluate import evaluate_split

    r = evaluate_split(trainer.field, trainer.occ, trainer.settings(inference=True), scene, max_images=views,
                       with_lpips=False, quiet=True)
    return float(r["psnr"])


def load(run: Path):
    from privnerf.train.trainer import trainer_from_checkpoint

    return trainer_from_checkpoint(run)


def finetune(run: Path, train_scene, seconds: float, key=None):
    """The signed run trained ``seconds`` more on the training photos, learning rates restarted; with ``key`` (an
    overwriting attacker's) that key's sign loss is on."""
    from privnerf.ownership.signature import SignLoss
    from privnerf.train.config import config_from_dict
    from privnerf.train.trainer import Trainer

    st = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    cfg = config_from_dict(st["config"])
    cfg.ownership.key = None  # the attacker trains without the owner's term
    cfg.max_time, cfg.steps = seconds, 10**9
    t = Trainer(cfg, train_scene)
    t.load_state(st, with_optim=False)
    t._build_optimizers()
    t.step_count, t.train_time, t.timeline = 0, 0.0, []
    if key is not None:
        t.sign_loss = SignLoss([key], t.field, cfg.ownership.margin, cfg.ownership.weight)
    t.train(quiet=True)
    return t


def prune(field, share: float, what: str) -> None:
    """Zero the ``share`` smallest-magnitude entries of the colour head's weights (``mlp``) or of the grids'
    voxels (``grid``: by the voxel's largest channel magnitude, both grids together)."""
    with torch.no_grad():
        if what == "mlp":
            from privnerf.ownership.signature import carrier_tensors

            ts = carrier_tensors(field)
            allv = torch.cat([t.abs().reshape(-1) for t in ts])
            k = int(share * allv.numel())
            if k == 0:
                return
            thr = allv.kthvalue(k).values
            for t in ts:
                t[t.abs() <= thr] = 0.0
        else:
            d, f = field.density_grid.data, field.feature_grid.data
            mag = torch.maximum(d.abs().amax(-1), f.abs().amax(-1))
            k = int(share * mag.numel())
            if k == 0:
                return
            thr = mag.reshape(-1).kthvalue(k).values
            gone = mag <= thr
            d[gone] = 0.0
            f[gone] = 0.0


def verdict_of(field, key) -> dict:
    from privnerf.ownership.signature import verify

    v = verify(field, key)
    return {"owner_bit_accuracy": v["bit_accuracy"], "owner_verified": v["verified"],
            "owner_false_positive_probability": v["false_positive_probability"]}


def flip(field, positions: np.ndarray) -> None:
    """Negate the carrier entries at ``positions`` (flattened, concatenated carrier order)."""
    from privnerf.ownership.signature import carrier_locations, carrier_tensors

    ws = carrier_tensors(field)
    with torch.no_grad():
        for layer, flat in carrier_locations(positions, [w.numel() for w in ws]):
            ws[layer].view(-1)[flat] *= -1.0


def regrid(field) -> None:
    """Resample both grids to half their resolution and back (trilinear, as growth does)."""
    from privnerf.fields.encoding import regrid_values

    with torch.no_grad():
        for g in field.grids():
            shape = tuple(g.data.shape[:3])
            half = tuple(max(2, s // 2) for s in shape)
            g.data.data = regrid_values(regrid_values(g.data, half), shape)


def main() -> int:
    from privnerf.cli.train import load_split, train_and_evaluate
    from privnerf.ownership.signature import carrier_size, key_positions, new_key, verify, write_key
    from privnerf.train.trainer import set_threads

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--eval-views", type=int, default=20)
    p.add_argument("--forge-tries", type=int, default=100_000)
    p.add_argument("--equal-steps", type=int, default=None,
                   help="also train the plain/signed pair for this many steps each (no time limit)")
    p.add_argument("--fresh", action="store_true")
    a = p.parse_args()
    set_threads(2)
    doc = open_results(RESULTS, a.fresh, a.seconds)
    doc.update({"seconds": a.seconds, "eval_views": a.eval_views, "machine": machine(),
                "command": "benchmarks/ipr.py " + " ".join(sys.argv[1:]), "paper": "no published figures retrieved "
                "(../shared/specs/blog_papers.md §6)"})
    doc.setdefault("stages", {})
    doc.setdefault("started", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    stages = doc["stages"]
    OUT.mkdir(parents=True, exist_ok=True)
    owner_path, attacker_path = OUT / "owner.json", OUT / "attacker.json"
    from privnerf.fields.grid_field import make_rgb_net

    n = sum(m.weight.numel() for m in make_rgb_net(grid_config(str(LEGO), 1.0, OUT).field.grid).modules()
            if isinstance(m, torch.nn.Linear))
    owner = new_key("owner", 64, carrier_size=n, seed=29)
    attacker = new_key("attacker", 64, carrier_size=n, seed=2929)
    write_key(owner, owner_path)
    write_key(attacker, attacker_path)

    def record(name: str, row: dict) -> None:
        row["commit"] = commit()
        row["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        stages[name] = row
        save(doc)
        print(name, {k: v for k, v in row.items() if k not in ("commit", "finished")}, flush=True)

    runs = {}
    for name, key in (("plain", None), ("signed", owner_path)):
        run = OUT / name
        runs[name] = run
        if name in stages:
            continue
        if run.exists():
            import shutil

            shutil.rmtree(run)
        cfg = grid_config(str(LEGO), a.seconds, run, background="white", eval_max_images=a.eval_views)
        if key is not None:
            cfg.ownership.key = str(key)
        res = train_and_evaluate(cfg, quiet=True)
        field = load(run).field
        assert carrier_size(field) == n
        record(name, {"psnr": res["psnr"], "ssim": res["ssim"], "steps": res["steps"],
                      "train_time_s": res["train_time_s"], **{f"owner_{k}": v for k, v in verify(field, owner).items()
                                                               if k in ("bit_accuracy", "verified",
                                                                        "false_positive_probability")}})
    doc["fidelity_cost_db"] = stages["plain"]["psnr"] - stages["signed"]["psnr"]
    save(doc)
    if a.equal_steps:  # the same pair at a fixed step count: no machine-speed noise in the comparison
        for name, key in (("plain", None), ("signed", owner_path)):
            tag = f"{name}-{a.equal_steps}-steps"
            if tag in stages:
                continue
            run = OUT / tag
            if run.exists():
                import shutil

                shutil.rmtree(run)
            cfg = grid_config(str(LEGO), None, run, background="white", eval_max_images=a.eval_views)
            cfg.steps = a.equal_steps
            if key is not None:
                cfg.ownership.key = str(key)
            res = train_and_evaluate(cfg, quiet=True)
            record(tag, {"psnr": res["psnr"], "ssim": res["ssim"], "steps": res["steps"],
                         "train_time_s": res["train_time_s"], **verdict_of(load(run).field, owner)})
        doc["fidelity_cost_equal_steps_db"] = (stages[f"plain-{a.equal_steps}-steps"]["psnr"]
                                               - stages[f"signed-{a.equal_steps}-steps"]["psnr"])
        save(doc)
    signed = runs["signed"]
    train_scene = load_split(load(signed).cfg, "train")
    test_scene = load_split(load(signed).cfg, "test")

    def verdict(field) -> dict:
        return verdict_of(field, owner)

    for share in (0.1, 0.5):
        name = f"finetune-{int(share * 100)}"
        if name not in stages:
            t = finetune(signed, train_scene, share * a.seconds)
            record(name, {"seconds": share * a.seconds, "steps": t.step_count, **verdict(t.field),
                          "psnr": evaluate(t, test_scene, a.eval_views)})
    if "overwrite" not in stages:
        from privnerf.ownership.signature import read_key

        t = finetune(signed, train_scene, 0.5 * a.seconds, key=read_key(attacker_path))
        va = verify(t.field, attacker)
        i_o, _ = key_positions(owner)
        i_a, _ = key_positions(attacker)
        record("overwrite", {"seconds": 0.5 * a.seconds, "steps": t.step_count, **verdict(t.field),
                             "attacker_bit_accuracy": va["bit_accuracy"], "attacker_verified": va["verified"],
                             "positions_shared_with_owner": int(np.intersect1d(i_o, i_a).size),
                             "psnr": evaluate(t, test_scene, a.eval_views)})
    quick = min(8, a.eval_views)
    if "signed-first-8" not in stages:  # the pruning, flip and regrid rows' baseline (same views)
        t = load(signed)
        record("signed-first-8", {**verdict(t.field), "psnr": evaluate(t, test_scene, quick)})
    for what in ("mlp", "grid"):
        for share in (0.1, 0.3, 0.5):
            name = f"prune-{what}-{int(share * 100)}"
            if name not in stages:
                t = load(signed)
                prune(t.field, share, what)
                t.occ.update(t.occupancy_density, t.occ_step, t.cfg.render.occ_threshold)  # zeroed voxels reopen
                record(name, {**verdict(t.field), "psnr": evaluate(t, test_scene, quick)})
    for share in (0.1, 0.25, 0.5, 1.0):
        name = f"flip-{int(share * 100)}"
        if name not in stages:
            t = load(signed)
            chosen = key_positions(owner)[0][: int(round(share * owner.bits))]
            flip(t.field, chosen)
            record(name, {"flipped_bits": int(len(chosen)), **verdict(t.field), "psnr": evaluate(t, test_scene, quick)})
    if "regrid" not in stages:
        t = load(signed)
        regrid(t.field)
        t.occ.update(t.occupancy_density, t.occ_step, t.cfg.render.occ_threshold)
        record("regrid", {**verdict(t.field), "psnr": evaluate(t, test_scene, quick)})
    if "forge" not in stages:
        field = load(signed).field
        t0 = time.perf_counter()
        best, verified = 0.0, 0
        for s in range(a.forge_tries):
            v = verify(field, new_key(f"forger-{s}", 64, carrier_size=n, seed=10**6 + s))
            best = max(best, v["bit_accuracy"])
            verified += int(v["verified"])
        record("forge", {"tries": a.forge_tries, "best_bit_accuracy": best, "verified": verified,
                         "seconds": time.perf_counter() - t0})
    if "plain-as-owner" not in stages:
        record("plain-as-owner", verdict(load(runs["plain"]).field))
    doc["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    s = stages
    doc["targets"] = {
        "fidelity cost <= 0.2 dB": doc.get("fidelity_cost_equal_steps_db", doc["fidelity_cost_db"]) <= 0.2,
        "100 % bits after training": s["signed"]["owner_bit_accuracy"] == 1.0,
        ">= 95 % after a 50 % fine-tune": s["finetune-50"]["owner_bit_accuracy"] >= 0.95,
        ">= 95 % after 30 % pruning (MLP and grid)": min(s["prune-mlp-30"]["owner_bit_accuracy"],
                                                        s["prune-grid-30"]["owner_bit_accuracy"]) >= 0.95,
        "owner >= 90 % after an overwrite": s["overwrite"]["owner_bit_accuracy"] >= 0.9,
        "forged claims rejected (p < 1e-9)": s["forge"]["verified"] == 0 and not s["plain-as-owner"]["owner_verified"],
    }
    save(doc)
    print(json.dumps(doc["targets"], indent=1))
    print(f"-> {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
