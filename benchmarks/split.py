"""Split learning benchmarks: utility against what a curious server recovers, per defense.

For one scene, at the same number of steps and the same batch:

* ``central-core``: centralized training of the core grid field (the engine's default);
* ``central-decoder``: centralized training of the split architecture (the grid field with the client's
  linear feature decoder);
* ``central-full``: centralized training with the ``full`` decoder and no empty-space skipping (uniform
  samples), the architecture of split training where the client keeps the density;
* split training with no defense and with each defense over a small (c, r) grid, every run attacked online by
  the SMA (the paper's) and the replay attack (ours); each scored on the first ``--views`` test views:
  client utility, each attacker's NeRF, the server's grids with an uninformed head ("geometry only") and the
  constant-colour image;
* ``transport``: ms per step and bytes per step in process vs over loopback gRPC (attacks off, 60 steps).

Usage: ``python benchmarks/split.py --scene lego --steps 500`` → ``benchmarks/results/split-<scene>.json``,
``split-<scene>-tradeoff.png`` (utility vs attacker PSNR), ``split-<scene>-renders.png`` (GT | client |
geometry only | SMA | replay, undefended and default defense). Runs are sequential (timings need an idle
machine); runs go under ``outputs/bench-split/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privnerf.data.io import save_figure, write_image  # noqa: E402
from privnerf.data.paths import data_root  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402

SCENES = {"lego": "nerf_synthetic/lego", "fern": "nerf_llff_data/fern", "builtin": "builtin"}
# (tag, defense, c, r, extra flags)
GRID = [
    ("none", "none", 0.0, 1.0, {}),
    ("s2nerf-c0.1-r1", "s2nerf", 0.1, 1.0, {}),
    ("s2nerf-c1-r1", "s2nerf", 1.0, 1.0, {}),
    ("s2nerf-c1-r0.01", "s2nerf", 1.0, 0.01, {}),
    ("s2nerf-c3-r0.01", "s2nerf", 3.0, 0.01, {}),
    ("s2nerf-c10-r0.01", "s2nerf", 10.0, 0.01, {}),
    ("s2nerf-light-c3-r0.01", "s2nerf-light", 3.0, 0.01, {}),
    ("gaussian-c0.1", "gaussian", 0.1, 1.0, {}),
    ("prune-0.9", "prune", 0.0, 1.0, {"prune_ratio": 0.9}),
    ("prune-0.99", "prune", 0.0, 1.0, {"prune_ratio": 0.99}),
    ("relu-none", "none", 0.0, 1.0, {"decoder": "relu"}),
    ("relu-s2nerf-mix-c1-r0.01", "s2nerf", 1.0, 0.01, {"decoder": "relu", "mix": True}),
    ("none-private-head", "none", 0.0, 1.0, {"private_head": True}),
    # the client decodes density too (--decoder full): the server samples uniformly and holds no geometry
    ("full-none", "none", 0.0, 1.0, {"decoder": "full"}),
    ("full-private-none", "none", 0.0, 1.0, {"decoder": "full", "private_head": True}),
    ("full-private-s2nerf-c0.1-r1", "s2nerf", 0.1, 1.0, {"decoder": "full", "private_head": True}),
    ("full-private-s2nerf-c1-r0.01", "s2nerf", 1.0, 0.01, {"decoder": "full", "private_head": True}),
    ("full-private-gaussian-c0.1", "gaussian", 0.1, 1.0, {"decoder": "full", "private_head": True}),
    ("full-private-prune-0.9", "prune", 0.0, 1.0, {"decoder": "full", "private_head": True, "prune_ratio": 0.9}),
    ("full-private-s2nerf-c0.3-r1", "s2nerf", 0.3, 1.0, {"decoder": "full", "private_head": True}),
    ("full-private-s2nerf-light-c1-r0.01", "s2nerf-light", 1.0, 0.01, {"decoder": "full", "private_head": True}),
    # the default again: the secret head seed is fresh each run, so a second run shows the seed's spread
    ("full-private-s2nerf-c0.1-r1-rerun", "s2nerf", 0.1, 1.0, {"decoder": "full", "private_head": True}),
    ("full-private-none-rerun", "none", 0.0, 1.0, {"decoder": "full", "private_head": True}),
    # the default posture's grid again, now scored by every attack (principal direction, SA-SMA with --leaked):
    # a second run (fresh secret seed) of each point, so one seed's luck is not read as the noise's effect
    ("full-private-s2nerf-c0.3-r1-rerun", "s2nerf", 0.3, 1.0, {"decoder": "full", "private_head": True}),
    ("full-private-s2nerf-c1-r0.01-rerun", "s2nerf", 1.0, 0.01, {"decoder": "full", "private_head": True}),
    ("full-private-s2nerf-light-c1-r0.01-rerun", "s2nerf-light", 1.0, 0.01,
     {"decoder": "full", "private_head": True}),
    ("full-private-gaussian-c0.1-rerun", "gaussian", 0.1, 1.0, {"decoder": "full", "private_head": True}),
    ("full-private-prune-0.9-rerun", "prune", 0.0, 1.0,
     {"decoder": "full", "private_head": True, "prune_ratio": 0.9}),
    # the client also keys its decoder by position (--key-cells 9: a secret rotation field over the box), so
    # one map no longer decodes the grids everywhere (docs/split.md, benchmarks/keyed_decoder.py)
    ("full-private-key9-none", "none", 0.0, 1.0, {"decoder": "full", "private_head": True, "key_cells": 9}),
    ("full-private-key9-s2nerf-c0.1-r1", "s2nerf", 0.1, 1.0,
     {"decoder": "full", "private_head": True, "key_cells": 9}),
    ("full-private-key17-s2nerf-c0.1-r1", "s2nerf", 0.1, 1.0,
     {"decoder": "full", "private_head": True, "key_cells": 17}),
]
SHORT = ["none", "s2nerf-c0.1-r1", "full-private-none", "full-private-s2nerf-c0.1-r1"]
"""The measured set (BENCHMARKS.md). Runs with c >= 1 take several times longer: early noise becomes density."""
WITH_SMA = {"none", "s2nerf-c0.1-r1", "none-private-head", "full-private-none", "full-private-s2nerf-c0.1-r1",
            "full-private-s2nerf-c1-r0.01", "full-private-s2nerf-c0.1-r1-rerun",
            "full-private-none-rerun", "full-private-key9-none", "full-private-key9-s2nerf-c0.1-r1",
            "full-private-key17-s2nerf-c0.1-r1"}
"""The SMA costs ~0.2 s a step on lego and recovers little (see BENCHMARKS.md); the other runs carry the replay
attack only."""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def central(data: str, steps: int, views: int, decoder: str, out: Path, rays: int) -> dict:
    from privnerf.cli.train import train_and_evaluate
    from privnerf.split.config import SplitConfig

    t = SplitConfig(data=data, steps=steps, decoder=decoder, eval_max_images=views).train_config()
    t.optim.batch_rays = rays
    t.output = out
    t.checkpoint_every_s = 1e9
    r = train_and_evaluate(t, quiet=True)
    return {k: r[k] for k in ("psnr", "ssim", "lpips", "steps", "train_time_s", "num_images")}


def split_run(data: str, steps: int, views: int, defense: str, c: float, r: float, extra: dict, out: Path,
              rays: int, transport: str = "inproc", attack: bool = True, kinds=("sma", "replay")) -> dict:
    from privnerf.split.config import SplitConfig
    from privnerf.split.run import run_split

    # each tag states its posture in full: the measured rows before the full decoder were linear, announced seed
    posture = {"decoder": "linear", "private_head": False, **extra}
    cfg = SplitConfig(data=data, steps=steps, defense=defense, c=c, r=r, eval_max_images=views, output=out,
                      transport=transport, **posture)
    cfg.attack.enabled = attack
    cfg.attack.kinds = tuple(kinds)
    cfg.train.optim.batch_rays = rays
    cfg.train.checkpoint_every_s = 1e9
    res = run_split(cfg, quiet=True)
    res.pop("run_dir", None)
    return res


def sa_sma_heads(block: dict) -> dict[str, dict]:
    """The attack heads of one SA-SMA block (``attack-leaked-N.json``, ``row["sa_sma"]["leaked"][N]``) that were
    fine-tuned on the leaked photos: not the guessed heads (``geometry_only``), which see no photo."""
    return {k: v for k, v in block.items() if isinstance(v, dict) and "psnr" in v and not k.startswith("geometry")}


def strongest_attack(row: dict, key: str = "psnr", leaked: int = 0) -> float | None:
    """The privacy axis: the best any photo-free attacker scored (replay, SMA, principal direction under either
    sign, or the server's grids through a guessed head); ``key="calibrated_psnr"`` for the colour-calibrated
    score. ``leaked=N`` takes the best SA-SMA head fine-tuned on N leaked photos instead (None if not run)."""
    if leaked:
        heads = sa_sma_heads(row.get("sa_sma", {}).get("leaked", {}).get(str(leaked), {}))
        scores = [v[key] for v in heads.values() if key in v]
        return max(scores) if scores else None
    scores = [v[key] for v in row.get("attack", {}).values() if isinstance(v, dict) and key in v]
    # the direction attack's sign is one bit a person settles by looking at both renders (docs/split.md)
    other = row.get("attack", {}).get("direction", {}).get("psnr_other_sign" if key == "psnr" else "calibrated_other_sign")
    if other is not None:
        scores.append(other)
    return max(scores) if scores else None


def plot(result: dict, path: Path) -> None:
    """Utility against the strongest attacker, one curve per defense from the undefended point of its posture
    (filled circles: full decoder + private head, the default posture; diamonds: the same with a client key;
    hollow squares: the linear decoder with the announced seed). Full-decoder runs scored before the principal-direction attack existed are drawn faint and left off
    the curves (their "strongest" misses it); a star above a run is SA-SMA with one leaked photo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    runs = result["split"]
    colours = {"none": "k", "s2nerf": "tab:blue", "s2nerf-light": "tab:cyan", "gaussian": "tab:orange",
               "prune": "tab:green"}
    sa_labelled = faint_labelled = False
    # postures, most specific prefix first; a run belongs to the first whose prefix it has
    postures = [("full-private-key", "D", True, "full decoder + private head + client key"),
                ("full-private-", "o", True, "full decoder + private head"), ("", "s", False, "linear, announced seed")]

    def posture_of(tag: str) -> str:
        return next(p for p, *_ in postures if tag.startswith(p))

    for prefix, marker, filled, posture in postures:
        rows = {t: r for t, r in runs.items() if posture_of(t) == prefix and strongest_attack(r) is not None}
        # the full decoder's curves run through the runs every attack scored (the principal direction
        # needs the full decoder, so the linear posture's curves keep all their runs)
        scored = {t: r for t, r in rows.items() if not filled or "direction" in r.get("attack", {})}
        base = scored.get(f"{prefix}none-rerun") or scored.get(f"{prefix}none")
        # a posture without an undefended run has no curve: name its marker in the legend instead
        posture_labelled = base is not None
        for tag, r in rows.items():
            d = r["defense"]["name"]
            y = strongest_attack(r)
            faint = tag not in scored
            ax.scatter(r["psnr"], y, s=18 if faint else 40, marker=marker,
                       edgecolors=colours.get(d, "gray"), alpha=0.35 if faint else 1.0,
                       facecolors=colours.get(d, "gray") if filled else "none", zorder=3,
                       label="scored before the direction attack (faint)" if faint and not faint_labelled
                       else None if posture_labelled or faint else posture)
            faint_labelled |= faint
            posture_labelled |= not faint
            ax.annotate(tag.removeprefix("full-private-"), (r["psnr"], y), fontsize=6, xytext=(3, 3),
                        textcoords="offset points", alpha=0.5 if faint else 1.0)
            y1 = strongest_attack(r, leaked=1)
            if y1 is not None:  # the same run attacked with one leaked photo (SA-SMA): a stronger threat model
                ax.plot([r["psnr"], r["psnr"]], [y, y1], c=colours.get(d, "gray"), lw=0.6, ls=":", zorder=2)
                ax.scatter(r["psnr"], y1, s=60, marker="*", c=colours.get(d, "gray"), zorder=3,
                           label="SA-SMA, 1 leaked photo" if not sa_labelled else None)
                sa_labelled = True
        for d in colours:
            pts = sorted([(r["psnr"], strongest_attack(r)) for r in scored.values()
                          if r["defense"]["name"] == d and d != "none"], reverse=True)
            if pts and base is not None:  # the defense's curve starts at its posture's undefended run (c = 0)
                pts = [(base["psnr"], strongest_attack(base))] + pts
                ax.plot(*zip(*pts), c=colours[d], lw=1, ls="-" if filled else ":", label=f"{d} ({posture})")
    any_run = next(iter(runs.values()))
    ax.axhline(any_run["constant_colour_psnr"], ls=":", c="gray", label="constant colour")
    ax.axhline(any_run["constant_colour_psnr"] + 1, ls="--", c="gray", lw=0.8, label="constant colour + 1 dB")
    for tag, ls in (("core", ":"), ("full", "-.")):
        if tag in result["central"]:
            ax.axvline(result["central"][tag]["psnr"], ls=ls, c="tab:purple", lw=0.8, label=f"centralized {tag}")
    ax.set_xlabel("utility: client test PSNR (dB)")
    ax.set_ylabel("strongest attacker test PSNR (dB)")
    ax.set_title(f"split learning on {result['scene']}, {result['steps']} steps: utility vs privacy")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    plt.close(fig)


def renders(result: dict, out_root: Path, path: Path, tags: list[str]) -> None:
    import imageio.v3 as iio
    import numpy as np

    rows = []
    for tag in tags:
        fig = out_root / tag / "figure.png"
        if fig.exists():
            img = iio.imread(fig)[..., :3]
            h = img.shape[0] // min(3, result["views"])
            rows.append(img[:h])  # the first test view of each run
    if rows:
        w = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
        write_image(path, fit_width(np.concatenate(rows, axis=0)))


def attack_renders(run_dirs: list[Path], path: Path, leaked: int = 1) -> None:
    """One row per run, the first test view: ground truth | client | principal direction (the run's sign rule)
    | the other sign | the better SA-SMA head after ``leaked`` leaked photos: the attacks that break the default
    posture beside what the client renders. Needs each run's ``figure.png`` (ground truth and client are its
    first two panels) and the renders ``evaluate_attack`` saved for leaked 0 and ``leaked``."""
    import imageio.v3 as iio
    import numpy as np

    rows = []
    for run in map(Path, run_dirs):
        at = run / "attack"
        sa_path = at / f"attack-leaked-{leaked}.json"
        if not sa_path.exists():
            sys.exit(f"{sa_path}: missing; attack the run first (--reattack ... --leaked {leaked}, or --leaked "
                     f"{leaked} when training)")
        sa = sa_sma_heads(json.loads(sa_path.read_text()))
        best = max(sa, key=lambda k: sa[k]["psnr"])
        files = [run / "figure.png"] + [at / "renders-leaked-0" / d / "view_0000.png"
                                        for d in ("direction-0", "direction-0-other-sign")]
        files.append(at / f"renders-leaked-{leaked}" / best / "view_0000.png")
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            sys.exit(f"{run}: missing {', '.join(missing)} (runs scored before the direction attack's other sign "
                     "need --reattack ... --leaked 0)")
        fig, *panels = [iio.imread(f)[..., :3] for f in files]
        h, w = panels[0].shape[:2]
        rows.append(np.concatenate([fig[:h, :2 * w], *panels], axis=1))
        print(f"{run.name}: SA-SMA panel = {best} ({sa[best]['psnr']:.2f} dB)", flush=True)
    write_image(path, fit_width(np.concatenate(rows, axis=0)))
    print(f"wrote {path}")


FIGURE_MAX_WIDTH = 1600
"""Render figures are box-downsampled to at most this width: full-size rows of five 400-500 px panels made
2.6-2.8 MB PNGs, too large to keep in the repository."""


def fit_width(img, max_width: int = FIGURE_MAX_WIDTH):
    """``(H, W, 3)`` uint8 → the same picture shrunk by the smallest integer factor that fits ``max_width``
    (mean over factor x factor blocks; edges cropped to a multiple of the factor)."""
    import numpy as np

    k = -(-img.shape[1] // max_width)
    if k <= 1:
        return img
    h, w = img.shape[0] // k * k, img.shape[1] // k * k
    blocks = img[:h, :w].reshape(h // k, k, w // k, k, -1).astype(np.float32).mean(axis=(1, 3))
    return np.round(blocks).astype(np.uint8)


def reattack(scene: str, folder: Path, leaked: tuple[int, ...] = (0,), only: set[str] | None = None) -> None:
    """Re-run ``evaluate_attack`` on each run of ``folder`` whose tag has a row in ``split-<scene>.json`` and
    replace that row's ``attack`` block (``leaked`` 0), or its ``sa_sma.leaked[N]`` block (SA-SMA with N leaked
    training photos); the row keeps its training provenance and the block gains ``provenance`` (an offline
    attack needs only the server's saved state)."""
    from privnerf.split.run import evaluate_attack

    res_path = ROOT / "benchmarks" / "results" / f"split-{scene}.json"
    result = json.loads(res_path.read_text())
    command = f"python benchmarks/split.py --scene {scene} --reattack {folder}" + (
        f" --leaked {' '.join(map(str, leaked))}" if tuple(leaked) != (0,) else "") + (
        f" --only {','.join(sorted(only))}" if only else "")
    commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()
    if not Path(folder).is_dir():
        sys.exit(f"--reattack {folder}: not a folder (expected outputs/bench-split/<scene>/<time>)")
    runs = sorted(d for d in Path(folder).iterdir() if (d / "config.json").exists() and (not only or d.name in only))
    if not runs:
        sys.exit(f"{folder}: no split runs (folders with config.json) in it")
    for run_dir in runs:
        row = result["split"].get(run_dir.name)
        if row is None:
            print(f"{run_dir.name}: no row in {res_path.name}, skipped", flush=True)
            continue
        for n in leaked:
            t0 = time.perf_counter()
            at = evaluate_attack(run_dir, leaked=n, quiet=True)
            prov = {"commit": commit, "command": command,
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            if n == 0:
                row["attack"], row["attack_provenance"] = at, prov
            else:
                row.setdefault("sa_sma", {}).setdefault("leaked", {})[str(n)] = {**at, "provenance": prov}
            print(f"{run_dir.name} (leaked {n}): " + "  ".join(
                f"{k} {v['psnr']:.2f} (calibrated {v['calibrated_psnr']:.2f})"
                for k, v in at.items() if isinstance(v, dict) and "psnr" in v)
                + f"  const {at['constant_colour_psnr']:.2f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            atomic_write_text(res_path, json.dumps(result, indent=2, default=float) + "\n")
    plot(result, res_path.with_name(f"split-{scene}-tradeoff.png"))
    print(f"wrote {res_path}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scene", default="lego", choices=list(SCENES))
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--rays", type=int, default=4096)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--grid", default="full", choices=["full", "short"])
    p.add_argument("--no-transport", action="store_true", help="skip the transport timing")
    p.add_argument("--only", default=None, help="comma-separated run tags (re-run a subset, merging results; with --reattack: re-score only these)")
    p.add_argument("--label", default=None, help="renders figure suffix (default: 'partial' with --only)")
    p.add_argument("--reattack", type=Path, default=None,
                   help="re-score the attacks of an earlier bench output folder (outputs/bench-split/<scene>/<time>)"
                        " with the current attack code and merge them into the matching rows; trains nothing")
    p.add_argument("--leaked", type=int, nargs="+", default=[0],
                   help="0 = the attacks without photos; N > 0 = also SA-SMA with N leaked training photos (after "
                        "each training run, or with --reattack on the saved runs)")
    p.add_argument("--attack-figure", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                   help="draw benchmarks/results/split-<scene>-attacks.png from these run folders (direction "
                        "attack both signs, SA-SMA with one leaked photo) and exit")
    a = p.parse_args()
    if a.attack_figure:
        attack_renders(a.attack_figure, ROOT / "benchmarks" / "results" / f"split-{a.scene}-attacks.png")
        return
    if a.reattack:
        reattack(a.scene, a.reattack, tuple(a.leaked), set(a.only.split(",")) if a.only else None)
        return
    if a.only and not a.label:
        a.label = "partial"
    data = SCENES[a.scene] if a.scene == "builtin" else str(data_root() / SCENES[a.scene])
    if a.scene != "builtin" and not Path(data).exists():
        sys.exit(f"{data} not found (set PRIVNERF_DATA)")
    out_root = ROOT / "outputs" / "bench-split" / a.scene / datetime.now().strftime("%Y-%m-%d_%H%M%S")
    res_path = ROOT / "benchmarks" / "results" / f"split-{a.scene}.json"
    only = set(a.only.split(",")) if a.only else None
    result = json.loads(res_path.read_text()) if only and res_path.exists() else {"central": {}, "split": {}}
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result.update({"scene": a.scene, "data": SCENES[a.scene], "steps": a.steps, "rays": a.rays, "views": a.views,
                   "machine": machine(), "started": started,
                   "command": "python benchmarks/split.py " + " ".join(sys.argv[1:]),
                   "commit": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()})

    def provenance() -> dict:
        # merged --only runs come from different commands and commits: each row keeps its own
        return {"commit": result["commit"], "command": result["command"], "machine": result["machine"],
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def save():
        result["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(res_path, json.dumps(result, indent=2, default=float) + "\n")

    for tag, cw in (("core", "none"), ("decoder", "linear"), ("full", "full")):
        if only and f"central-{tag}" not in only:
            continue
        t0 = time.perf_counter()
        result["central"][tag] = central(data, a.steps, a.views, cw, out_root / f"central-{tag}", a.rays)
        result["central"][tag]["provenance"] = provenance()
        print(f"central-{tag}: {result['central'][tag]['psnr']:.2f} dB ({time.perf_counter() - t0:.0f} s)", flush=True)
        save()
    grid = [g for g in GRID if a.grid == "full" or g[0] in SHORT]
    for tag, defense, c, r, extra in grid:
        if only and tag not in only:
            continue
        t0 = time.perf_counter()
        kinds = ("sma", "replay") if tag in WITH_SMA else ("replay",)
        res = split_run(data, a.steps, a.views, defense, c, r, extra, out_root / tag, a.rays, kinds=kinds)
        res["wall_s"] = time.perf_counter() - t0
        res["provenance"] = provenance()
        for n in (n for n in a.leaked if n > 0):
            from privnerf.split.run import evaluate_attack

            sa = evaluate_attack(out_root / tag, leaked=n, quiet=True)
            res.setdefault("sa_sma", {}).setdefault("leaked", {})[str(n)] = {**sa, "provenance": provenance()}
            print(f"{tag}: SA-SMA with {n} leaked photo(s): {strongest_attack(res, leaked=n):.2f} dB", flush=True)
        result["split"][tag] = res
        at = res.get("attack", {})
        print(f"{tag}: utility {res['psnr']:.2f}  replay {at.get('replay', {}).get('psnr', float('nan')):.2f}  "
              f"sma {at.get('sma', {}).get('psnr', float('nan')):.2f}  geometry-only "
              f"{at.get('geometry_only', {}).get('psnr', float('nan')):.2f}  const {res['constant_colour_psnr']:.2f}  "
              f"calibrated {strongest_attack(res, 'calibrated_psnr') or float('nan'):.2f}"
              f"  ({res['wall_s']:.0f} s)", flush=True)
        save()
    if (not only or "transport" in only) and not a.no_transport:
        tr = {}
        for transport in ("inproc", "grpc"):
            res = split_run(data, 60, 1, "none", 0.0, 1.0, {}, out_root / f"transport-{transport}", a.rays,
                            transport=transport, attack=False)
            tr[transport] = {"s_per_step": res["train_time_s"] / res["steps"],
                             "bytes_up_per_step": res["bytes_up_per_step"],
                             "bytes_down_per_step": res["bytes_down_per_step"]}
            print(f"transport {transport}: {tr[transport]['s_per_step'] * 1000:.0f} ms/step", flush=True)
        result["transport"] = tr
        save()
    if result["split"]:
        plot(result, res_path.with_name(f"split-{a.scene}-tradeoff.png"))
    # a partial (--only) run draws its own figure, so the full set's figure is not overwritten by fewer rows
    name = f"split-{a.scene}-renders" + (f"-{a.label}" if a.label else "") + ".png"
    renders(result, out_root, res_path.with_name(name),
            [t for t in [g[0] for g in GRID] if (out_root / t).exists() and (a.label or t in SHORT)])
    save()
    print(f"wrote {res_path}")


if __name__ == "__main__":
    main()
