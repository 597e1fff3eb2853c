"""One plan per run (docs/architecture.md, docs/model.md §3-§5): everything about a run that is
decided before its first round, decided once.

:func:`plan_run` builds the task (unless given) and resolves the system of the model actually
trained (LoRA modules and sizes, head, FLOPs per sample and data sizes come from the task's model
and partition, :func:`resolve_system`). It freezes the latency budget in seconds in that system
(the relative rule is evaluated once, at ``control.budget_reference_rank``, whatever rank is
trained), applies a horizon calibration, solves stage 1 once (J(r) per candidate rank and r*,
:func:`tsfa.control.offline.optimal_rank`) and fixes the trained rank (r* under
``rank = "auto"``) and the method's payload model. The server, the client pool, both engines and
the result writer take this :class:`RunPlan`; nothing below this floor resolves a system or
solves stage 1 again.

Seeds: ``experiment.seed`` drives every stream of the run (data, partition, initial factors,
training, fading); ``clients.seed`` draws the system itself (distances, device speeds), which
stays the same across a run's seeds so that runs compare on one system.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tsfa.config.experiment import RunConfig
from tsfa.config.spec import SystemSpec
from tsfa.fl.vit_config import ViTConfig, flops_per_sample
from tsfa.maths.instance import SystemInstance, realize
from tsfa.maths.payload import PayloadModel


def resolve_system(cfg: RunConfig, vit: ViTConfig, data_sizes) -> SystemSpec:
    """The system spec of the model actually trained: LoRA modules (q, v of every block), head
    size, FLOPs per sample and data sizes from the model ``vit`` and the partition; candidate
    ranks capped at the model's width. The budget rule's reference rank is the config's, never
    the trained rank (every rank of a comparison sees one system)."""
    ranks = [c for c in cfg.system.lora.rank_candidates if c <= vit.dim] or [
        min(cfg.experiment.rank, vit.dim)]
    return cfg.system.replace(**{
        "lora.n_modules": 2 * vit.depth, "lora.d_in": vit.dim, "lora.d_out": vit.dim,
        "lora.head_params": vit.dim * vit.num_classes + vit.num_classes,
        "lora.rank_candidates": ranks,
        "lora.lora_alpha": cfg.experiment.lora_alpha,
        "compute.flops_per_sample": flops_per_sample(vit),
        "clients.data_sizes": [int(s) for s in data_sizes],
        "control.budget_reference_rank": min(cfg.system.control.budget_reference_rank, vit.dim),
        "bound.spectrum_dim": max(vit.dim, max(ranks)),
    })


@dataclass(frozen=True, eq=False)
class RunPlan:
    """A run, decided: ``cfg`` to train as asked (with the trained rank and the calibration
    applied; written as the run's config.toml), its ``task``, the resolved ``system`` (budget in
    seconds; written to metadata.json) and its realisation ``inst``, the trained ``rank``, the
    offline ``r_star`` (None if no rank is feasible) with its solver ``status`` and J(r)
    ``table``, the method's ``payload`` model at ``rank``, the ``calibration`` used and its
    ``warnings``."""

    cfg: RunConfig
    task: object
    system: SystemSpec
    inst: SystemInstance
    rank: int
    r_star: int | None
    status: str
    table: pd.DataFrame
    payload: PayloadModel
    calibration: object = None
    warnings: tuple = ()

    @property
    def seed(self) -> int:
        """``experiment.seed``: the seed of every stream of the run."""
        return self.cfg.experiment.seed


def plan_run(cfg: RunConfig, task=None, calibration=None, rank: int | str | None = None
             ) -> RunPlan:
    """The :class:`RunPlan` of ``cfg`` (module docstring). ``task``: the run's task if already
    built (building it is the costly part). ``rank``: None (``experiment.rank``), an int, or
    ``"auto"`` (train at r*; ValueError when no rank is feasible). ``calibration``: a
    :class:`tsfa.experiments.horizon.HorizonCalibration` whose weights J(r) uses (docs/model.md
    §8b), applied to the system and the config (its phi is the controller's too); refused
    (:class:`~tsfa.experiments.horizon.CalibrationError`) for another task, method or model."""
    from tsfa.control.offline import optimal_rank
    from tsfa.fl.build import run_task

    if isinstance(rank, int):
        cfg = cfg.replace(**{"experiment.rank": rank})
    task = run_task(cfg) if task is None else task
    sizes = [len(p) for p in task.parts]
    system = resolve_system(cfg, task.vit, sizes)
    if not system.control.latency_budget_s:  # the relative rule, evaluated once
        system = system.replace(**{"control.latency_budget_s": [float(b) for b in
                                                                realize(system).budget_s]})
    warnings: tuple = ()
    if calibration is not None:
        from tsfa.experiments.horizon import apply_calibration, check_calibration

        warnings = tuple(check_calibration(calibration, RunConfig(cfg.experiment, system)))
        system = apply_calibration(system, calibration)
        cfg = RunConfig(cfg.experiment, apply_calibration(cfg.system, calibration))
    inst = realize(system)
    res = optimal_rank(system, inst)
    r_star = int(res.solution["rank"]) if res.ok else None
    if rank == "auto":
        if r_star is None:
            raise ValueError(f"offline stage: no feasible rank ({res.status}): {res.message}")
        cfg = cfg.replace(**{"experiment.rank": r_star})
    exp = cfg.experiment
    payload = PayloadModel.from_spec(system, exp.method, exp.rank, exp.equal_bits)
    return RunPlan(cfg, task, system, inst, exp.rank, r_star, res.status,
                   res.solution.get("table", pd.DataFrame()), payload, calibration, warnings)


__all__ = ["resolve_system", "RunPlan", "plan_run"]
