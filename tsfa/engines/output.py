"""What every engine writes: the run's result folder and its in-memory result.

A result folder holds ``config.toml`` (the resolved run config), ``metadata.json`` (versions,
seed, the resolved system, the trained rank and the offline r*), ``partition.csv`` (class
histograms per client), ``rank_table.csv`` (the offline stage's J(r) table for the system of the
model being trained) and ``rounds.csv`` / ``clients.csv``, appended after every round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tsfa.config.spec import SystemSpec
from tsfa.experiments.plan import RunPlan
from tsfa.experiments.results import RoundTables, prepare_dir, write_table
from tsfa.fl.partition import class_histograms
from tsfa.fl.server import RoundRecord


@dataclass(frozen=True)
class OfflineChoice:
    """The offline stage on the trained model's system: r* (``rank``, None if infeasible), the
    solver ``status`` and the J(r) ``table`` per candidate rank."""

    rank: int | None
    status: str
    table: pd.DataFrame


def offline_choice(plan: RunPlan) -> OfflineChoice:
    """r* and J(r) of the run's plan (solved once, by :func:`tsfa.experiments.plan.plan_run`)."""
    return OfflineChoice(plan.r_star, plan.status, plan.table)


@dataclass(frozen=True)
class RunResult:
    """``rounds``: one row per round; ``clients``: one row per (round, client); ``system``: the
    resolved system; ``offline``: r* and J(r) of that system; ``out``: the result folder."""

    rounds: pd.DataFrame
    clients: pd.DataFrame
    system: SystemSpec
    offline: OfflineChoice
    out: Path | None


def read_result(out: str | Path) -> RunResult:
    """The :class:`RunResult` of a finished run from its folder (another process wrote it: the
    Flower deployment's ServerApp): tables, resolved system, r* and J(r)."""
    import json

    out = Path(out)
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    table = pd.read_csv(out / "rank_table.csv")
    r_star = table["r_star"].iloc[0] if len(table) else None
    offline = OfflineChoice(None if pd.isna(r_star) else int(r_star),
                            str(meta.get("offline_status", "")),
                            table.drop(columns=["r_star", "trained_rank"], errors="ignore"))
    return RunResult(pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv"),
                     SystemSpec.from_dict(meta["resolved_system"]), offline, out)


class RunOutput:
    """The result folder of one run (or nothing when ``out`` is None) and its round tables."""

    def __init__(self, out: str | Path | None):
        self.out = Path(out) if out is not None else None
        self.tables = RoundTables(self.out)
        self.offline: OfflineChoice | None = None

    def start(self, plan: RunPlan, resume_round: int = 0, **extra) -> None:
        """A fresh folder (config, metadata, partition, J(r) table) for the run ``plan``; for
        ``resume_round`` > 0 the folder is kept and rows of rounds >= ``resume_round`` are
        dropped from its tables."""
        self.offline = offline_choice(plan)
        cfg, task = plan.cfg, plan.task
        if self.out is not None and resume_round == 0:
            prepare_dir(self.out, cfg.to_toml(), cfg.experiment.seed,
                        resolved_system=plan.system.to_dict(), task_note=task.note,
                        rank=cfg.experiment.rank, r_star=self.offline.rank,
                        offline_status=self.offline.status, **extra)
            write_table(class_histograms(task.train.labels, task.parts,
                                         task.train.num_classes).reset_index(),
                        self.out / "partition.csv")
            write_table(self.offline.table.assign(r_star=self.offline.rank,
                                                  trained_rank=cfg.experiment.rank),
                        self.out / "rank_table.csv")
        self.tables.start(resume_round)

    def write_table(self, name: str, rows: list[dict]) -> None:
        """``out/<name>.csv`` from ``rows`` (rewritten whole; nothing without a folder)."""
        if self.out is not None:
            write_table(pd.DataFrame(rows), self.out / f"{name}.csv")

    def append(self, record: RoundRecord) -> None:
        self.tables.append(record.round, record.clients)

    def result(self, system: SystemSpec) -> RunResult:
        return RunResult(self.tables.frame("rounds"), self.tables.frame("clients"), system,
                         self.offline, self.out)


__all__ = ["OfflineChoice", "offline_choice", "read_result", "RunResult", "RunOutput"]
