"""A tsfa run config from a Flower run config (``[tool.flwr.app.config]`` + ``--run-config``).

Flower run configs are flat: nested TOML tables become dotted keys. Recognised keys:

* ``config``: path of a tsfa run-config TOML (``tsfa train --print-config`` writes one);
  empty = the embedded default;
* ``out``: result folder written by the ServerApp (empty = none);
* ``resume`` (bool), ``join-timeout-s``, ``round-timeout-s``, ``deployment`` (bool): how the
  ServerApp runs (:class:`FlowerOptions`);
* ``<section>.<key>``: any tsfa setting, e.g. ``experiment.method = "tlora"``,
  ``training.rounds = 5``, ``clients.num_clients = 3`` (applied on top of ``config``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from tsfa.config.experiment import RunConfig, load_run_config
from tsfa.config.spec import SpecError

RESERVED = ("config", "out", "resume", "join-timeout-s", "round-timeout-s", "deployment")


@dataclass(frozen=True)
class FlowerOptions:
    """How the ServerApp runs: ``out`` (result folder, None = none), ``resume`` (continue from
    ``out/checkpoint.pt``), ``join_timeout_s`` (how long the run waits for all K nodes before
    starting with those present), ``round_timeout_s`` (how long a round waits for replies; a
    client without a reply by then is lost), ``deployment`` (real SuperNodes, recorded in the
    result metadata)."""

    out: str | None = None
    resume: bool = False
    join_timeout_s: float = 600.0
    round_timeout_s: float = 3600.0
    deployment: bool = False

    def __post_init__(self):
        for key in ("join_timeout_s", "round_timeout_s"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (
                    math.isfinite(v) and v > 0):
                raise SpecError(f"{key.replace('_', '-')} = {v!r}: must be a number > 0 (seconds)")
        for key in ("resume", "deployment"):
            if not isinstance(getattr(self, key), bool):
                raise SpecError(f"{key} = {getattr(self, key)!r}: expected true or false")


def flower_options(run_config: Mapping) -> FlowerOptions:
    """The :class:`FlowerOptions` of a Flower run config (defaults where absent)."""
    d = FlowerOptions()
    return FlowerOptions(out=out_from_flower(run_config),
                         resume=run_config.get("resume", d.resume),
                         join_timeout_s=run_config.get("join-timeout-s", d.join_timeout_s),
                         round_timeout_s=run_config.get("round-timeout-s", d.round_timeout_s),
                         deployment=run_config.get("deployment", d.deployment))


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


__all__ = ["FlowerOptions", "flower_options", "run_config_from_flower", "out_from_flower"]
