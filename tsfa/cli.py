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
        help="Run config TOML (an experiment table plus the system tables; default: embedded task).")] = None,
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
    engine: Annotated[str, typer.Option(
        help="inprocess, or flower (Flower simulation engine on Ray; needs tsfa[flower]; "
        "no --resume; docs/flower.md).")] = "inprocess",
) -> None:
    """Federated LoRA fine-tuning with SOFT or a baseline, TSFA-controlled or fixed (paper.md §5-§7).

    Writes OUT/rounds.csv, OUT/clients.csv, OUT/partition.csv, OUT/config.toml,
    OUT/metadata.json and (in-process engine) a per-round OUT/checkpoint.pt.
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
    if engine not in ("inprocess", "flower"):
        _fail(f"--engine = {engine!r}: must be one of inprocess, flower")
    if engine == "flower" and resume:
        _fail("--resume: not supported with --engine flower (error-feedback memories live on "
              "the clients)")
    try:
        if engine == "flower":
            try:
                from .flower import train_flower
            except ImportError as exc:
                _fail(f"--engine flower needs the extra: pip install 'tsfa[flower]' ({exc})")
            result = train_flower(cfg, out=out)
        else:
            result = train(cfg, out=out, resume=resume, progress=True)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    cols = ["round", "accuracy", "test_loss", "mean_rho", "mean_latency_s", "mean_queue_s",
            "cov_fro", "orth_defect"]
    print_frame(result.rounds[cols].tail(5), f"Last rounds ({cfg.experiment.method}, "
                f"{cfg.experiment.controller})")
    console.print(f"results in {out}")


def _write_control(out: Path, spec, rep: dict, **extra) -> None:
    """Controller results: config + metadata, per-round and summary CSV, latency/queue PNG."""
    from .plots import control_traces
    from .results import prepare_dir, write_table

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
    """Online stage: the Lyapunov controller over simulated fading (paper.md §4)."""
    from .report import control_report, rounds_as_records

    s = _load(spec)
    if solver not in ("analytic", "joint", "cvxpy"):
        _fail(f"--solver = {solver!r}: must be one of analytic, joint, cvxpy")
    if v is not None and not (math.isfinite(v) and v >= 0):
        _fail(f"--v = {v}: must be a finite number >= 0")
    try:
        rep = control_report(s, rounds, V=v, solver=solver, rank=rank)
    except ValueError as exc:
        _fail(str(exc))
    if rep["status"] != "optimal":
        _fail(f"offline stage {rep['status']}: {rep['message']}")
    if out is not None:
        _write_control(out, s, rep, solver=solver, rounds=rounds)
    if json_out:
        print_json({k: v2 for k, v2 in rep.items() if k != "rounds"}
                   | {"rounds": rounds_as_records(rep["rounds"])})
        return
    print_frame(rep["summary"], f"Controller over {rounds} rounds: r = {rep['rank']}, "
                f"V = {rep['V']:g}, solver {solver}")
    console.print(f"average penalty: {rep['average_penalty']:.6g}")
    if out is not None:
        console.print(f"tables and control_traces.png in {out}")


@app.command("run")
def run_cmd(
    config: Annotated[Path | None, typer.Argument(
        help="Run config TOML (default: the embedded task and its system).")] = None,
    out: Annotated[Path, typer.Option(help="Result directory.")] = Path("runs/default"),
    control_rounds: Annotated[int, typer.Option(help="Rounds of the controller simulation.")] = 500,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds (default: config).")] = None,
) -> None:
    """The main job: offline rank, online controller, and a federated SOFT run under TSFA.

    1. `tsfa rank` on the paper-scale spec (ViT-Base q,v; default spec) -> OUT/rank/;
    2. `tsfa control` simulation at r* -> OUT/control/;
    3. federated SOFT fine-tuning with the TSFA controller on the embedded task -> OUT/train/.
    """
    from .fl.experiment import load_run_config
    from .fl.loop import train
    from .report import control_report, rank_report
    from .results import prepare_dir, write_table
    from .spec import SystemSpec

    spec = SystemSpec()
    console.print("[bold]1/3 offline stage[/bold] (paper-scale default spec: ViT-Base q,v)")
    rep = rank_report(spec)
    path = prepare_dir(out / "rank", spec.to_toml(), spec.clients.seed)
    write_table(rep["table"], path / "rank_table.csv")
    write_table(rep["sensitivity"], path / "sensitivity.csv")
    print_frame(rep["table"][["rank", "rank_term", "cov_term", "sparse_term", "J"]], "J(r)")
    console.print(f"r* = {rep['rank']} (status {rep['status']})")

    console.print(f"[bold]2/3 online stage[/bold]: controller over {control_rounds} rounds")
    ctl = control_report(spec, control_rounds)
    _write_control(out / "control", spec, ctl, rounds=control_rounds)
    print_frame(ctl["summary"][["client", "latency_ratio", "mean_rho", "mean_bandwidth_share"]],
                "time-averaged latency / budget per client")

    console.print("[bold]3/3 federated SOFT fine-tuning[/bold] under TSFA (embedded task)")
    try:
        cfg = load_run_config(config)
        if rounds is not None:
            cfg = cfg.replace(**{"training.rounds": rounds})
    except SpecError as exc:
        _fail(str(exc))
    result = train(cfg, out=out / "train", progress=True)
    last = result.rounds.iloc[-1]
    console.print(f"final accuracy {last['accuracy']:.3f} after {len(result.rounds)} rounds; "
                  f"results in {out}")


@app.command("figures")
def figures_cmd(
    out: Annotated[Path, typer.Option(help="Output directory (PNG, PDF, CSV per figure).")] = Path(
        "figures"),
    quick: Annotated[bool, typer.Option(
        "--quick", help="Small runs (5 clients, 24 rounds): under 15 min on 2 CPU cores.")] = False,
    size: Annotated[str | None, typer.Option(
        help="Run size: tiny (test suite), quick or full (default: full, or quick with "
        "--quick).")] = None,
    only: Annotated[list[str] | None, typer.Option(
        help="Only this figure (repeatable), e.g. fig5_control_v.")] = None,
    store: Annotated[Path | None, typer.Option(
        help="Run cache directory (default OUT/runs); finished runs are reused.")] = None,
) -> None:
    """Regenerate the eight figures of paper.md §7 from cached runs (tsfa's reconstruction on its
    embedded task, not the paper's results). Configurations: analysis/*.toml."""
    from .figures import FIGURES, make_all

    size = size or ("quick" if quick else "full")
    if size not in ("tiny", "quick", "full"):
        _fail(f"--size = {size!r}: must be one of tiny, quick, full")
    bad = [n for n in only or [] if n not in FIGURES]
    if bad:
        _fail(f"--only = {bad[0]!r}: must be one of {', '.join(FIGURES)}")
    try:
        timing = make_all(out, size, only or None, store, log=console.print)
    except (OSError, ValueError, SpecError) as exc:
        _fail(str(exc))
    console.print(f"{len(timing)} figures in {out} ({sum(timing.values()):.0f} s)")
