"""CLI commands of the calibration: ``tsfa pilot`` (one pilot run) and ``tsfa calibrate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tsfa.cli.common import JsonOpt, app, console, fail, load, print_frame, print_json
from tsfa.config.spec import SpecError


@app.command("pilot")
def pilot_cmd(
    config: Annotated[Path | None, typer.Argument(
        help="Run config TOML (experiment + system tables; default: embedded task).")] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank of the pilot (high for eps(r)).")] = 8,
    steps: Annotated[int, typer.Option(help="Optimiser steps of the pilot trajectory.")] = 60,
    checkpoints: Annotated[int, typer.Option(help="Points where statistics are taken.")] = 4,
    minibatches: Annotated[int, typer.Option(help="Minibatch gradients per checkpoint.")] = 32,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the config's).")] = None,
    out: Annotated[Path, typer.Option(help="Pilot folder to write.")] = Path("runs/pilot"),
) -> None:
    """One pilot run on the config's task: gradient statistics, client dissimilarity, ||Cov||_F of
    a simulated round and the update spectrum (docs/model.md, Calibration). Batch size, learning
    rate, local steps and optimiser come from the config."""
    import torch

    from tsfa.config.experiment import load_run_config
    from tsfa.experiments.pilot import PilotConfig, run_pilot, save_pilot
    from tsfa.fl.lora import apply_lora
    from tsfa.fl.tasks import build_model, build_task
    from tsfa.maths.rng import substream

    try:
        cfg = load_run_config(config)
        if seed is not None:
            cfg = cfg.replace(**{"experiment.seed": seed})
        exp, tr = cfg.experiment, cfg.system.training
        pc = PilotConfig(steps=steps, checkpoints=checkpoints, batch_size=tr.batch_size,
                         learning_rate=tr.learning_rate, optimizer=exp.optimizer,
                         local_steps=tr.local_steps, minibatches=minibatches, seed=exp.seed)
        task = build_task(exp, cfg.system.clients.num_clients, cfg.system.clients.dirichlet_alpha)
        model = build_model(task, exp)
        gen = torch.Generator().manual_seed(int(substream(exp.seed, "training", 1).integers(2**62)))
        apply_lora(model, rank, exp.lora_alpha, generator=gen)
        result = run_pilot(model, task, pc)
        path = save_pilot(result, out, system=_resolved_system(cfg, model, task))
    except (SpecError, OSError, ValueError) as exc:
        fail(str(exc))
    print_frame(result.checkpoints, f"Pilot at rank {rank} ({len(task.parts)} clients)")
    console.print(f"pilot folder {path}")


def _resolved_system(cfg, model, task):
    """The system of the model actually trained (LoRA sizes, head, FLOPs, data sizes), as the
    federated run resolves it: the base that `tsfa calibrate` calibrates."""
    try:
        from tsfa.fl.server import resolve_system
    except ImportError:  # before the server/client split of the federated loop
        from tsfa.fl.loop import resolve_system
    return resolve_system(cfg, model, [len(p) for p in task.parts])


@app.command("calibrate")
def calibrate_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Pilot folders (written by `tsfa pilot`).")],
    out: Annotated[Path | None, typer.Option(help="Write the calibrated spec TOML here.")] = None,
    spec: Annotated[Path | None, typer.Option(
        help="Base spec whose [bound] is calibrated (default: the first pilot's system).")] = None,
    cov_form: Annotated[str | None, typer.Option(
        help="Covariance form: linear_hetero or sqrt_r (default: the base spec's).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Calibrate the bound's constants from pilot runs (docs/model.md, Calibration): L, sigma, G,
    zeta_h, F0 - F*, eps(r), c3 (and c5 given pilots at three or more ranks), each with its
    standard error and provenance, written as a spec TOML."""
    from tsfa.experiments.calibrate import calibrate, write_calibration

    base = load(spec) if spec is not None else None
    try:
        cal = calibrate(runs, base, cov_form=cov_form)
    except (SpecError, OSError, ValueError) as exc:
        fail(str(exc))
    if out is not None:
        write_calibration(cal, out)
    if json_out:
        print_json({"estimates": {k: vars(e) for k, e in cal.estimates.items()},
                    "provenance": cal.provenance, "eps": cal.eps,
                    "bound": cal.spec.to_dict()["bound"], "out": str(out) if out else None})
        return
    import pandas as pd

    rows = [{"key": f"bound.{k}", "value": e.value, "stderr": e.stderr, "n": e.n}
            for k, e in cal.estimates.items()]
    print_frame(pd.DataFrame(rows), "Calibrated bound constants")
    print_frame(cal.eps, "eps(r) at the candidate ranks")
    if out is not None:
        console.print(f"calibrated spec written to {out}")
