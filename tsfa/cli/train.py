"""CLI commands that train: ``tsfa train`` and the main job ``tsfa run``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tsfa.cli.common import app, choice, console, fail, print_frame, warn
from tsfa.cli.plan import CalibrationOpt, write_control
from tsfa.config.choices import CONTROLLERS, DEVICES, ENGINES, METHODS, POOLS, PRECISIONS, TASKS
from tsfa.config.spec import SpecError

ClientsOpt = Annotated[str, choice(POOLS,
    "How the in-process engine runs its clients: batched (all local training in one batched "
    "computation) or sequential (one after another, the reference).")]
DeviceOpt = Annotated[str, choice(DEVICES, "Where training runs (auto: a GPU when present).")]
PrecisionOpt = Annotated[str, choice(PRECISIONS, "Local-training precision (bf16: autocast).")]
ThreadsOpt = Annotated[int | None, typer.Option(
    min=1, help="Torch CPU threads (default: the cores this process may use).")]
ResumeOpt = Annotated[bool, typer.Option(
    help="Continue from OUT's checkpoint; refused if OUT/config.toml differs from this run's.")]


def run_options(clients: str, device: str, precision: str, threads: int | None) -> dict:
    """Resolve the device, set the threads; the training options (``--clients`` and
    ``--precision`` were refused while parsing when outside their choices)."""
    from tsfa.fl.device import resolve_device, set_threads

    try:
        dev = resolve_device(device)
    except ValueError as exc:
        fail(f"--device: {exc}")
    set_threads(threads)
    return {"clients": clients, "device": dev, "precision": precision}


def _train(cfg, out: Path, resume: bool, options: dict):
    """In-process training of a run config or an already made plan, with a progress bar
    (rounds, ETA, accuracy)."""
    from tsfa.engines.local import train
    from tsfa.reporting.progress import progress_bar, round_note

    with progress_bar(cfg.system.training.rounds, description="rounds") as update:
        return train(cfg, out=out, resume=resume,
                     on_round=lambda done, row: update(done, round_note(row)), **options)


def _offline(cfg, calibration: Path | None = None, default: bool = False):
    """Stage 1 with the calibration file ``calibration``, else (``default``) the shipped one of
    the embedded task when it was made for this run; one-line errors."""
    from tsfa.experiments.horizon import CalibrationError, default_calibration, read_calibration
    from tsfa.experiments.plan import plan_run

    try:
        cal = (read_calibration(calibration) if calibration is not None
               else default_calibration(cfg) if default else None)
        stage = plan_run(cfg, calibration=cal, rank="auto")
    except (CalibrationError, ValueError) as exc:
        fail(str(exc))
    for line in stage.warnings:
        warn(line)
    return stage


def _print_offline(stage, title: str) -> None:
    cols = ["rank", "eps", "rank_term", "cov_term", "sparse_term", "J", "rho_bar_mean"]
    if stage.calibration is not None:
        cal = stage.calibration
        title += " in test error at the horizon (calibrated weights)"
        print_frame(stage.table[cols].assign(
            predicted_accuracy=1.0 - cal.value("error_floor") - stage.table["J"]), title)
        console.print(f"calibration {cal.source or '(in memory)'}: " + ", ".join(
            f"{k} = {e.value:.3g} +- {e.stderr:.2g}" for k, e in cal.weights.items())
            + f", phi = {cal.phi}")
    else:
        print_frame(stage.table[cols], title + " (uncalibrated: the bound's illustrative "
                    "constants; `tsfa calibrate-weights` measures them)")
    console.print(f"r* = {stage.rank} (status {stage.status}); trained at r = {stage.rank}")


def _parse_rank(rank: str | None) -> int | str | None:
    if rank is None or rank == "auto":
        return rank
    try:
        value = int(rank)
    except ValueError:
        value = 0
    if value < 1:
        fail(f"--rank = {rank!r}: must be an integer >= 1 or 'auto'")
    return value


@app.command("train")
def train_cmd(
    config: Annotated[Path | None, typer.Argument(
        help="Run config TOML (an experiment table plus the system tables; default: embedded task).")] = None,
    task: Annotated[str | None, choice(TASKS, "Data of the run (experiment.task).")] = None,
    method: Annotated[str | None, choice(METHODS, "Uplink compressor (experiment.method).")] = None,
    controller: Annotated[str | None, choice(
        CONTROLLERS, "Per-round policy (experiment.controller).")] = None,
    rho: Annotated[float | None, typer.Option(help="Ratio of the fixed policy.")] = None,
    rank: Annotated[str | None, typer.Option(
        help="LoRA rank r, or auto: the offline r* of the trained model's system.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Communication rounds T.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random stream.")] = None,
    out: Annotated[Path, typer.Option(help="Result directory.")] = Path("runs/train"),
    resume: ResumeOpt = False,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved run config as TOML and exit.")] = False,
    engine: Annotated[str, choice(
        ENGINES, "inprocess; flower (Flower simulation engine on Ray; no --resume); deployment "
        "(Flower's deployment engine: a TLS SuperLink and K authenticated SuperNodes started on "
        "this machine, OUT/deployment holds their credentials and logs). flower and deployment "
        "need the flower extra; docs/flower.md.")] = "inprocess",
    clients: ClientsOpt = "batched",
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    threads: ThreadsOpt = None,
    calibration: CalibrationOpt = None,
) -> None:
    """Federated LoRA fine-tuning with SOFT or a baseline, TSFA-controlled or fixed (docs/model.md §5-§7).

    Writes OUT/rounds.csv and OUT/clients.csv (appended every round), OUT/partition.csv,
    OUT/rank_table.csv (J(r) and r* of the trained model's system), OUT/config.toml,
    OUT/metadata.json and (in-process engine) a per-round OUT/checkpoint.pt.
    """
    from tsfa.config.experiment import load_run_config

    rank_arg = _parse_rank(rank)
    try:
        cfg = load_run_config(config)
        changes = {f"experiment.{k}": v for k, v in dict(
            task=task, method=method, controller=controller, rho=rho, seed=seed).items()
            if v is not None}
        if isinstance(rank_arg, int):
            changes["experiment.rank"] = rank_arg
        if rounds is not None:
            changes["training.rounds"] = rounds
        cfg = cfg.replace(**changes) if changes else cfg
    except SpecError as exc:
        fail(str(exc))
    if rank_arg != "auto":
        from tsfa.fl.vit_config import check_rank

        try:  # before any work: the width of the model's LoRA modules caps the rank
            check_rank(cfg.experiment, "--rank (experiment.rank)" if rank_arg else
                       "experiment.rank")
        except ValueError as exc:
            fail(str(exc))
    if engine == "flower" and resume:
        fail("--resume: not supported with --engine flower (error-feedback memories live on "
             "the clients)")
    options = run_options(clients, device, precision, threads)
    if calibration is not None and rank_arg != "auto":
        fail("--calibration: only with --rank auto (it sets the offline objective's weights)")
    run = cfg
    if rank_arg == "auto":
        stage = run = _offline(cfg, calibration, default=True)
        cfg = stage.cfg
        if not print_config:
            _print_offline(stage, "Offline stage on the trained model's system: J(r)")
    if print_config:
        typer.echo(cfg.to_toml(), nl=False)
        return
    try:
        if engine in ("flower", "deployment"):
            try:
                from tsfa.engines.flower import train_flower
                from tsfa.engines.flower.deploy import train_deployment
            except ImportError as exc:
                fail(f"--engine {engine} needs the extra: pip install 'tsfa[flower]' ({exc})")
            result = (train_flower(cfg, out=out) if engine == "flower"
                      else train_deployment(cfg, out, resume=resume))
        else:
            result = _train(run, out, resume, options)
    except (OSError, ValueError, RuntimeError, TimeoutError) as exc:
        fail(str(exc))
    cols = ["round", "accuracy", "test_loss", "mean_rho", "mean_latency_s", "mean_queue_s",
            "cov_fro", "orth_defect"]
    print_frame(result.rounds[cols].tail(5), f"Last rounds ({cfg.experiment.method}, "
                f"{cfg.experiment.controller}, r = {cfg.experiment.rank})")
    _print_budget(result)
    console.print(f"results in {out}")


def _print_budget(result) -> None:
    """The run's deferral share and each client's time-averaged latency over its budget."""
    from tsfa.experiments.results import budget_summary

    cl = result.clients
    if cl is None or cl.empty or "sent" not in cl:
        return
    deferred, ratio = budget_summary(cl)
    console.print(f"uploads deferred: {100 * deferred:.1f}% of client-rounds; time-averaged "
                  f"latency / budget: max {ratio.max():.4f} (client {int(ratio.idxmax())}), "
                  f"mean {ratio.mean():.4f}")


@app.command("run")
def run_cmd(
    config: Annotated[Path | None, typer.Argument(
        help="Run config TOML (default: the embedded task and its system).")] = None,
    calibration: CalibrationOpt = None,
    out: Annotated[Path, typer.Option(help="Result directory.")] = Path("runs/default"),
    control_rounds: Annotated[int, typer.Option(help="Rounds of the controller simulation.")] = 500,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds (default: config).")] = None,
    resume: ResumeOpt = False,
    clients: ClientsOpt = "batched",
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    threads: ThreadsOpt = None,
) -> None:
    """The main job, both stages on the model being trained: offline rank, online controller,
    and federated SOFT fine-tuning under TSFA at r*.

    1. offline stage on the trained model's system (tiny ViT of the run config, its clients and
       data) -> J(r), r*, sensitivities in OUT/rank/;
    2. the Lyapunov controller on that system at r*, simulated fading -> OUT/control/;
    3. federated SOFT fine-tuning with the TSFA controller at r* -> OUT/train/.

    The paper-scale answer (ViT-Base q,v) is `tsfa rank` on the default spec.
    """
    from tsfa.config.experiment import load_run_config
    from tsfa.control.sensitivity import rank_sensitivity
    from tsfa.experiments.results import final_accuracy, prepare_dir, write_table
    from tsfa.reporting.report import control_report

    try:
        cfg = load_run_config(config)
        if rounds is not None:
            cfg = cfg.replace(**{"training.rounds": rounds})
    except SpecError as exc:
        fail(str(exc))
    options = run_options(clients, device, precision, threads)
    exp = cfg.experiment
    console.print(f"[bold]1/3 offline stage[/bold] on the trained model's system ({exp.task} "
                  f"task, {cfg.system.clients.num_clients} clients)")
    stage = _offline(cfg, calibration, default=True)  # the run's plan: r* solved once
    path = prepare_dir(out / "rank", stage.system.to_toml(), stage.system.clients.seed,
                       r_star=stage.rank)
    write_table(stage.table, path / "rank_table.csv")
    write_table(rank_sensitivity(stage.system, r_star=stage.r_star), path / "sensitivity.csv")
    _print_offline(stage, "J(r) of the trained model's system")
    console.print("(paper-scale ViT-Base answer on the default spec: `tsfa rank`)")

    console.print(f"[bold]2/3 online stage[/bold]: controller at r* = {stage.rank} over "
                  f"{control_rounds} rounds")
    ctl = control_report(stage.system, control_rounds, rank=stage.rank,
                         horizon=stage.cfg.system.training.rounds, fading_seed=stage.seed)
    write_control(out / "control", stage.system, ctl, rounds=control_rounds)
    print_frame(ctl["summary"][["client", "latency_ratio", "mean_rho", "mean_bandwidth_share"]],
                "time-averaged latency / budget per client")

    console.print(f"[bold]3/3 federated SOFT fine-tuning[/bold] under TSFA at r* = {stage.rank}")
    try:
        result = _train(stage, out / "train", resume, options)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    console.print(f"final accuracy {final_accuracy(result.rounds):.3f} (mean of the last rounds) "
                  f"after {len(result.rounds)} rounds at r = {stage.cfg.experiment.rank}; "
                  f"results in {out}")
    _print_budget(result)
