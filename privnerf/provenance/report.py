"""``privnerf provenance``: train a provenance field on a finished run and write what it says, as images, JSON
and an HTML report.

Output layout (``--out DIR``)::

    provenance.pt          the provenance field (format privnerf-provenance/1; reads the run's field)
    provenance.json        settings, timings and per-view / per-user figures
    views/view_XX.png      per held-out camera: the render, coverage (how well what it sees was observed from
                           around it), depth uncertainty (triangulation + unobserved space in front) and, on crowds, contributors and the flagged
                           single-user regions
    report.html            all of the above on one page

Contributors come from ``--data CROWD`` (a crowd dataset whose ``train`` frames carry ``user_id``; the run must
have been trained on those frames, matched by name). A region is flagged **single-user** where one contributor
holds at least ``single_share`` (0.9) of its visible observations: what only one person photographed can
reveal that person's private content, so it should be masked or consented to before the model is shared.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from privnerf.data.errors import SceneError


@dataclass
class ProvenanceJob:
    checkpoint: Path
    out: Path
    data: str | None = None
    views: int = 8
    steps: int = 2000
    rays_per_view: int = 2048
    single_share: float = 0.9
    seen_floor: float = 0.2
    """Pixels whose provenance strength is below this are "not seen" (neither coverage nor a flag)."""
    seed: int = 0


def user_ids(names: list[str], data: str) -> np.ndarray:
    """Contributor id of each of the run's training views, read from crowd ``data``'s ``train`` frames by name."""
    from privnerf.data.loader import load_scene

    crowd = load_scene(data, "train")
    ids = {}
    for n, meta in zip(crowd.names, crowd.frame_meta, strict=False):
        if "user_id" in meta:
            ids[n] = int(meta["user_id"])
    if not ids:
        raise SceneError(data, "no frame has a user_id: --data must be a crowd dataset (privnerf data crowd)")
    missing = [n for n in names if n not in ids]
    if missing:
        raise SceneError(data, f"{len(missing)} of the run's {len(names)} training views are not frames of this "
                               f"crowd (first: {missing[0]!r}); was the run trained on it?")
    return np.array([ids[n] for n in names], dtype=np.int64)


def single_user_flags(maps: dict, single_share: float = 0.9, seen_floor: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """From :func:`provenance_maps` output: ``(h, w)`` bool foreground pixels seen in training (opacity > 0.5,
    provenance strength >= ``seen_floor``) and, among them, the single-user ones (top contributor share >=
    ``single_share``)."""
    fg = (maps["opacity"] > 0.5).numpy()
    seen_fg = fg & (np.nan_to_num(maps["seen"].numpy()) >= seen_floor)
    shares = np.nan_to_num(maps["shares"].numpy())
    return seen_fg, seen_fg & (shares.max(-1) >= single_share)


def user_colours(n: int) -> np.ndarray:
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if n > 10 else "tab10"]
    return np.array([cmap(i % cmap.N)[:3] for i in range(n)], dtype=np.float32)


def run_job(job: ProvenanceJob, quiet: bool = False) -> dict:
    """Run ``job``; everything goes to a temporary directory renamed to ``job.out`` when complete (an earlier
    provenance output there is replaced; any other non-empty directory is refused before work starts)."""
    from privnerf.data.io import atomic_directory

    with atomic_directory(job.out, overwrite_if="provenance.json") as out:
        return _run_job(job, Path(out), quiet)


def _run_job(job: ProvenanceJob, out: Path, quiet: bool) -> dict:
    from privnerf.data.loader import load_scene
    from privnerf.provenance.field import ProvenanceConfig, ProvenanceField, radiance_features, train_provenance
    from privnerf.provenance.queries import provenance_maps
    from privnerf.provenance.samples import collect_samples
    from privnerf.render.renderer import render_image
    from privnerf.train.trainer import trainer_from_checkpoint

    tr = trainer_from_checkpoint(Path(job.checkpoint))
    field, occ, settings = tr.field, tr.occ, tr.settings(inference=True)
    train = tr.scene
    users = user_ids(train.names, job.data) if job.data else np.zeros(train.num_views, dtype=np.int64)
    n_users = int(users.max()) + 1
    source = job.data or tr.cfg.data
    try:
        held = load_scene(source, "test")
    except Exception as e:  # noqa: BLE001 - a run whose data moved still gets its provenance, from its own cameras
        raise SceneError(source, f"cannot load the held-out (test) cameras: {e}; pass --data") from e
    (out / "views").mkdir()

    t0 = time.time()
    s = collect_samples(field, occ, settings, train.c2w, train.intrinsics,
                        [train.hw(i) for i in range(train.num_views)], users, job.rays_per_view, seed=job.seed)
    t_collect = time.time() - t0
    h = settings.step
    cond = radiance_features(field, s.x[:2], h).shape[1]
    pf = ProvenanceField(ProvenanceConfig(steps=job.steps, seed=job.seed), torch.as_tensor(train.aabb), train.near,
                         train.far, users=n_users, cond_dim=cond)
    g = torch.Generator().manual_seed(job.seed)
    pf.attach(field, h, fit_on=s.x[torch.randperm(len(s), generator=g)[:50000]])
    t0 = time.time()
    curve = train_provenance(pf, s, quiet=quiet)
    if n_users > 1:  # contributor counts from denser rays (every pixel, up to 16k a view), surface samples only
        dense = collect_samples(field, occ, settings, train.c2w, train.intrinsics,
                                [train.hw(i) for i in range(train.num_views)], users, 16384, free_per_ray=0,
                                seed=job.seed + 1)
        pf.set_contributors(dense, voxel=2 * h)
    t_train = time.time() - t0
    torch.save(pf.state(), out / "provenance.pt")

    colours = user_colours(n_users)
    per_view, panels = [], []
    for c in range(min(job.views, held.num_views)):
        hh, ww = held.hw(c)
        rgb = render_image(field, occ, torch.as_tensor(held.c2w[c]), torch.as_tensor(held.intrinsics[c]), hh, ww,
                           settings)["rgb"].clamp(0, 1).numpy()
        m = provenance_maps(pf, field, occ, settings, held.c2w[c], held.intrinsics[c], hh, ww)
        fg = (m["opacity"] > 0.5).numpy()
        shares = np.nan_to_num(m["shares"].numpy())
        seen_fg, single = single_user_flags(m, job.single_share, job.seen_floor)
        if n_users == 1:
            single = np.zeros_like(fg)
        rec = {"view": held.names[c] if held.names else str(c), "foreground_share": float(fg.mean()),
               "seen_share_of_foreground": float(seen_fg.sum() / max(fg.sum(), 1)),
               "median_uncertainty": float(np.nanmedian(np.where(fg, m["uncertainty"].numpy(), np.nan)))
               if fg.any() else None}
        if n_users > 1:
            rec["single_user_share_of_foreground"] = float(single.sum() / max(fg.sum(), 1))
            dom = shares.argmax(-1)
            rec["dominant_user_pixels"] = {int(u): int(((dom == u) & seen_fg).sum()) for u in np.unique(dom[seen_fg])}
        per_view.append(rec)
        path = out / "views" / f"view_{c:02d}.png"
        _panel(path, rgb, m, fg, seen_fg, shares, single, colours, n_users, rec["view"])
        panels.append(path.name)

    summary = {"checkpoint": str(job.checkpoint), "data": job.data, "job": {k: str(v) if isinstance(v, Path) else v
                                                                            for k, v in asdict(job).items()},
               "training_views": train.num_views, "users": n_users, "samples": len(s),
               "collect_s": round(t_collect, 1), "train_s": round(t_train, 1), "loss_curve": curve,
               "config": asdict(pf.cfg), "views": per_view}
    if n_users > 1:
        summary["views_per_user"] = {int(u): int((users == u).sum()) for u in range(n_users)}
    (out / "provenance.json").write_text(json.dumps(summary, indent=1) + "\n")
    _html(out / "report.html", summary, panels)
    return summary


def _panel(path: Path, rgb, m, fg, seen_fg, shares, single, colours, n_users: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 5 if n_users > 1 else 3
    fig, ax = plt.subplots(1, cols, figsize=(3.2 * cols, 3.4))
    ax[0].imshow(rgb)
    ax[0].set_title("render")
    seen = np.where(fg, np.nan_to_num(m["seen"].numpy()), np.nan)
    im = ax[1].imshow(seen, vmin=0, vmax=1, cmap="viridis")
    ax[1].set_title("seen (provenance strength)")
    fig.colorbar(im, ax=ax[1], fraction=0.046)
    unc = np.where(fg, np.log10(np.maximum(np.nan_to_num(m["uncertainty"].numpy()), 1e-3)), np.nan)
    im = ax[2].imshow(unc, cmap="magma")
    ax[2].set_title("log10 depth uncertainty (scene units)")
    fig.colorbar(im, ax=ax[2], fraction=0.046)
    if n_users > 1:
        dom = shares.argmax(-1)
        img = 0.35 * rgb + 0.65 * colours[dom] * shares.max(-1, keepdims=True)
        img[~seen_fg] = 0.35 * rgb[~seen_fg] + 0.65
        ax[3].imshow(np.clip(img, 0, 1))
        ax[3].set_title("main contributor (colour = user)")
        flag = rgb.copy() * 0.6 + 0.4
        flag[single] = [0.9, 0.1, 0.1]
        ax[4].imshow(flag)
        ax[4].set_title(f"single-user regions: {single.sum() / max(fg.sum(), 1):.1%}")
    for a in ax:
        a.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _html(path: Path, summary: dict, panels: list[str]) -> None:
    rows = "".join(
        f"<tr><td>{html.escape(str(v['view']))}</td><td>{v['seen_share_of_foreground']:.1%}</td>"
        f"<td>{v['median_uncertainty'] if v['median_uncertainty'] is None else round(v['median_uncertainty'], 3)}</td>"
        f"<td>{'' if 'single_user_share_of_foreground' not in v else format(v['single_user_share_of_foreground'], '.1%')}"
        f"</td></tr>" for v in summary["views"])
    imgs = "".join(f'<p><img src="views/{html.escape(p)}" style="max-width:100%"></p>' for p in panels)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>privnerf provenance</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}td,th{{padding:2px 10px}}</style></head><body>
<h1>Provenance of {html.escape(summary['checkpoint'])}</h1>
<p>{summary['training_views']} training views, {summary['users']} contributor(s); provenance field trained on
{summary['samples']:,} (point, camera) observations in {summary['train_s']} s. <b>Seen</b>: the largest transmittance
among the point's provenance samples (0 = never observed). <b>Uncertainty</b>: how far the depth could be off, in scene
units: how badly the training cameras triangulate the surface along the held-out camera's ray, plus the length of
ray in front of it that no training camera observed (the true surface could hide there). <b>Single-user</b>: one
contributor holds at least {summary['job']['single_share']:.0%} of the point's visible observations; such regions
can carry that contributor's private content.</p>
<table><tr><th>held-out view</th><th>seen (of foreground)</th><th>median uncertainty</th><th>single-user</th></tr>
{rows}</table>{imgs}</body></html>"""
    path.write_text(doc)
