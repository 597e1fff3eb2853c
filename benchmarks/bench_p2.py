"""Benchmark the P2 solvers (docs/model.md §4): analytic (BCD) vs joint vs CVXPY/CLARABEL.

Run: ``python benchmarks/bench_p2.py``. Times are medians over repeats of one solve on a
seeded instance (CVXPY: model built once, the re-solve is timed, as the controller does it).
CVXPY is skipped above K = 1,000 (it takes seconds per solve there). A second table repeats the
K = 100 comparison on 12 further seeded instances: CVXPY's time varies by an order of magnitude
between instances (its cascade of CLARABEL attempts, see tsfa/optim/p2_cvxpy.py), so one
instance's ratio says little; the spread (min, median, max) is printed.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "optim"))
from test_p2 import make_instance  # noqa: E402

from tsfa.optim import CvxpyP2, solve_bcd, solve_joint  # noqa: E402


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def _times(p, reps: int, model=None, cvxpy_reps: int = 0) -> dict:
    """Median solve times [ms] of BCD, joint and (if ``model``) the CVXPY re-solve on ``p``."""
    row = {"analytic_ms": _median_ms(lambda: solve_bcd(p), reps),
           "joint_ms": _median_ms(lambda: solve_joint(p), reps),
           "cvxpy_ms": np.nan}
    if model is not None:
        row["cvxpy_ms"] = _median_ms(lambda: model.solve(p), cvxpy_reps)
    return row


def _with_ratios(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["cvxpy/analytic"] = df["cvxpy_ms"] / df["analytic_ms"]
    df["cvxpy/joint"] = df["cvxpy_ms"] / df["joint_ms"]
    return df


def main(sizes=(10, 100, 1000, 10000), cvxpy_max_k=1000) -> pd.DataFrame:
    rows = []
    for k in sizes:
        p = make_instance(np.random.default_rng(k), k, "inv")
        reps = 300 if k <= 100 else (50 if k <= 1000 else 15)
        model = None
        if k <= cvxpy_max_k:
            model = CvxpyP2(k)
            model.solve(p)  # first solve compiles the DPP mapping
        rows.append({"K": k, **_times(p, reps, model, 40 if k < 1000 else 5)})
    return _with_ratios(rows)


def instance_spread(k: int = 100, n: int = 12, seed0: int = 1000) -> pd.DataFrame:
    """Per-instance times and ratios at ``K = k`` on ``n`` seeded instances (seeds seed0...)."""
    model = CvxpyP2(k)
    rows = []
    for seed in range(seed0, seed0 + n):
        p = make_instance(np.random.default_rng(seed), k, "inv")
        ref = model.solve(p)  # also the untimed first solve
        rows.append({"seed": seed, **_times(p, 100, model, 10), "cvxpy_status": ref.status})
    return _with_ratios(rows)


if __name__ == "__main__":
    print(platform.platform(), platform.processor(), f"python {platform.python_version()}",
          f"cpus {os.cpu_count()}", "load avg before: " + _load())
    print(main().to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    spread = instance_spread()
    print("\nK = 100, 12 seeded instances:")
    print(spread.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    ratios = spread[["cvxpy/analytic", "cvxpy/joint"]]
    print("ratio min / median / max:")
    print(ratios.agg(["min", "median", "max"]).to_string(float_format=lambda x: f"{x:.3g}"))
    print("load avg after: " + _load())
