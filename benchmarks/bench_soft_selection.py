"""Client cost of choosing which rank components to send: SOFT versus the exact SVD
(docs/model.md §5, §6, fig. 7).

* SOFT: s_i = ||b_i|| ||a_i|| and top-n, O(r (d_in + d_out)) per module, no product, no SVD.
* Factored SVD (tsfa's "svd" compressor, the exact top-n triplets of B A from factors only):
  QR of B and A^T, SVD of the r x r core, O(d r^2) per module. **The headline ratio.**
* Dense SVD (SLoRA-style): form B A (O(r d_in d_out)) and take its SVD (O(d^3)).

ViT-Base query and value projections: 24 modules of 768 x 768. All three are timed in the same
run, on the same factors, and reported with their ratios; the load average is printed before and
after. Run as a script:

    python benchmarks/bench_soft_selection.py [--ranks 4 8 16 32 64] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import pandas as pd
import torch

from tsfa.fl.compress import lowrank_top, n_keep, soft_select

D_OUT = D_IN = 768
MODULES = 24


def soft_selection(factors: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> list:
    return [soft_select(B, A, n) for B, A in factors]


def factored_svd_selection(factors: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> list:
    return [lowrank_top(B, A, n) for B, A in factors]


def dense_svd_selection(factors: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> list:
    out = []
    for B, A in factors:
        U, S, Vh = torch.linalg.svd(B @ A, full_matrices=False)
        out.append((U[:, :n] * S[:n], Vh[:n]))
    return out


def best_time_s(fn, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(ranks: list[int], rho: float = 0.25, repeats: int = 5, seed: int = 0) -> pd.DataFrame:
    gen = torch.Generator().manual_seed(seed)
    torch.linalg.svd(torch.randn(64, 64, generator=gen))  # load LAPACK once
    rows = []
    for r in ranks:
        factors = [(torch.randn(D_OUT, r, generator=gen), torch.randn(r, D_IN, generator=gen))
                   for _ in range(MODULES)]
        n = n_keep(rho, r)
        soft_s = best_time_s(lambda f=factors, n=n: soft_selection(f, n), repeats)
        fact_s = best_time_s(lambda f=factors, n=n: factored_svd_selection(f, n), repeats)
        # one timed pass: SVD of a rank-deficient 768 x 768 product can take seconds per module
        dense_s = best_time_s(lambda f=factors, n=n: dense_svd_selection(f, n), 1, warm_up=False)
        rows.append({"r": r, "n": n, "soft_ms": 1e3 * soft_s, "factored_svd_ms": 1e3 * fact_s,
                     "dense_svd_ms": 1e3 * dense_s, "factored_over_soft": fact_s / soft_s,
                     "dense_over_soft": dense_s / soft_s})
    return pd.DataFrame(rows).set_index("r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--rho", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = os.getloadavg()
    table = run(args.ranks, args.rho, args.repeats)
    after = os.getloadavg()
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads = {torch.get_num_threads()}")
    print("load average (1, 5, 15 min): before " + " ".join(f"{x:.2f}" for x in before)
          + ", after " + " ".join(f"{x:.2f}" for x in after))
    print(f"ViT-Base q,v: {MODULES} modules of {D_OUT}x{D_IN}, rho = {args.rho}; SOFT and "
          "factored SVD: best of the repeats, dense SVD: one pass")
    print(table.to_string(float_format=lambda x: f"{x:.4g}"))


if __name__ == "__main__":
    main()
