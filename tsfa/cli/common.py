"""Shared pieces of the ``tsfa`` command line: the Typer app, one-line errors, JSON and tables."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer
from rich.console import Console

from tsfa.config.spec import SpecError, load_spec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="tsfa: wireless federated LoRA fine-tuning (SOFT + TSFA).")
console = Console()

SpecArg = Annotated[Path | None, typer.Argument(help="System spec TOML (default: embedded spec).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def load(spec_path):
    try:
        return load_spec(spec_path)
    except SpecError as exc:
        fail(str(exc))


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, pd.DataFrame):
        return jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def print_json(obj) -> None:
    """Strict JSON on stdout (NaN -> null, inf -> "inf")."""
    sys.stdout.write(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def print_frame(df: pd.DataFrame, title: str = "") -> None:
    """A pandas table in full (never truncated), numbers to 4 significant digits."""
    if title:
        console.print(f"[bold]{title}[/bold]")
    typer.echo(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
