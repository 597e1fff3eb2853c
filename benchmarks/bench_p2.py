"""Benchmark the P2 solvers (docs/model.md §4): analytic (BCD) vs joint vs CVXPY/CLARABEL.

Run: ``python benchmarks/bench_p2.py`` (``--sizes``, ``--spread-instances``; ``--smoke`` for a
few-second check, as the test suite runs it). Times are medians over repeats of one solve on a
seeded instance (CVXPY: model built once, the re-solve is timed, as the controller does it).
The CVXPY reference refuses K above ``tsfa.optim.p2_cvxpy.MAX_CLIENTS`` (500: its
canonicalisation needs gigabytes beyond): its column is left empty there and the table says
"refused above K = 500"; the analytic and joint solvers are timed at every K. A second table
repeats the K = 100 comparison on 12 further seeded instances: CVXPY's time varies by an order of
magnitude between instances (its cascade of CLARABEL attempts, see tsfa/optim/p2_cvxpy.py), so
one instance's ratio says little; the spread (min, median, max) is printed.
"""

from __future__ import annotations

import argparse
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
from tsfa.optim.p2_cvxpy import MAX_CLIENTS  # noqa: E402

SIZES = (10, 100, 1000, 10000)
# --smoke: a size on each side of the CVXPY limit (the refused path runs too), few repeats
SMOKE = {"sizes": (10, MAX_CLIENTS + 1), "reps": 3, "cvxpy_reps": 2, "spread_k": 10,
         "spread_instances": 2, "spread_reps": 3, "spread_cvxpy_reps": 1}


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


def _cvxpy_model(k: int, cvxpy_max_k: int):
    """(CvxpyP2 for K = k or None, the table's note): the reference refuses K > MAX_CLIENTS."""
    if k > MAX_CLIENTS:
        return None, f"refused above K = {MAX_CLIENTS}"
    if k > cvxpy_max_k:
        return None, f"skipped above K = {cvxpy_max_k}"
    try:
        return CvxpyP2(k), "timed"
    except ValueError as e:  # a limit tightened in tsfa.optim.p2_cvxpy: report, do not crash
        return None, f"refused: {e}"


def main(sizes=SIZES, cvxpy_max_k=MAX_CLIENTS, reps=None, cvxpy_reps=None) -> pd.DataFrame:
    """One row per K: median solve times [ms], ratios, and ``cvxpy`` (timed / refused above K =
    MAX_CLIENTS, its time and ratios NaN there). ``reps``/``cvxpy_reps`` override the repeats."""
    rows = []
    for k in sizes:
        p = make_instance(np.random.default_rng(k), k, "inv")
        n = reps or (300 if k <= 100 else (50 if k <= 1000 else 15))
        model, note = _cvxpy_model(k, cvxpy_max_k)
        if model is not None:
            model.solve(p)  # first solve compiles the DPP mapping
        rows.append({"K": k, **_times(p, n, model, cvxpy_reps or (40 if k < 1000 else 5)),
                     "cvxpy": note})
    return _with_ratios(rows)


def instance_spread(k: int = 100, n: int = 12, seed0: int = 1000, reps: int = 100,
                    cvxpy_reps: int = 10) -> pd.DataFrame:
    """Per-instance times and ratios at ``K = k`` on ``n`` seeded instances (seeds seed0...)."""
    model = CvxpyP2(k)
    rows = []
    for seed in range(seed0, seed0 + n):
        p = make_instance(np.random.default_rng(seed), k, "inv")
        ref = model.solve(p)  # also the untimed first solve
        rows.append({"seed": seed, **_times(p, reps, model, cvxpy_reps),
                     "cvxpy_status": ref.status})
    return _with_ratios(rows)


def _fmt(x) -> str:
    return f"{x:.3g}"


def cli(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                    help=f"client counts K (default: {' '.join(map(str, SIZES))}); CVXPY is "
                         f"refused above K = {MAX_CLIENTS}")
    ap.add_argument("--spread-k", type=int, default=100,
                    help=f"K of the per-instance table (at most {MAX_CLIENTS})")
    ap.add_argument("--spread-instances", type=int, default=12,
                    help="seeded instances of the per-instance table (0: no table)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"a few seconds: K = {SMOKE['sizes'][0]} and {SMOKE['sizes'][1]} (CVXPY "
                         f"refused), {SMOKE['reps']} repeats, {SMOKE['spread_instances']} "
                         f"instances at K = {SMOKE['spread_k']} (overrides the options above)")
    a = ap.parse_args(argv)
    if a.spread_k > MAX_CLIENTS and a.spread_instances > 0 and not a.smoke:
        ap.error(f"--spread-k {a.spread_k}: the CVXPY reference refuses K above {MAX_CLIENTS}")
    sizes, spread_k, spread_n = a.sizes, a.spread_k, a.spread_instances
    reps = cvxpy_reps = None
    spread_reps = {}
    if a.smoke:
        sizes, spread_k, spread_n = SMOKE["sizes"], SMOKE["spread_k"], SMOKE["spread_instances"]
        reps, cvxpy_reps = SMOKE["reps"], SMOKE["cvxpy_reps"]
        spread_reps = {"reps": SMOKE["spread_reps"], "cvxpy_reps": SMOKE["spread_cvxpy_reps"]}
    print(platform.platform(), platform.processor(), f"python {platform.python_version()}",
          f"cpus {os.cpu_count()}", "load avg before: " + _load())
    table = main(sizes, reps=reps, cvxpy_reps=cvxpy_reps)
    print(table.to_string(index=False, float_format=_fmt, na_rep="-"))
    if spread_n > 0:
        spread = instance_spread(spread_k, spread_n, **spread_reps)
        print(f"\nK = {spread_k}, {spread_n} seeded instances:")
        print(spread.to_string(index=False, float_format=_fmt))
        ratios = spread[["cvxpy/analytic", "cvxpy/joint"]]
        print("ratio min / median / max:")
        print(ratios.agg(["min", "median", "max"]).to_string(float_format=_fmt))
    print("load avg after: " + _load())


if __name__ == "__main__":
    cli()
