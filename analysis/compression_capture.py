"""How much of each client's pending (error-feedback compensated) update does each compressor
deliver per round, in factor space and in product space? (issue 4: SOFT vs TLoRA vs RLoRA at a
fixed rho = 1/8, docs/model.md §5-§6.)

The default :class:`~tsfa.config.experiment.RunConfig` (embedded synthetic task) is run round by round
through the public pieces of the in-process engine (:class:`~tsfa.engines.local.LocalEngine`:
``Server.plan``, ``Client.train`` / ``Client.respond``, ``Server.finish``): exactly the trajectory
of ``tsfa train --method M --controller fixed --rho P --clients sequential``.
Nothing in tsfa/ is changed. For every round t, client k and LoRA module m, with B, A the round's
global factors, dB, dA the client's local change and e its error-feedback memory before the round:

* M = (M^B, M^A) = (dB, dA) + e, the compensated update (computed directly, and checked against
  the identity M = e_new + decode(upload) of the error-feedback wrapper);
* S = (S^B, S^A) = decode(upload), what was sent (dense, zeros elsewhere);
* ``factor_capture`` = (||S^B||^2 + ||S^A||^2) / (||M^B||^2 + ||M^A||^2);
* ``product_capture`` = 1 - ||P_M - P_S||^2 / ||P_M||^2, P_M = (B + M^B)(A + M^A) - BA,
  P_S = (B + S^B)(A + S^A) - BA (the LoRA scaling alpha / r cancels and is left out);
* ``svd_capture``: the best any rank-n product message can do, sum_{j<=n} sigma_j^2 / ||P_M||^2
  of P_M (a ceiling for reference, not a factor-space method);
* component energies e_i = ||(b_i + m^B_i)(a_i + m^A_i)^T - b_i a_i^T||^2, i = 1..r (SOFT's
  rank-1 pieces of P_M); for SOFT uploads ``soft_selected_share`` = sum_{i in I} e_i / sum_i e_i
  of the sent I, ``soft_best_share`` the same for the best n components by e_i, and
  ``soft_selection_ratio`` = selected / best (1 = optimal for its own criterion);
  ``component_coherence`` = ||P_M||^2 / sum_i e_i (1 when the rank-1 pieces are orthogonal,
  up to r when they all point the same way, so that no n < r of them can hold most of P_M);
* ``cf_<method>_factor`` / ``cf_<method>_product``: the captures SOFT, TLoRA and RLoRA would have
  delivered on this *same* M (counterfactual, stateless; RLoRA with its own seeded generator), and
  ``cf_soft_oracle_product``: SOFT choosing its n components by e_i instead of ||b_i|| ||a_i||.

Server side, per round and module (``server.csv``), with p_k the client weights:
``server_factor_capture`` = 1 - ||sum_k p_k (M_k - S_k)||^2 / ||sum_k p_k M_k||^2 (B and A
stacked), ``server_product_capture`` = 1 - ||Pbar - P_applied||^2 / ||Pbar||^2 with
Pbar = sum_k p_k P_{M,k} (the mean of what the clients wanted in product space) and
P_applied = B^{t+1} A^{t+1} - B^t A^t, and ``server_full_product_capture`` the same for separate
aggregation of the full M_k (the covariance loss of docs/model.md §2 without any compression).

Outputs in ``analysis/results/compression_capture/``: ``capture.csv`` (tidy: round, method,
client, module, metrics), ``server.csv``, ``rounds.csv`` (the runs' own per-round log),
``summary.csv`` (mean per method), ``summary_rounds.csv`` (per-round means), ``summary.md``,
``config.toml`` and ``metadata.json`` (seed, methods, commit).

    python analysis/compression_capture.py --rounds 30 --seed 0

``--smoke`` (the test suite's check, seconds; give ``--out`` a temporary folder) shrinks the run
to ``SMOKE``: 3 clients, 300 training and 100 test samples, 2 local steps of b = 16, 2 rounds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tsfa.config.experiment import RunConfig
from tsfa.engines.local import LocalEngine
from tsfa.experiments.results import final_accuracy, md_table, prepare_dir, write_table
from tsfa.fl.compress import decode, n_keep, strategy_class
from tsfa.fl.device import set_threads

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "analysis" / "results" / "compression_capture"
METHODS = ("soft", "tlora", "rlora")
RHO = 0.125
CF_TAG = 20250417  # tag of the counterfactual RLoRA generator (never used by a run)
SMOKE = {"clients.num_clients": 3, "experiment.num_train": 300, "experiment.num_test": 100,
         "training.local_steps": 2, "training.batch_size": 16, "training.rounds": 2}

Tensor = torch.Tensor


def product(B: Tensor, A: Tensor, dB: Tensor, dA: Tensor) -> Tensor:
    """(B + dB)(A + dA) - BA, the product-space change of a factor update (no LoRA scaling)."""
    return (B + dB) @ (A + dA) - B @ A


def sq(x: Tensor) -> float:
    return float(x.double().pow(2).sum())


def capture(P_M: Tensor, P_S: Tensor) -> float:
    """1 - ||P_M - P_S||^2 / ||P_M||^2 (nan when P_M = 0)."""
    den = sq(P_M)
    return 1.0 - sq(P_M - P_S) / den if den > 0 else float("nan")


def factor_capture(MB: Tensor, MA: Tensor, SB: Tensor, SA: Tensor) -> float:
    den = sq(MB) + sq(MA)
    return (sq(SB) + sq(SA)) / den if den > 0 else float("nan")


def component_energies(B: Tensor, A: Tensor, MB: Tensor, MA: Tensor) -> Tensor:
    """e_i = ||(b_i + m^B_i)(a_i + m^A_i)^T - b_i a_i^T||_F^2, shape (r,), in float64."""
    B, A, MB, MA = (x.double() for x in (B, A, MB, MA))
    u, v = B + MB, A + MA
    return ((u * u).sum(0) * (v * v).sum(1) + (B * B).sum(0) * (A * A).sum(1)
            - 2.0 * (u * B).sum(0) * (v * A).sum(1)).clamp_min(0.0)


def svd_capture(P_M: Tensor, n: int) -> float:
    s2 = torch.linalg.svdvals(P_M.double()).pow(2)
    return float(s2[:n].sum() / s2.sum()) if float(s2.sum()) > 0 else float("nan")


def module_metrics(B: Tensor, A: Tensor, MB: Tensor, MA: Tensor, SB: Tensor, SA: Tensor,
                   n: int, rank_index: Tensor | None = None) -> dict:
    """The capture metrics of one client's upload for one module (see the module docstring)."""
    P_M = product(B, A, MB, MA)
    e = component_energies(B, A, MB, MA)
    best = torch.topk(e, n).indices
    row = {"pending_norm2": sq(MB) + sq(MA), "product_norm2": sq(P_M),
           "factor_capture": factor_capture(MB, MA, SB, SA),
           "product_capture": capture(P_M, product(B, A, SB, SA)),
           "svd_capture": svd_capture(P_M, n),
           "component_energy_sum": float(e.sum()),
           "component_coherence": sq(P_M) / float(e.sum()) if e.sum() > 0 else float("nan"),
           "component_energy_top_share": float(e[best].sum() / e.sum()) if e.sum() > 0
           else float("nan")}
    if rank_index is not None:
        sel = float(e[rank_index].sum() / e.sum()) if e.sum() > 0 else float("nan")
        row.update(soft_selected_share=sel, soft_best_share=row["component_energy_top_share"],
                   soft_selection_ratio=sel / row["component_energy_top_share"],
                   soft_selection_optimal=float(set(rank_index.tolist()) == set(best.tolist())))
    return row


