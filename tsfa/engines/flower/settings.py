"""A tsfa run config from a Flower run config (``[tool.flwr.app.config]`` + ``--run-config``).

Flower run configs are flat: nested TOML tables become dotted keys. Recognised keys:

* ``config``: path of a tsfa run-config TOML (``tsfa train --print-config`` writes one);
  empty = the embedded default;
* ``out``: result folder written by the ServerApp (empty = none);
* ``<section>.<key>``: any tsfa setting, e.g. ``experiment.method = "tlora"``,
  ``training.rounds = 5``, ``clients.num_clients = 3`` (applied on top of ``config``).
"""

from __future__ import annotations

from collections.abc import Mapping

from tsfa.config.experiment import RunConfig, load_run_config
from tsfa.config.spec import SpecError

RESERVED = ("config", "out")


def run_config_from_flower(run_config: Mapping) -> RunConfig:
    """The tsfa :class:`~tsfa.config.experiment.RunConfig` a Flower run config describes."""
    path = str(run_config.get("config", "") or "")
    cfg = load_run_config(path or None)
    changes = {}
    for key, value in run_config.items():
        if key in RESERVED:
            continue
        if "." not in key:
            raise SpecError(f"Flower run config key {key!r}: expected 'config', 'out' or a "
                            "dotted tsfa key such as 'experiment.method' or 'training.rounds'")
        changes[key] = value
    return cfg.replace(**changes) if changes else cfg


def out_from_flower(run_config: Mapping) -> str | None:
    """The result folder of a Flower run (None when ``out`` is empty or absent)."""
    return str(run_config.get("out", "") or "") or None


__all__ = ["run_config_from_flower", "out_from_flower"]
