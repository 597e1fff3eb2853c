"""The grid of analysis/compare_methods.py: which runs, in which order, and how they are trained.

A *cell* is one (task, rank, policy, reading, budget, method); a *run* is a cell at one seed.
Readings of "sparsified factors" (docs/model.md §5):

* ``update+EF``: clients send compressed changes of their factors, error feedback for every
  method (tsfa's default);
* ``factor``: clients send their sparsified local factors, no error feedback, the server keeps
  the global value where a client sent nothing (FedIT style, the plain reading);
* ``EF SOFT only``: updates, error feedback for the proposed method only
  (``experiment.error_feedback = "proposed"``).

Budgets: ``values`` (every method sends SOFT's number of values) and ``bits`` (every method fits
SOFT's bits, index bits included). Policies: ``rho=1/8`` (fixed ratio, equal bandwidth) and
``TSFA`` (the Lyapunov controller, the same latency budget for every method).

Equivalent cells share one run (:func:`canonical_run`): SOFT is the equal-bits reference, so its
``bits`` cell is its ``values`` run; under ``EF SOFT only`` SOFT keeps its memories (the
``update+EF`` run) and a baseline has none (``error_feedback = "none"``); ILoRA (rho = 1, no
budget, nothing left for a memory; "factor" with global fill aggregates the same factors at
rho = 1) has one run per task and seed.

:func:`run_grid` trains the runs not yet in the store, ``jobs`` at a time, in worker processes
with one torch thread each; a worker builds each (task, seed) data set once and reuses it for
every run of that seed (building the synthetic task costs more than a short run). Run folders
are those of :mod:`tsfa.experiments.cache` (``store/<config hash>``), so
:func:`tsfa.experiments.cache.lookup` reads them back.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tsfa.config.experiment import RunConfig
from tsfa.config.registry import COMPRESSORS
from tsfa.experiments.cache import CHECKPOINT, canonical, run_path

FIXED_RHO = 0.125
READINGS = {
    "update+EF": {"experiment.upload": "update", "experiment.error_feedback": "all"},
    "factor": {"experiment.upload": "factor", "experiment.error_feedback": "none",
               "experiment.factor_fill": "global"},
    "EF SOFT only": {"experiment.upload": "update", "experiment.error_feedback": "proposed"},
}
BUDGETS = {"values": {"experiment.equal_bits": False}, "bits": {"experiment.equal_bits": True}}
POLICIES = {"rho=1/8": {"experiment.controller": "fixed", "experiment.rho": FIXED_RHO},
            "TSFA": {"experiment.controller": "tsfa"}}
# method label -> (experiment.method, extra changes)
METHODS = {"soft": ("soft", {}), "soft+rs": ("soft", {"experiment.cov_correction": "row_space"}),
           "tlora": ("tlora", {}), "rlora": ("rlora", {}), "slora": ("slora", {}),
           "svd": ("svd", {}), "ffa": ("ffa", {}), "ilora": ("ilora", {})}
TIERS = (1, 2, 3, 4, 5, 6, 7)
TIER_NAMES = {1: "SOFT vs TLoRA at rho = 1/8, update+EF and factor, equal values",
              2: "SOFT vs TLoRA at rho = 1/8, update+EF and factor, equal bits",
              3: "SOFT vs TLoRA at rho = 1/8, EF SOFT only",
              4: "the other compressors at rho = 1/8", 5: "SOFT vs TLoRA under TSFA",
              6: "SOFT vs TLoRA at r = 32", 7: "the other compressors under TSFA"}
KEY_FIELDS = ("task", "rank", "policy", "reading", "budget", "method")


@dataclass(frozen=True)
class Cell:
    """One row of the comparison: a method under a task, rank, policy, reading and budget."""

    task: str
    rank: int
    policy: str
    reading: str
    budget: str
    method: str
    tier: int = 1

    def key(self) -> tuple:
        return tuple(getattr(self, f) for f in KEY_FIELDS)


def cells(tasks=("synthetic", "fashion_mnist"), tiers=TIERS) -> list[Cell]:
    """The grid in priority order (tier 1 first):

    1. SOFT vs TLoRA at rho = 1/8, r = 8, update+EF and factor, equal values, both tasks;
    2. the same at equal bits;
    3. SOFT vs TLoRA under the "EF SOFT only" reading (both budgets);
    4. the other compressors (SVD, FFA, SOFT + row-space correction, ILoRA, RLoRA, SLoRA) at
       rho = 1/8, every reading and budget;
    5. SOFT vs TLoRA under the TSFA controller;
    6. SOFT vs TLoRA at r = 32 (synthetic task), rho = 1/8;
    7. the other compressors under the TSFA controller.
    """
    grid = [(r, b) for r in READINGS for b in BUDGETS]
    others = ("svd", "ffa", "soft+rs", "ilora", "rlora", "slora")
    plan = {1: (8, "rho=1/8", ("soft", "tlora"), [("update+EF", "values"), ("factor", "values")]),
            2: (8, "rho=1/8", ("soft", "tlora"), [("update+EF", "bits"), ("factor", "bits")]),
            3: (8, "rho=1/8", ("soft", "tlora"), [("EF SOFT only", b) for b in BUDGETS]),
            4: (8, "rho=1/8", others, grid),
            5: (8, "TSFA", ("soft", "tlora"), grid),
            6: (32, "rho=1/8", ("soft", "tlora"), grid),
            7: (8, "TSFA", tuple(m for m in others if m != "ilora"), grid)}
    out = []
    for tier in tiers:
        rank, policy, methods, rb = plan[tier]
        for task in tasks:
            if tier == 6 and task != "synthetic":
                continue
            out += [Cell(task, rank, policy, reading, budget, m, tier)
                    for reading, budget in rb for m in methods]
    return out


def cell_config(base: RunConfig, cell: Cell, seed: int) -> RunConfig:
    """``base`` (already carrying the task and size) with this cell's settings and seed."""
    method, extra = METHODS[cell.method]
    changes = {"experiment.method": method, "experiment.rank": cell.rank, "experiment.seed": seed,
               **POLICIES[cell.policy], **READINGS[cell.reading], **BUDGETS[cell.budget], **extra}
    return canonical_run(base.replace(**changes))


