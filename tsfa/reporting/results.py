"""Self-describing result folders: resolved config, tables, metadata (STYLE.md practice 9).

Every result written by tsfa sits next to ``config.toml`` (the full resolved configuration) and
``metadata.json`` (tsfa version, git commit, package versions, seed, command, time). Tables are
CSV; no pickles.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path

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