def counterfactual(B: Tensor, A: Tensor, MB: Tensor, MA: Tensor, rho: float,
                   rng: np.random.Generator) -> dict:
    """Captures SOFT, TLoRA and RLoRA would deliver on this same M, plus SOFT selecting by e_i."""
    P_M, out = product(B, A, MB, MA), {}
    for name in METHODS:
        up = strategy_class(name)().compress([(MB, MA)], [(B, A)], rho, rng)
        (SB, SA), = decode(up)
        out[f"cf_{name}_factor"] = factor_capture(MB, MA, SB, SA)
        out[f"cf_{name}_product"] = capture(P_M, product(B, A, SB, SA))
    best = torch.topk(component_energies(B, A, MB, MA), n_keep(rho, B.shape[1])).indices
    SB, SA = torch.zeros_like(MB), torch.zeros_like(MA)
    SB[:, best], SA[best, :] = MB[:, best], MA[best, :]
    out["cf_soft_oracle_product"] = capture(P_M, product(B, A, SB, SA))
    return out


def run_method(base: RunConfig, method: str, rounds: int, log) -> tuple[list, list, list]:
    """Run ``method`` for ``rounds`` rounds, measuring every upload. Returns (capture rows,
    server rows, the run's own round rows)."""
    cfg = base.replace(**{"experiment.method": method, "training.rounds": rounds})
    if not cfg.experiment.uses_error_feedback:
        raise ValueError("this diagnostic measures the error-feedback compensated update")
    engine = LocalEngine(cfg, clients="sequential")
    seed, p = cfg.experiment.seed, [float(w) for w in engine.server.weights]
    server, states = engine.initial_states()
    cap_rows, srv_rows, round_rows = [], [], []
    for t in range(rounds):
        t0 = time.perf_counter()
        glob = server.model
        params = glob.factors
        plan = engine.server.plan(server)
        updates, new_states, pend, sent = [], [], [], []
        for k, client in enumerate(engine.clients):
            rho = float(plan.rho[k])
            local = client.train(glob, t)  # the client's trained factors (before aggregation)
            u, st = client.respond(glob, local, states[k], plan.task(k))
            S = decode(u.upload)
            M = [(b1 - b0 + eb, a1 - a0 + ea) for (b1, a1), (b0, a0), (eb, ea)
                 in zip(local.factors, params, states[k].memory, strict=True)]
            for (MB, MA), (SB, SA), (eB, eA) in zip(M, S, st.memory, strict=True):
                if not (torch.allclose(MB, eB + SB, atol=1e-6) and torch.allclose(MA, eA + SA,
                                                                                  atol=1e-6)):
                    raise AssertionError(f"round {t} client {k}: M != e_new + decode(upload)")
            rng = np.random.default_rng([seed, CF_TAG, t, k])
            for m, ((B, A), (MB, MA), (SB, SA), mu) in enumerate(
                    zip(params, M, S, u.upload.modules, strict=True)):
                row = {"round": t, "method": method, "client": k, "module": m, "rho": rho}
                row.update(module_metrics(B, A, MB, MA, SB, SA, n_keep(rho, B.shape[1]),
                                          mu.rank_index if method == "soft" else None))
                row["fresh_norm2"] = (sq(local.factors[m][0] - B)
                                      + sq(local.factors[m][1] - A))
                row.update(counterfactual(B, A, MB, MA, rho, rng))
                cap_rows.append(row)
            updates.append(u)
            new_states.append(st)
            pend.append(M)
            sent.append(S)
        server, record = engine.server.finish(server, plan, updates, t0)
        states = new_states
        for m, (B, A) in enumerate(params):
            Mb = sum(w * x[m][0] for w, x in zip(p, pend, strict=True))
            Ma = sum(w * x[m][1] for w, x in zip(p, pend, strict=True))
            Sb = sum(w * x[m][0] for w, x in zip(p, sent, strict=True))
            Sa = sum(w * x[m][1] for w, x in zip(p, sent, strict=True))
            Pbar = sum(w * product(B, A, *x[m]) for w, x in zip(p, pend, strict=True))
            B1, A1 = server.model.factors[m]
            srv_rows.append({
                "round": t, "method": method, "module": m,
                "server_factor_capture": 1.0 - (sq(Mb - Sb) + sq(Ma - Sa)) / (sq(Mb) + sq(Ma)),
                "server_product_capture": capture(Pbar, B1 @ A1 - B @ A),
                "server_full_product_capture": capture(Pbar, product(B, A, Mb, Ma))})
        round_rows.append({"method": method, **record.round})
        log(f"{method} round {t + 1}/{rounds}: acc {record.round['accuracy']:.3f}  "
            f"({time.perf_counter() - t0:.1f} s)")
    return cap_rows, srv_rows, round_rows


