"""Tables (markdown, to stdout) and a PSNR-vs-time plot from ``benchmarks/results/*.json``.

BENCHMARKS.md quotes this output; nothing there is typed by hand from elsewhere.
Usage: ``python benchmarks/summarize.py`` → prints markdown, writes ``benchmarks/results/engine-psnr-vs-time.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from privnerf.data.io import save_figure  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def fmt(v, nd=2):
    return "–" if v is None else f"{v:.{nd}f}"


def first_time_reaching(curve: list[dict], psnr: float):
    for p in curve:
        if p["psnr"] >= psnr:
            return p["time_s"]
    return None


def engine_tables() -> list[str]:
    out = []
    for name in ("tiny-lego", "lego400"):
        path = RESULTS / f"engine-{name}.json"  # check runs (engine-<case>-<tag>.json) are listed apart
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        s, g, v = r["summary"], r["runs"]["grid"], r["runs"]["vanilla"]
        out.append(f"### {name}  ({r['data']}; started {r['started']}; commit {r['commit']}; `{r['command']}`)\n")
        out.append(f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']}.\n")
        out.append("| field | train s | steps | test views | PSNR | SSIM | LPIPS | rays/s | samples/s | render s/frame |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for label, run in (("grid (ours)", g), ("vanilla 8x256 MLP", v)):
            out.append(f"| {label} | {run['train_time_s']:.0f} | {run['steps']} | {run['num_images']} | "
                       f"{fmt(run['psnr'])} | {fmt(run['ssim'], 4)} | {fmt(run['lpips'], 4)} | "
                       f"{run['rays_per_s']:,.0f} | {run['samples_per_s']:,.0f} | {run['render_time_per_image_s']:.2f} |")
        if s["vanilla_views"] != s["grid_views"]:
            out.append(f"\nOn the {s['vanilla_views']} views the MLP was scored on, the grid field scores "
                       f"{s['grid_psnr_on_vanilla_views']:.2f} dB.")
        curve = g.get("curve", [])
        if curve:
            pts = ", ".join(f"{p['time_s']:.0f}s {p['psnr']:.2f}" for p in curve)
            out.append(f"\nGrid PSNR-vs-time (first {g.get('curve_images', 4)} test views): {pts}")
            for target in (22.69, 28.0, 30.0):
                t = first_time_reaching(curve, target)
                out.append(f"- first curve point at or above {target} dB: {'not reached' if t is None else f'{t:.0f} s'}")
        out.append("")
    return out


def gpu_table() -> list[str]:
    """Engine runs on a GPU (``engine.py --device cuda --tag ...``), one row per field."""
    out = []
    for path in sorted(RESULTS.glob("engine-*.json")):
        r = json.loads(path.read_text())
        if path.name == "engine-loss-sweep.json" or not r.get("machine", {}).get("cuda"):
            continue
        m = r["machine"]
        for field, run in r["runs"].items():
            out.append(f"| {r['case']} | {'grid (ours)' if field == 'grid' else 'vanilla 8x256 MLP'} | {m.get('gpu')}, "
                       f"torch {m['torch']} | {run['train_time_s']:.0f} | {run['steps']:,} | {run['num_images']} | "
                       f"{fmt(run['psnr'])} | {fmt(run['ssim'], 3)} | {fmt(run['lpips'], 3)} | {run['rays_per_s']:,.0f} | "
                       f"{run['render_time_per_image_s']:.2f} | `{path.name}`, commit {r['commit']}: `{r['command']}` |")
    if not out:
        return []
    return (["### Engine on a GPU", "",
             "| case | field | device | train s | steps | test views | PSNR | SSIM | LPIPS | rays/s | render s/frame | run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"] + out + [""])


def check_runs() -> list[str]:
    """Grid-only check runs (``engine.py --fields grid --tag ...``): not benchmark rows, no baseline."""
    out = []
    for path in sorted(RESULTS.glob("engine-*-*.json")):
        r = json.loads(path.read_text())
        if path.name == "engine-loss-sweep.json" or "vanilla" in r["runs"] or r.get("machine", {}).get("cuda"):
            continue
        g = r["runs"]["grid"]
        curve = ", ".join(f"{p['time_s']:.0f}s {p['psnr']:.2f}" for p in g.get("curve", []))
        out.append(f"- `{path.name}` (commit {r['commit']}, `{r['command']}`): {g['psnr']:.2f} dB / "
                   f"{g['ssim']:.4f} / LPIPS {fmt(g['lpips'], 4)} on {g['num_images']} test views after "
                   f"{g['steps']} steps ({g['train_time_s']:.0f} s), {g['rays_per_s']:,.0f} rays/s, "
                   f"{g['render_time_per_image_s']:.2f} s/frame; curve: {curve}")
    return out + [""] if out else out


def loss_sweep_table() -> list[str]:
    """Short lego 400 triage runs (``benchmarks/loss_sweep.py``)."""
    r = load("engine-loss-sweep")
    if r is None:
        return []
    rows = sorted(r["runs"].items(), key=lambda kv: kv[1]["psnr"], reverse=True)
    cpus = sorted({f"{row['machine']['cpu']}, {row['machine']['cores']} cores" for _, row in rows})
    out = [f"### Loss sweep: lego 400, short runs, PSNR on the first 4 test views "
           f"(`python benchmarks/loss_sweep.py`; {'; '.join(cpus)})", ""]
    out += ["| run | settings | budget s | PSNR | SSIM | steps | rays/s | samples per ray | curve (s: dB) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows:
        curve = ", ".join(f"{p['time_s']:.0f}: {p['psnr']:.2f}" for p in row["curve"])
        out.append(f"| {name} | `{' '.join(row['settings'])}` | {row['seconds']:.0f} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['steps']} | "
                   f"{row['rays_per_s']:,.0f} | {row['samples_per_s'] / row['rays_per_s']:.1f} | {curve} |")
    # rows keep their own provenance note (the first rows were run before the script was committed)
    notes: dict[str, list[str]] = {}
    for name, row in rows:
        if row.get("note"):
            notes.setdefault(row["note"], []).append(name)
    out.append("")
    for note, names in notes.items():
        out.append(f"- {', '.join(names)}: {note}")
    return out + [""]


def field_ops_table() -> list[str]:
    path = RESULTS / "field-ops.json"
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    out = [f"### Field choice ({r['date']}, {r['threads']} threads, torch {r['torch']}, {r['points']:,} points, "
           f"`{r['command']}`)\n", "| encoding | fwd+bwd ms | ns/point | optimizer ms | params | note |",
           "|---|---|---|---|---|---|"]
    for name, row in r["results"].items():
        out.append(f"| {name} | {row['fwd_bwd_ms']:.1f} | {row['ns_per_point']:.0f} | "
                   f"{fmt(row['optimizer_ms'], 1)} | {row['params'] / 1e6:.1f}M | {row['note']} |")
    return out + [""]


def crowd_tables() -> list[str]:
    out = []
    path = RESULTS / "lego-depth.json"
    if path.exists():
        r = json.loads(path.read_text())
        out += [f"### Lego depth decoding (`python benchmarks/lego_depth.py`; cameras {r['camera_distance']:.2f} from "
                f"the origin; 8-bit step {r['quantisation_step']:.3f})\n",
                "| decoding | median reprojection disagreement | vs NeRF depth per level: mean / p90 / worst | "
                "extent of unprojected points (1-99%) | ray depth (1-99%) |",
                "|---|---|---|---|---|"]
        for name, c in r["candidates"].items():
            lo, hi = c["extent_p1_p99"]
            ext = " ".join(f"{a:.2f}..{b:.2f}" for a, b in zip(lo, hi))
            nerf = c.get("nerf_level_error")
            vs = f"{nerf['mean']:.3f} / {nerf['p90']:.3f} / {nerf['max']:.3f}" if nerf else "–"
            out.append(f"| {name} | {c['median_reprojection_error']:.4f} | {vs} | {ext} | "
                       f"{c['ray_depth_p1_p99'][0]:.2f}..{c['ray_depth_p1_p99'][1]:.2f} |")
        out.append("")
    path = RESULTS / "crowd-presets.json"
    if path.exists():
        r = json.loads(path.read_text())
        out += [f"### Crowd presets (finished {r['finished']}; commit {r['commit']}; `{r['command']}`)\n",
                "| scene | preset | variant | users | photos | photos per user | personal pixels | per user (min..max) | generate s |",
                "|---|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            ppu, fr = row["photos_per_user"], row["personal_fraction_per_user"]
            out.append(f"| {row['scene']} | {row['preset']} | {row['variant'] or ''} | {row['users']} | {row['photos']} | "
                       f"{min(ppu)}..{max(ppu)} | {100 * row['personal_fraction']:.1f}% | "
                       f"{100 * min(fr):.1f}..{100 * max(fr):.1f}% | {row['generate_s']:.0f} |")
        out.append("")
    return out


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def head(title: str, columns: list[str]) -> list[str]:
    """A markdown section title and table header."""
    return [f"### {title}\n", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def fed_tables() -> list[str]:
    out = []
    r = load("secagg-bias")
    if r:
        out += head(f"SecAgg+ arithmetic against the plain weighted mean ({r['date']}; {r['values_per_user']:,} values x "
                    f"{r['users']} users; `{r['command']}`)",
                    ["value scale", "Flower default (float32, num_examples weights): bias / rms", "float64: bias / rms",
                     "privnerf scaling: bias / rms", "privnerf bound (max abs)"])
        for row in r["rows"]:
            cells = [f"{100 * row[k]['relative_bias']:+.3f}% / {100 * row[k]['rms_relative']:.3f}%"
                     for k in ("flower-default", "float64", "privnerf")]
            out.append(f"| {row['value_scale']:g} | " + " | ".join(cells) + f" | {row['privnerf_bound_max_abs']:.2g} |")
        out.append("")
    for path in sorted(RESULTS.glob("decentnerf-*.json")):
        r = json.loads(path.read_text())
        if "finished" not in r:  # an unfinished run's saved rounds (e.g. -x5-rms-rounds): no table of results
            out += [f"{path.stem}: rounds of an unfinished run, no final evaluation (see BENCHMARKS.md)", ""]
            continue
        out += head(f"{path.stem} (finished {r['finished']}; commit {r['commit']}; `{r['command']}`)",
                    ["variant", "aggregator", "users", "PSNR", "SSIM", "LPIPS", "leakage PSNR",
                     "person-free reference", "server render vs person-free view", "client steps", "server FLOPs",
                     "client training FLOPs", "MB up per client per round", "wall s", "commit"])
        # a row made by another command than the file's (an earlier --aggregators run, or a run finished before
        # an interruption and collected by --resume) names it in a footnote
        notes: dict[str, int] = {}
        for row in r["rows"]:
            mb = row.get("bytes_up_per_client_per_round")
            commit = row.get("commit", r["commit"])
            cmd = row.get("command", r["command"])
            if cmd != r["command"]:
                extra = f" (collected by `{row['collected_by']}`)" if row.get("collected_by") else ""
                commit += f" [{notes.setdefault(f'`{cmd}`{extra}', len(notes) + 1)}]"
            wall = "–" if row.get("wall_s") is None else f"{row['wall_s']:.0f}"
            if row.get("resumed"):
                wall += " (after resuming)"
            out.append(f"| {row['variant'] or ''} | {row['aggregator']} | {row['users']} | {fmt(row['psnr'])} | "
                       f"{fmt(row['ssim'], 3)} | {fmt(row['lpips'], 3)} | {fmt(row['leakage_psnr'])} | "
                       f"{fmt(row.get('leakage_reference_psnr'))} | {fmt(row.get('leakage_scene_psnr'))} | {row['client_steps']} | "
                       f"{row['server_flops']:.3g} | {row['client_training_flops']:.3g} | "
                       f"{'–' if mb is None else f'{mb / 1e6:.1f}'} | {wall} | {commit} |")
        out.append("")
        out += [f"[{n}] {text}" for text, n in notes.items()] + ([""] if notes else [])
    return out


def split_tables() -> list[str]:
    from split import sa_sma_heads, strongest_attack  # benchmarks/split.py: one definition of each

    out = []
    for path in sorted(RESULTS.glob("split-*.json")):
        r = json.loads(path.read_text())
        machines = {row["provenance"]["machine"] for sec in ("central", "split") for row in r.get(sec, {}).values()
                    if "machine" in row.get("provenance", {})}
        machine = f"the machine of each row's footnote ({len(machines)} here)" if len(machines) > 1 else r["machine"]
        out.append(f"Machine: {machine}. {r['steps']} steps of {r['rays']} rays; scores on the first {r['views']} "
                   f"test views.\n")
        # rows merged from several --only runs each carry their own command and commit ("provenance")
        commands: dict[str, int] = {}

        def ref(row: dict) -> str:
            p = row.get("provenance") or {"commit": r["commit"], "command": r["command"]}
            where = f" on {p['machine']}" if "machine" in p else ""
            n = commands.setdefault(f"commit {p['commit']}{where}: `{p['command']}`", len(commands) + 1)
            return f"{p['commit']} [{n}]"

        def reattack(row: dict) -> str:
            # the run's attacks re-scored offline later (--reattack) by other code: name that command too
            p = row.get("attack_provenance")
            return f"; attacks {ref({'provenance': p})}" if p else ""

        c = r["central"]
        if c:
            out += head(f"{path.stem}: centralized references", ["run", "PSNR", "SSIM", "LPIPS", "train s", "commit"])
            for tag, row in c.items():
                out.append(f"| central-{tag} | {fmt(row['psnr'])} | {fmt(row['ssim'], 3)} | {fmt(row['lpips'], 3)} | "
                           f"{row['train_time_s']:.0f} | {ref(row)} |")
            out.append("")
        if r["split"]:
            out += head(f"{path.stem}: split training per defense, attacked online",
                        ["run", "utility PSNR", "SSIM", "replay attacker", "SMA attacker",
                         "principal direction (grey / false colour; per block)", "geometry only",
                         "constant colour", "strongest, colour-calibrated", "replay: training pixels PSNR",
                         "MB up / down per step", "train s", "commit"])
        for tag, row in r["split"].items():
            a = row.get("attack", {})
            rp, sm, g = a.get("replay", {}), a.get("sma", {}), a.get("geometry_only", {})
            direction = "–"
            if "direction" in a:
                other, rule = a["direction"].get("psnr_other_sign"), a["direction"].get("depth_rule_sign")
                note = [f"other sign {fmt(other)}"] if other is not None else []
                note += [f"depth rule: {'same' if rule > 0 else 'other'}"] if rule is not None else []
                direction = (fmt(a["direction"]["psnr"]) + (f" ({'; '.join(note)})" if note else "")
                             + f" / {fmt(a['direction_colour']['psnr'])}")
                if "local_direction" in a:
                    direction += f"; {fmt(a['local_direction']['psnr'])} ({a['local_direction']['blocks']}^3 blocks)"
            out.append(f"| {tag} | {fmt(row['psnr'])} | {fmt(row['ssim'], 3)} | {fmt(rp.get('psnr'))} | "
                       f"{fmt(sm.get('psnr'))} | {direction} | {fmt(g.get('psnr'))} | {fmt(row['constant_colour_psnr'])} | "
                       f"{fmt(strongest_attack(row, 'calibrated_psnr'))} | {fmt(rp.get('train_pixels_psnr'))} | {row['bytes_up_per_step'] / 1e6:.1f} / "
                       f"{row['bytes_down_per_step'] / 1e6:.1f} | {row['train_time_s']:.0f} | {ref(row)}{reattack(row)} |")
        if r["split"]:
            out.append("")
        sa = [(tag, n, row, {"provenance": row["sa_sma"].get("provenance"), **at}) for tag, row in r["split"].items()
              for n, at in sorted(row.get("sa_sma", {}).get("leaked", {}).items(), key=lambda x: int(x[0]))]
        if sa:
            out += head(f"{path.stem}: SA-SMA, the attack heads fine-tuned on leaked training photos (server grids "
                        "frozen)", ["run", "leaked photos", "utility PSNR", "SMA + photos", "replay + photos",
                                    "keyed head + photos", "calibrated (best)", "constant colour", "commit"])
            for tag, n, row, at in sa:
                best = max((v["calibrated_psnr"] for v in sa_sma_heads(at).values() if "calibrated_psnr" in v),
                           default=None)
                out.append(f"| {tag} | {n} | {fmt(row['psnr'])} | {fmt(at.get('sma', {}).get('psnr'))} | "
                           f"{fmt(at.get('replay', {}).get('psnr'))} | {fmt(at.get('sa_sma_keyed', {}).get('psnr'))} | "
                           f"{fmt(best)} | {fmt(row['constant_colour_psnr'])} | "
                           f"{ref({'provenance': at['provenance']})} |")
            out.append("")
        if commands:
            out += [f"- [{n}] {text}" for text, n in commands.items()] + [""]
        t = r.get("transport")
        if t:
            out += head(f"{path.stem}: transport cost (60 steps, attacks off)", ["transport", "ms per step",
                                                                                  "MB up per step", "MB down per step"])
            for k, row in t.items():
                out.append(f"| {k} | {1000 * row['s_per_step']:.0f} | {row['bytes_up_per_step'] / 1e6:.1f} | "
                           f"{row['bytes_down_per_step'] / 1e6:.1f} |")
            out.append("")
    return out


def keyed_tables() -> list[str]:
    """benchmarks/keyed_decoder.py: central full-decoder training with and without a client key, every attack
    that reads the server's grids (no gradient attack, no noise)."""
    out = []
    cols = ["client_head", "direction", "local-direction-4", "local-direction-8", "stolen-head", "sa-sma",
            "sa-sma-keyless", "sa-sma-long", "sa-sma-long-keyless"]
    for path in sorted(RESULTS.glob("keyed-decoder-*.json")):
        r = json.loads(path.read_text())
        out += head(f"{path.stem} (the grids an undefended split server holds, central training; {r['rows'][0]['utility']['steps']} "
                    "steps; PSNR on the test views, colour-calibrated in brackets)",
                    ["key cells", "utility", "train s"] + cols + ["constant colour", "commit"])
        notes: dict[str, int] = {}
        for row in r["rows"]:
            p = row.get("provenance") or {"commit": r.get("commit", "?"), "command": r.get("command", "?")}
            n = notes.setdefault(f"`{p['command']}` ({p.get('finished', r.get('finished'))}"
                                 + (f"; {p['note']}" if p.get("note") else "") + ")", len(notes) + 1)
            cells = [f"{fmt(row[c]['psnr'])} ({fmt(row[c].get('calibrated_psnr'))})" if c in row else "–" for c in cols]
            out.append(f"| {row['key_cells']} | {fmt(row['utility']['psnr'])} | {row['utility']['train_time_s']:.0f} | "
                       + " | ".join(cells) + f" | {fmt(row['constant_colour_psnr'])} | {p['commit']} [{n}] |")
        out.append("")
        out += [f"- [{n}] {text}" for text, n in notes.items()] + [""]
    return out


