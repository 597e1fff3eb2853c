"""CLI commands of the planning side: ``tsfa spec``, ``bound``, ``rank`` and ``control``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from tsfa.cli.common import JsonOpt, SpecArg, app, console, fail, load, print_frame, print_json
from tsfa.config.spec import SpecError


@app.command("spec")
def spec_cmd(spec: SpecArg = None) -> None:
    """Print the complete spec as commented TOML (every key: meaning, unit, allowed range)."""
    typer.echo(load(spec).to_toml(), nl=False)


@app.command("bound")
def bound_cmd(
    spec: SpecArg = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank r (default: the offline r*).")] = None,
    rho: Annotated[float | None, typer.Option(
        help="Sparsification ratio for every client (default: affordable rho_bar_k(r)).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the convergence-bound term table (docs/model.md §2) at a rank and ratio."""
    from tsfa.reporting.report import bound_report

    s = load(spec)
    try:
        report = bound_report(s, rank=rank, rho=rho)
    except (SpecError, ValueError) as exc:
        fail(str(exc))
    if json_out:
        print_json(report)
        return
    print_frame(pd.DataFrame(report["terms"]),
                f"Bound terms at r = {report['rank']}, mean rho = {report['rho_mean']:.4g}")
    console.print(f"total bound: {report['total']:.6g}")


@app.command("rank")
def rank_cmd(spec: SpecArg = None, json_out: JsonOpt = False) -> None:
    """Offline stage: J(r) per candidate, r*, status and the sensitivities of r* (docs/model.md §3)."""
    from tsfa.reporting.report import rank_report

    s = load(spec)
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


def write_control(out: Path, spec, rep: dict, **extra) -> None:
    """Controller results: config + metadata, per-round and summary CSV, latency/queue PNG."""
    from tsfa.reporting.plots import control_traces
    from tsfa.reporting.results import prepare_dir, write_table

    path = prepare_dir(out, spec.to_toml(), spec.clients.seed, rank=rep["rank"], V=rep["V"],
                       **extra)
    write_table(rep["rounds"], path / "rounds.csv")
    write_table(rep["summary"], path / "summary.csv")
    fig = control_traces(rep["rounds"], rep["budget_s"],
                         f"TSFA controller, r = {rep['rank']}, V = {rep['V']:g}")
    fig.savefig(path / "control_traces.png", dpi=200)


@app.command("control")
def control_cmd(
    spec: SpecArg = None,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds T of i.i.d. Rayleigh fading.")] = 200,
    v: Annotated[float | None, typer.Option("--v", help="V (default: control.V).")] = None,
    solver: Annotated[str, typer.Option(help="P2 solver: analytic, joint or cvxpy.")] = "joint",
    rank: Annotated[int | None, typer.Option(help="LoRA rank (default: the offline r*).")] = None,
    json_out: JsonOpt = False,
    out: Annotated[Path | None, typer.Option(help="Write CSV tables and a PNG here.")] = None,
) -> None:
    """Online stage: the Lyapunov controller over simulated fading (docs/model.md §4)."""
    from tsfa.reporting.report import control_report, rounds_as_records

    s = load(spec)
    if solver not in ("analytic", "joint", "cvxpy"):
        fail(f"--solver = {solver!r}: must be one of analytic, joint, cvxpy")
    if v is not None and not (math.isfinite(v) and v >= 0):
        fail(f"--v = {v}: must be a finite number >= 0")
    try:
        rep = control_report(s, rounds, V=v, solver=solver, rank=rank)
    except ValueError as exc:
        fail(str(exc))
    if rep["status"] != "optimal":
        fail(f"offline stage {rep['status']}: {rep['message']}")
    if out is not None:
        write_control(out, s, rep, solver=solver, rounds=rounds)
    if json_out:
        print_json({k: v2 for k, v2 in rep.items() if k != "rounds"}
                   | {"rounds": rounds_as_records(rep["rounds"])})
        return
    print_frame(rep["summary"], f"Controller over {rounds} rounds: r = {rep['rank']}, "
                f"V = {rep['V']:g}, solver {solver}")
    console.print(f"average penalty: {rep['average_penalty']:.6g}")
    if out is not None:
        console.print(f"tables and control_traces.png in {out}")
