"""Does a user's personal field take its personal content? A quick probe of DecentNeRF's local step.

In a DecentNeRF round a user receives the aggregate, trains its global and personal fields on its own photos,
and uploads the global part; next round it receives a new aggregate and keeps its personal field. If the
personal field takes the user's person, the upload does not carry it. On ``decentnerf-lego-20`` at five times
the local steps it does not: the aggregate fills with a haze of people (docs/decentnerf.md, "Open problem").

This probe replays that loop for a few users with the aggregate held fixed (a finished run's global model), so
one setting costs minutes instead of an hour-long federated run. Per simulated round and user it reports:

* ``upload_leak``: the user's upload (its trained global field) rendered at its own views, PSNR inside its
  person mask against its photos (high = the upload carries the person; the leakage measure of ``fednerf``);
* ``upload_scene``: the same renders against the person-free copies (high = the upload shows what is behind);
* ``own_person``: the user's own render (global + personal) inside the mask against its photos (high = the
  user's model keeps its person, as DecentNeRF promises it);
* ``upload_psnr``: the upload's PSNR on the first test views (the shared scene's quality, not to be lost).

The aggregate never changes here, so this measures the local mechanism only; settings that win here still
have to be run federated (``benchmarks/decentnerf.py``).

Usage::

    python benchmarks/personal_uptake.py --run outputs/bench-fed/lego-main/<time>/run-learned \\
        --variant base --variant plr1:train.personal.lr_grid=1.0 --users 0 3 7 --rounds 3

writes ``benchmarks/results/personal-uptake.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from decentnerf import apply_sets  # noqa: E402
from privnerf.data.cameras import rays_from_pixels  # noqa: E402
from privnerf.eval.evaluate import evaluate_split  # noqa: E402
from privnerf.fed import messages  # noqa: E402
from privnerf.fed.config import FedConfig  # noqa: E402
from privnerf.fed.local import LocalUser, load_dataset  # noqa: E402
from privnerf.privacy.leakage import _personal_pixels, clean_view, masked_psnr, personal_content_psnr  # noqa: E402
from privnerf.render.occupancy import occupancy_of  # noqa: E402
from privnerf.render.renderer import render_rays_personal  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402
from privnerf.train.trainer import set_threads  # noqa: E402


def aggregate_arrays(run: Path) -> list[np.ndarray]:
    """The global model a finished (or interrupted) federated run saved last (``server/state.pt``)."""
    path = run / "server" / "state.pt"
    if not path.exists():
        raise SystemExit(f"{path}: no saved server state (is {run} a privnerf fed run directory?)")
    st = torch.load(path, map_location="cpu", weights_only=False)
    print(f"aggregate of {run} after round {st['round']}")
    return [np.asarray(a) for a in st["arrays"]]


@torch.no_grad()
def own_person_psnr(t, scene, user: int, own_views: list[int], max_views: int) -> float | None:
    """The user's own render (global + personal) inside its person mask against its photos."""
    settings = t.settings(inference=True)
    t.occ.update(t.occupancy_density, t.occ_step, t.cfg.render.occ_threshold)
    scores = []
    for view, vs, us in _personal_pixels(scene, user, max_views):
        c2w = torch.from_numpy(scene.c2w[view]).float()
        intr = torch.from_numpy(scene.intrinsics[view]).float()
        u, v = torch.from_numpy(us.astype(np.int64)), torch.from_numpy(vs.astype(np.int64))
        o, d, _ = rays_from_pixels(c2w.expand(len(u), 4, 4), intr.expand(len(u), 4), u, v)
        img = torch.full((len(u),), own_views.index(view), dtype=torch.long)
        out = [render_rays_personal(t.field, t.personal, t.occ, o[i:i + 16384], d[i:i + 16384], img[i:i + 16384],
                                    settings)["rgb"] for i in range(0, len(u), 16384)]
        scores.append(masked_psnr(torch.cat(out).numpy(), scene.images[view][vs, us]))
    return float(np.mean(scores)) if scores else None


def measure(user: LocalUser, t, cfg: FedConfig, eval_images: int) -> dict[str, float | None]:
    scene = load_dataset(cfg.data, "train")
    field = t.field
    occ = occupancy_of(field.density_space, field.space.box, t.cfg.render.occ_resolution, t.occ_step,
                       t.cfg.render.occ_threshold)
    settings = t.settings(inference=True, field=field)
    leak, behind = personal_content_psnr(field, occ, settings, scene, user.user, cfg.leakage_views)
    own_views = [i for i, m in enumerate(scene.frame_meta) if int(m.get("user_id", -1)) == user.user]
    ev = evaluate_split(field, occ, settings, load_dataset(cfg.data, "test"), max_images=eval_images,
                        with_lpips=False, quiet=True)
    return {"upload_leak": leak, "upload_scene": behind,
            "own_person": own_person_psnr(t, scene, user.user, own_views, cfg.leakage_views),
            "upload_psnr": ev["psnr"]}


