"""Run a tsfa experiment on Flower's simulation engine (Ray backend) from Python or the CLI.

``train_flower(cfg)`` starts one virtual SuperNode per client (``clients.num_clients``), runs the
tsfa ServerApp and ClientApp on them and returns the same :class:`~tsfa.engines.output.RunResult`
(and result folder) as the in-process engine. ``flwr run`` runs the same apps from
``pyproject.toml`` (see docs/flower.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from tsfa.config.experiment import RunConfig
from tsfa.engines.output import RunResult


def backend_config(num_cpus: int | None = 2, client_cpus: float = 1.0,
                   address: str | None = None) -> dict:
    """Ray backend config: ``num_cpus`` for Ray (None: all), ``client_cpus`` per ClientApp
    actor (actors = num_cpus / client_cpus), ``address`` of an existing Ray cluster ("auto";
    default: the ``RAY_ADDRESS`` environment variable; without one, a new local instance even
    if a ``ray start`` cluster runs here). Connecting to a cluster uses the cluster's CPUs, so
    ``num_cpus`` is then ignored."""
    init_args: dict = {"include_dashboard": False, "logging_level": "ERROR"}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        init_args["address"] = address
    else:  # a new local Ray instance, never a cluster left running on this machine
        init_args["address"] = "local"
        if num_cpus is not None:
            init_args["num_cpus"] = int(num_cpus)
    return {"client_resources": {"num_cpus": float(client_cpus), "num_gpus": 0.0},
            "init_args": init_args}


def train_flower(cfg: RunConfig, out: str | Path | None = None, num_cpus: int | None = 2,
                 client_cpus: float = 1.0, address: str | None = None,
                 verbose: bool = False) -> RunResult:
    """Run ``cfg`` on Flower's simulation engine; same result tables as :func:`tsfa.engines.local.train`."""
    from flwr.simulation import run_simulation

    from tsfa.engines.flower.client_app import make_client_app
    from tsfa.engines.flower.server_app import make_server_app

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU only: silence a warning
    sink: list[RunResult] = []
    run_simulation(server_app=make_server_app(cfg, out, sink), client_app=make_client_app(cfg),
                   num_supernodes=cfg.system.clients.num_clients,
                   backend_config=backend_config(num_cpus, client_cpus, address),
                   verbose_logging=verbose)
    if not sink:
        raise RuntimeError("the Flower ServerApp ended without a result (see the log above)")
    return sink[0]


__all__ = ["train_flower", "backend_config"]