def surface_tables() -> list[str]:
    out = []
    b = load("surface-builtin")
    if b:
        out += head(f"surface-builtin ({b['started']}, commit {b['commit']}, `{b['command']}`)",
                    ["mode", "train s", "steps", "steps/s", "test PSNR", "Chamfer-L1 / diag", "normal consistency",
                     "F @ 0.5 %", "F @ 1 %", "target met"])
        for m, r in b["rows"].items():
            if "tau_0.01" not in r:
                out.append(f"| {m} | {r['train_time_s']:.0f} | {r['steps']} | {r['steps_per_s']:.1f} | {fmt(r['psnr'])} | "
                           "no surface | – | – | – | no |")
                continue
            t1, t05 = r["tau_0.01"], r["tau_0.005"]
            out.append(f"| {m} | {r['train_time_s']:.0f} | {r['steps']} | {r['steps_per_s']:.1f} | {fmt(r['psnr'])} | "
                       f"{100 * t1['chamfer_l1_frac']:.2f} % | {fmt(t1['normal_consistency'], 3)} | {fmt(t05['fscore'], 3)} | "
                       f"{fmt(t1['fscore'], 3)} | {'yes' if b['meets_target'].get(m) else 'no'} |")
        out.append("")
    lg = load("surface-lego")
    if lg:
        out += head(f"surface-lego ({lg['started']}, commit {lg['commit']}, `{lg['command']}`)",
                    ["field", "train s", "steps", "steps/s", "test views", "PSNR", "SSIM", "LPIPS", "mesh faces"])
        for k, r in lg["rows"].items():
            out.append(f"| {k} | {r['train_time_s']:.0f} | {r['steps']} | {r['steps_per_s']:.1f} | {r['num_images']} | "
                       f"{fmt(r['psnr'])} | {fmt(r['ssim'], 3)} | {fmt(r['lpips'], 3)} | {r['mesh_faces']} |")
        out.append(f"\nPSNR gap {lg['psnr_gap_db']:.2f} dB (bar: 1 dB); a surface step costs "
                   f"{lg['step_cost_ratio']:.2f}x a density step (bar: 2x).\n")
    return out


