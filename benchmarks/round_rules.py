"""How should a round's user updates be combined? Replay rounds from a finished run's aggregate offline and
compare averaging rules on the same local training.

A diagnostic for the federated gap (docs/decentnerf.md, "Where the aggregate is short"): a late round of a
lego-20 run gains ~0.2 dB where the same number of sequential steps gains several. This script takes a
finished ``privnerf fed run`` directory (its last aggregate, ``server/state.pt``, and its users' private
states, ``state/clients``, copied so the run is not touched), lets every user train one round from the
aggregate with the run's own local settings (:class:`privnerf.fed.local.LocalUser`, the code the run used),
and combines the users' global weights under each rule:

* ``plain``: ``sum a_k g_k / sum a_k`` everywhere (the paper's rule);
* ``touched``: per voxel ``sum a_k m_k g_k / sum a_k m_k`` with ``m_k`` = 1 where user k's training changed
  the voxel (the default, ``--coverage``);
* ``rms``: ``m_k`` = the user's RMS gradient per voxel from its Adam second moments, scaled to a maximum of 1
  (``--coverage-weight gradient``);
* ``fisher``: ``m_k`` = the user's mean squared gradient per voxel (Adam's second moment, channel mean), not
  rescaled: the diagonal-Fisher merge of Matena & Raffel (2022), which weights each user's value by how
  strongly its own loss pins it;
* ``fisher-ch``: the same per channel (weights of the grids' full size);
* ``rms-sat``: ``min(1, rms / r_q)`` with ``r_q`` the user's ``--saturate q`` quantile of ``rms`` over the
  voxels it touched: only voxels a user barely moved count for less; above that quantile a voxel counts fully,
  so a user's hardest-pinned content (its own people) does not outweigh the others' weaker moves there (a
  threshold relative to the maximum did nothing: below it the weights are one common rescale);
* ``rms+mlp``: ``rms`` on the grids, and the MLP weights merged per parameter with their Adam second moments.

MLP weights are ``sum a_k w_k / sum a_k`` under every rule but ``rms+mlp``. ``--correction scaffold`` changes
the local step instead (:class:`CorrectedUser`; every replayed round, so compare with a run without it), as does
``--correction drift`` (:class:`DriftUser`, from the second replayed round). ``--freeze-mlp`` lets the users
train only the grids; ``--lr-restart`` gives every replayed round the schedule's whole decay (start to end rate)
instead of the end rate the run left the users at. With
``--rounds R > 1`` each rule continues from its own aggregate for R-1 more rounds (its own copy of the users'
states). Each aggregate is scored on the crowd's clean test views, as ``benchmarks/aggregate_finetune.py``
scores (the same code), and for its personal-content leakage as a run measures it (``privnerf.privacy.leakage``;
fewer views per user by default).

Usage: ``python benchmarks/round_rules.py RUN_DIR [--rules touched,fisher] [--rounds 1] [--views 10] [--saturate q]
[--users N] [--correction scaffold --correction-scale S] [--lr-restart] [--freeze-mlp] [--set KEY=VALUE ...] [--tag NAME]`` ->
``benchmarks/results/round-rules[-TAG].json`` (written after every scored aggregate; a re-run with the same tag
replaces it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from aggregate_finetune import global_trainer, load_run  # noqa: E402
from decentnerf import apply_sets  # noqa: E402

from privnerf.eval.evaluate import evaluate_split  # noqa: E402
from privnerf.fed import messages  # noqa: E402
from privnerf.fed.local import LocalUser, load_dataset  # noqa: E402
from privnerf.fed.run import user_ids  # noqa: E402
from privnerf.privacy.leakage import person_free_copy, personal_content_psnr  # noqa: E402
from privnerf.train.checkpoint import atomic_write_text  # noqa: E402
from privnerf.train.trainer import set_threads  # noqa: E402

RULES = ("plain", "touched", "rms", "rms-sat", "fisher", "fisher-ch", "rms+mlp")


def per_parameter_terms(t, arrays: list[np.ndarray], factor: float = 1.0) -> tuple[list, list]:
    """``factor * arrays`` (one per global array of trainer ``t``) split for the optimizer hooks: for each
    grid ``(grid, voxel indices where the term is nonzero, the (n, C) values there)``, for each MLP tensor
    ``(parameter, term)``."""
    grid_of = {"density_grid.data": t.field.density_grid, "feature_grid.data": t.field.feature_grid}
    grid_terms, mlp_terms = [], []
    for k, prm, c in zip(messages.global_keys(t.field), messages.global_tensors(t.field), arrays):
        ct = torch.from_numpy(np.ascontiguousarray(c)).float() * factor
        if k in grid_of:
            flat = ct.reshape(-1, ct.shape[-1])
            idx = flat.abs().sum(1).nonzero().squeeze(1)
            grid_terms.append((grid_of[k], idx, flat[idx].contiguous()))
        else:
            mlp_terms.append((prm, ct))
    return grid_terms, mlp_terms


class CorrectedUser(LocalUser):
    """A user whose local steps add a fixed drift correction to its global gradients (``--correction
    scaffold``; SCAFFOLD's control variates, Karimireddy et al. 2020, option I): ``c - c_k``, with ``c_k`` its
    own loss gradient at the round's aggregate and ``c`` the users' mean there (per voxel over the users whose
    rays reached it). On grids the correction is added only on the voxels the user's own gradient reached
    (elsewhere it would have no feedback from the user's loss, and Adam would turn a constant into full steps)."""

    correction: list | None = None

    def trainer(self, global_arrays):
        t = super().trainer(global_arrays)
        if self.correction is None:
            return t
        grid_terms, mlp_terms = per_parameter_terms(t, self.correction)
        grid_step, mlp_step = t.grid_opt.step, t.mlp_opt.step

        def corrected_grid_step(scale: float = 1.0):
            for grid, idx, vals in grid_terms:
                if grid.sparse:
                    grid.grad_buffer().view(-1, vals.shape[1]).index_add_(0, idx, vals)
                    grid.touched_mask()[idx] = 1
                elif grid.data.grad is not None:
                    grid.data.grad.view(-1, vals.shape[1]).index_add_(0, idx, vals)
            grid_step(scale)

        def corrected_mlp_step(*args, **kw):
            for prm, ct in mlp_terms:
                if prm.grad is not None:
                    prm.grad.add_(ct)
            return mlp_step(*args, **kw)

        t.grid_opt.step, t.mlp_opt.step = corrected_grid_step, corrected_mlp_step
        return t


class DriftUser(LocalUser):
    """A user that corrects its drift in parameter units, after Adam (``--correction drift``; SCAFFOLD's
    option II, Karimireddy et al. 2020, in the form that does not pass through the optimizer): from the second
    replayed round on, every local step adds ``shift / K`` to the user's global weights, ``shift = s (D - D_k)``
    with ``D_k`` the user's own movement in the previous round (its upload minus the aggregate it started from),
    ``D`` the aggregate's movement in that round, and ``K`` the user's steps per round. Over a round the user
    thus replaces the part of its own last move that the consensus did not share with the consensus's move. On
    grids the shift is applied only on the voxels the user's training touched last round (elsewhere ``D_k`` is
    zero and the shift would be the aggregate's move alone, a server step in disguise). A voxel the shift moves
    counts as touched in this round's coverage weight even if the user's rays left it (one the user touched last
    round and not this one), so it enters the average at the shifted value."""

    shift: list | None = None
    steps_in_round: int = 1

    def trainer(self, global_arrays):
        t = super().trainer(global_arrays)
        if self.shift is None:
            return t
        grid_terms, mlp_terms = per_parameter_terms(t, self.shift, 1.0 / max(self.steps_in_round, 1))
        grid_step, mlp_step = t.grid_opt.step, t.mlp_opt.step

        def shifted_grid_step(*args, **kw):
            out = grid_step(*args, **kw)
            with torch.no_grad():
                for grid, idx, vals in grid_terms:
                    grid.data.view(-1, vals.shape[1]).index_add_(0, idx, vals)
            return out

        def shifted_mlp_step(*args, **kw):
            out = mlp_step(*args, **kw)
            with torch.no_grad():
                for prm, ct in mlp_terms:
                    prm.add_(ct)
            return out

        t.grid_opt.step, t.mlp_opt.step = shifted_grid_step, shifted_mlp_step
        return t


def set_shifts(users: list[DriftUser], start: list[np.ndarray], new: list[np.ndarray], ups: list[dict],
               scale: float, epochs: float) -> None:
    """Each user's ``scale * (D - D_k)`` from the previous round: it started at ``start``, the rule combined
    the users' ``ups`` into ``new`` (see :class:`DriftUser`)."""
    for u, up in zip(users, ups):
        shift = []
        for k, a0, a1, w in zip(up["keys"], start, new, up["weights"]):
            d = (a1.astype(np.float64) - a0) - (w.astype(np.float64) - a0)
            if messages.is_grid_key(k):
                d = np.where(up["touched"][..., None], d, 0.0)
            shift.append((scale * d).astype(np.float32))
        u.shift = shift
        u.steps_in_round = u.steps_per_round(epochs)


def set_corrections(users: list[CorrectedUser], arrays: list[np.ndarray], batches: int, scale: float) -> None:
    """Each user's ``scale * (c - c_k)`` at ``arrays`` (see :class:`CorrectedUser`)."""
    for u in users:
        u.correction = None
    grads = [u.loss_gradient(arrays, batches)[0] for u in tqdm(users, desc="control variates", leave=False)]

    def reached(h: np.ndarray) -> np.ndarray:  # the voxels a user's gradient reached (any channel)
        return np.abs(h).sum(-1, keepdims=True) > 0

    means = []
    for j, a0 in enumerate(grads[0]):
        total = sum(h[j] for h in grads)
        if a0.ndim == 4:  # a grid: the mean over the users whose rays reached each voxel
            total /= np.maximum(sum(reached(h[j]).astype(np.float64) for h in grads), 1.0)
        else:
            total /= len(grads)
        means.append(total)
    for u, g in zip(users, grads):
        u.correction = [np.where(reached(gj), scale * (m - gj), 0.0) if gj.ndim == 4 else scale * (m - gj)
                        for gj, m in zip(g, means)]


def user_update(user: LocalUser, arrays: list[np.ndarray], cfg) -> dict:
    """One local round of ``user`` from ``arrays`` with the run's local settings (``cfg``, its FedConfig);
    what every rule needs of it (kept in memory here only). The users' alphas stay as the run left them."""
    weights, stats = user.train(arrays, cfg.local_epochs, cfg.personal_warmup, cfg.personal_warmup_after,
                                cfg.personal_warmup_extra)
    t = user.trainer_last
    keys = messages.global_keys(t.field)
    # the two weights the protocol offers, computed by the client's own code
    touched = user.coverage_weight(keys, weights, arrays, "touched") > 0
    rms = user.coverage_weight(keys, weights, arrays, "gradient")
    sq = [st["exp_avg_sq"].double().cpu().numpy() for st in t.grid_opt.state[: len(t.field.grids())]]
    # the MLPs' per-parameter second moments (for rms+mlp); None for grids (their moments are in sq)
    mlp_sq = []
    for k, p in zip(keys, messages.global_tensors(t.field)):
        st = t.mlp_opt.state.get(p, {}) if not messages.is_grid_key(k) else {}
        mlp_sq.append(st["exp_avg_sq"].double().cpu().numpy() if "exp_avg_sq" in st else None)
    user.save_state()
    user.trainer_last = None
    return {"weights": weights, "alpha": float(user.state.alpha), "touched": touched, "rms": rms, "sq": sq,
            "mlp_sq": mlp_sq, "keys": keys, "train_psnr": stats["train_psnr"]}


def combine(rule: str, old: list[np.ndarray], ups: list[dict], saturate: float = 0.5) -> list[np.ndarray]:
    """The new global arrays from the users' updates under ``rule`` (see the module docstring)."""
    keys = ups[0]["keys"]
    alphas = np.array([u["alpha"] for u in ups])
    out = []
    grid_j = 0
    for j, (k, o) in enumerate(zip(keys, old)):
        if not messages.is_grid_key(k) and rule == "rms+mlp" and all(u["mlp_sq"][j] is not None for u in ups):
            # per-parameter diagonal-Fisher merge of the MLP weights
            num = sum(a * u["mlp_sq"][j] * u["weights"][j] for a, u in zip(alphas, ups))
            den = sum(a * u["mlp_sq"][j] for a, u in zip(alphas, ups))
            ok = den > 0
            out.append(np.where(ok, num / np.where(ok, den, 1.0), o).astype(np.float32))
            continue
        if not messages.is_grid_key(k) or rule == "plain":
            out.append((sum(a * u["weights"][j].astype(np.float64) for a, u in zip(alphas, ups)) / alphas.sum())
                       .astype(np.float32))
            grid_j += messages.is_grid_key(k)
            continue
        num = np.zeros(o.shape, np.float64)
        den = np.zeros(o.shape[:3] + ((o.shape[3],) if rule == "fisher-ch" else (1,)), np.float64)
        for a, u in zip(alphas, ups):
            if rule == "touched":
                m = u["touched"].astype(np.float64)[..., None]
            else:
                # both grids' moments enter the voxel weight: density and features are one voxel's state
                sq = u["sq"]
                if rule == "fisher-ch":
                    m = sq[grid_j]
                else:
                    if rule == "rms-sat":
                        r = u["rms"][u["touched"]]
                        q = float(np.quantile(r, saturate)) if r.size else 1.0
                        e = np.minimum(u["rms"] / max(q, 1e-30), 1.0)
                    elif rule in ("rms", "rms+mlp"):
                        e = u["rms"]
                    else:
                        e = sum(s.mean(axis=-1) for s in sq)
                    m = e[..., None]
                m = np.where(u["touched"][..., None], m, 0.0)
            num += a * m * u["weights"][j]
            den += a * m
        ok = den > 0
        out.append(np.where(ok, num / np.where(ok, den, 1.0), o).astype(np.float32))
        grid_j += 1
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished privnerf fed run directory (learned or fedavg)")
    p.add_argument("--rules", default="touched,rms,fisher,fisher-ch,plain")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--correction", choices=("none", "scaffold", "drift"), default="none",
                   help="local drift correction: scaffold in every replayed round (CorrectedUser); drift from the "
                        "second replayed round on (DriftUser; needs --rounds >= 2)")
    p.add_argument("--correction-scale", type=float, default=1.0)
    p.add_argument("--saturate", type=float, default=0.5, help="quantile q of the rms-sat rule")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="change the run's settings for the replayed rounds (as benchmarks/decentnerf.py --set), "
                        "e.g. train.optim.distortion_weight=0.02")
    p.add_argument("--freeze-mlp", action="store_true",
                   help="the users train only the global grids (the global MLPs keep the aggregate's weights)")
    p.add_argument("--lr-restart", action="store_true",
                   help="each replayed round decays the users' learning rate from its start to its end value, as a "
                        "fine-tune of one round's steps does (benchmarks/aggregate_finetune.py), instead of going on "
                        "from where the run's schedule ended")
    p.add_argument("--views", type=int, default=10, help="clean test views scored")
    p.add_argument("--leakage-views", type=int, default=1,
                   help="training views per user for the leakage measure (0: skip it)")
    p.add_argument("--users", type=int, default=None, help="only the first N users (a quick check)")
    p.add_argument("--tag", default="")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    rules = [r.strip() for r in a.rules.split(",") if r.strip()]
    bad = [r for r in rules if r not in RULES]
    if bad or not rules:
        raise SystemExit(f"--rules: unknown {bad or a.rules!r}; choose from {', '.join(RULES)}")
    if not 0 < a.saturate <= 1:
        raise SystemExit(f"--saturate must be in (0, 1], got {a.saturate}")
    if a.rounds < 1 or a.views < 1:
        raise SystemExit(f"--rounds ({a.rounds}) and --views ({a.views}) must be at least 1")
    if a.users is not None and a.users < 1:
        raise SystemExit(f"--users must be at least 1, got {a.users}")
    if a.correction == "drift" and a.rounds < 2:
        raise SystemExit("--correction drift starts in the second replayed round: give --rounds 2 or more")
    if not a.correction_scale > 0:
        raise SystemExit(f"--correction-scale must be > 0, got {a.correction_scale}")
    set_threads(a.threads)
    cfg, arrays, rnd = load_run(a.run)
    try:
        cfg = apply_sets(cfg, a.set)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    clients = a.run / "state" / "clients"
    if not clients.is_dir():
        raise SystemExit(f"{clients}: not found (the run's users' states are needed; centralized and oracle "
                         "runs have none)")
    test = load_dataset(cfg.data, "test")
    train_all = load_dataset(cfg.data, "train")
    ids = user_ids(train_all)[: a.users]
    missing = [str(clients / f"user-{u:03d}.pt") for u in ids if not (clients / f"user-{u:03d}.pt").exists()]
    if missing:
        raise SystemExit(f"{missing[0]}: not found ({len(missing)} of the run's {len(ids)} users have no state: "
                         "did the run finish a round?)")
    scored_on = person_free_copy(train_all)
    out = ROOT / "benchmarks" / "results" / f"round-rules{'-' + a.tag if a.tag else ''}.json"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    doc = {"run": str(a.run), "aggregator": cfg.aggregator, "start_round": rnd, "users": len(ids),
           "saturate": a.saturate, "correction": a.correction, "correction_scale": a.correction_scale,
           "lr_restart": a.lr_restart, "freeze_mlp": a.freeze_mlp, "set": a.set,
           "local_epochs": cfg.local_epochs, "commit": commit.stdout.strip(),
           "command": "python benchmarks/round_rules.py " + " ".join(sys.argv[1:]), "rows": []}

    def score(arr) -> dict:
        """PSNR on the clean test views and, on a crowd with people, the server's leakage (the run's measure,
        ``--leakage-views`` views per user)."""
        t = global_trainer(cfg, arr, scored_on)
        settings = t.settings(inference=True)
        r = {"psnr": evaluate_split(t.field, t.occ, settings, test, max_images=a.views, with_lpips=False,
                                    quiet=True)["psnr"]}
        if a.leakage_views > 0:
            leak = [personal_content_psnr(t.field, t.occ, settings, train_all, u, a.leakage_views) for u in ids]
            vals = [v[0] for v in leak if v[0] is not None]
            behind = [v[1] for v in leak if v[1] is not None]
            r["leakage_psnr"] = float(np.mean(vals)) if vals else None
            r["leakage_scene_psnr"] = float(np.mean(behind)) if behind else None
        return r

    def show(rule: str, r: int, res: dict) -> str:
        leak = f", leakage {res['leakage_psnr']:.2f}" if res.get("leakage_psnr") is not None else ""
        return f"{rule:10s} round {r}: {res['psnr']:.2f} dB ({res['psnr'] - start:+.2f}){leak}"

    def save():
        doc["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(out, json.dumps(doc, indent=2) + "\n")

    res0 = score(arrays)
    start = res0["psnr"]
    doc["rows"].append({"rule": "start", "round": 0, **res0})
    tqdm.write(show("start", 0, res0))
    tc = cfg.client_train_config()
    if a.freeze_mlp:
        tc.optim.lr_mlp = 0.0
    with tempfile.TemporaryDirectory(prefix="round-rules-") as tmp:
        tmp = Path(tmp)

        def users_in(d: Path) -> list[LocalUser]:
            rounds = 1 if a.lr_restart else cfg.rounds
            cls = DriftUser if a.correction == "drift" else CorrectedUser
            return [cls(u, cfg.data, tc, d, rounds, cfg.local_epochs, keep_optimizer=cfg.keep_optimizer,
                                  person_free=cfg.trains_person_free) for u in ids]

        def fresh_states(name: str) -> Path:
            d = tmp / name
            d.mkdir()
            for u in ids:
                src = clients / f"user-{u:03d}.pt"
                try:
                    st = torch.load(src, map_location="cpu", weights_only=False)
                except Exception as e:  # a truncated or foreign file: name it instead of a pickle traceback
                    raise SystemExit(f"{src}: not a readable user state ({type(e).__name__}: {e})") from None
                st["previous_global"] = None  # only the alpha update reads it; not needed here
                torch.save(st, d / f"user-{u:03d}.pt")
            return d

        def one_round(d: Path, arr, desc: str, prev=None) -> list[dict]:
            ups = []
            users = users_in(d)
            if a.correction == "scaffold":
                set_corrections(users, arr, cfg.grad_batches, a.correction_scale)
            if a.correction == "drift" and prev is not None:
                set_shifts(users, *prev, a.correction_scale, cfg.local_epochs)
            for u in tqdm(users, desc=desc, leave=False):
                if a.lr_restart:
                    u.state.steps = 0  # the round's schedule: start to end value over its own steps
                ups.append(user_update(u, arr, cfg))
            return ups

        t0 = time.perf_counter()
        base = fresh_states("shared")
        ups = one_round(base, arrays, "round 1")
        train_s = time.perf_counter() - t0
        firsts = {}
        for rule in rules:
            firsts[rule] = combine(rule, arrays, ups, a.saturate)
            res = score(firsts[rule])
            doc["rows"].append({"rule": rule, "round": 1, **res, "gain": res["psnr"] - start, "train_s": train_s})
            tqdm.write(show(rule, 1, res))
            save()
        keep = a.correction == "drift" and a.rounds >= 2  # the next round's shifts need this round's updates
        if not keep:
            del ups
        for rule in rules:
            if a.rounds < 2:
                break
            d = tmp / f"r-{rule}"
            shutil.copytree(base, d)
            arr = firsts[rule]
            prev = (arrays, arr, ups) if keep else None
            for r in range(2, a.rounds + 1):
                step_ups = one_round(d, arr, f"{rule} round {r}", prev)
                new_arr = combine(rule, arr, step_ups, a.saturate)
                prev = (arr, new_arr, step_ups) if keep else None
                arr = new_arr
                del step_ups
                res = score(arr)
                doc["rows"].append({"rule": rule, "round": r, **res, "gain": res["psnr"] - start})
                tqdm.write(show(rule, r, res))
                save()
    save()
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
