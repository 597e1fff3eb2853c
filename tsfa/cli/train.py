"""CLI commands that train: ``tsfa train`` and the main job ``tsfa run``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tsfa.cli.common import app, console, fail, print_frame
from tsfa.cli.plan import write_control
from tsfa.config.spec import SpecError


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
    """Federated LoRA fine-tuning with SOFT or a baseline, TSFA-controlled or fixed (docs/model.md §5-§7).

    Writes OUT/rounds.csv, OUT/clients.csv, OUT/partition.csv, OUT/config.toml,
    OUT/metadata.json and (in-process engine) a per-round OUT/checkpoint.pt.
    """
    from tsfa.config.experiment import load_run_config
    from tsfa.fl.loop import train

    try:
        cfg = load_run_config(config)
        changes = {f"experiment.{k}": v for k, v in dict(
            method=method, controller=controller, rho=rho, rank=rank, seed=seed).items()
            if v is not None}
        if rounds is not None:
            changes["training.rounds"] = rounds
        cfg = cfg.replace(**changes) if changes else cfg
    except SpecError as exc:
        fail(str(exc))
    if print_config:
        typer.echo(cfg.to_toml(), nl=False)
        return
    if engine not in ("inprocess", "flower"):
        fail(f"--engine = {engine!r}: must be one of inprocess, flower")
    if engine == "flower" and resume:
        fail("--resume: not supported with --engine flower (error-feedback memories live on "
              "the clients)")
    try:
        if engine == "flower":
            try:
                from tsfa.engines.flower import train_flower
            except ImportError as exc:
                fail(f"--engine flower needs the extra: pip install 'tsfa[flower]' ({exc})")
            result = train_flower(cfg, out=out)
        else:
            result = train(cfg, out=out, resume=resume, progress=True)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    cols = ["round", "accuracy", "test_loss", "mean_rho", "mean_latency_s", "mean_queue_s",
            "cov_fro", "orth_defect"]
    print_frame(result.rounds[cols].tail(5), f"Last rounds ({cfg.experiment.method}, "
                f"{cfg.experiment.controller})")
    console.print(f"results in {out}")


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
    from tsfa.config.experiment import load_run_config
    from tsfa.config.spec import SystemSpec
    from tsfa.fl.loop import train
    from tsfa.reporting.report import control_report, rank_report
    from tsfa.reporting.results import prepare_dir, write_table

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
    write_control(out / "control", spec, ctl, rounds=control_rounds)
    print_frame(ctl["summary"][["client", "latency_ratio", "mean_rho", "mean_bandwidth_share"]],
                "time-averaged latency / budget per client")

    console.print("[bold]3/3 federated SOFT fine-tuning[/bold] under TSFA (embedded task)")
    try:
        cfg = load_run_config(config)
        if rounds is not None:
            cfg = cfg.replace(**{"training.rounds": rounds})
    except SpecError as exc:
        fail(str(exc))
    result = train(cfg, out=out / "train", progress=True)
    last = result.rounds.iloc[-1]
    console.print(f"final accuracy {last['accuracy']:.3f} after {len(result.rounds)} rounds; "
                  f"results in {out}")
