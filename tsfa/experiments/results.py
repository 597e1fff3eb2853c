"""Self-describing result folders: resolved config, tables, metadata (STYLE.md practice 9).

Every result written by tsfa sits next to ``config.toml`` (the full resolved configuration) and
``metadata.json`` (tsfa version, git commit, package versions, seed, command, time). Tables are
CSV; no pickles.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pandas as pd

PACKAGES = ("numpy", "scipy", "sympy", "cvxpy", "pandas", "matplotlib", "torch", "flwr")


def git_commit(cwd: Path | None = None) -> str | None:
    """The git commit of the tsfa source tree, if it is a checkout (else None)."""
    here = Path(__file__).resolve().parent if cwd is None else cwd
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_metadata(seed: int | None, command: str | None = None, **extra) -> dict:
    """Metadata of one run: versions, commit, seed, platform and time (UTC)."""
    from tsfa import __version__

    return {
        "tsfa_version": __version__,
        "git_commit": git_commit(),
        "seed": seed,
        "command": command if command is not None else " ".join(sys.argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def prepare_dir(out: str | Path, config_toml: str, seed: int | None, **extra) -> Path:
    """Create ``out`` and write ``config.toml`` and ``metadata.json`` into it."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.toml").write_text(config_toml, encoding="utf-8")
    (path / "metadata.json").write_text(json.dumps(run_metadata(seed, **extra), indent=2),
                                        encoding="utf-8")
    return path


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV (index dropped)."""
    p = Path(path)
    df.to_csv(p, index=False)
    return p


# --------------------------------------------------------------------------- run summaries
LAST_ROUNDS = 3  # "final accuracy": mean over the last rounds (one-round noise averaged out)


def final_accuracy(rounds: pd.DataFrame, last: int = LAST_ROUNDS, column: str = "accuracy") -> float:
    """Mean of ``column`` over the last ``last`` rounds of a run's rounds table (fewer if the run
    is shorter): the one definition of "final accuracy" (figures, validation, comparisons)."""
    return float(rounds.sort_values("round")[column].tail(last).mean())


def budget_summary(clients: pd.DataFrame) -> tuple[float, pd.Series]:
    """(deferral share: the fraction of client-rounds not sent, each client's time-averaged
    latency over its budget) of a run's ``clients.csv`` table."""
    g = clients.groupby("client")
    ratio = g["latency_s"].mean() / g["budget_s"].first()
    return 1.0 - float(clients["sent"].astype(bool).mean()), ratio


def md_table(df: pd.DataFrame, digits: int = 4) -> str:
    """A table as GitHub markdown; floats to ``digits`` significant digits ("nan" kept)."""
    def cell(v) -> str:
        if isinstance(v, float | np.floating):
            return "nan" if math.isnan(v) else f"{v:.{digits}g}"
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


# --------------------------------------------------------------------------- run folders
def _flatten(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def config_differences(saved_toml: str, current_toml: str) -> list[str]:
    """Dotted keys whose values differ between two config TOMLs (added or removed keys too)."""
    a, b = (_flatten(tomllib.loads(t)) for t in (saved_toml, current_toml))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def check_same_config(out: str | Path, config_toml: str) -> None:
    """Raise ValueError naming the differing keys when ``out/config.toml`` is not ``config_toml``
    (a run may only be resumed with the config it was started with). The saved file is read
    through the config schema, so a key added to tsfa since, at its default, is no difference."""
    saved = Path(out) / "config.toml"
    if not saved.is_file():
        raise ValueError(f"{saved} not found: nothing to resume (start without --resume)")
    from tsfa.config.experiment import load_run_config

    try:  # read through the schema: a key added since, at its default, is no difference
        saved_toml = load_run_config(saved).to_toml()
    except (ValueError, OSError):
        saved_toml = saved.read_text(encoding="utf-8")
    diff = config_differences(saved_toml, config_toml)
    if diff:
        shown = ", ".join(diff[:8]) + (f" (+{len(diff) - 8} more)" if len(diff) > 8 else "")
        raise ValueError(f"--resume: the config differs from the one saved in {saved} in {shown}; "
                         "resume with the saved config, or start a new run without --resume")


class RoundTables:
    """``rounds.csv`` and ``clients.csv`` of a run, appended after every round (a stopped run
    leaves its tables), with the rows also kept in memory for the run's result."""

    NAMES = ("rounds", "clients")

    def __init__(self, out: str | Path | None):
        self.out = Path(out) if out is not None else None
        self.rows: dict[str, list[dict]] = {n: [] for n in self.NAMES}
        self.before: dict[str, pd.DataFrame | None] = dict.fromkeys(self.NAMES)

    def _path(self, name: str) -> Path:
        return self.out / f"{name}.csv"

    def start(self, resume_round: int = 0) -> None:
        """A fresh run (``resume_round = 0``: old tables removed), or a resumed one: rows of
        rounds >= ``resume_round`` (logged after the last checkpoint) are dropped."""
        if self.out is None:
            return
        for name in self.NAMES:
            path = self._path(name)
            if resume_round == 0 or not path.is_file():
                path.unlink(missing_ok=True)
                continue
            df = pd.read_csv(path)
            df = df[df["round"] < resume_round].reset_index(drop=True)
            df.to_csv(path, index=False)
            self.before[name] = df

    def append(self, round_row: dict, client_rows) -> None:
        """Log one round (one rounds row, K client rows) and append them to the CSVs."""
        for name, rows in (("rounds", [round_row]), ("clients", list(client_rows))):
            self.rows[name] += rows
            if self.out is not None:
                path = self._path(name)
                pd.DataFrame(rows).to_csv(path, mode="a", header=not path.is_file(), index=False)

    def frame(self, name: str) -> pd.DataFrame:
        """Every row of ``name`` ("rounds" or "clients"): the resumed part, then this run's."""
        new = pd.DataFrame(self.rows[name])
        old = self.before[name]
        return new if old is None or old.empty else pd.concat([old, new], ignore_index=True)
