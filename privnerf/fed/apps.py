"""The Flower App for the Deployment Engine (``privnerf fed run --engine deployment``).

Module-level ``server_app`` and ``client_app``, named in the generated app's ``pyproject.toml``
(``[tool.flwr.app.components]``, see :func:`privnerf.fed.deploy.write_app`) and loaded by Flower's
``flwr-serverapp`` / ``flwr-clientapp`` processes. Both read the run's :class:`~privnerf.fed.config.FedConfig`
from the ``config.json`` named in ``context.run_config["config-json"]`` (``[tool.flwr.app.config]``), written by
:func:`privnerf.fed.run.prepare_run`. A SuperNode's ``--node-config "user-id=K"`` picks its user.

The Deployment Engine starts a fresh ``flwr-clientapp`` process for every message, and a SecAgg+ sum is four
messages of which only one ("collect masked vectors") trains. This module therefore imports no torch: the
SecAgg+ mod runs on the JSON config alone, and the model code is imported only when a client is built.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from privnerf.privacy.message_audit import audit_mod

CONFIG_KEY = "config-json"
"""Run-config key naming the run's ``config.json``."""

__all__ = ["CONFIG_KEY", "build_client_app", "client_app", "load_config", "server_app"]


def _config_text(context) -> str:
    path = (context.run_config or {}).get(CONFIG_KEY)
    if not path:
        raise ValueError(f"the run config has no {CONFIG_KEY!r} (the path of the run's config.json)")
    return Path(str(path)).read_text()


def load_config(context):
    """The run's :class:`~privnerf.fed.config.FedConfig`, from the file named in ``context.run_config``."""
    from privnerf.fed.config import FedConfig

    return FedConfig.from_json(_config_text(context))


def _secagg_unless_fednerf(msg, context, call_next):
    """``secaggplus_mod`` unless the run's aggregator is ``fednerf`` (plain fit messages, which
    ``secaggplus_mod`` rejects: it expects its stage config in every train message)."""
    if json.loads(_config_text(context)).get("aggregator") == "fednerf":
        return call_next(msg, context)
    return secaggplus_mod(msg, context, call_next)


def _client_fn(context):
    from privnerf.fed.client import make_client

    return make_client(load_config(context), context)


def build_client_app(extra_mods: list | None = None) -> ClientApp:
    """The DecentNeRF ClientApp configured per message from the run config (mods as in
    :func:`privnerf.fed.client.make_client_app`: the audit outermost, SecAgg+ innermost)."""
    return ClientApp(client_fn=_client_fn, mods=[audit_mod, *(extra_mods or []), _secagg_unless_fednerf])


client_app = build_client_app()

server_app = ServerApp()


@server_app.main()
def _server_main(grid, context) -> None:
    from privnerf.fed.run import serve

    # Flower forwards the ServerApp process's stdout/stderr to the run's log (`flwr run --stream`, `flwr log`):
    # show privnerf's progress messages (rounds, resume) there too
    logger = logging.getLogger("privnerf")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-8s: privnerf: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    serve(load_config(context), grid, context)
