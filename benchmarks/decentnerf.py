"""DecentNeRF benchmarks: aggregators on one crowd, the learned-weights ablation, leakage against users.

Studies (``--study``), each on the crowd presets of ``privnerf data crowd`` (made here if missing):

* ``main``: ``decentnerf-lego-20``; aggregators learned, fedavg, fednerf, centralized and oracle with the same
  rounds and local epochs (centralized and oracle train the same total steps on one trainer; oracle on the
  person-free copies) -> PSNR/SSIM/LPIPS, leakage, server FLOPs, bytes, client time;
* ``random``: ``decentnerf-lego-20-random`` (the same crowd, views dealt out at random: the prototype's
  layout), the same aggregators;
* ``ablation``: ``decentnerf-ablation-8``; learned vs fedavg, with the alpha trajectories plotted;
* ``users``: ``leakage-users`` (1..10 users); learned -> final leakage per number of users;
* ``dac``: ``decentnerf-lego-20``; the DaC aggregator (group experts distilled on the server, docs/decentnerf.md
  "DaC as an aggregator") against learned at the same rounds and local epochs -> PSNR, each group expert's
  leakage beside the aggregate's, server FLOPs (``dac-fed-lego20.json`` on lego).

Usage: ``python benchmarks/decentnerf.py --study main --scene lego --rounds 20 --local-epochs 0.05``
-> ``benchmarks/results/decentnerf-lego-20.json`` / ``decentnerf-ablation-8.json`` /
``decentnerf-leakage-users.json`` on lego, ``decentnerf-<scene>-<study>.json`` otherwise (+ ``.png`` plots), runs under ``outputs/bench-fed/``.
Runs are sequential (timings are only comparable when nothing else runs). The results file is rewritten after
every run; an interrupted benchmark goes on with ``--resume outputs/bench-fed/<scene>-<study>/<time>`` and its
other arguments unchanged (finished runs are collected as they are, credited to the commit and command in that
directory's ``benchmark.json``; the unfinished one resumes from its last round or checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from privnerf.data.crowd import generate_crowd, load_crowd_source, preset_variants, write_crowd  # noqa: E402
from privnerf.data.crowd.presets import BUILTIN_PRESET_SCENE  # noqa: E402
from privnerf.fed.config import FedConfig  # noqa: E402
from privnerf.fed.local import load_dataset  # noqa: E402
from privnerf.fed.run import run_federated, user_ids  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402

ALL = ["learned", "fedavg", "fednerf", "centralized", "oracle"]
STUDIES = {"main": ("decentnerf-lego-20", ALL),
           "random": ("decentnerf-lego-20-random", ALL),
           "ablation": ("decentnerf-ablation-8", ["learned", "fedavg"]),
           "users": ("leakage-users", ["learned"]),
           "dac": ("decentnerf-lego-20", ["learned", "dac"]),
           "demo5": (None, ALL)}
LEGO_RESULTS = {"main": "decentnerf-lego-20", "random": "decentnerf-lego-20-random",
                "ablation": "decentnerf-ablation-8", "users": "decentnerf-leakage-users",
                "dac": "dac-fed-lego20"}
# demo5: the demo's crowd (built-in scene, 5 users in yaw slices, each with its own person): a quick check
DEMO5 = dict(scene="builtin", users=5, personal="static")


def crowd_dirs(preset: str | None, scene: str, root: Path) -> list[tuple[str, Path]]:
    if preset is None:
        from privnerf.data.crowd import CrowdConfig

        d = root / "builtin" / "demo5"
        if not (d / "transforms.json").exists():
            write_crowd(generate_crowd(CrowdConfig(**DEMO5), quiet=True), d)
        return [("", d)]
    out = []
    src = None
    for variant, cfg in preset_variants(preset, scene):
        d = root / scene / preset / variant if variant else root / scene / preset
        if not (d / "transforms.json").exists():
            src = src or load_crowd_source(BUILTIN_PRESET_SCENE if scene == "builtin" else scene)
            write_crowd(generate_crowd(cfg, src, quiet=True), d)
        out.append((variant, d))
    return out


def alpha_plots(runs: dict[str, Path], stem: Path) -> None:
    from privnerf.eval.report import plot_alpha

    for name, run in runs.items():
        rounds = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines() if x.strip()]
        plot_alpha(rounds, stem.with_name(f"{stem.name}-alpha-{name.replace(' ', '-')}.png"), title=name)


def users_plot(rows: list[dict], out: Path) -> None:
    """Leakage (and its person-free reference, and the scene score of the same renders) against the number
    of users, the paper's Fig. 7c left."""
    import matplotlib.pyplot as plt

    from privnerf.eval.report import finish_plot

    # a row whose rounds never formed an aggregate (no server FLOPs: SecAgg+ with one user) has no leakage to show
    rows = sorted((r for r in rows if r.get("server_flops")), key=lambda r: r["users"])
    n = [r["users"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for key, label in (("leakage_psnr", "leakage (server render vs photo, in the person mask)"),
                       ("leakage_reference_psnr", "person-free reference"),
                       ("leakage_scene_psnr", "server render vs person-free view")):
        pts = [(k, r[key]) for k, r in zip(n, rows) if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=label)
    for k, r in zip(n, rows):
        if r.get("requested"):  # a one-user point: no secure sum, the server sees that user's model
            ax.annotate(f"runs as {r['aggregator']}", (k, r["leakage_psnr"]), textcoords="offset points",
                        xytext=(6, -4), fontsize=7)
    finish_plot(fig, ax, out, "users", "PSNR inside the personal masks (dB)", fontsize=7)


def dac_plot(rows: list[dict], out: Path) -> None:
    """Left: test PSNR per evaluated round of each arm (and DaC's routed experts, its distillation ceiling);
    right: the leakage of what the server sees: learned's aggregate, DaC's global student and each group expert,
    with the person-free reference."""
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.4))
    for r in rows:
        pts = [(h["round"], h["psnr"]) for h in r.get("per_round", []) if h.get("psnr") is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=r["aggregator"])
        if r.get("experts_psnr") is not None and pts:
            ax.plot([pts[-1][0]], [r["experts_psnr"]], "k*", ms=8, label="dac experts (routed, no distillation)")
    ax.set_xlabel("round")
    ax.set_ylabel("test PSNR (dB)")
    ax.legend(fontsize=7)
    names, vals = [], []
    for r in rows:
        names.append(f"{r['aggregator']} global")
        vals.append(r.get("leakage_psnr"))
        for g, v in sorted((r.get("expert_leakage_psnr") or {}).items()):
            names.append(f"dac expert {g}")
            vals.append(v)
    bx.bar(range(len(vals)), [v or 0 for v in vals], color=["C0" if "expert" not in n else "C3" for n in names])
    bx.set_xticks(range(len(vals)), names, rotation=30, ha="right", fontsize=7)
    ref = next((r.get("leakage_reference_psnr") for r in rows if r.get("leakage_reference_psnr")), None)
    if ref:
        bx.axhline(ref, color="gray", ls="--", lw=1, label="person-free reference")
    learned = next((r.get("leakage_psnr") for r in rows if r["aggregator"] == "learned"), None)
    if learned:
        bx.axhline(learned + 1, color="C2", ls=":", lw=1, label="learned + 1 dB (target bound)")
    bx.set_ylabel("leakage PSNR (dB)")
    bx.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def apply_sets(cfg: FedConfig, sets: list[str]) -> FedConfig:
    """``cfg`` with each ``KEY=VALUE`` of ``--set`` applied (dotted keys into the nested configs), rebuilt so every
    setting's own check runs. Raises ``ValueError`` naming the entry that is not a setting or not a valid value."""
    for kv in sets:
        key, eq, val = kv.partition("=")
        obj = cfg
        *parents, leaf = key.split(".")
        try:
            for part in parents:
                obj = getattr(obj, part)
            cur = getattr(obj, leaf)
        except AttributeError:
            raise ValueError(f"--set {kv}: {key!r} is not a FedConfig setting (see privnerf fed run --help)") from None
        if not eq or cur is None or not isinstance(cur, (bool, int, float, str)):
            raise ValueError(f"--set {kv}: give KEY=VALUE for a number, flag or name (this one is {cur!r})")
        try:
            setattr(obj, leaf, val.lower() in ("1", "true", "yes") if isinstance(cur, bool) else type(cur)(val))
        except ValueError:
            raise ValueError(f"--set {kv}: {val!r} is not a {type(cur).__name__}") from None
    return FedConfig.from_json(cfg.to_json())