def face_tables() -> list[str]:
    out = []
    f = load("face-head")
    if f:
        out += head(f"face-head ({f['started']}, commit {f['commit']}, `{f['command']}`)",
                    ["run", "RGB views", "σ views", "steps", "train s", "face Chamfer-L1 / diag vs full",
                     "normal consistency", "F @ 1 %", "F @ 2 %"])
        for n, r in f["runs"].items():
            sc = f["face_region_vs_full"].get(n)
            cells = ["(reference)", "–", "–", "–"] if sc is None else [
                f"{100 * sc['tau_0.01']['chamfer_l1_frac']:.2f} %", fmt(sc["tau_0.01"]["normal_consistency"], 3),
                fmt(sc["tau_0.01"]["fscore"], 3), fmt(sc["tau_0.02"]["fscore"], 3)]
            out.append(f"| {n} | {r['neutral_views']} | {r['sensitive_views']} | {r['steps']} | {r['train_time_s']:.0f} | "
                       + " | ".join(cells) + " |")
        g = f.get("gap_closed")
        out.append(f"\nGap closed (rear-only -> full, face-region Chamfer): {'–' if g is None else f'{100 * g:.0f} %'} "
                   "(bar: 70 %).\n")
    pr = load("face-privacy")
    if pr:
        out += head(f"face-privacy ({pr.get('date', pr.get('started', '?'))}, `{pr.get('command', '?')}`)",
                    ["probe", "n", "face detected", "verified at 0.6", "PSNR vs raw", "SSIM"])
        for k, v in pr["summary"].items():
            if isinstance(v, dict):
                out.append(f"| {k} | {v.get('n', '–')} | {fmt(v.get('detection_rate'))} | {fmt(v.get('verification_rate'))} | "
                           f"{fmt(v.get('psnr'))} | {fmt(v.get('ssim'), 3)} |")
        out.append("")
    return out


