"""All five uplink methods on the embedded synthetic task at the same budget (docs/model.md §6, §7).

Two groups of runs of the default :class:`~tsfa.config.experiment.RunConfig` (same rank, data,
partition and fading draws per seed; only the compressor and the policy change):

* ``controller``: SOFT, TLoRA, RLoRA, SLoRA under the TSFA controller (the same latency budget
  Tbar_k), and ILoRA (rho = 1, equal bandwidth, no latency constraint: the ideal reference);
* ``rho=1/8``: SOFT, TLoRA, RLoRA at a fixed rho = 1/8 with equal bandwidth (no Lyapunov).

Results go to ``analysis/results/compare_methods/`` (``runs.csv`` one row per run, ``table.csv``
mean and std per method, ``curves.csv`` accuracy per round, ``config.toml``, ``metadata.json``)
and the table to ``docs/methods.md`` (its hand-written Notes are kept). Runs go through the run
cache of :mod:`tsfa.experiments.cache` in ``--cache`` (a folder per resolved config; a finished
run is reused), so re-running adds seeds or regenerates the table only. The findings are in
docs/methods.md, Notes.

    python analysis/compare_methods.py --seeds 0 1 2 --jobs 2

``--task fashion_mnist`` runs the same comparison on the realistic offline protocol (backbone
pre-trained once, before any run, into ``--cache`` and shared by every run and seed through
``experiment.pretrained``); give it its own ``--out``; docs/methods.md is written for the
synthetic task only. ``--rho-only`` runs ILoRA and the rho = 1/8 group, without ablations:

    python analysis/compare_methods.py --task fashion_mnist --rho-only --rounds 20 --seeds 0 1 \
        --jobs 1 --out analysis/results/fashion_rho
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from tsfa.config.experiment import TASKS, RunConfig
from tsfa.experiments.cache import CachedRun, lookup, run_many
from tsfa.reporting.results import final_accuracy, prepare_dir, write_table

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "analysis" / "results" / "compare_methods"
DOC = ROOT / "docs" / "methods.md"
FIXED_RHO = 0.125
RUNS = ([("controller", "ilora", "fixed")]
        + [("controller", m, "tsfa") for m in ("soft", "tlora", "rlora", "slora")]
        + [("rho=1/8", m, "fixed") for m in ("soft", "tlora", "rlora")])
# ablations at rho = 1/8 (docs/model.md §5 variants), run for --ablation-seeds only
ZETAS = {"0": 0.0, "1e-2": 1e-2, "1e-1": 1e-1, "1": 1.0}  # SOFT's orthogonality weight (default 1e-3)
ABLATIONS = {"rho=1/8 normalised": {"soft.aggregation": "normalised"},
             **{f"rho=1/8 zeta={z}": {"soft.zeta": v} for z, v in ZETAS.items()}}
ABLATION_RUNS = ([("rho=1/8 normalised", m, "fixed") for m in ("soft", "tlora")]
                 + [(f"rho=1/8 zeta={z}", "soft", "fixed") for z in ZETAS])


def run_config(base: RunConfig, group: str, method: str, controller: str, seed: int) -> RunConfig:
    """The base config with this run's method, policy and seed (ILoRA: rho = 1 in the loop)."""
    changes = {"experiment.method": method, "experiment.controller": controller,
               "experiment.seed": seed}
    if group.startswith("rho=1/8"):
        changes["experiment.rho"] = FIXED_RHO
    changes.update(ABLATIONS.get(group, {}))
    return base.replace(**changes)


