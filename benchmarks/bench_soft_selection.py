"""Client cost of choosing which rank components to send: SOFT versus SVD (docs/model.md §5, fig. 7).

SOFT: s_i = ||b_i|| ||a_i|| and top-n, O(r (d_in + d_out)) per module, no product, no SVD.
SVD-based (SLoRA-style): form B A (O(r d_in d_out)), take its SVD (O(d^3)), keep top-n triplets.
ViT-Base query and value projections: 24 modules of 768 x 768. Both methods are timed in the
same run and reported with their ratio. Run as a script:

    python benchmarks/bench_soft_selection.py [--ranks 4 8 16 32 64] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from tsfa.fl.compress import n_keep, soft_select

D_OUT = D_IN = 768
MODULES = 24


def soft_selection(factors: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> list:
    return [soft_select(B, A, n) for B, A in factors]


def svd_selection(factors: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> list:
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
        # one timed pass: SVD of a rank-deficient 768 x 768 product can take seconds per module
        svd_s = best_time_s(lambda f=factors, n=n: svd_selection(f, n), 1, warm_up=False)
        rows.append({"r": r, "n": n, "soft_ms": 1e3 * soft_s, "svd_ms": 1e3 * svd_s,
                     "svd_over_soft": svd_s / soft_s,
                     "soft_flop": MODULES * 2 * r * (D_IN + D_OUT),
                     "product_flop": MODULES * 2 * r * D_IN * D_OUT})
    return pd.DataFrame(rows).set_index("r")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--rho", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = run(args.ranks, args.rho, args.repeats)
    print(f"ViT-Base q,v: {MODULES} modules of {D_OUT}x{D_IN}, rho = {args.rho}, "
          f"torch threads = {torch.get_num_threads()}; SOFT: best of the repeats, SVD: one pass")
    print(table.to_string(float_format=lambda x: f"{x:.4g}"))


if __name__ == "__main__":
    main()
