"""Run a federated experiment: the Flower Simulation Engine (default) with the server and client apps, or the
centralized baseline on one trainer; per-round metrics to ``rounds.jsonl``, final ``results.json``.

The harness plays the experimenter, not the server: it holds the dataset (clean evaluation views, the users'
photos and personal-content masks) to *measure* what the server-accessible model reveals. The server role
(:mod:`privnerf.fed.server`) never reads it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privnerf.data.io import write_image
from privnerf.data.scene import Scene
from privnerf.eval.evaluate import evaluate_split
from privnerf.eval.metrics import to_uint8
from privnerf.fed.config import FedConfig
from privnerf.fed.local import aggregate_occupancy, load_dataset, user_views
from privnerf.privacy.leakage import person_free_copy, person_free_psnr, personal_content_psnr
from privnerf.render.occupancy import OccupancyGrid, occupancy_of
from privnerf.render.renderer import RenderSettings, render_image
from privnerf.train.checkpoint import atomic_write_text
from privnerf.train.trainer import Trainer, set_threads

log = logging.getLogger(__name__)

# Training FLOPs per shaded sample and per ray of our model (forward + backward ~ 3x forward), counted from
# the layer sizes: trilinear on 13 global channels (+9 personal), the personal head, the per-ray colour MLP.
FLOPS_PER_SAMPLE = 3 * (2 * 8 * 13 + 40)
FLOPS_PER_SAMPLE_PERSONAL = 3 * (2 * 8 * 9 + 2 * (36 * 32 + 32 * 5) + 30)
FLOPS_PER_RAY = 3 * 2 * (39 * 64 + 64 * 64 + 64 * 3)


def default_run_dir(cfg: FedConfig) -> Path:
    stamp = datetime.now().strftime("%Y-%m-%d_%H%M%S")
    return Path("outputs") / cfg.experiment / f"fed-{cfg.aggregator}" / stamp


def user_ids(scene: Scene) -> list[int]:
    ids = sorted({int(m["user_id"]) for m in scene.frame_meta if m.get("user_id") is not None})
    if not ids:
        raise ValueError(f"{scene.meta.get('source', 'dataset')}: no per-frame user_id (make one with privnerf data crowd)")
    if ids != list(range(len(ids))):
        raise ValueError(f"user ids must be 0..K-1, got {ids[:10]}")
    return ids


def check_private_masks(cfg: FedConfig) -> None:
    """Read every user's private masks once (a simulation holds all the users here), so that a missing or
    misshapen file stops the run with its name instead of failing inside the clients' actors (where Flower
    only reports too few nodes and the run goes on without them)."""
    from privnerf.fed.local import load_user_scene, user_private_masks

    for k in user_ids(load_dataset(cfg.data, "train")):
        user_private_masks(load_user_scene(cfg.data, k), k, cfg.private_masks)


def check_signature_keys(cfg: FedConfig) -> None:
    """Read every user's key once (as :func:`check_private_masks`): a missing or bad file stops the run with its
    name; two users in one slot (their bits would fight over the same weights) are refused."""
    from privnerf.fed.local import user_signature_key

    users = user_ids(load_dataset(cfg.data, "train"))
    slots: dict[int, int] = {}
    for k in users:
        key = user_signature_key(k, cfg.signature_keys)
        if key.slot in slots:
            raise ValueError(f"{cfg.signature_keys}: users {slots[key.slot]} and {k} hold keys for the same slot "
                             f"{key.slot}; make one key per slot (privnerf ownership keygen --federation {len(users)})")
        slots[key.slot] = k


def check_dac_groups(cfg: FedConfig) -> dict[int, list[int]]:
    """The DaC groups from every user's cameras (a simulation holds all the users here), so that a group below
    ``--dac.min-group`` stops the run with its name before any round (the server refuses it too)."""
    from privnerf.fed.dac import form_groups, scene_sector
    from privnerf.fed.local import load_user_scene

    cfg.dac.check()
    users = user_ids(load_dataset(cfg.data, "train"))
    return form_groups({k: scene_sector(load_user_scene(cfg.data, k), cfg.dac.groups) for k in users},
                       cfg.dac.groups, cfg.dac.min_group)


class Harness:
    """Builds the server's field and measures each round (the ``hooks`` of :class:`DecentServer`)."""

    def __init__(self, cfg: FedConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = run_dir
        self.train_scene = load_dataset(cfg.data, "train")
        self.eval_scene = load_dataset(cfg.data, "test")
        self.users = user_ids(self.train_scene)
        tc = cfg.client_train_config()
        tc.personal.enabled = False
        self.reference = Trainer(tc, self.eval_scene)  # the server's field: same box and start as the clients'
        self.rounds_path = run_dir / "rounds.jsonl"
        self.history: list[dict[str, Any]] = []
        # what a perfect person-free model scores on the leakage measure (None for crowds without clean copies)
        # (averaged, like leakage, over the users that have personal views)
        ref = [r for r in (person_free_psnr(self.train_scene, k, cfg.leakage_views) for k in self.users)
               if r is not None]
        self.leakage_reference = float(np.mean(ref)) if ref else None

    def field(self):
        return self.reference.field

    def server_scene(self, radius: float) -> Scene:
        """The DaC server's imageless scene (:func:`privnerf.fed.dac.server_scene`): the model's box, scene type and
        background, no image and no camera."""
        from privnerf.fed.dac import server_scene

        sc = self.eval_scene
        return server_scene(sc.aabb, sc.background, sc.scene_type, radius)

    def user_groups(self) -> dict[int, list[int]]:
        """The experimenter's copy of the DaC grouping: each user's sector from its photos' cameras, the same
        function its device runs (the server knows nodes, not users)."""
        from privnerf.fed.dac import form_groups, scene_sector
        from privnerf.fed.local import load_user_scene

        d = self.cfg.dac
        return form_groups({k: scene_sector(load_user_scene(self.cfg.data, k), d.groups) for k in self.users},
                           d.groups, d.min_group)

    def settings(self, field) -> tuple[OccupancyGrid, RenderSettings]:
        """Occupancy and render settings for a global field (no personal part)."""
        t = self.reference
        r = t.cfg.render
        occ = occupancy_of(field.density_space, field.space.box, r.occ_resolution, t.occ_step, r.occ_threshold)
        return occ, t.settings(inference=True, field=field)

    def measure(self, rnd: int, field, individual: dict | None, final: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        out: dict[str, Any] = {}
        occ, settings = self.settings(field)
        if final or rnd % max(cfg.eval_every, 1) == 0 or rnd == cfg.rounds:
            renders = self.run_dir / "renders" / f"round-{rnd:03d}" if final else None
            r = evaluate_split(field, occ, settings, self.eval_scene, out_dir=renders,
                               max_images=cfg.eval_max_images, with_lpips=True, quiet=True)
            out.update(psnr=r["psnr"], ssim=r["ssim"], lpips=r["lpips"], num_images=r["num_images"])
            img = render_image(field, occ, torch.from_numpy(self.eval_scene.c2w[0]),
                               torch.from_numpy(self.eval_scene.intrinsics[0]), *self.eval_scene.hw(0), settings)
            path = self.run_dir / "renders" / "global" / f"round-{rnd:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image(path, to_uint8(img["rgb"].cpu().numpy()))
        leak = {}
        for k in self.users:
            if individual is not None:  # fednerf: the server holds user k's own upload
                if k not in individual:
                    continue
                from privnerf.fed.messages import load_global

                uf = self._scratch_field()
                load_global(uf, individual[k])
                uocc, us = self.settings(uf)
                leak[k] = personal_content_psnr(uf, uocc, us, self.train_scene, k, cfg.leakage_views)
            else:
                leak[k] = personal_content_psnr(field, occ, settings, self.train_scene, k, cfg.leakage_views)
        vals = [v[0] for v in leak.values() if v[0] is not None]
        behind = [v[1] for v in leak.values() if v[1] is not None]
        out["leakage_psnr"] = float(np.mean(vals)) if vals else None
        out["leakage_psnr_per_user"] = {str(k): v[0] for k, v in leak.items()}
        # the same renders scored against the person-free copies: high = the server shows the place, not the person
        out["leakage_scene_psnr"] = float(np.mean(behind)) if behind and len(behind) == len(vals) else None
        out["leakage_reference_psnr"] = self.leakage_reference
        return out

    def _scratch_field(self):
        import copy

        return copy.deepcopy(self.reference.field)

    def on_round(self, rnd: int, field, individual, experts: dict | None = None) -> dict[str, Any]:
        out = self.measure(rnd, field, individual, final=rnd == self.cfg.rounds)
        out.update(self._alpha_snapshot())
        if experts is not None:
            out.update(self.expert_leakage(experts))
            if rnd == self.cfg.rounds:
                out["experts_psnr"] = self.experts_psnr(experts)
        return out

    def experts_psnr(self, experts: dict[int, list]) -> float | None:
        """DaC's ceiling for the distilled student: the test views each rendered by the expert that answers
        their camera's sector (the server's routing rule, :func:`privnerf.fed.dac.routing_table`), mean PSNR
        over the same views the global model is scored on."""
        from privnerf.fed.dac import routing_table, scene_sector
        from privnerf.fed.messages import load_global

        sc, d = self.eval_scene, self.cfg.dac
        n = sc.num_views if self.cfg.eval_max_images is None else min(self.cfg.eval_max_images, sc.num_views)
        present = sorted(experts)
        table = routing_table(present, d.groups)
        by_expert: dict[int, list[int]] = {}
        for i in range(n):
            by_expert.setdefault(int(table[scene_sector(sc.subset([i]), d.groups)]), []).append(i)
        scores = []
        for e, views in by_expert.items():
            f = self._scratch_field()
            load_global(f, experts[present[e]])
            occ, st = self.settings(f)
            r = evaluate_split(f, occ, st, sc.subset(views), with_lpips=False, quiet=True)
            scores += [row["psnr"] for row in r["per_image"]]
        return float(np.mean(scores)) if scores else None

    def expert_leakage(self, experts: dict[int, list]) -> dict[str, Any]:
        """DaC: the server holds each group's expert; each user's leakage is measured on its own group's expert
        (the model that holds its update), then averaged per group."""
        from privnerf.fed.messages import load_global

        per_group: dict[str, float] = {}
        for s, members in self.user_groups().items():
            if s not in experts:
                continue
            f = self._scratch_field()
            load_global(f, experts[s])
            occ, st = self.settings(f)
            vals = [personal_content_psnr(f, occ, st, self.train_scene, k, self.cfg.leakage_views)[0] for k in members]
            vals = [v for v in vals if v is not None]
            if vals:
                per_group[str(s)] = float(np.mean(vals))
        return {"expert_leakage_psnr": per_group,
                "expert_leakage_psnr_max": max(per_group.values()) if per_group else None}

    def _alpha_snapshot(self) -> dict[str, Any]:
        """The users' current alphas, read from their state files (the experimenter's view, for plots)."""
        alphas = {}
        if not self.cfg.secure:
            return {}
        for k in self.users:
            p = Path(self.cfg.state_dir) / "clients" / f"user-{k:03d}.pt"
            if p.exists():
                st = torch.load(p, map_location="cpu", weights_only=False)
                alphas[str(k)] = float(st.get("alpha", 0.0))
        return {"alpha": alphas} if alphas else {}

    def render_user_views(self, field, max_users: int = 6) -> None:
        """For the report: per user, one photo with its personal content, the server's render there, and the
        user's own render (global + its personal field, from the user's state on its device)."""
        from privnerf.fields.personal_field import PersonalField
        from privnerf.privacy.leakage import personal_views
        from privnerf.render.renderer import render_image_personal

        out = self.run_dir / "renders" / "users"
        out.mkdir(parents=True, exist_ok=True)
        occ, settings = self.settings(field)
        sc = self.train_scene
        for k in self.users[:max_users]:
            views = personal_views(sc, k, 1)
            if not views:
                continue
            v = views[0]
            c2w, intr = torch.from_numpy(sc.c2w[v]), torch.from_numpy(sc.intrinsics[v])
            h, w = sc.hw(v)
            write_image(out / f"user-{k}-photo.png", to_uint8(sc.images[v]))
            server = render_image(field, occ, c2w, intr, h, w, settings)
            write_image(out / f"user-{k}-server.png", to_uint8(server["rgb"].cpu().numpy()))
            state = Path(self.cfg.state_dir) / "clients" / f"user-{k:03d}.pt"
            if not state.exists():
                continue
            st = torch.load(state, map_location="cpu", weights_only=False)
            if not st.get("personal"):
                continue
            own = user_views(sc, k)
            pc = self.cfg.client_train_config().personal
            pf = PersonalField(pc, field.space.box, len(own), field.cfg.feature_dim, self.reference.occ_step)
            pf.load_state_dict(st["personal"])
            r = self.reference.cfg.render
            if pc.exclude_alpha > 0:  # as the user trained it: kept off what the aggregate holds
                pf.set_exclusion(aggregate_occupancy(field, r.occ_resolution, self.reference.occ_step, pc.exclude_alpha))
            both = occupancy_of(lambda xs: field.density_space(xs) + pf.density_bound(xs), field.space.box,
                                r.occ_resolution, self.reference.occ_step, r.occ_threshold)
            mine = render_image_personal(field, pf, both, c2w, intr, h, w, own.index(v), settings)
            write_image(out / f"user-{k}-user.png", to_uint8(mine["rgb"].cpu().numpy()))

    def restore(self, history: list[dict[str, Any]]) -> None:
        """On resume: ``rounds.jsonl`` becomes the server's saved history (it may lack the last round if the
        server died between saving its state and writing the file)."""
        self.history = []
        for info in history:
            self.record(info)

    def record(self, info: dict[str, Any]) -> None:
        """Append one round to ``rounds.jsonl`` (rewritten atomically)."""
        self.history.append(info)
        text = "".join(json.dumps(h, default=_json_default) + "\n" for h in self.history)
        atomic_write_text(self.rounds_path, text)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def prepare_run(cfg: FedConfig) -> Path:
    """Resolve the run directory (refusing to overwrite a run unless resuming), fill in the derived config
    fields (``state_dir``, ``num_users``) and write ``config.json``."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    run_dir = Path(cfg.output) if cfg.output is not None else default_run_dir(cfg)
    held = (run_dir / "server" / "state.pt").exists() or (run_dir / "checkpoints" / "last.pt").exists()
    # a run stopped in its first round leaves the users' private state but no server state: a fresh run there
    # would silently start from those personal fields and step counts (seen as a 0.8 dB different round 1)
    stale = sorted((run_dir / "state" / "clients").glob("user-*.pt"))
    if (held or stale) and not cfg.resume:
        what = "a federated run" if held else f"the users' state of an unfinished run ({stale[0].name}, ...)"
        raise FileExistsError(f"{run_dir} already holds {what}; pass --resume or choose another --output")
    train = load_dataset(cfg.data, "train")
    num_users = len(user_ids(train))
    if cfg.trains_person_free:
        person_free_copy(train)  # every view's clean copy must exist before anything is written
    if cfg.secure and num_users < 2:
        # Flower's SecAgg+ refuses fewer than two parties, and a sum of one update is that update
        raise ValueError(f"{cfg.data}: {num_users} user; secure aggregation ({cfg.aggregator}) needs at least 2 "
                         "(with one user the server would see its update: use --aggregator fednerf to measure that)")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.output = run_dir
    cfg.state_dir = str(run_dir / "state")
    cfg.num_users = num_users
    atomic_write_text(run_dir / "config.json", cfg.to_json() + "\n")
    return run_dir


def serve(cfg: FedConfig, grid, context) -> dict[str, Any]:
    """The ServerApp's body, in whichever process Flower runs it (simulation or deployment): the round loop
    with the harness measuring each round, then ``results.json`` and ``report.html``."""
    from privnerf.fed.server import DecentServer

    run_dir = Path(cfg.output)
    t0 = time.perf_counter()
    harness = Harness(cfg, run_dir)
    srv = DecentServer(cfg, harness.field(), run_dir, harness)
    srv.run(grid, context)
    harness.render_user_views(srv.field)
    return finish(cfg, run_dir, _summarise(cfg, harness, srv.state.history, srv.flops), t0)


def finish(cfg: FedConfig, run_dir: Path, results: dict[str, Any], t0: float) -> dict[str, Any]:
    from privnerf.eval.report import write_fed_report

    results["wall_time_s"] = time.perf_counter() - t0
    results["run_dir"] = str(run_dir)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, default=_json_default) + "\n")
    results["report"] = str(write_fed_report(run_dir))
    return results


def run_federated(cfg: FedConfig, quiet: bool = False) -> dict[str, Any]:
    """Run ``cfg`` on the Simulation Engine (or centralized) and return the results in ``results.json``."""
    if cfg.private_masks is not None:
        if cfg.one_trainer:
            raise ValueError(f"--private-masks is a federated user's mode; aggregator {cfg.aggregator!r} trains one "
                             "model on every photo")
        check_private_masks(cfg)  # every user's node is this machine: refuse before any round, not in a client
    if cfg.train.ownership.key is not None and not cfg.one_trainer:
        raise ValueError(f"--train.ownership.key signs one owner's model; in a federation each user signs its own "
                         "slot: --signature-keys DIR (privnerf ownership keygen --federation N)")
    if cfg.signature_keys is not None:
        if cfg.one_trainer:
            raise ValueError(f"--signature-keys is a federated user's mode; aggregator {cfg.aggregator!r} trains one "
                             "model (sign it with --train.ownership.key)")
        check_signature_keys(cfg)
    if cfg.aggregator == "dac":
        check_dac_groups(cfg)
    run_dir = prepare_run(cfg)
    if cfg.one_trainer:
        t0 = time.perf_counter()
        return finish(cfg, run_dir, _run_centralized(cfg, Harness(cfg, run_dir), quiet), t0)
    return _run_simulation(cfg, quiet)


def _run_simulation(cfg: FedConfig, quiet: bool) -> dict[str, Any]:
    from flwr.server import ServerApp
    from flwr.simulation import run_simulation

    from privnerf.fed.client import make_client_app

    errors: list[BaseException] = []
    results: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid, context):
        try:
            results.update(serve(cfg, grid, context))
        except BaseException as e:  # Flower logs and swallows ServerApp errors; keep them to re-raise
            errors.append(e)
            raise

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    backend = {"client_resources": {"num_cpus": float(cfg.sim_cpus_per_client), "num_gpus": 0.0},
               "init_args": {"num_cpus": cores, "include_dashboard": False, "log_to_driver": not quiet}}
    if quiet:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=app, client_app=make_client_app(cfg), num_supernodes=cfg.num_users,
                   backend_config=backend)
    if errors:
        raise RuntimeError(f"the server failed: {errors[0]!r}") from errors[0]
    return results


def _summarise(cfg: FedConfig, harness: Harness, hist: list[dict], server_flops: dict) -> dict[str, Any]:
    last = hist[-1] if hist else {}
    steps = sum(sum(h.get("local_steps", [])) for h in hist)
    samples = sum(sum(h.get("client_samples", [])) for h in hist)
    rays = sum(sum(h.get("client_rays", [])) for h in hist)
    per_sample = FLOPS_PER_SAMPLE + (FLOPS_PER_SAMPLE_PERSONAL if cfg.personal_field else 0)
    client_flops = samples * per_sample + rays * FLOPS_PER_RAY
    total_server = float(sum(server_flops.values()))
    return {
        "aggregator": cfg.aggregator, "rounds": cfg.rounds, "users": cfg.num_users, "local_epochs": cfg.local_epochs,
        "psnr": last.get("psnr"), "ssim": last.get("ssim"), "lpips": last.get("lpips"),
        "num_images": last.get("num_images"), "split": "test",
        "leakage_psnr": last.get("leakage_psnr"),
        "leakage_psnr_max_round": max((h.get("leakage_psnr") or -1 for h in hist), default=None),
        "leakage_reference_psnr": harness.leakage_reference,
        "leakage_scene_psnr": last.get("leakage_scene_psnr"),
        "server_flops": total_server, "server_flops_detail": server_flops,
        "expert_leakage_psnr": last.get("expert_leakage_psnr"),
        "expert_leakage_psnr_max": last.get("expert_leakage_psnr_max"),
        "experts_psnr": last.get("experts_psnr"),
        "client_steps": steps, "client_train_time_s": sum(sum(h.get("client_train_time_s", [])) for h in hist),
        "bytes_up_per_client_per_round": last.get("bytes_up_per_client"),
        "bytes_down_per_client_per_round": last.get("bytes_down_per_client"),
        "client_training_flops": client_flops, "samples_per_step": samples / max(steps, 1),
    }


def _run_centralized(cfg: FedConfig, harness: Harness, quiet: bool) -> dict[str, Any]:
    """All users' photos on one trainer with the same model (global + personal field); the same total steps, at
    the unscaled grid learning rates (``FedConfig.client_lr_scale`` applies to federated clients only).

    ``oracle``: the same trainer and steps on the crowd's person-free copies with the global field alone
    (``client_train_config`` leaves the personal field out). The copies have the photos' sizes, so the step
    count, and with it the budget, is the centralized one; leakage is still measured against the photos with
    people."""
    set_threads(None)
    tc = cfg.client_train_config()
    scene = person_free_copy(harness.train_scene) if cfg.trains_person_free else harness.train_scene
    per_user = []
    for k in harness.users:
        px = sum(h * w for h, w in (scene.hw(i) for i in user_views(scene, k)))
        per_user.append(max(1, int(round(cfg.local_epochs * px / tc.optim.batch_rays))))
    tc.steps = cfg.rounds * sum(per_user)
    tc.max_time = None
    trainer = Trainer(tc, scene, harness.run_dir)
    # a long job: checkpoint (with the sample counts the FLOPs come from) every checkpoint_every_s, resume
    ckpt, counts_path = harness.run_dir / "checkpoints" / "last.pt", harness.run_dir / "checkpoints" / "counts.json"
    counts = {"rays": 0.0, "samples": 0.0, "train_time_s": 0.0}
    if cfg.resume and ckpt.exists() and counts_path.exists():
        trainer.load_checkpoint(ckpt)
        counts = json.loads(counts_path.read_text())
    elif cfg.resume and ckpt.exists():
        raise FileNotFoundError(f"{counts_path}: missing beside {ckpt}; cannot resume the centralized run's counts")

    def save() -> None:
        trainer.save_checkpoint()
        atomic_write_text(counts_path, json.dumps(counts) + "\n")

    from tqdm.auto import tqdm

    last = time.perf_counter()
    for _ in tqdm(range(trainer.step_count, tc.steps), disable=quiet, desc=cfg.aggregator, initial=trainer.step_count,
                  total=tc.steps):
        t0 = time.perf_counter()
        st = trainer.step()
        counts["train_time_s"] += time.perf_counter() - t0
        counts["rays"] += st["rays"]
        counts["samples"] += st["samples"]
        if time.perf_counter() - last > tc.checkpoint_every_s:
            save()
            last = time.perf_counter()
    save()
    rays, samples, train_time = counts["rays"], counts["samples"], counts["train_time_s"]
    info = {"round": cfg.rounds, "aggregator": cfg.aggregator, "client_train_time_s": [train_time],
            "local_steps": [tc.steps], "client_samples": [samples], "client_rays": [rays]}
    info.update(harness.measure(cfg.rounds, trainer.field, None, final=True))
    harness.record(info)
    harness.render_user_views(trainer.field)
    out = _summarise(cfg, harness, [info], {})
    out["server_flops"] = out["client_training_flops"]  # the centralized server does all the training
    return out