def summarise(run: CachedRun, group: str, method: str, seed: int, last: int = 5) -> dict:
    """One run's row: accuracy after the last round and over the last ``last`` rounds, bits per
    client per round, mean latency against the mean budget, wall time."""
    rounds, clients = run.rounds, run.clients
    per_client = clients.groupby("client").agg(lat=("latency_s", "mean"),
                                               budget=("budget_s", "mean"))
    return {"group": group, "method": method, "seed": seed,
            "final_accuracy": final_accuracy(rounds, last=1),
            "last5_accuracy": final_accuracy(rounds, last=last),
            "best_accuracy": float(rounds["accuracy"].max()),
            "mean_rho": float(rounds["mean_rho"].mean()),
            "bits_per_client_round": float(clients["bits"].mean()),
            "mean_latency_s": float(clients["latency_s"].mean()),
            "mean_budget_s": float(clients["budget_s"].mean()),
            "clients_within_budget": int((per_client["lat"] <= per_client["budget"] * 1.001).sum()),
            "num_clients": int(len(per_client)),
            "rounds": int(len(rounds)),
            "final_cov_fro": float(rounds["cov_fro"].iloc[-1]),
            # SOFT's premise: importance order vs true singular values (NaN for other methods)
            "kendall_tau_last5": float(rounds["kendall_tau"].iloc[-last:].mean()),
            "wall_s": float(rounds["wall_s"].sum())}


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (group, method)."""
    g = runs.groupby(["group", "method"], sort=False)
    out = g.agg(seeds=("seed", "count"), acc_mean=("final_accuracy", "mean"),
                acc_std=("final_accuracy", "std"), last5_mean=("last5_accuracy", "mean"),
                last5_std=("last5_accuracy", "std"), mean_rho=("mean_rho", "mean"),
                bits_per_client_round=("bits_per_client_round", "mean"),
                mean_latency_s=("mean_latency_s", "mean"), mean_budget_s=("mean_budget_s", "mean"),
                clients_within_budget=("clients_within_budget", "mean"),
                final_cov_fro=("final_cov_fro", "mean"),
                kendall_tau_last5=("kendall_tau_last5", "mean"), wall_s=("wall_s", "mean"))
    return out.reset_index()


def markdown(tab: pd.DataFrame, base: RunConfig, seeds: list[int], machine: str) -> str:
    """docs/methods.md: the table with date, machine and configuration."""
    exp, sys_ = base.experiment, base.system
    tr = sys_.training
    lines = [
        "# Methods compared on the embedded task",
        "",
        "**tsfa reconstruction on the embedded synthetic task, not the paper's result.** "
        "Generated by `python analysis/compare_methods.py` up to the Notes (which are written by "
        "hand and kept when the script runs again); raw numbers in "
        "`analysis/results/compare_methods/`.",
        "",
        f"- Date: {datetime.now(UTC).date().isoformat()}; machine: {machine}.",
        f"- Task: synthetic teacher (tsfa.fl.synthetic defaults, {exp.num_train} training "
        f"samples), K = {sys_.clients.num_clients} clients, Dir({sys_.clients.dirichlet_alpha:g}) "
        f"labels; LoRA r = {exp.rank}, lora_alpha = {exp.lora_alpha:g} on q, v; "
        f"{exp.optimizer} lr {tr.learning_rate:g}, tau = {tr.local_steps} local steps, "
        f"b = {tr.batch_size}, T = {tr.rounds} rounds; zeta = {sys_.soft.zeta:g} (SOFT only), "
        f"aggregation {sys_.soft.aggregation}; error feedback for every method.",
        f"- Seeds: {', '.join(map(str, seeds))} (data, partition, fading and client sampling per "
        "seed are identical across methods).",
        "- *controller*: SOFT, TLoRA, RLoRA and SLoRA under the TSFA Lyapunov controller with "
        "the same per-client budget Tbar_k; ILoRA sends everything (rho = 1, equal bandwidth) "
        "with no latency constraint (docs/model.md §6), so its latency exceeds the budget by design.",
        f"- *rho=1/8*: fixed rho = {FIXED_RHO:g} for every client, equal bandwidth.",
        "- accuracy: test accuracy after the last round (mean ± std over seeds); last 5: mean of "
        "the last five rounds; bits: LoRA payload + head + indices per client per round; "
        "latency: mean over clients and rounds of compute + upload time; within budget: clients "
        "whose time-averaged latency is at most their Tbar_k; Kendall tau: agreement of the "
        "norm-product order ||b_i|| ||a_i|| of the global factors with the true singular values "
        "of B A, mean over modules and the last five rounds (1 = SOFT's premise, orthogonal "
        "factors, holds; SLoRA re-factorises by SVD, so 1 by construction).",
        "",
        "| group | method | seeds | accuracy | last 5 | mean rho | kbit / client / round "
        "| mean latency s | budget s | within budget | Kendall tau |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for _, r in tab.iterrows():
        sd = "" if np.isnan(r.acc_std) else f" ± {r.acc_std:.3f}"
        sd5 = "" if np.isnan(r.last5_std) else f" ± {r.last5_std:.3f}"
        lines.append(f"| {r.group} | {r.method} | {r.seeds} | {r.acc_mean:.3f}{sd} | "
                     f"{r.last5_mean:.3f}{sd5} | {r.mean_rho:.3f} | "
                     f"{r.bits_per_client_round / 1e3:.1f} | {r.mean_latency_s:.3f} | "
                     f"{r.mean_budget_s:.3f} | {r.clients_within_budget:.1f}/"
                     f"{sys_.clients.num_clients} | "
                     f"{'' if np.isnan(r.kendall_tau_last5) else f'{r.kendall_tau_last5:.2f}'} |")
    lines += ["", "## Issue 4 checks (computed from the table above)", ""]
    lines += [f"- {text}: **{'met' if ok else 'not met'}** ({detail})"
              for text, ok, detail in checks(tab)]
    return "\n".join(lines) + "\n"


def write_doc(path: Path, generated: str) -> None:
    """Write the generated part of ``path``, keeping its hand-written "## Notes" section."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    notes = old[old.index("\n## Notes"):] if "\n## Notes" in old else ""
    text = generated.rstrip("\n") + "\n\n" + notes.lstrip("\n") if notes else generated
    path.write_text(text, encoding="utf-8")