CLIENT_COLS = ["factor_capture", "product_capture", "svd_capture", "component_coherence",
               "soft_selected_share",
               "soft_best_share", "soft_selection_ratio", "soft_selection_optimal",
               "cf_soft_factor", "cf_tlora_factor", "cf_rlora_factor", "cf_soft_product",
               "cf_tlora_product", "cf_rlora_product", "cf_soft_oracle_product"]
SERVER_COLS = ["server_factor_capture", "server_product_capture", "server_full_product_capture"]


def summaries(cap: pd.DataFrame, srv: pd.DataFrame, rounds: pd.DataFrame
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean per method (over rounds, clients, modules) and per (round, method)."""
    order = {m: i for i, m in enumerate(METHODS)}
    cap = cap.assign(memory_ratio=cap["pending_norm2"] / cap["fresh_norm2"])
    cols = [c for c in CLIENT_COLS if c in cap] + ["memory_ratio"]
    per = cap.groupby("method")[cols].mean().join(srv.groupby("method")[SERVER_COLS].mean())
    last = {m: final_accuracy(g, last=1) for m, g in rounds.groupby("method")}  # last round
    per = per.join(pd.Series(last, name="final_accuracy"))
    per = per.sort_index(key=lambda s: s.map(order)).reset_index()
    by_round = (cap.groupby(["round", "method"])[["factor_capture", "product_capture",
                                                  "svd_capture", "memory_ratio"]].mean()
                .join(srv.groupby(["round", "method"])[["server_product_capture"]].mean())
                .join(rounds.set_index(["round", "method"])[["accuracy"]]))
    if "soft_selection_ratio" in cap:
        by_round = by_round.join(cap.groupby(["round", "method"])[["soft_selection_ratio"]]
                                 .mean())
    by_round = by_round.reset_index()
    by_round = by_round.sort_values(["round", "method"], key=lambda s: s.map(order)
                                    if s.name == "method" else s).reset_index(drop=True)
    return per, by_round


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rho", type=float, default=RHO)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores)")
    ap.add_argument("--smoke", action="store_true",
                    help="a small run for the test suite: " + ", ".join(
                        f"{k} = {v}" for k, v in SMOKE.items()) + " (overrides --rounds)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.smoke:
        args.rounds = SMOKE["training.rounds"]
    base = RunConfig().replace(**{"experiment.controller": "fixed", "experiment.rho": args.rho,
                                  "experiment.seed": args.seed, "training.rounds": args.rounds,
                                  **(SMOKE if args.smoke else {})})
    t0 = time.perf_counter()
    caps, srvs, rws = [], [], []
    for method in args.methods:
        c, s, r = run_method(base, method, args.rounds, lambda msg: print(msg, flush=True))
        caps += c
        srvs += s
        rws += r
    cap, srv, rounds = pd.DataFrame(caps), pd.DataFrame(srvs), pd.DataFrame(rws)
    per, by_round = summaries(cap, srv, rounds)
    out = args.out
    note = (f"# experiment.method varied over {', '.join(args.methods)}; everything else as below"
            "\n")
    prepare_dir(out, note + base.to_toml(), args.seed, methods=list(args.methods),
                rho=args.rho, rounds=args.rounds, wall_s=round(time.perf_counter() - t0, 1))
    cap.to_csv(out / "capture.csv", index=False, float_format="%.6g")  # tidy, ~1 MB
    write_table(srv, out / "server.csv")
    write_table(rounds, out / "rounds.csv")
    write_table(per, out / "summary.csv")
    write_table(by_round, out / "summary_rounds.csv")
    text = (f"# Compression capture, rho = {args.rho:g}, seed {args.seed}, T = {args.rounds}\n\n"
            "Generated by `python analysis/compression_capture.py` (definitions in its "
            "docstring).\n\n## Mean per method (rounds, clients, modules)\n\n"
            + md_table(per.set_index("method").T.reset_index().rename(columns={"index": "metric"}),
                       3)
            + "\n\n## Per-round means\n\n" + md_table(by_round, 3) + "\n")
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
