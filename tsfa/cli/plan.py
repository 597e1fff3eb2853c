"""CLI commands of the planning side: ``tsfa spec``, ``bound``, ``rank`` and ``control``."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from tsfa.cli.common import (
    JsonOpt,
    SpecArg,
    app,
    choice,
    console,
    fail,
    load,
    print_frame,
    print_json,
    warn,
)
from tsfa.config.choices import SOLVERS
from tsfa.config.spec import SpecError


@app.command("spec")
def spec_cmd(spec: SpecArg = None) -> None:
    """Print the complete spec as commented TOML (every key: meaning, unit, allowed range)."""
    typer.echo(load(spec).to_toml(), nl=False)


SHOWN_CLIENTS = 30  # rows of the per-client table printed by `tsfa control` (all go to --out)


def _warn_all(lines) -> None:
    for line in lines:
        warn(line)


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
    print_frame(report["terms"],
                f"Bound terms at r = {report['rank']}, mean rho = {report['rho_mean']:.4g}")
    console.print(f"total bound: {report['total']:.6g}")


CalibrationOpt = Annotated[Path | None, typer.Option(
    help="Horizon calibration file (`tsfa calibrate-weights`): J(r) in test error with the "
    "weights measured on the task (docs/model.md §8b).")]


def calibrated(s, calibration: Path | None):
    """``s`` with the calibration file's weights applied (one-line error if refused); warnings
    for a different regime go to stderr."""
    if calibration is None:
        return s
    from tsfa.experiments.horizon import (
        CalibrationError,
        apply_calibration,
        check_calibration,
        read_calibration,
    )

    try:
        cal = read_calibration(calibration)
        _warn_all(check_calibration(cal, spec=s))
        return apply_calibration(s, cal)
    except CalibrationError as exc:
        fail(str(exc))


@app.command("rank")
def rank_cmd(spec: SpecArg = None, json_out: JsonOpt = False,
             calibration: CalibrationOpt = None) -> None:
    """Offline stage: J(r) per candidate, r*, status and the sensitivities of r* (docs/model.md §3).

    Warnings (stderr) name the clients whose budget holds only by deferring most of their
    uploads, implausible links (mean SNR below -20 dB) and budgets above a day."""
    from tsfa.reporting.report import rank_report

    s = calibrated(load(spec), calibration)
    report = rank_report(s)
    _warn_all(report["warnings"])
    if json_out:
        print_json(report)
        return
    which = " (paper-scale default spec: ViT-Base q,v)" if spec is None else ""
    print_frame(report["table"], f"Offline objective J(r) = rank + cov + sparse{which}")
    console.print(f"status: {report['status']}   r* = {report['rank']}   J(r*) = "
                  f"{report['objective']}")
    if report["message"]:
        console.print(f"reason: {report['message']}")
    if report.get("relaxed"):
        rel = report["relaxed"]
        console.print(f"CVXPY relaxation: status {rel['status']}, continuous r = {rel['rank']}"
                      + (f" ({rel['note']})" if rel.get("note") else ""))
    if report.get("sensitivity") is not None:
        print_frame(report["sensitivity"],
                    "Move that changes r* by one candidate (factor, or dB for power); applying "
                    "it to the spec changes r*")


def write_control(out: Path, spec, rep: dict, **extra) -> None:
    """Controller results: config + metadata, P2 inputs (clients.csv, p2_inputs.json), summary
    CSV, latency/queue PNG, and rounds.csv when the report kept the rounds (else streamed)."""
    from tsfa.experiments.results import prepare_dir, write_table
    from tsfa.reporting.control_record import write_inputs
    from tsfa.reporting.plots import control_traces

    path = prepare_dir(out, spec.to_toml(), spec.clients.seed, rank=rep["rank"], V=rep["V"],
                       **extra)
    write_inputs(path, rep["inputs"])
    if rep.get("rounds") is not None:
        write_table(rep["rounds"], path / "rounds.csv")
    write_table(rep["summary"], path / "summary.csv")
    fig = control_traces(rep["traces"], f"TSFA controller, r = {rep['rank']}, V = {rep['V']:g}")
    fig.savefig(path / "control_traces.png", dpi=200)


def _control_options(s, rounds: int, v: float | None, solver: str, rank: int | None) -> None:
    """One-line errors naming the option and its range (before any work)."""
    from tsfa.optim.p2_cvxpy import MAX_CLIENTS
    from tsfa.reporting.report import check_rank

    if not 1 <= rounds <= 10_000_000:
        fail(f"--rounds = {rounds}: must be an integer between 1 and 10000000")
    if v is not None and not (math.isfinite(v) and 0 <= v <= 1e12):
        fail(f"--v = {v}: must be a finite number between 0 and 1e12")
    if solver == "cvxpy" and s.clients.num_clients > MAX_CLIENTS:
        fail(f"--solver = 'cvxpy': limited to K <= {MAX_CLIENTS} clients (clients.num_clients = "
             f"{s.clients.num_clients}); use --solver joint")
    if rank is not None:
        try:
            check_rank(s, rank)
        except ValueError as exc:
            fail(str(exc))


@app.command("control")
def control_cmd(
    spec: SpecArg = None,
    rounds: Annotated[int, typer.Option(help="Rounds T of block Rayleigh fading, 1..1e7.")] = 200,
    v: Annotated[float | None, typer.Option("--v", help="V >= 0 (default: control.V).")] = None,
    solver: Annotated[str, choice(SOLVERS, "P2 solver.")] = "joint",
    rank: Annotated[int | None, typer.Option(
        help="LoRA rank, 1..min(d_in, d_out) (default: the offline r*).")] = None,
    json_out: JsonOpt = False,
    out: Annotated[Path | None, typer.Option(help="Write CSV tables and a PNG here.")] = None,
) -> None:
    """Online stage: the Lyapunov controller over simulated fading (docs/model.md §4).

    --json and --out stream the rounds (every input of each round's P2 and its decision) as they
    are made, so memory does not grow with --rounds."""
    from tsfa.experiments.results import prepare_dir
    from tsfa.reporting.control_record import CsvStream, JsonStream
    from tsfa.reporting.report import control_report, control_setup

    s = load(spec)
    _control_options(s, rounds, v, solver, rank)
    try:
        setup = control_setup(s, V=v, solver=solver, rank=rank)
    except ValueError as exc:
        fail(str(exc))
    _warn_all(setup["warnings"])
    if setup["status"] != "optimal":
        fail(f"offline stage {setup['status']}: {setup['message']}")
    sinks, csv_stream, json_stream = [], None, None
    if out is not None:
        try:
            path = prepare_dir(out, s.to_toml(), s.clients.seed)
        except OSError as exc:
            fail(f"--out = {str(out)!r}: {exc.strerror}")
        sinks.append(csv_stream := CsvStream(path / "rounds.csv"))
    if json_out:
        header = {k: setup[k] for k in ("status", "message", "rank", "warnings", "inputs")}
        sinks.append(json_stream := JsonStream(sys.stdout, header))
    rep = control_report(s, rounds, V=v, solver=solver, setup=setup, sinks=sinks,
                         keep_rounds=False)
    if csv_stream is not None:
        csv_stream.close()
        write_control(out, s, rep, solver=solver, rounds=rounds)
    summary = rep["summary"]
    if json_stream is not None:  # the summary by column: K lists, not K records
        json_stream.close({k: rep[k] for k in ("V", "solver", "policy", "average_penalty",
                                               "late_rounds")}
                          | {"summary": {c: summary[c].to_numpy() for c in summary.columns}})
        return
    title = (f"Controller over {rounds} rounds: r = {rep['rank']}, V = {rep['V']:g}, solver "
             f"{solver}")
    if len(summary) > SHOWN_CLIENTS:  # the clients furthest over their budget
        title += f" ({SHOWN_CLIENTS} of {len(summary)} clients, highest latency / budget first)"
        summary = summary.nlargest(SHOWN_CLIENTS, "latency_ratio")
    print_frame(summary, title)
    console.print(f"average penalty: {rep['average_penalty']:.6g}")
    if out is not None:
        console.print(f"tables and control_traces.png in {out}")