def merge(old: dict | None, rows: list[dict], preset: str | None, a: argparse.Namespace) -> list[dict]:
    """``rows`` in place of the same (variant, aggregator) rows of an earlier file ``old``; the others kept (each
    row names its commit and command), in the earlier file's order."""
    if old is None:
        return list(rows)
    mine = {(r["variant"], r.get("requested", r["aggregator"])) for r in rows}
    kept = []
    for r in old["rows"]:
        r.setdefault("commit", old.get("commit"))
        r.setdefault("command", old.get("command"))
        if (r["variant"], r.get("requested", r["aggregator"])) not in mine:
            kept.append(r)
    order = [r["aggregator"] for r in old["rows"]]
    variants = [v for v, _ in crowd_dirs(preset, a.scene, a.out / "crowd")]
    return sorted(kept + rows, key=lambda r: (variants.index(r["variant"] or ""),
                                              order.index(r["aggregator"]) if r["aggregator"] in order else len(order)))


def centralized_reference(results: Path) -> dict | None:
    """The centralized row of ``decentnerf-lego-20.json`` (same crowd, rounds and local epochs: all photos on the
    server, which then does all the training), for the DaC study's server FLOPs beside centralized's."""
    path = results / "decentnerf-lego-20.json"
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    row = next((r for r in d["rows"] if r["aggregator"] == "centralized"), None)
    if row is None:
        return None
    return {"file": path.name, "rounds": d.get("rounds"), "local_epochs": d.get("local_epochs"),
            **{k: row.get(k) for k in ("psnr", "server_flops", "client_steps", "wall_s", "commit", "command")}}


