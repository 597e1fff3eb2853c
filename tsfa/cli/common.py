"""Shared pieces of the ``tsfa`` command line: the Typer app, one-line errors, JSON and tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from tsfa.config.spec import SpecError, load_spec
from tsfa.reporting.control_record import jsonable

if TYPE_CHECKING:  # pandas loads with the first table printed, not with the command line
    import pandas as pd

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="tsfa: wireless federated LoRA fine-tuning (SOFT + TSFA).")
console = Console()

SpecArg = Annotated[Path | None, typer.Argument(help="System spec TOML (default: embedded spec).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def choice(values, help: str, *names: str):
    """A ``typer.Option`` with fixed choices: ``--help`` lists them, and a value outside them is
    refused while the command line is parsed (before any work) in one line naming the option."""
    values = tuple(values)

    def check(ctx: typer.Context, param: typer.CallbackParam, value):
        bad = [v for v in (value if isinstance(value, list | tuple) else [value])
               if v is not None and v not in values]
        if bad and not ctx.resilient_parsing:
            fail(f"{param.opts[0]} = {bad[0]!r}: must be one of {', '.join(values)}")
        return value

    return typer.Option(*names, help=f"{help} One of: {', '.join(values)}.",
                        metavar="[" + "|".join(values) + "]", callback=check)


def warn(message: str) -> None:
    """One line on stderr: ``warning: ...``."""
    typer.echo(f"warning: {message}", err=True)


def load(spec_path):
    try:
        return load_spec(spec_path)
    except SpecError as exc:
        fail(str(exc))


def print_json(obj) -> None:
    """Strict JSON on stdout (NaN -> null, inf -> "inf")."""
    sys.stdout.write(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def print_frame(df: pd.DataFrame | dict | list, title: str = "") -> None:
    """A table in full (never truncated), numbers to 4 significant digits: a DataFrame, or what
    builds one (columns as a dict, rows as a list of dicts); pandas loads here, not with the
    command line."""
    import pandas as pd

    df = df if isinstance(df, pd.DataFrame) else pd.DataFrame(df)
    if title:
        console.print(f"[bold]{title}[/bold]")
    typer.echo(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