def checks(tab: pd.DataFrame) -> list[tuple[str, bool, str]]:
    """Issue 4's ordering criteria, evaluated on the mean final accuracy (tie: within 1 std)."""
    acc = {(g, m): (a, 0.0 if np.isnan(sd) else sd)
           for g, m, a, sd in zip(tab.group, tab.method, tab.acc_mean, tab.acc_std, strict=True)}
    out = []
    ctrl = {m: v for (g, m), v in acc.items() if g == "controller"}
    if "ilora" in ctrl:
        best = max(ctrl, key=lambda m: ctrl[m][0])
        tie = ctrl[best][0] - ctrl["ilora"][0] <= max(ctrl[best][1], ctrl["ilora"][1])
        out.append(("ILoRA best or tied (within one std of the best)", best == "ilora" or tie,
                    f"best {best} {ctrl[best][0]:.3f}, ILoRA {ctrl['ilora'][0]:.3f}"))
        if "soft" in ctrl:
            gap = ctrl["ilora"][0] - ctrl["soft"][0]
            out.append(("SOFT within 2 accuracy points of ILoRA", gap <= 0.02,
                        f"ILoRA - SOFT = {100 * gap:+.1f} points"))
    fixed = {m: v for (g, m), v in acc.items() if g == "rho=1/8"}
    if {"soft", "tlora", "rlora"} <= set(fixed):
        s, t, r = (fixed[m][0] for m in ("soft", "tlora", "rlora"))
        out.append(("SOFT above TLoRA and RLoRA at rho = 1/8", s > t and s > r,
                    f"SOFT {s:.3f}, TLoRA {t:.3f}, RLoRA {r:.3f}"))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--ablation-seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--jobs", type=int, default=2,
                    help="parallel runs (the cores split between them)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="run folders (default runs/compare_methods, + _TASK for other tasks)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--doc", type=Path, default=DOC, help="written for the synthetic task only")
    ap.add_argument("--rounds", type=int, default=None, help="override training.rounds")
    ap.add_argument("--task", choices=TASKS, default="synthetic")
    ap.add_argument("--rho-only", action="store_true",
                    help="ILoRA and the rho = 1/8 group only, no ablations")
    ap.add_argument("--table-only", action="store_true", help="summarise finished runs only")
    args = ap.parse_args(argv)
    synthetic = args.task == "synthetic"
    if not synthetic and args.out.resolve() == OUT.resolve():
        raise SystemExit(f"--task {args.task}: give --out (not the synthetic results {OUT})")
    if args.cache is None:
        args.cache = ROOT / "runs" / ("compare_methods" + ("" if synthetic else f"_{args.task}"))

    base = RunConfig().replace(**{"experiment.task": args.task})
    if args.rounds is not None:
        base = base.replace(**{"training.rounds": args.rounds})
    backbone = None
    if args.task == "fashion_mnist":  # one backbone for every run and seed (tsfa.fl.tasks)
        backbone = args.cache.resolve() / "backbone_fmnist_classes0-4.pt"
        base = base.replace(**{"experiment.pretrained": str(backbone)})
    runs_list = [r for r in RUNS if r[1] == "ilora" or r[0] == "rho=1/8"] if args.rho_only else RUNS
    # seed-major order, so a partial sweep still has every method for the first seeds
    plan = [(seed, run) for seed in args.seeds for run in runs_list]
    if not args.rho_only:
        plan += [(seed, run) for seed in args.ablation_seeds for run in ABLATION_RUNS]
    cfgs = [run_config(base, group, method, controller, seed)
            for seed, (group, method, controller) in plan]
    if args.table_only:
        found = [lookup(c, args.cache) for c in cfgs]
    else:
        if backbone is not None and not backbone.exists():  # pre-train once, before the runs
            from tsfa.fl.build import run_task

            run_task(base)
        found = run_many(cfgs, args.cache, jobs=args.jobs, log=lambda m: print(m, flush=True))
    done = [(g, m, seed, run) for (seed, (g, m, _)), run in zip(plan, found, strict=True)
            if run is not None]
    if not done:
        raise SystemExit("no finished runs")
    runs = pd.DataFrame([summarise(run, g, m, s) for g, m, s, run in done])
    order = {(g, m): i for i, (g, m, _) in enumerate(RUNS + ABLATION_RUNS)}
    runs = runs.iloc[np.argsort([order[(g, m)] * 1000 + s for g, m, s in
                                 zip(runs.group, runs.method, runs.seed, strict=True)],
                                kind="stable")]
    curves = pd.concat([run.rounds[["round", "accuracy", "mean_rho", "mean_latency_s"]]
                        .assign(group=g, method=m, seed=s) for g, m, s, run in done])
    tab = table(runs)
    seeds = sorted(runs.seed.unique().tolist())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (f"{os.cpu_count()} CPU cores, {platform.platform()}, Python "
               f"{platform.python_version()}, load average {load:.1f} at the end (shared machine)")
    extra = {}
    if backbone is not None:
        sidecar = backbone.with_suffix(".json")
        extra["backbone"] = {"path": str(backbone),
                             "sha256": hashlib.sha256(backbone.read_bytes()).hexdigest(),
                             "pretraining": json.loads(sidecar.read_text())
                             if sidecar.exists() else None}
    prepare_dir(args.out, base.to_toml(), None, seeds=seeds, fixed_rho=FIXED_RHO,
                runs={f"{g} {m} seed {s}": run.path.name for g, m, s, run in done},
                machine=machine, task=args.task, **extra)
    write_table(runs, args.out / "runs.csv")
    write_table(tab, args.out / "table.csv")
    write_table(curves, args.out / "curves.csv")
    if synthetic:
        write_doc(args.doc, markdown(tab, base, seeds, machine))
    print(tab.to_string(index=False))


if __name__ == "__main__":
    main()
