"""Where is a federated aggregate short? Fine-tune parts of it on one trainer and see what each part gains.

A diagnostic for the federated gap (docs/decentnerf.md): it takes a finished ``privnerf fed run``'s last
aggregate (``server/state.pt``), scores it on the crowd's clean test views, then fine-tunes on one trainer with
the crowd's person-free training photos (the oracle's data) for ``--steps`` steps, training

* ``mlp``: only the global MLPs (feature decoder and colour network; grids frozen),
* ``grids``: only the global grids (MLPs frozen),
* ``all``: both,

each from the same aggregate, and scores each again. If fine-tuning the MLPs alone recovers much, the averaged
decoder is what is short (it was averaged across users whose local grids differed); if the grids alone recover
much, the averaged grids are. Fine-tuning uses the clients' learning rates (``--client-lr-scale`` applied), a
fresh Adam and the run's learning-rate decay over the fine-tune's steps, the personal field off. It needs the person-free copies no real server
has: it splits a gap, it is no method.

Usage: ``python benchmarks/aggregate_finetune.py RUN_DIR [--steps 1000] [--modes none,mlp,grids]
[--views 10] [--lr-factor F] [--tag NAME]`` -> ``benchmarks/results/aggregate-finetune[-TAG].json`` (rows are appended per
run directory, mode, steps and learning-rate factor; a re-run replaces its own rows).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privnerf.eval.evaluate import evaluate_split  # noqa: E402
from privnerf.fed.config import FedConfig  # noqa: E402
from privnerf.fed.local import load_dataset, trainer_at  # noqa: E402
from privnerf.privacy.leakage import person_free_copy  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402
from privnerf.train.trainer import set_threads  # noqa: E402

MODES = ("none", "mlp", "grids", "all")


def load_run(run: Path) -> tuple[FedConfig, list, int]:
    """The run's configuration, its last aggregate's arrays and that aggregate's round; exits naming the file
    when the directory is not a finished run or its crowd is not on this machine."""
    cfg_path, state_path = run / "config.json", run / "server" / "state.pt"
    for p in (cfg_path, state_path):
        if not p.exists():
            raise SystemExit(f"{p}: not found ({run} is not a finished privnerf fed run directory)")
    try:
        cfg = FedConfig.from_json(cfg_path.read_text())
    except (ValueError, TypeError, KeyError) as e:
        raise SystemExit(f"{cfg_path}: not a privnerf fed run configuration ({e})") from None
    if not cfg.data or not Path(cfg.data).exists():
        raise SystemExit(f"{cfg_path}: its crowd {cfg.data!r} is not here")
    try:
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        return cfg, st["arrays"], int(st.get("round", 0))
    except Exception as e:  # a truncated or foreign file: name it instead of a pickle traceback
        raise SystemExit(f"{state_path}: not a readable server state ({type(e).__name__}: {e})") from None


def global_trainer(cfg: FedConfig, arrays: list, train, steps: int = 1, lr_factor: float | None = None):
    """A one-field trainer (personal field off) on ``train`` holding the aggregate ``arrays``, its occupancy
    grid refreshed: what is scored, and what fine-tunes (the learning rate decays over ``steps``; with
    ``lr_factor`` it is instead constant at that factor times the clients' starting rates)."""
    tc = copy.deepcopy(cfg.client_train_config())
    if lr_factor is not None:
        tc.optim.lr_density *= lr_factor
        tc.optim.lr_features *= lr_factor
        tc.optim.lr_mlp *= lr_factor
        tc.optim.lr_final_factor = 1.0
    tc.personal.enabled = False
    tc.field.grid.grow_at = ()  # the aggregate's shapes are final
    tc.steps = max(steps, 1)  # the learning rate decays over the fine-tune, as over a run
    tc.device = "cpu"
    t = trainer_at(tc, train, arrays)
    t.occ.update(t.occupancy_density, t.occ_step, tc.render.occ_threshold)
    return t


def finetune(cfg: FedConfig, arrays: list, train, test, mode: str, steps: int, views: int,
             lr_factor: float | None = None) -> dict:
    t = global_trainer(cfg, arrays, train, steps, lr_factor)
    n_grids = len(t.field.grids())
    if mode in ("mlp",):
        for j in range(n_grids):
            t.grid_opt.lrs[j] = 0.0
    if mode in ("grids",):
        for g in t.mlp_opt.param_groups:
            g["base_lr"] = 0.0
    t0 = time.perf_counter()
    if mode != "none":
        for _ in tqdm(range(steps), desc=f"fine-tune {mode}", leave=False):
            t.step()
    dt = time.perf_counter() - t0
    r = evaluate_split(t.field, t.occ, t.settings(inference=True), test, max_images=views, with_lpips=False,
                       quiet=True)
    return {"mode": mode, "steps": 0 if mode == "none" else steps, "lr_factor": lr_factor, "psnr": r["psnr"], "ssim": r["ssim"],
            "views": r["num_images"], "finetune_s": dt}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished privnerf fed run directory (learned or fedavg)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--modes", default="none,mlp,grids")
    p.add_argument("--views", type=int, default=10, help="clean test views scored")
    p.add_argument("--lr-factor", type=float, default=None,
                   help="a constant learning rate, this factor times the clients' starting rates (the run's "
                        "last rounds train at about its final factor, 0.1), instead of the decay over --steps")
    p.add_argument("--tag", default="")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise SystemExit(f"--modes: unknown {bad or a.modes!r}; choose from {', '.join(MODES)}")
    if a.steps < 1 or a.views < 1:
        raise SystemExit(f"--steps ({a.steps}) and --views ({a.views}) must be at least 1")
    if a.lr_factor is not None and not a.lr_factor > 0:
        raise SystemExit(f"--lr-factor must be > 0, got {a.lr_factor}")
    set_threads(a.threads)
    cfg, arrays, rnd = load_run(a.run)
    train = person_free_copy(load_dataset(cfg.data, "train"))
    test = load_dataset(cfg.data, "test")
    out = ROOT / "benchmarks" / "results" / f"aggregate-finetune{'-' + a.tag if a.tag else ''}.json"
    try:
        doc = json.loads(out.read_text()) if out.exists() else {"rows": []}
        doc["rows"]
    except (ValueError, KeyError, TypeError):
        raise SystemExit(f"{out}: exists but is not this script's results file (move it away or use --tag)") from None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    bench = a.run.parent / "benchmark.json"
    source = json.loads(bench.read_text()).get("command") if bench.exists() else None
    for mode in modes:
        row = finetune(cfg, arrays, train, test, mode, a.steps, a.views, a.lr_factor)
        row.update(run=str(a.run), aggregator=cfg.aggregator, round=rnd, run_command=source,
                   commit=commit.stdout.strip(), date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   command="python benchmarks/aggregate_finetune.py " + " ".join(sys.argv[1:]))
        same = ("run", "mode", "steps", "lr_factor")  # a re-run replaces only its own rows
        doc["rows"] = [r for r in doc["rows"] if any(r.get(k) != row.get(k) for k in same)] + [row]
        atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
        tqdm.write(f"{mode:6s} {row['psnr']:.2f} dB after {row['steps']} steps")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
