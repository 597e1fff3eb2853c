"""Ablation: does the row-space covariance correction hurt SOFT only with error feedback?
(issue 13; docs/methods.md Notes; docs/model.md §2 for the correction).

At size ``quick`` on the embedded task (rho = 1/8, r = 8, update protocol), the correction
lowered SOFT by ~6 points with error feedback and was level under the factor protocol (no error
feedback). This script crosses error feedback (none, all) with the correction (none, row_space)
for SOFT under the *update* protocol, 3 seeds, so that the only difference between the two
pairs is error feedback. Runs are cached like the comparison's (:mod:`tsfa.experiments.cache`,
one folder per resolved config with its config and seed), so a stopped run resumes.

    python analysis/ablate_row_space.py [--jobs 2] [--seeds 0 1 2] [--size quick]

``--size`` is one of analysis/compare_grid.py's sizes (``quick`` the measured one; ``smoke``:
2 rounds of 1 local step, seconds per run, for the test suite, with ``--store`` and ``--out`` in
a temporary folder). Writes ``analysis/results/ablate_row_space/``: ``runs.csv`` (one row per
run: accuracy = mean of the last 5 rounds, ||Cov||_F at the end), ``paired.csv`` (plain -
corrected per error-feedback setting, paired by seed, 95% t-interval, in accuracy),
``config.toml`` and ``metadata.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_grid import POLICIES, SIZES, base_config, run_grid  # noqa: E402
from compare_report import LAST, t_interval  # noqa: E402

from tsfa.experiments.cache import lookup  # noqa: E402
from tsfa.experiments.results import final_accuracy, prepare_dir, write_table  # noqa: E402
from tsfa.fl.device import set_threads  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FEEDBACK = ("none", "all")
CORRECTION = ("none", "row_space")


def effect(lo: float, hi: float) -> str:
    """What the correction does, from the 95% interval of plain - corrected accuracy."""
    if lo != lo:  # NaN: one seed
        return "n/a (1 seed)"
    return "correction lowers" if lo > 0 else "correction raises" if hi < 0 else "level"


def configs(store: Path, seeds, size: str = "quick") -> dict:
    base = base_config(size, "synthetic", store)
    return {(ef, cov, seed): base.replace(**{
        "experiment.method": "soft", "experiment.seed": seed, **POLICIES["rho=1/8"],
        "experiment.upload": "update", "experiment.error_feedback": ef,
        "experiment.cov_correction": cov})
        for ef in FEEDBACK for cov in CORRECTION for seed in seeds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (1 torch thread each)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--size", choices=SIZES, default="quick",
                    help="run size of analysis/compare_grid.py (smoke: seconds, for the tests)")
    ap.add_argument("--store", type=Path, default=ROOT / "runs" / "ablate_row_space")
    ap.add_argument("--out", type=Path, default=ROOT / "analysis" / "results" / "ablate_row_space")
    args = ap.parse_args()
    set_threads(1)
    args.store.mkdir(parents=True, exist_ok=True)
    cfgs = configs(args.store, args.seeds, args.size)
    run_grid(list(cfgs.values()), args.store, args.jobs)
    rows = []
    for (ef, cov, seed), cfg in cfgs.items():
        run = lookup(cfg, args.store)
        rows.append({"error_feedback": ef, "cov_correction": cov, "seed": seed,
                     "accuracy": final_accuracy(run.rounds, last=LAST),
                     "final_cov_fro": float(run.rounds["cov_fro"].iloc[-1])})
    runs = pd.DataFrame(rows)
    out = []
    for ef, g in runs.groupby("error_feedback", sort=False):
        acc = g.pivot(index="seed", columns="cov_correction", values="accuracy")
        d = (acc["none"] - acc["row_space"]).to_numpy()
        m, lo, hi = t_interval(d)
        out.append({"error_feedback": ef, "seeds": len(d), "plain": acc["none"].mean(),
                    "row_space": acc["row_space"].mean(), "diff": m, "lo": lo, "hi": hi,
                    "per_seed": " ".join(f"{x:+.3f}" for x in d), "effect": effect(lo, hi)})
    table = pd.DataFrame(out)
    first = next(iter(cfgs.values()))
    prepare_dir(args.out, first.to_toml(), None, seeds=args.seeds,
                note=f"SOFT, update protocol, rho = 1/8, r = 8, embedded task, size {args.size}; "
                     "config.toml is the first cell, the others change error_feedback, "
                     "cov_correction and seed")
    write_table(runs, args.out / "runs.csv")
    write_table(table, args.out / "paired.csv")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
