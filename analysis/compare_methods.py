"""SOFT and every baseline compressor, read both ways, at equal values and equal bits, on two tasks
(issue 13; docs/model.md §5-§6).

The grid (analysis/compare_grid.py) crosses the upload protocol and error feedback (``update+EF``,
``factor`` without EF FedIT style, ``EF SOFT only``), the budget (equal values, equal bits), the
compressor (SOFT, TLoRA, RLoRA, SLoRA, SVD, FFA, SOFT + row-space covariance correction, ILoRA),
the policy (rho = 1/8 fixed, TSFA controller) and the rank (8; 32 for SOFT vs TLoRA), on the
embedded synthetic task and on Fashion-MNIST with a pre-trained backbone, in priority tiers:

1. SOFT vs TLoRA at rho = 1/8, update+EF and factor, equal values; 2. the same at equal bits;
3. the same under "EF SOFT only"; 4. the other compressors at rho = 1/8; 5. SOFT vs TLoRA under
   TSFA; 6. SOFT vs TLoRA at r = 32; 7. the other compressors under TSFA (``TIER_NAMES`` in
   analysis/compare_grid.py; tier 6 on the embedded task, the others on both).

Sizes (``--size``): ``quick`` (local steps 10, batch 16, T = 30; what fits in about an hour on 2
shared cores for tier 1), ``paper`` (the default run: 20 local steps, batch 32, T = 100),
``smoke`` (a few seconds, for the tests). Runs are cached in ``runs/compare_methods_<size>/``
(a folder per resolved config, :mod:`tsfa.experiments.cache`); a finished run is never trained
again, so the same command resumes a stopped sweep, and the tables are rewritten after every
finished run: ``analysis/results/compare_methods_<size>/`` (``runs.csv`` one row per run,
``table.csv`` per cell, ``paired.csv`` SOFT minus each method paired by seed with 95%
t-intervals, ``separation.csv``, ``curves.csv`` mean accuracy per round and cell,
``train_log.txt`` wall and CPU time and load average of every trained run) and
``docs/methods.md`` (its hand-written "## Notes" are kept).

    python analysis/compare_methods.py --size quick --jobs 2      # tier 1 first, then the rest
    python analysis/compare_methods.py --size paper --jobs 2      # the full grid, default run
    python analysis/compare_methods.py --size quick --table-only  # tables from finished runs
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_grid import (  # noqa: E402
    BACKBONE,
    FIXED_RHO,
    SIZES,
    TIER_NAMES,
    base_config,
    ensure_backbone,
    plan,
    run_grid,
    run_path,
)
from compare_report import (  # noqa: E402
    CELL,
    TASK_NAMES,
    cell_table,
    grid_markdown,
    paired,
    paired_markdown,
    separation,
    separation_markdown,
    summarise,
)

from tsfa.experiments.cache import lookup  # noqa: E402
from tsfa.experiments.results import prepare_dir, write_table  # noqa: E402
from tsfa.fl.device import set_threads  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "methods.md"


def collect(rows: list, store: Path):
    """(runs, curves): one summary row per finished (cell, seed) and the per-round accuracy."""
    runs, curves, read = [], [], {}
    for cell, seed, cfg in rows:
        path = run_path(cfg, store)
        if path not in read:
            read[path] = lookup(cfg, store)
        run = read[path]
        if run is None:
            continue
        key = {f: getattr(cell, f) for f in CELL}
        runs.append({**summarise(run.rounds, run.clients, key, seed), "tier": cell.tier,
                     "run": path.name})
        curves.append(run.rounds[["round", "accuracy"]].assign(**key, seed=seed))
    if not runs:
        return pd.DataFrame(), pd.DataFrame()
    return pd.DataFrame(runs), pd.concat(curves, ignore_index=True)


def findings(tab: pd.DataFrame, pairs: pd.DataFrame) -> list[str]:
    """The generated conclusions: under which reading SOFT is above TLoRA, and the best
    configuration per task, with the numbers."""
    out = []
    key = pairs[(pairs.method == "tlora") & (pairs.policy == "rho=1/8") & (pairs["rank"] == 8)]
    for task, g in key.groupby("task", sort=False):
        above = [f"{r.reading} / equal {r.budget} ({100 * r.diff:+.1f} points, 95% CI "
                 f"[{100 * r.lo:+.1f}, {100 * r.hi:+.1f}])" for r in g.itertuples()
                 if r.verdict == "SOFT above"]
        below = [f"{r.reading} / equal {r.budget} ({100 * r.diff:+.1f} [{100 * r.lo:+.1f}, "
                 f"{100 * r.hi:+.1f}])" for r in g.itertuples() if r.verdict == "SOFT below"]
        level = [f"{r.reading} / equal {r.budget} ({100 * r.diff:+.1f} [{100 * r.lo:+.1f}, "
                 f"{100 * r.hi:+.1f}])" for r in g.itertuples() if r.verdict == "not separated"]
        name = TASK_NAMES.get(task, task)
        out.append(f"- **{name}, rho = 1/8, r = 8, SOFT - TLoRA (paired, up to {g.seeds.max()} seeds)**: "
                   f"the paper's ordering (SOFT above TLoRA, interval above 0) holds under "
                   f"{'; '.join(above) if above else 'no reading'}. SOFT is below TLoRA under "
                   f"{'; '.join(below) if below else 'no reading'}"
                   + (f"; not separated under {'; '.join(level)}." if level else "."))
    fixed = tab[(tab.policy == "rho=1/8") & (tab["rank"] == 8) & (tab.method != "ilora")]
    for task, g in fixed.groupby("task", sort=False):
        best = g.loc[g.acc_mean.idxmax()]
        soft = g[g.method == "soft"]
        sb = soft.loc[soft.acc_mean.idxmax()] if len(soft) else None
        ilora = tab[(tab.task == task) & (tab.method == "ilora") & (tab["rank"] == 8)]
        ref = f"; ILoRA (rho = 1) {ilora.acc_mean.iloc[0]:.3f}" if len(ilora) else ""
        text = (f"- **{TASK_NAMES.get(task, task)}, best compressed configuration at rho = 1/8**: "
                f"{best.method}, {best.reading}, equal {best.budget}: {best.acc_mean:.3f} "
                f"({best.seeds} seed{'s' if best.seeds > 1 else ''}){ref}")
        if sb is not None:
            text += (f"; SOFT's best reading: {sb.reading} ({sb.acc_mean:.3f}); SOFT under "
                     f"factor: {_acc_of(soft, 'factor')}")
        out.append(text + ".")
    return out


def _acc_of(g: pd.DataFrame, reading: str) -> str:
    r = g[g.reading == reading]
    return f"{r.acc_mean.iloc[0]:.3f}" if len(r) else "not run"


def _training(cfg) -> str:
    tr, ex = cfg.system.training, cfg.experiment
    return (f"{TASK_NAMES[ex.task]}: tau = {tr.local_steps} local steps of b = {tr.batch_size}, "
            f"T = {tr.rounds} rounds, {ex.num_test:,} test samples")


def markdown(size: str, tab, pairs, sep, runs, rows, machine: str, store: Path) -> str:
    """docs/methods.md's generated part."""
    base = base_config(size, "synthetic", store)
    ex, sy = base.experiment, base.system
    missing = sorted({(c.tier, c.task) for c, s, cfg in rows
                      if not ((runs.run == run_path(cfg, store).name).any())})
    tiers_missing = {}
    for tier, task in missing:
        tiers_missing.setdefault(tier, []).append(task)
    n_unique = runs.drop_duplicates("run")
    lines = [
        "# Methods compared: both readings of SOFT, equal values and equal bits, two tasks",
        "",
        "**tsfa's reconstruction, not the paper's result.** Generated by "
        f"`python analysis/compare_methods.py --size {size}` up to the Notes (written by hand and "
        "kept when the script runs again); raw numbers in "
        f"`analysis/results/compare_methods_{size}/`.",
        "",
        f"- Date: {datetime.now(UTC).date().isoformat()}; machine: {machine}.",
        f"- Size `{size}`: K = {sy.clients.num_clients} clients, Dir({sy.clients.dirichlet_alpha:g})"
        f" labels, {ex.optimizer} lr {sy.training.learning_rate:g}, LoRA alpha "
        f"{ex.lora_alpha:g} on q, v, zeta = {sy.soft.zeta:g} (SOFT); "
        + "; ".join(_training(base_config(size, t, store)) for t in ("synthetic", "fashion_mnist"))
        + f". {len(n_unique)} distinct runs finished, {n_unique.wall_s.sum() / 60:.0f} min of "
        "training wall time summed over runs (1 torch thread per run, at most 2 runs at a time; per-run "
        "wall, CPU and load in `train_log.txt`).",
        f"- Tasks: the **embedded synthetic task** (teacher ViT, {ex.num_train:,} training samples, "
        "tiny ViT of width 64, depth 4) and **Fashion-MNIST with a pre-trained backbone** (the "
        "same tiny ViT pre-trained centrally on classes 0-4, 500 AdamW steps of 64 images, "
        f"cached once as `{BACKBONE}` and shared by every run; federated LoRA on classes 5-9, "
        f"{ex.num_train:,} training samples).",
        "- Readings: *update+EF*: clients send sparsified factor changes, error feedback for every "
        "method (tsfa's default); *EF SOFT only*: the same, error feedback for SOFT only "
        "(`error_feedback = \"proposed\"`), the baselines without; *factor*: clients send their "
        "sparsified local factors, no error feedback, global value where a client sent nothing "
        "(FedIT style). Budget: *values* = SOFT's number of values; *bits* = SOFT's bits, index "
        "bits included (SOFT and ILoRA are the same run under both; SOFT under *EF SOFT only* "
        "is its *update+EF* run; ILoRA (rho = 1) is one run per seed, listed under every reading).",
        f"- Policies: *rho=1/8*: fixed rho = {FIXED_RHO:g}, equal bandwidth; *TSFA*: the Lyapunov "
        "controller with the same per-client latency budget for every method (each method "
        "planned with its own payload model).",
        "- Accuracy: mean test accuracy of the last 5 rounds, mean ± std over "
        "seeds (0, 1, 2; the number in brackets when fewer finished). Same seed = same data, "
        "partition, initial factors, fading and client sampling for every method; differences "
        "are paired by seed, 95% Student-t interval over seeds, in accuracy points.",
        "",
    ]
    for task in [t for t in ("synthetic", "fashion_mnist") if t in set(tab.task)]:
        lines += [f"## {TASK_NAMES[task]}: accuracy per cell", ""]
        lines += grid_markdown(tab, task, list(tab.method.unique())) + [""]
    lines += ["## Findings (computed from the tables)", ""] + findings(tab, pairs) + [""]
    lines += ["## SOFT - TLoRA, paired by seed", ""]
    lines += paired_markdown(pairs, ["tlora"]) + [""]
    others = pairs[pairs.method != "tlora"]
    if len(others) and len(pairs):
        lines += ["## SOFT - every other method, paired by seed", ""]
        lines += paired_markdown(others) + [""]
    if len(sep):
        lines += ["## Has T separated the methods? SOFT - TLoRA along training", "",
                  "Paired SOFT - TLoRA accuracy (points, mean over the rounds of each window and "
                  "the seeds), and each method's gain in mean accuracy from the middle to the last "
                  "third of training (small gains: the curves have flattened).", ""]
        lines += separation_markdown(sep) + [""]
    lines += ["## Not run at this size", ""]
    if tiers_missing:
        for tier, tasks in sorted(tiers_missing.items()):
            n = sum(1 for c, _, cfg in rows if c.tier == tier
                    and not (runs.run == run_path(cfg, store).name).any())
            lines.append(f"- tier {tier} ({TIER_NAMES[tier]}), {', '.join(tasks)}: {n} (cell, seed) "
                         "pairs unfinished")
        lines += ["", f"`python analysis/compare_methods.py --size {size} --jobs 2` continues the "
                  "sweep (finished runs are reused); `--size paper` runs the grid at the "
                  "default run's size."]
    else:
        lines.append("- nothing: the grid at this size is complete.")
    return "\n".join(lines) + "\n"


