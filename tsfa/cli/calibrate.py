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
    from tsfa.experiments.plan import resolve_system
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
        path = save_pilot(result, out, system=resolve_system(cfg, task.vit,
                                                             [len(p) for p in task.parts]))
    except (SpecError, OSError, ValueError) as exc:
        fail(str(exc))
    print_frame(result.checkpoints, f"Pilot at rank {rank} ({len(task.parts)} clients)")
    console.print(f"pilot folder {path}")


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


def _numbers(text: str, option: str, kind=float) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        fail(f"{option} = {text!r}: expected a comma-separated list of numbers")
    return values


@app.command("calibrate-weights")
def calibrate_weights_cmd(
    config: Annotated[Path | None, typer.Argument(
        help="Run config TOML of the run to calibrate for (default: the embedded task's main "
        "job).")] = None,
    out: Annotated[Path, typer.Option(help="Calibration file to write.")] = Path(
        "runs/calibration.toml"),
    ranks: Annotated[str, typer.Option(
        help="Ranks of the rho = 1 pilots (>= 3); default: the run's lora.rank_candidates, so "
        "that eps(r) is measured up to the largest candidate.")] = "",
    rhos: Annotated[str, typer.Option(help="Ratios (< 1) of the ratio pilots.")] = "0.5,0.25,0.125",
    rho_ranks: Annotated[str, typer.Option(
        help="Rank(s) of the ratio pilots; two separate a ratio form from a count form.")] = "8,16",
    seeds: Annotated[str, typer.Option(help="Seeds (every pilot at each: paired).")] = "0,1",
    num_test: Annotated[int, typer.Option(min=10, help="Test samples of every pilot.")] = 5000,
    store: Annotated[Path, typer.Option(help="Pilot run cache (reused, resumable).")] = Path(
        "runs/pilots"),
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes (one torch thread each "
                                      "when > 1).")] = 2,
) -> None:
    """Measure the offline objective's weights on this task (docs/model.md §8b): federated pilot
    runs of CONFIG at several ranks (rho = 1) and ratios (same seeds, with error feedback); fits
    w_rank, w_cov, w_sparse and the phi form in test error at the run's horizon, each with its
    standard error, into a calibration file for `tsfa rank --calibration` and `tsfa run`."""
    import os
    import time

    from tsfa.config.experiment import load_run_config
    from tsfa.engines.local import train
    from tsfa.experiments.cache import lookup, run_many
    from tsfa.experiments.horizon import calibration_table, fit_calibration, write_calibration
    from tsfa.experiments.plan import plan_run
    from tsfa.experiments.weights import PilotPlan, pilot_configs, pilot_table

    try:
        cfg = load_run_config(config)
        stage = plan_run(cfg, rank="auto")
        pilot_ranks = (_numbers(ranks, "--ranks", int) if ranks.strip()
                       else tuple(int(r) for r in stage.cfg.system.lora.rank_candidates))
        plan = PilotPlan(pilot_ranks, _numbers(rhos, "--rhos"),
                         _numbers(rho_ranks, "--rho-ranks", int),
                         _numbers(seeds, "--seeds", int), num_test)
        plan.check(min(stage.system.lora.d_in, stage.system.lora.d_out))
    except (SpecError, ValueError) as exc:
        fail(str(exc))
    pilots = pilot_configs(stage.cfg, plan)
    todo = sum(lookup(c, store) is None for *_, c in pilots)
    t0, done = time.perf_counter(), [0]

    def log(msg: str) -> None:
        if msg.startswith("finished"):
            done[0] += 1
            el = time.perf_counter() - t0
            eta = el / done[0] * (todo - done[0])
            console.print(f"pilot {done[0]}/{todo} {msg.split()[-1]}: {el:.0f} s, ETA "
                          f"{eta:.0f} s (load {os.getloadavg()[0]:.1f})")

    console.print(f"{len(pilots)} pilots x {stage.cfg.system.training.rounds} rounds, {todo} to "
                  f"train in {store} ({jobs} worker(s)); cached pilots are reused")
    runs = run_many([c for *_, c in pilots], store, train, jobs, log)
    table = pilot_table(pilots, runs)
    eps = {}
    if cfg.experiment.task == "synthetic":  # the embedded task's eps(r) is known exactly
        from tsfa.experiments.runs import synthetic_spectrum

        eps = {"bound.eps_model": "given", "bound.spectrum": synthetic_spectrum()}
    # the weights are fitted on the resolved system (LoRA sizes of the trained model)
    fit_cfg = type(stage.cfg)(stage.cfg.experiment, stage.system.replace(**eps))
    notes = [f"pilots: {len(table)} runs, {table['train_wall_s'].sum() / 60:.0f} minutes of "
             f"their own round wall time, {time.perf_counter() - t0:.0f} s wall this invocation "
             f"(cached pilots reused), load {os.getloadavg()[0]:.1f}; seeds {list(plan.seeds)}; "
             f"num_test {num_test}"]
    try:
        cal = fit_calibration(table, fit_cfg, notes)
    except ValueError as exc:
        fail(str(exc))
    write_calibration(cal, out)
    print_frame(table.drop(columns=["path", "train_wall_s", "accuracy_curve"]),
                "Pilot runs (final error = 1 - mean accuracy of "
                "the last rounds)")
    print_frame(calibration_table(cal).drop(columns=["method"]), f"Weights (phi = {cal.phi})")
    console.print(f"calibration written to {out}")
