"""The two-stage pipeline on the model being trained (docs/model.md §3-§5).

Stage 1 (offline) needs the system of the model actually trained: its LoRA module count and
sizes, head size, FLOPs per sample and the clients' data sizes come from the task and model
(:func:`tsfa.fl.server.resolve_system`), not from the paper-scale default spec. On that system
:func:`tsfa.control.offline.optimal_rank` gives J(r) per candidate rank and r*. Stage 2 (online)
is the Lyapunov controller of the run, at r*. :func:`offline_stage` returns the run config to
train: ``experiment.rank = r*`` and the latency budget frozen in seconds (the automatic budget
rule depends on a reference rank; freezing it keeps the budget r* was chosen under).

``tsfa train --rank auto`` and ``tsfa run`` train at this r*; ``tsfa rank`` (no spec) still
answers for the paper-scale ViT-Base default spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tsfa.config.experiment import RunConfig
from tsfa.config.spec import SystemSpec
from tsfa.maths.instance import SystemInstance, realize


def resolved_system(cfg: RunConfig, task=None):
    """(resolved SystemSpec, SystemInstance, task) of a run config without training: the
    model's LoRA sizes, FLOPs and data sizes as the server derives them. ``task``: the run's
    task if already built (building it is the costly part)."""
    from tsfa.fl.build import run_task
    from tsfa.fl.server import resolve_system
    from tsfa.fl.tasks import build_model

    task = run_task(cfg) if task is None else task
    system = resolve_system(cfg, build_model(task, cfg.experiment), [len(p) for p in task.parts])
    return system, realize(system), task


@dataclass(frozen=True, eq=False)
class OfflineStage:
    """Stage 1 on the trained model's system: ``cfg`` to train (rank r*, budget frozen in
    seconds), r* (``rank``), the solver ``status``, the J(r) ``table``, the resolved ``system``
    and its realisation ``inst``, and the built ``task`` (reusable by the trainer)."""

    cfg: RunConfig
    rank: int
    status: str
    table: pd.DataFrame
    system: SystemSpec
    inst: SystemInstance
    task: object
    calibration: object = None
    warnings: tuple = ()


def offline_stage(cfg: RunConfig, task=None, calibration=None) -> OfflineStage:
    """r* for the system of the model ``cfg`` trains (raises ValueError if no rank is feasible).

    ``calibration``: a :class:`tsfa.experiments.horizon.HorizonCalibration` whose weights J(r)
    uses (docs/model.md §8b), applied to the resolved system and to the run config (its phi is
    the controller's too); refused (:class:`~tsfa.experiments.horizon.CalibrationError`) for
    another task, method or model; a different regime gives ``warnings``."""
    from tsfa.control.offline import optimal_rank

    system, inst, task = resolved_system(cfg, task)
    if not cfg.system.control.latency_budget_s:
        cfg = cfg.replace(**{"control.latency_budget_s": [float(b) for b in inst.budget_s]})
        system, inst, _ = resolved_system(cfg, task)
    warnings: tuple = ()
    if calibration is not None:
        from tsfa.experiments.horizon import apply_calibration, check_calibration

        warnings = tuple(check_calibration(calibration, RunConfig(cfg.experiment, system)))
        system = apply_calibration(system, calibration)
        cfg = RunConfig(cfg.experiment, apply_calibration(cfg.system, calibration))
    res = optimal_rank(system, inst)
    if not res.ok:
        raise ValueError(f"offline stage: no feasible rank ({res.status}): {res.message}")
    rank = int(res.solution["rank"])
    return OfflineStage(cfg.replace(**{"experiment.rank": rank}), rank, res.status,
                        res.solution["table"], system, inst, task, calibration, warnings)


__all__ = ["resolved_system", "OfflineStage", "offline_stage"]