def canonical_run(cfg: RunConfig) -> RunConfig:
    """The run that ``cfg``'s cell is measured by (see the module docstring); then
    :func:`tsfa.experiments.cache.canonical` (ILoRA ignores controller and budget)."""
    exp = cfg.experiment
    changes = {}
    if exp.error_feedback == "proposed":
        changes["experiment.error_feedback"] = "all" if COMPRESSORS.entry(exp.method).proposed else "none"
    if exp.method in ("soft", "ilora"):
        changes["experiment.equal_bits"] = False
    if exp.method == "ilora":
        changes.update({"experiment.upload": "update", "experiment.error_feedback": "all",
                        "experiment.factor_fill": "global"})
    return canonical(cfg.replace(**changes) if changes else cfg)


def finished(cfg: RunConfig, store: Path) -> bool:
    rounds = run_path(cfg, store) / "rounds.csv"
    if not rounds.is_file():
        return False
    with rounds.open() as f:
        return sum(1 for _ in f) - 1 >= cfg.system.training.rounds


_TASKS: dict = {}


def _task_key(cfg: RunConfig) -> tuple:
    e, c = cfg.experiment, cfg.system.clients
    return (e.task, e.data_dir, e.pretrained, e.num_train, e.num_test, e.seed, c.num_clients,
            c.dirichlet_alpha)


def _train_one(cfg: RunConfig, path: str) -> tuple[str, float, float]:
    """Worker: train ``cfg`` into ``path`` on one torch thread, the task built once per seed."""
    from tsfa.engines.local import train
    from tsfa.fl.build import run_task
    from tsfa.fl.device import set_threads

    set_threads(1)
    key = _task_key(cfg)
    if key not in _TASKS:
        _TASKS.clear()  # one data set per worker at a time (runs are submitted seed by seed)
        _TASKS[key] = run_task(cfg)
    started, cpu = time.perf_counter(), time.process_time()
    out = Path(path)
    train(cfg, out=out, resume=(out / CHECKPOINT).is_file(), task=_TASKS[key])
    (out / CHECKPOINT).unlink(missing_ok=True)
    return path, time.perf_counter() - started, time.process_time() - cpu


