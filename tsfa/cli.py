"""The ``tsfa`` command line: thin wrappers that load a spec, call the library, print tables.

Every command takes an optional spec TOML (``tsfa spec > s.toml`` writes the default) and a
``--json`` flag for machine-readable output. Bad input exits with code 2 and one line naming the
key and its allowed range.
"""

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

from .spec import SpecError, load_spec

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="tsfa: wireless federated LoRA fine-tuning (SOFT + TSFA).")
console = Console()

SpecArg = Annotated[Path | None, typer.Argument(help="System spec TOML (default: embedded spec).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _load(spec_path):
    try:
        return load_spec(spec_path)
    except SpecError as exc:
        _fail(str(exc))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, pd.DataFrame):
        return _jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def print_json(obj) -> None:
    """Strict JSON on stdout (NaN -> null, inf -> "inf")."""
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def print_frame(df: pd.DataFrame, title: str = "") -> None:
    """A pandas table in full (never truncated), numbers to 4 significant digits."""
    if title:
        console.print(f"[bold]{title}[/bold]")
    typer.echo(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


@app.command("spec")
def spec_cmd(spec: SpecArg = None) -> None:
    """Print the complete spec as commented TOML (every key: meaning, unit, allowed range)."""
    typer.echo(_load(spec).to_toml(), nl=False)


@app.command("bound")
def bound_cmd(
    spec: SpecArg = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank r (default: the offline r*).")] = None,
    rho: Annotated[float | None, typer.Option(
        help="Sparsification ratio for every client (default: affordable rho_bar_k(r)).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the convergence-bound term table (paper.md §2) at a rank and ratio."""
    from .report import bound_report

    s = _load(spec)
    try:
        report = bound_report(s, rank=rank, rho=rho)
    except (SpecError, ValueError) as exc:
        _fail(str(exc))
    if json_out:
        print_json(report)
        return
    print_frame(pd.DataFrame(report["terms"]),
                f"Bound terms at r = {report['rank']}, mean rho = {report['rho_mean']:.4g}")
    console.print(f"total bound: {report['total']:.6g}")


@app.command("rank")
def rank_cmd(spec: SpecArg = None, json_out: JsonOpt = False) -> None:
    """Offline stage: J(r) per candidate, r*, status and the sensitivities of r* (paper.md §3)."""
    from .report import rank_report

    s = _load(spec)
    report = rank_report(s)
    if json_out:
        print_json(report)
        return
    print_frame(pd.DataFrame(report["table"]), "Offline objective J(r) = rank + cov + sparse")
    console.print(f"status: {report['status']}   r* = {report['rank']}   J(r*) = "
                  f"{report['objective']}")
    if report["message"]:
        console.print(f"reason: {report['message']}")
    if report.get("relaxed"):
        rel = report["relaxed"]
        console.print(f"CVXPY relaxation: status {rel['status']}, continuous r = {rel['rank']}")
    if report.get("sensitivity") is not None:
        print_frame(pd.DataFrame(report["sensitivity"]),
                    "Move that changes r* by one candidate (factor, or dB for power)")


def main() -> None:  # pragma: no cover - console entry point
    app()


@app.command("train")
def train_cmd(
    config: Annotated[Path | None, typer.Argument(
        help="Run config TOML ([experiment] + system tables; default: embedded task).")] = None,
    method: Annotated[str | None, typer.Option(help="soft, tlora, rlora, slora or ilora.")] = None,
    controller: Annotated[str | None, typer.Option(help="tsfa, fixed or myopic.")] = None,
    rho: Annotated[float | None, typer.Option(help="Ratio of the fixed policy.")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank r.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Communication rounds T.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random stream.")] = None,
    out: Annotated[Path, typer.Option(help="Result directory.")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt.")] = False,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved run config as TOML and exit.")] = False,
) -> None:
    """Federated LoRA fine-tuning with SOFT or a baseline, TSFA-controlled or fixed (paper.md §5-§7).

    Writes OUT/rounds.csv, OUT/clients.csv, OUT/partition.csv, OUT/config.toml,
    OUT/metadata.json and a per-round OUT/checkpoint.pt.
    """
    from .fl.experiment import load_run_config
    from .fl.loop import train

    try:
        cfg = load_run_config(config)
        changes = {f"experiment.{k}": v for k, v in dict(
            method=method, controller=controller, rho=rho, rank=rank, seed=seed).items()
            if v is not None}
        if rounds is not None:
            changes["training.rounds"] = rounds
        cfg = cfg.replace(**changes) if changes else cfg
    except SpecError as exc:
        _fail(str(exc))
    if print_config:
        typer.echo(cfg.to_toml(), nl=False)
        return
    try:
        result = train(cfg, out=out, resume=resume, progress=True)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    cols = ["round", "accuracy", "test_loss", "mean_rho", "mean_latency_s", "mean_queue_s",
            "cov_fro", "orth_defect"]
    print_frame(result.rounds[cols].tail(5), f"Last rounds ({cfg.experiment.method}, "
                f"{cfg.experiment.controller})")
    console.print(f"results in {out}")