def plot() -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases = [n for n in ("tiny-lego", "lego400") if (RESULTS / f"engine-{n}.json").exists()]
    if not cases:
        return None
    fig, axes = plt.subplots(1, len(cases), figsize=(5.5 * len(cases), 4), squeeze=False)
    for ax, name in zip(axes[0], cases):
        r = json.loads((RESULTS / f"engine-{name}.json").read_text())
        lines = [(f"grid (ours, commit {r['commit']})", r["runs"]["grid"], "o-"),
                 (f"vanilla MLP (commit {r['commit']})", r["runs"]["vanilla"], "s--")]
        for path in sorted(RESULTS.glob(f"engine-{name}-*.json")):  # grid-only check runs of the same case
            check = json.loads(path.read_text())
            if check.get("machine", {}).get("cuda"):  # a GPU run does not belong on the 2-core CPU axes
                continue
            if "grid" in check.get("runs", {}) and "vanilla" not in check["runs"]:
                tag = path.stem[len(f"engine-{name}-"):]
                lines.append((f"grid, check run '{tag}' (commit {check['commit']})", check["runs"]["grid"], "^-"))
        for label, run, style in lines:
            c = run.get("curve") or []
            xs = [p["time_s"] for p in c] + [run["train_time_s"]]
            ys = [p["psnr"] for p in c] + [run["psnr"]]
            ax.plot(xs, ys, style, label=f"{label} (final {run['psnr']:.2f} dB)", markersize=3)
        if name == "lego400":
            ax.axhline(22.69, color="gray", ls=":", label="nerfacto CPU, 20 min: 22.69 dB")
            ax.axhline(30.0, color="red", ls=":", label="target 30 dB @ 20 min")
        else:
            ax.axhline(28.0, color="red", ls=":", label="target 28 dB @ 3 min")
        ax.set_title(f"{name}: test PSNR vs training time (2 CPU cores)")
        ax.set_xlabel("training wall-clock (s)")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = RESULTS / "engine-psnr-vs-time.png"
    save_figure(fig, out, dpi=90)
    return out


if __name__ == "__main__":
    print("\n".join(engine_tables() + gpu_table() + field_ops_table() + check_runs() + loss_sweep_table() + crowd_tables() + fed_tables() + split_tables() + keyed_tables() + surface_tables() + face_tables()))
    p = plot()
    if p:
        print(f"plot: {p}")