def run_grid(cfgs: list[RunConfig], store: Path, jobs: int = 2, log=print,
             on_done=None) -> None:
    """Train every config of ``cfgs`` not finished in ``store``, in the given order, ``jobs``
    worker processes (one torch thread each); logs each finished run with its wall and CPU
    seconds and the load average, then calls ``on_done()`` (e.g. to rewrite the tables)."""
    todo, seen = [], set()
    for c in cfgs:
        p = run_path(c, store)
        if p not in seen and not finished(c, store):
            seen.add(p)
            todo.append((c, p))
    log(f"{len(todo)} runs to train ({len(cfgs)} requested), {jobs} workers, "
        f"load {os.getloadavg()[0]:.1f}")
    if not todo:
        return
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_train_one, c, str(p)): c for c, p in todo}
        for i, f in enumerate(as_completed(futures), 1):
            path, wall, cpu = f.result()
            c = futures[f].experiment
            log(f"[{i}/{len(todo)}] {Path(path).name} {c.task} {c.method} r={c.rank} "
                f"{c.controller} {c.upload} ef={c.error_feedback} bits={c.equal_bits} "
                f"cov={c.cov_correction} seed {c.seed}: {wall:.0f} s wall, {cpu:.0f} s CPU, "
                f"load {os.getloadavg()[0]:.1f}, elapsed {time.perf_counter() - t0:.0f} s")
            if on_done is not None:
                on_done()


# Sizes: training changes from the default run config (per task where they differ), seeds and
# tiers. "quick" is what fits in about an hour on 2 shared cores for tiers 1-2: the embedded task
# at 10 local steps of 16 samples, T = 30; Fashion-MNIST (50 tokens per image against the
# embedded task's 17, ~3.6x the cost per step) at 5 local steps, T = 20, 500 test samples.
# "paper" is the default run (tau = 20, b = 32, T = 100) for both. Wall times in docs/methods.md.
SIZES = {
    "smoke": {"training": {"training.local_steps": 1, "training.batch_size": 8,
                           "training.rounds": 2, "experiment.num_train": 400,
                           "experiment.num_test": 100},
              "seeds": (0,), "tiers": (1, 2, 3), "tasks": ("synthetic",)},
    "quick": {"training": {"training.local_steps": 10, "training.batch_size": 16,
                           "training.rounds": 30},
              "task_training": {"fashion_mnist": {"training.local_steps": 5,
                                                  "training.rounds": 20,
                                                  "experiment.num_test": 500}},
              "seeds": (0, 1, 2), "tiers": TIERS, "tasks": ("synthetic", "fashion_mnist")},
    "paper": {"training": {}, "seeds": (0, 1, 2), "tiers": TIERS,
              "tasks": ("synthetic", "fashion_mnist")},
}
BACKBONE = "backbone_fmnist_classes0-4.pt"


def base_config(size: str, task: str, store: Path) -> RunConfig:
    """The default run config at ``size`` for ``task`` (Fashion-MNIST: the backbone pre-trained
    once into ``store``, shared by every run and seed through ``experiment.pretrained``)."""
    sz = SIZES[size]
    base = RunConfig().replace(**{"experiment.task": task, **sz["training"],
                                  **sz.get("task_training", {}).get(task, {})})
    if task == "fashion_mnist":
        base = base.replace(**{"experiment.pretrained": str(Path(store).resolve() / BACKBONE)})
    return base


def ensure_backbone(base: RunConfig) -> None:
    """Pre-train the Fashion-MNIST backbone of ``base`` once, before any worker starts."""
    if base.experiment.task == "fashion_mnist" and not Path(base.experiment.pretrained).exists():
        from tsfa.fl.build import run_task

        run_task(base)


def plan(size: str, store: Path, tiers=None, seeds=None, tasks=None) -> list[tuple[Cell, int,
                                                                                 RunConfig]]:
    """(cell, seed, config) of the grid at ``size``, in the order they are trained: tier by tier,
    within a tier seed by seed, tasks alternating, so a partial sweep has whole seeds."""
    sz = SIZES[size]
    tiers = sz["tiers"] if tiers is None else tiers
    seeds = sz["seeds"] if seeds is None else seeds
    tasks = sz["tasks"] if tasks is None else tasks
    bases = {t: base_config(size, t, store) for t in tasks}
    out = []
    for tier in tiers:
        for seed in seeds:
            for task in tasks:
                out += [(c, seed, cell_config(bases[task], c, seed))
                        for c in cells((task,), (tier,))]
    return out