def write_doc(path: Path, generated: str) -> None:
    """Write the generated part of ``path``, keeping its hand-written "## Notes" section."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    notes = old[old.index("\n## Notes"):] if "\n## Notes" in old else ""
    path.write_text(generated.rstrip("\n") + "\n" + notes if notes else generated,
                    encoding="utf-8")


def report(size: str, rows: list, store: Path, out: Path, doc: Path | None) -> pd.DataFrame:
    """Every table from the finished runs of ``rows``; returns the cell table."""
    runs, curves = collect(rows, store)
    if runs.empty:
        return runs
    tab, pairs = cell_table(runs), paired(runs)
    sep = separation(curves)
    load = os.getloadavg()[0]
    machine = (f"{os.cpu_count()} CPU cores shared with other jobs, {platform.platform()}, Python "
               f"{platform.python_version()}, load average {load:.1f} when the tables were written")
    mean_curves = curves.groupby([*CELL, "round"], sort=False)["accuracy"].mean().reset_index()
    prepare_dir(out, base_config(size, "synthetic", store).to_toml(), None, size=size,
                machine=machine, runs=sorted(set(runs.run)))
    for name, df in (("runs", runs), ("table", tab), ("paired", pairs), ("separation", sep),
                     ("curves", mean_curves)):
        write_table(df.round(5) if name == "curves" else df, out / f"{name}.csv")
    if doc is not None:
        write_doc(doc, markdown(size, tab, pairs, sep, runs, rows, machine, store))
    return tab


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=SIZES, default="quick")
    ap.add_argument("--tiers", type=int, nargs="*", default=None, help="default: the size's")
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="default: 0 1 2")
    ap.add_argument("--tasks", nargs="*", choices=("synthetic", "fashion_mnist"), default=None)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (1 torch thread each)")
    ap.add_argument("--store", type=Path, default=None,
                    help="run cache (default runs/compare_methods_<size>)")
    ap.add_argument("--out", type=Path, default=None,
                    help="tables (default analysis/results/compare_methods_<size>)")
    ap.add_argument("--doc", default=str(DOC), help="generated markdown ('' for none)")
    ap.add_argument("--table-only", action="store_true", help="tables from finished runs only")
    args = ap.parse_args(argv)
    store = args.store or ROOT / "runs" / f"compare_methods_{args.size}"
    out = args.out or ROOT / "analysis" / "results" / f"compare_methods_{args.size}"
    doc = Path(args.doc) if args.doc else None  # (type=Path would read '' as '.')
    store.mkdir(parents=True, exist_ok=True)
    rows = plan(args.size, store, args.tiers, args.seeds, args.tasks)
    # the tables show every finished run of the size's grid, whatever subset this call trains
    seeds = sorted(set(SIZES[args.size]["seeds"]) | set(args.seeds or ()))
    shown = plan(args.size, store, seeds=seeds)

    def write():
        report(args.size, shown, store, out, doc)

    if not args.table_only:
        set_threads(1)  # the backbone's pre-training, if needed, on one thread as the runs
        for task in sorted({c.task for c, _, _ in rows}):
            ensure_backbone(base_config(args.size, task, store))
        log_path = out / "train_log.txt"
        out.mkdir(parents=True, exist_ok=True)

        def log(msg: str) -> None:
            print(msg, flush=True)
            with log_path.open("a", encoding="utf-8") as f:
                f.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {msg}\n")

        run_grid([cfg for _, _, cfg in rows], store, args.jobs, log, on_done=write)
    tab = report(args.size, shown, store, out, doc)
    if tab.empty:
        raise SystemExit("no finished runs")
    print(tab[[*CELL, "seeds", "acc_mean", "acc_std"]].to_string(index=False))


if __name__ == "__main__":
    main()