def write_results(target: Path, rows: list[dict], started: str, commit: str, command: str,
                  a: argparse.Namespace, extra: dict | None = None) -> None:
    atomic_write_text(target, json.dumps({
        "started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit,
        "command": command, "rounds": a.rounds, "local_epochs": a.local_epochs, "rows": rows, **(extra or {})},
        indent=2, default=str) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=list(STUDIES), default="main")
    p.add_argument("--scene", default="lego", help="lego (400 px, needs ../shared/data) or builtin")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--local-epochs", type=float, default=0.05)
    p.add_argument("--aggregators", nargs="+", default=None,
                   help="run only these; their rows replace the same rows of an existing results file")
    p.add_argument("--variants", nargs="+", default=None,
                   help="run only these variants of the preset (e.g. users-01); their rows replace the same rows")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="FedConfig overrides for every run, e.g. alpha.eta=4 keep_optimizer=true")
    p.add_argument("--tag", default=None,
                   help="results go to <name>-<tag>.json (e.g. r30 for a 30-round schedule beside the 10-round one)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench-fed")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results",
                   help="where <name>.json and its plots go (a trial run elsewhere keeps the recorded results)")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="an interrupted benchmark's run directory (outputs/bench-fed/<scene>-<study>/<time>): "
                        "finished runs there give their rows as they are, unfinished ones resume from their "
                        "last round or checkpoint; pass the interrupted command's other arguments unchanged")
    a = p.parse_args()
    try:  # before anything is written: a misspelt --set would otherwise fail (or pass silently) mid-benchmark
        apply_sets(FedConfig(), a.set)
    except ValueError as e:
        p.error(str(e))
    preset, aggregators = STUDIES[a.study]
    aggregators = a.aggregators or aggregators
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # the code that runs is the code at the start (a commit landing mid-run must not be credited with it)
    commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()
    command = "python benchmarks/decentnerf.py " + " ".join(sys.argv[1:])
    rows, runs = [], {}
    stamp_dir = a.resume or a.out / f"{a.scene}-{a.study}" / datetime.now().strftime("%Y%m%d-%H%M%S")
    if a.resume is not None and not a.resume.is_dir():
        p.error(f"--resume {a.resume}: no such directory")
    # the names for the lego studies
    name = LEGO_RESULTS.get(a.study) if a.scene == "lego" else None
    name = name or f"decentnerf-{a.scene}-{a.study}"
    if a.tag:
        name = f"{name}-{a.tag}"
    results = a.results_dir
    results.mkdir(parents=True, exist_ok=True)
    target = results / f"{name}.json"
    # a subset of aggregators (or a resume) replaces those rows in an existing file and keeps the others;
    # a full run starts the file afresh. Read once, before this run writes anything.
    old = json.loads(target.read_text()) if (a.aggregators or a.variants or a.resume) and target.exists() else None
    if old is not None:
        started = old["started"]
    # which code and command made this directory's runs: a resume credits its finished runs to them
    origin_path = stamp_dir / "benchmark.json"
    if a.resume is None:
        stamp_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(origin_path, json.dumps({"commit": commit, "command": command, "started": started}) + "\n")
        origin = None
    else:
        origin = json.loads(origin_path.read_text()) if origin_path.exists() else {}
        started = origin.get("started", started) if old is None else started
    for variant, data in crowd_dirs(preset, a.scene, a.out / "crowd"):
        if a.variants and variant not in a.variants:
            continue
        for requested in aggregators:
            agg = requested
            if FedConfig(aggregator=agg).secure and len(user_ids(load_dataset(str(data), "train"))) < 2:
                # no secure sum of one user (SecAgg+ needs two): the server sees that user's model, as in fednerf
                agg = "fednerf"
            run_dir = stamp_dir / f"{variant or 'run'}-{agg}"
            finished = a.resume is not None and (run_dir / "results.json").exists()
            resuming = a.resume is not None and run_dir.exists() and not finished
            if finished:
                res = json.loads((run_dir / "results.json").read_text())
                wall = res.get("wall_time_s")  # the run's own clock (the benchmark's is lost with its process)
            else:
                cfg = FedConfig(data=str(data), aggregator=agg, rounds=a.rounds, local_epochs=a.local_epochs,
                                output=run_dir, resume=resuming)
                cfg = apply_sets(cfg, a.set)
                t0 = time.perf_counter()
                res = run_federated(cfg, quiet=True)
                wall = time.perf_counter() - t0
            rounds = [json.loads(x) for x in (Path(res["run_dir"]) / "rounds.jsonl").read_text().splitlines() if x.strip()]
            row = {"variant": variant or None, "aggregator": agg, "wall_s": None if wall is None else round(wall, 1),
                   **{k: res.get(k) for k in ("psnr", "ssim", "lpips", "leakage_psnr", "leakage_psnr_max_round",
                                             "leakage_reference_psnr", "leakage_scene_psnr",
                                             "server_flops", "client_training_flops", "client_steps",
                                             "client_train_time_s", "bytes_up_per_client_per_round", "users",
                                             "server_flops_detail", "expert_leakage_psnr", "expert_leakage_psnr_max",
                                             "experts_psnr", "run_dir")},
                   "per_round": [{k: h.get(k) for k in ("round", "psnr", "leakage_psnr", "leakage_scene_psnr", "alpha",
                                                         "round_time_s", "expert_leakage_psnr", "group_users",
                                                         "distill") if k in h}
                                 for h in rounds]}
            row["commit"], row["command"] = commit, command
            if finished:
                # made before the interruption: by the original code and command where benchmark.json says them
                row["commit"] = origin.get("commit", "unrecorded")
                row["command"] = origin.get("command", "unrecorded")
                row["collected_by"] = command
            elif resuming:
                row["resumed"] = True  # its wall_s counts only the part after the resume
            if agg != requested:
                row["requested"] = requested
                row["note"] = f"one user: no secure sum is possible, so {requested} runs as {agg} (the server sees it)"
            rows.append(row)
            runs[f"{variant + ' ' if variant else ''}{agg}"] = Path(res["run_dir"])
            print(f"{variant or '':10s} {agg:12s} PSNR {res['psnr']:.2f}  leakage {res['leakage_psnr']:.2f}  "
                  f"server FLOPs {res['server_flops']:.3g}  ({row['wall_s'] or 0:.0f} s)", flush=True)
            # after every run, so an interrupted benchmark keeps what it finished
            extra = None
            if a.study == "dac" and a.scene == "lego":
                extra = {"centralized_reference": centralized_reference(results)}
            write_results(target, merge(old, rows, preset, a), started, commit, command, a, extra)
    if a.study == "ablation":
        alpha_plots(runs, results / name)
    if a.study == "users":
        users_plot(merge(old, rows, preset, a), results / f"{name}.png")  # every variant's row
    if a.study == "dac":
        dac_plot(merge(old, rows, preset, a), results / f"{name}.png")
    print(f"-> {results / name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