def run_variant(name: str, sets: list[str], base: FedConfig, agg: list[np.ndarray], users: list[int], rounds: int,
                steps: int | None, eval_images: int) -> list[dict]:
    cfg = apply_sets(FedConfig.from_json(base.to_json()), sets)
    tc = cfg.client_train_config()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in users:
            user = LocalUser(k, cfg.data, tc, Path(tmp), cfg.rounds, cfg.local_epochs,
                             person_free=cfg.trains_person_free)
            epochs = cfg.local_epochs if steps is None else steps * tc.optim.batch_rays / user.num_pixels
            # the run's last rounds: the learning rate where the aggregate was made
            user.state.steps = max(cfg.rounds - rounds, 0) * user.steps_per_round(cfg.local_epochs)
            for r in range(0, rounds + 1):
                t0 = time.perf_counter()
                if r == 0:  # the aggregate as received, with a fresh personal field
                    t = user.trainer(agg)
                else:
                    user.train(agg, epochs, cfg.personal_warmup, warmup_after=0, warmup_extra=cfg.personal_warmup_extra)  # the aggregate is trained
                    t = user.trainer_last
                dt = time.perf_counter() - t0
                m = measure(user, t, cfg, eval_images)
                row = {"variant": name, "set": sets, "user": k, "round": r, "train_s": round(dt, 1), **m}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a privnerf fed run directory (its aggregate and config)")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME or NAME:KEY=VALUE,KEY=VALUE (FedConfig settings, as benchmarks/decentnerf.py --set)")
    ap.add_argument("--users", type=int, nargs="+", default=[0, 3, 7])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="local steps per round (default: the run's local epochs)")
    ap.add_argument("--eval-images", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "personal-uptake.json")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot and table of --out")
    a = ap.parse_args()
    if a.replot:
        rows = json.loads(a.out.read_text())["rows"]
        plot(rows, a.out.with_suffix(".png"))
        summary(rows)
        return
    set_threads(None)
    cfg_path = a.run / "config.json"
    if not cfg_path.exists():
        raise SystemExit(f"{cfg_path}: missing (is {a.run} a privnerf fed run directory?)")
    base = FedConfig.from_json(cfg_path.read_text())
    variants = []
    for v in a.variant or ["base"]:
        name, _, rest = v.partition(":")
        sets = [s for s in rest.split(",") if s]
        try:
            apply_sets(FedConfig.from_json(base.to_json()), sets)
        except ValueError as e:
            ap.error(str(e))
        variants.append((name, sets))
    agg = aggregate_arrays(a.run)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = []
    for name, sets in variants:
        rows += run_variant(name, sets, base, agg, a.users, a.rounds, a.steps, a.eval_images)
        write(a, rows, started)
        plot(rows, a.out.with_suffix(".png"))
    summary(rows)


def write(a, rows: list[dict], started: str) -> None:
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    doc = {"started": started, "commit": commit, "command": "python " + " ".join(sys.argv), "run": str(a.run),
           "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out, json.dumps(doc, indent=1) + "\n")


def plot(rows: list[dict], out: Path) -> None:
    """Upload leakage and the user's own person PSNR per simulated round, one line per variant (mean over users)."""
    import matplotlib.pyplot as plt

    from privnerf.eval.report import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    names = list(dict.fromkeys(r["variant"] for r in rows))
    for ax, key, title in zip(axes, ("upload_leak", "own_person", "upload_psnr"),
                              ("upload vs photo in the person mask\n(leakage; low = person not uploaded)",
                               "user's own render in the person mask\n(high = the user keeps its person)",
                               "upload, PSNR on test views")):
        for name in names:
            rs = [r for r in rows if r["variant"] == name]
            rounds = sorted({r["round"] for r in rs})
            ax.plot(rounds, [np.mean([r[key] for r in rs if r["round"] == k and r[key] is not None]) for k in rounds],
                    "o-", ms=3, label=name)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("simulated round (0 = the aggregate)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR (dB)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    plt.close(fig)


def summary(rows: list[dict]) -> None:
    """Mean over users per variant and round."""
    keys = ("upload_leak", "upload_scene", "own_person", "upload_psnr")
    print(f"{'variant':<14}{'round':>6}" + "".join(f"{k:>14}" for k in keys))
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["round"]), []).append(r)
    for (v, rnd), rs in groups.items():  # round 0: the aggregate itself
        vals = [np.mean([r[k] for r in rs if r[k] is not None]) for k in keys]
        print(f"{v:<14}{rnd:>6}" + "".join(f"{x:>14.2f}" for x in vals))


if __name__ == "__main__":
    main()
