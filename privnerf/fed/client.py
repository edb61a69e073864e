"""The DecentNeRF user as a Flower ``ClientApp``.

Flower's SecAgg+ (``secaggplus_mod``) exists only on the legacy client stack, so the user is a
``NumPyClient`` behind ``secaggplus_mod``: every ``fit`` call is the "collect masked vectors" stage of one
secure sum, and the mod masks whatever ``fit`` returns. The message schema is in :mod:`privnerf.fed.messages`;
the on-device work in :mod:`privnerf.fed.local`.

Phases (``config["phase"]``):
    ``grad``  - ``dL_k/dg`` at the received aggregate and ``L_k`` (learned aggregation, rounds >= 2);
    ``train`` - alpha update (learned, from the summed gradient that follows the weights in ``parameters``),
                local training, then ``alpha_k g_k`` and ``alpha_k`` (SecAgg+), or ``g_k`` in the clear
                (``fednerf``, the baseline in which the server sees every update); with ``dac`` the parameters
                are the user's group's expert and the sum runs over that group's nodes.
The query ``sector`` (an ``evaluate`` message, :meth:`DecentClient.evaluate`) answers the DaC grouping.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from privnerf.fed import messages
from privnerf.fed.config import FedConfig
from privnerf.fed.local import AlphaRule, LocalUser
from privnerf.fed.secure import scale_for_secagg
from privnerf.train.trainer import set_threads

log = logging.getLogger(__name__)

FEDAVG_PIXEL_UNIT = float(1 << 24)
"""fedavg weights are pixel counts / 2^24 (so they stay below the masked value's bound of 1)."""


class DecentClient(NumPyClient):
    def __init__(self, user: int, cfg: FedConfig):
        self.cfg = cfg
        tc = cfg.client_train_config()
        self.local = LocalUser(user, cfg.data, tc, Path(cfg.state_dir) / "clients", cfg.rounds, cfg.local_epochs,
                               keep_optimizer=cfg.keep_optimizer, person_free=cfg.trains_person_free,
                               private_masks=cfg.private_masks, signature_keys=cfg.signature_keys)

    def fit(self, parameters, config):
        phase = str(config["phase"])
        agg = self.cfg.aggregator
        user = self.local
        st = user.state
        if st.alpha <= 0:
            st.alpha = (user.num_pixels / FEDAVG_PIXEL_UNIT) if agg == "fedavg" else 1.0 / self.cfg.num_users
        n_global = int(config["n_global"])
        global_arrays = [np.asarray(a) for a in parameters[:n_global]]
        if phase == "grad":
            grads, loss = user.loss_gradient(global_arrays, self.cfg.grad_batches)
            bounds = messages.decode_bounds(str(config["bounds"]), n_global + 1)
            arrays, clipped = scale_for_secagg(grads + [np.array([loss])], bounds)
            user.save_state()
            return arrays, 1, {"clipped": clipped}
        if phase != "train":
            raise ValueError(f"unknown phase {phase!r}")
        if agg == "learned" and len(parameters) > n_global:
            grad_sum = [np.asarray(a, dtype=np.float64) for a in parameters[n_global:-1]]
            loss_sum = float(np.asarray(parameters[-1]).ravel()[0])
            d = user.update_alpha(grad_sum, loss_sum, global_arrays, float(config.get("alpha_sum", 0.0)),
                                  AlphaRule(**json.loads(str(config.get("alpha_rule", "{}")))))
            log.debug("user %d: d=%s alpha=%.4f", user.user, d, st.alpha)
        weights, stats = user.train(global_arrays, self.cfg.local_epochs, self.cfg.personal_warmup,
                                    self.cfg.personal_warmup_after, self.cfg.personal_warmup_extra)
        st.alpha_history.append(st.alpha)
        metrics = {k: stats[k] for k in ("train_time_s", "local_steps", "samples", "rays")}
        if agg == "fednerf":
            metrics["user"] = user.user  # the baseline's server knows whose update it holds
            user.save_state()
            return weights, int(user.num_pixels), metrics
        keys = messages.global_keys(user.trainer_last.field)
        weights = user.steer_signature(keys, weights, global_arrays, st.alpha, float(config.get("alpha_sum", 0.0)),
                                       self.cfg.num_users)
        if bool(config.get("coverage", False)):
            m = user.coverage_weight(keys, weights, global_arrays, str(config.get("coverage_weight", "touched")))
            values = [st.alpha * (m[..., None] * w if messages.is_grid_key(k) else w) for k, w in zip(keys, weights)]
            values += [st.alpha * m, np.array([st.alpha])]
            st.previous_mask = m.astype(np.float32)  # on the device: next round's alpha update needs it
        else:
            values = [st.alpha * w for w in weights] + [np.array([st.alpha])]
            st.previous_mask = None
        user.save_state()
        bounds = messages.decode_bounds(str(config["bounds"]), len(values))
        arrays, clipped = scale_for_secagg(values, bounds)
        metrics["clipped"] = clipped
        return arrays, 1, metrics


    def evaluate(self, parameters, config):
        """A plain query outside SecAgg+: ``phase=sector`` (the DaC aggregator's grouping) answers with the
        azimuth sector of this user's cameras out of ``groups`` (:func:`privnerf.fed.dac.scene_sector`), computed
        here; the sector id is all that leaves the device."""
        phase = str(config.get("phase", ""))
        if phase != "sector":
            raise ValueError(f"unknown query {phase!r}")
        from privnerf.fed.dac import scene_sector

        return 0.0, 1, {"sector": scene_sector(self.local.scene, int(config["groups"]))}


def make_client_app(cfg: FedConfig | None = None, extra_mods: list | None = None) -> ClientApp:
    """A ClientApp whose node ``partition-id`` (simulation) or ``user-id`` (deployment) picks the user.

    With ``cfg=None`` the configuration is read per message from the file named in
    ``context.run_config["config-json"]``: the Deployment Engine's app, :func:`privnerf.fed.apps.build_client_app`."""
    if cfg is None:
        from privnerf.fed.apps import build_client_app

        return build_client_app(extra_mods)

    def client_fn(context):
        return make_client(cfg, context)

    from privnerf.privacy.message_audit import audit_mod

    # outermost: the audit (a no-op unless PRIVNERF_AUDIT_DIR is set) records exactly what leaves the device
    mods = [audit_mod] + list(extra_mods or [])
    if cfg.aggregator != "fednerf":
        mods.append(secaggplus_mod)
    return ClientApp(client_fn=client_fn, mods=mods)


def make_client(cfg: FedConfig, context):
    """The Flower client for the user that ``context.node_config`` names."""
    # each simulated client gets num_cpus=1: one torch thread, or two clients oversubscribe two cores
    set_threads(cfg.train.threads)
    nc = context.node_config
    user = int(nc.get("user-id", nc.get("partition-id", 0)))
    return DecentClient(user, cfg).to_client()
