"""The HTML report of a face study: the three meshes side by side, the σ images, the attacks' outputs.

``write_report(path, result, obscured_dir, results_dir)`` writes one self-contained page (images embedded as
data URIs, no network resources): the face-region geometry table of ``benchmarks/face_head.py``'s result,
the figure of the three reconstructions rendered from the most frontal views, a few σ previews exactly as
the person's device wrote them, and, when ``face-privacy.json`` / ``face-privacy.png`` exist in
``results_dir``, the privacy study's summary and figure (raw, σ, inversions).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from privnerf.train.checkpoint import atomic_write_text


def _img(path: Path, width: int | None = None) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    w = f' width="{width}"' if width else ""
    return f'<img src="data:image/png;base64,{data}"{w} alt="{html.escape(Path(path).name)}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[list], head: list[str]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows]
    return "\n".join(out) + "</table>"


def write_report(path: Path, result: dict, obscured_dir: Path, results_dir: Path) -> Path:
    """Write the report to ``path`` (atomically) and return it."""
    path = Path(path)
    parts = ["<!doctype html><meta charset='utf-8'><title>privnerf face study</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:3px 8px;"
             "border-bottom:1px solid #ddd;text-align:right}img{margin:2px}</style>",
             "<h1>Identity-Obscured NeRF on the head</h1>",
             f"<p>{result.get('neutral_views')} neutral views (raw RGB), {result.get('sensitive_views')} sensitive "
             f"views (σ = {html.escape(json.dumps(result.get('operator')))} only); {result.get('steps')} steps per "
             f"reconstruction ({result.get('stage2_steps')} in stage 2 for the obscured one). Face region: "
             f"{result.get('face_cone_deg')}° around the face direction.</p>"]
    rows = []
    for name, sc in result.get("face_region_vs_full", {}).items():
        for tau, m in sc.items():
            rows.append([name, tau, m["chamfer_l1"], m["chamfer_l1_frac"], m.get("normal_consistency"), m["fscore"]])
    parts.append("<h2>Face-region geometry against the full reconstruction</h2>")
    parts.append(_table(rows, ["run", "τ", "Chamfer-L1", "Chamfer / diagonal", "normal consistency", "F-score"]))
    gap = result.get("gap_closed")
    parts.append(f"<p>Gap closed (rear-only → full, face-region Chamfer): "
                 f"<b>{'–' if gap is None else f'{100 * gap:.0f} %'}</b> (bar: 70 %).</p>")
    fig = Path(results_dir) / "face-head.png"
    if fig.exists():
        parts += ["<h2>The three reconstructions (shaded meshes, most frontal sensitive views)</h2>", _img(fig)]
    previews = sorted((Path(obscured_dir) / "sensitive").glob("*.png"))[:4]
    if previews:
        parts.append("<h2>σ images as written on the person's device</h2>")
        parts += [_img(p, 240) for p in previews]
    pj, pf = Path(results_dir) / "face-privacy.json", Path(results_dir) / "face-privacy.png"
    if pj.exists():
        summary = json.loads(pj.read_text()).get("summary", {})
        parts.append("<h2>Attacks on the privacy claim</h2>")
        rows = [[k] + [_fmt(v.get(c)) if isinstance(v, dict) else _fmt(v) for c in
                       ("detection_rate", "verification_rate", "psnr", "ssim")] for k, v in summary.items()]
        parts.append(_table(rows, ["probe", "detected", "verified at 0.6", "PSNR", "SSIM"]))
    if pf.exists():
        parts.append(_img(pf))
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
