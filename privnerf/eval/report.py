"""An HTML report for a federated run: what a person would rather look at than read.

``write_fed_report(run_dir)`` reads ``rounds.jsonl``, ``results.json`` and the renders the harness left in
``renders/`` and writes ``report.html`` (plots as PNGs beside it; no network resources), returning its path.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from privnerf.data.io import save_figure  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402


def finish_plot(fig, ax, out: Path, xlabel: str, ylabel: str, **legend) -> None:
    """Label, grid and legend (``legend`` goes to ``ax.legend``) one line plot, write it to ``out`` and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(**legend)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    plt.close(fig)


def _plot_curves(rounds: list[dict], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    r = [h["round"] for h in rounds if h.get("psnr") is not None]
    ax.plot(r, [h["psnr"] for h in rounds if h.get("psnr") is not None], "o-", label="global model, clean views")
    rl = [h["round"] for h in rounds if h.get("leakage_psnr") is not None]
    ax.plot(rl, [h["leakage_psnr"] for h in rounds if h.get("leakage_psnr") is not None], "s--",
            label="server render inside users' personal masks (leakage)")
    rs = [h["round"] for h in rounds if h.get("leakage_scene_psnr") is not None]
    if rs:
        ax.plot(rs, [h["leakage_scene_psnr"] for h in rounds if h.get("leakage_scene_psnr") is not None], "^:",
                label="the same renders against the person-free view (high = shows the place)")
    ref = next((h["leakage_reference_psnr"] for h in rounds if h.get("leakage_reference_psnr") is not None), None)
    if ref is not None:
        ax.axhline(ref, color="grey", ls=":", label="leakage of a perfect person-free model (reference)")
    finish_plot(fig, ax, out, "round", "PSNR (dB)", fontsize=8)


def plot_alpha(rounds: list[dict], out: Path, title: str | None = None) -> bool:
    """The users' normalised aggregation weights per round (from ``rounds.jsonl``); False if there are none."""
    users = sorted({u for h in rounds for u in h.get("alpha", {})}, key=int)
    if not users:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for u in users:
        pts = [(h["round"], h["alpha"][u]) for h in rounds if u in h.get("alpha", {})]
        total = [sum(h["alpha"].values()) for h in rounds if u in h.get("alpha", {})]
        ax.plot([p[0] for p in pts], [p[1] / t for p, t in zip(pts, total)], "o-", ms=3, label=f"user {u}")
    if title:
        ax.set_title(title)
    finish_plot(fig, ax, out, "round", "aggregation weight (normalised)", fontsize=7, ncol=2)
    return True


def _fmt(v, digits=2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-2) else f"{v:.{digits}f}"
    return html.escape(str(v))


def _aggregation_kind(aggregator: str | None) -> str:
    """What the server of a run with this aggregator holds, in words (asked of :class:`FedConfig`)."""
    from privnerf.fed.config import AGGREGATORS, FedConfig

    if aggregator not in AGGREGATORS:
        return f"unknown aggregator {aggregator!r}"
    cfg = FedConfig(aggregator=aggregator)
    if cfg.aggregator == "dac":
        return "Flower SecAgg+, one sum per group of users (the server unmasks only group sums)"
    if cfg.secure:
        return "Flower SecAgg+ (the server unmasks only sums)"
    if cfg.one_trainer:
        return f"n/a (one trainer: {aggregator})"
    return "none (the server sees each update)"


def write_fed_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines() if line.strip()]
    results = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").exists() else {}
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    figs = run_dir / "report_files"
    figs.mkdir(exist_ok=True)
    _plot_curves(rounds, figs / "curves.png")
    has_alpha = plot_alpha(rounds, figs / "alpha.png")

    rows = "".join(
        f"<tr><td>{h['round']}</td><td>{_fmt(h.get('psnr'))}</td><td>{_fmt(h.get('ssim'), 3)}</td>"
        f"<td>{_fmt(h.get('lpips'), 3)}</td><td>{_fmt(h.get('leakage_psnr'))}</td>"
        f"<td>{_fmt(h.get('round_time_s'), 1)}</td><td>{_fmt((h.get('bytes_up_per_client') or 0) / 1e6, 1)}</td></tr>"
        for h in rounds)
    strip = "".join(
        f"<figure><img src='renders/global/{p.name}'><figcaption>{p.stem}</figcaption></figure>"
        for p in sorted((run_dir / "renders" / "global").glob("round-*.png")))
    users = ""
    udir = run_dir / "renders" / "users"
    for photo in sorted(udir.glob("user-*-photo.png")) if udir.exists() else []:
        stem = photo.name[: -len("-photo.png")]
        cells = [(f"{stem}-photo.png", "the user's photo"),
                 (f"{stem}-server.png", "what the server can render (global model)"),
                 (f"{stem}-user.png", "what the user renders (global + personal, on the device)")]
        users += ("<div class='row'><h3>" + html.escape(stem.replace("-", " ")) + "</h3>" + "".join(
            f"<figure><img src='renders/users/{f}'><figcaption>{c}</figcaption></figure>"
            for f, c in cells if (udir / f).exists()) + "</div>")
    summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(results.get(k), 4)}</td></tr>" for k in (
        "aggregator", "users", "rounds", "psnr", "ssim", "lpips", "leakage_psnr", "leakage_reference_psnr", "server_flops",
        "client_training_flops", "bytes_up_per_client_per_round", "client_train_time_s", "wall_time_s"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>privnerf federated run</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
img{{image-rendering:pixelated;width:160px;border:1px solid #ccc}} figure{{display:inline-block;margin:4px;text-align:center;font-size:12px}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}
.row{{margin-bottom:1em}} .plots img{{width:520px;image-rendering:auto;border:none}}</style></head><body>
<h1>Federated run: {html.escape(str(config.get('aggregator', '')))}</h1>
<p>{html.escape(str(config.get('data', '')))} &middot; {_fmt(results.get('users'))} users &middot;
{_fmt(results.get('rounds'))} rounds &middot; secure aggregation: {html.escape(_aggregation_kind(config.get('aggregator')))}</p>
<h2>Summary</h2><table>{summary}</table>
<h2>Per round</h2><div class="plots"><img src="report_files/curves.png">{'<img src="report_files/alpha.png">' if has_alpha else ''}</div>
<table><tr><th>round</th><th>PSNR</th><th>SSIM</th><th>LPIPS</th><th>leakage PSNR</th><th>time (s)</th><th>MB up / client</th></tr>{rows}</table>
<h2>Global model after each round (first clean view)</h2>{strip}
<h2>What the server can render, next to what each user sees</h2>
<p>Personal content (the friend in every photo) should appear in the user's own render and not in the server's.</p>{users}
</body></html>"""
    path = run_dir / "report.html"
    atomic_write_text(path, page)
    return path
