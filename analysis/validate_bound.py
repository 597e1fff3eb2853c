"""Bound validation: calibrate the bound's constants on pilot runs, then test its predictions.

Writes docs/validation.md (tables with numbers) and its figures in docs/validation/. Runs come
from the same cache as the figures (``--store``, default figures/runs): runs already made by
``tsfa figures`` are reused, the rest are trained. Checks (docs/model.md §2-§4):

1. covariance: ||Cov^t||_F measured on the uploads vs the bound's sqrt(c3 r) (eta tau)^2 G^2,
   c3 fitted; growth with tau, Dirichlet alpha and r (log-log slopes);
2. rank: predicted r* (default constants, and after calibrating c4, c5 on the rank sweep) vs the
   empirically best rank on the synthetic task (exact eps(r)) and on Fashion-MNIST (eps(r)
   measured from the ILoRA update at the largest rank) when the data are installed;
3. sparsification: the term Gamma phi(rho) vs the measured accuracy gap at fixed rho;
4. V: average penalty and queue of the controller vs V, against the B/V and a + bV forms.

Everything is tsfa's reconstruction (docs/model.md); nothing is tuned to any paper number.

    python analysis/validate_bound.py --size quick --store figures/runs
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tsfa.config.spec import SystemSpec
from tsfa.engines.local import train
from tsfa.experiments import runs as an
from tsfa.experiments.cache import cached_train
from tsfa.experiments.plan import plan_run
from tsfa.experiments.results import final_accuracy
from tsfa.fl.data import FASHION_MNIST_DIR
from tsfa.fl.device import set_threads
from tsfa.maths import bound as bd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import validation_report as report  # noqa: E402  (analysis/validation_report.py)


def mean_phi_measured(clients: pd.DataFrame, weights: np.ndarray) -> float:
    """(1/T) sum_t sum_k p_k phi(rho_k^t) from a run's per-client table."""
    rho = clients.pivot(index="round", columns="client", values="rho").to_numpy()
    return float(bd.mean_phi(rho, weights))


# --------------------------------------------------------------------------- 1. covariance
def covariance_study(base, store, log, sw) -> tuple[pd.DataFrame, dict]:
    cfg = base.cfg
    g = base.system.bound.grad_bound
    rows = []
    grid = ([("training.local_steps", v) for v in sw["local_steps"]]
            + [("clients.dirichlet_alpha", v) for v in sw["dirichlet_alpha"]]
            + [("experiment.rank", v) for v in sw["ranks"]])
    for key, v in grid:
        c = cfg.replace(**{"experiment.method": "ilora", key: v})
        run = cached_train(c, store, train, log)
        tau, eta = c.system.training.local_steps, c.system.training.learning_rate
        r = c.experiment.rank
        rows.append({"swept": key.split(".")[1], "value": float(v), "rank": r, "tau": tau,
                     "alpha": c.system.clients.dirichlet_alpha,
                     "measured_cov_fro": float(run.rounds["cov_fro"].mean()),
                     "unit_prediction": math.sqrt(r) * (eta * tau) ** 2 * g**2})
    df = pd.DataFrame(rows).drop_duplicates(subset=["rank", "tau", "alpha"])
    # c3 by least squares in log space: log m = 0.5 log c3 + log unit
    c3 = float(np.exp(2 * np.mean(np.log(df["measured_cov_fro"] / df["unit_prediction"]))))
    df["predicted_cov_fro"] = math.sqrt(c3) * df["unit_prediction"]
    df["measured_over_predicted"] = df["measured_cov_fro"] / df["predicted_cov_fro"]
    slopes = {}
    for name, col, pred in (("tau", "tau", 2.0), ("rank", "rank", 0.5)):
        sub = df[df["swept"] == ("local_steps" if name == "tau" else "rank")]
        base_row = df[(df["rank"] == base.rank) & (df["tau"] == cfg.system.training.local_steps)
                      & (df["alpha"] == cfg.system.clients.dirichlet_alpha)]
        sub = pd.concat([sub, base_row]).drop_duplicates(subset=["rank", "tau", "alpha"])
        s = np.polyfit(np.log(sub[col]), np.log(sub["measured_cov_fro"]), 1)[0]
        slopes[name] = (float(s), pred)
    return df, {"c3": c3, "slopes": slopes}


# --------------------------------------------------------------------------- 2. rank
def rank_study(base, store, log, ranks, c3, cfg=None, eps_override=None, label="synthetic"):
    """SOFT + TSFA at each rank: final accuracy/loss, measured mean phi; predicted r* with the
    default constants and after fitting (a, c4, c5) of loss ~ a + J(r) with c3 fixed."""
    cfg = cfg or base.cfg
    plan = plan_run(cfg)
    system, inst = plan.system, plan.inst
    table = an.rank_table_with_eps(system, inst, eps_override)
    tr, b = system.training, system.bound
    rows = []
    for r in ranks:
        run = cached_train(cfg.replace(**{"experiment.rank": int(r)}), store, train, log)
        rows.append({"rank": int(r), "final_accuracy": final_accuracy(run.rounds),
                     "final_test_loss": final_accuracy(run.rounds, column="test_loss"),
                     "measured_mean_phi": mean_phi_measured(run.clients, inst.weights)})
    df = table.merge(pd.DataFrame(rows), on="rank", how="left")
    gamma_unit = float(bd.sparsification_gamma(b.smoothness, tr.learning_rate, tr.local_steps,
                                               b.grad_bound, 1.0))
    cov_unit = bd.covariance_term(df["rank"], tr.learning_rate, tr.local_steps, b.grad_bound, 1.0)
    d = df.dropna(subset=["final_test_loss"])
    # loss - c3 cov = a + c5 eps + c4 Gamma phi_measured, non-negative least squares
    from scipy.optimize import nnls

    x = np.column_stack([np.ones(len(d)), d["eps"], gamma_unit * d["measured_mean_phi"]])
    y = d["final_test_loss"] - c3 * cov_unit[d.index]
    a_shift = min(0.0, float(y.min()))  # the intercept may be negative: shift, fit, shift back
    coef, _ = nnls(x, y - a_shift)
    a, c5, c4 = coef[0] + a_shift, coef[1], coef[2]
    phi_bar = df["sparse_term"] / gamma_unit / b.c4  # sum_k p_k phi(rho_bar_k(r))
    df["J_calibrated"] = c5 * df["eps"] + c3 * cov_unit + c4 * gamma_unit * phi_bar
    df["predicted_loss"] = a + df["J_calibrated"]
    out = {
        "label": label,
        "r_star_default": int(df.loc[df["J"].idxmin(), "rank"]),
        "r_star_calibrated": int(df.loc[df["J_calibrated"].idxmin(), "rank"]),
        "best_rank_accuracy": int(d.loc[d["final_accuracy"].idxmax(), "rank"]),
        "best_rank_loss": int(d.loc[d["final_test_loss"].idxmin(), "rank"]),
        "constants": {"a": float(a), "c3": c3, "c4": float(c4), "c5": float(c5)},
        "accuracy_spread": float(d["final_accuracy"].max() - d["final_accuracy"].min()),
        "noise": 2.0 / cfg.experiment.num_test,  # two test samples
    }
    return df, out


def measured_eps(store, cfg, rank, log) -> np.ndarray:
    """eps(r) for r = 0..rank pooled over modules, from the final ILoRA update B A."""
    import torch

    from tsfa.engines.local import CHECKPOINT, load_checkpoint

    run = cached_train(cfg.replace(**{"experiment.method": "ilora", "experiment.rank": rank}),
                       store, train, log, keep_checkpoint=True)
    factors = load_checkpoint(run.path / CHECKPOINT)[0].model.factors
    tails, total = np.zeros(rank + 1), 0.0
    for b, a in factors:
        s = torch.linalg.svdvals((b @ a).double()).numpy()[:rank]
        e = s**2
        tails += np.concatenate([np.cumsum(e[::-1])[::-1], [0.0]])
        total += e.sum()
    return tails / total


# --------------------------------------------------------------------------- 3. sparsification
def sparsification_study(base, store, log, methods, rhos, constants) -> pd.DataFrame:
    tr, b = base.system.training, base.system.bound
    gamma = float(bd.sparsification_gamma(b.smoothness, tr.learning_rate, tr.local_steps,
                                          b.grad_bound, constants["c4"]))
    gamma_default = float(bd.sparsification_gamma(b.smoothness, tr.learning_rate, tr.local_steps,
                                                  b.grad_bound, b.c4))
    rows = []
    for m in methods:
        acc = {}
        for rho in rhos:
            run = cached_train(base.cfg.replace(**{
                "experiment.method": m, "experiment.controller": "fixed",
                "experiment.rho": float(rho)}), store, train, log)
            acc[rho] = final_accuracy(run.rounds)
        for rho in rhos:
            rows.append({"method": m, "rho": float(rho), "final_accuracy": acc[rho],
                         "accuracy_gap_vs_rho1": acc[max(rhos)] - acc[rho],
                         "term_default_c4": gamma_default * float(bd.phi(rho)),
                         "term_calibrated_c4": gamma * float(bd.phi(rho))})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- 4. V
def v_study(values, rounds) -> tuple[pd.DataFrame, dict]:
    summary, _ = an.v_sweep(SystemSpec(), values, rounds)
    v = summary["V"].to_numpy()
    pen, q = summary["average_penalty"].to_numpy(), summary["time_avg_queue_s"].to_numpy()
    x = np.column_stack([np.ones_like(v), 1 / v])
    pc, *_ = np.linalg.lstsq(x, pen, rcond=None)
    qc, *_ = np.linalg.lstsq(np.column_stack([np.ones_like(v), v]), q, rcond=None)

    def r2(y, yhat):
        return float(1 - np.sum((y - yhat) ** 2) / np.sum((y - y.mean()) ** 2))
    fits = {"penalty": (pc, r2(pen, x @ pc)),
            "queue": (qc, r2(q, qc[0] + qc[1] * v)),
            "penalty_monotone": bool(np.all(np.diff(pen) <= 0)),
            "queue_monotone": bool(np.all(np.diff(q) >= 0))}
    return summary, fits


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="quick", choices=an.SIZES)
    p.add_argument("--store", default="figures/runs")
    p.add_argument("--out", default=str(ROOT / "docs" / "validation.md"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores)")
    p.add_argument("--no-real-data", action="store_true",
                   help="skip the Fashion-MNIST check even when the data are installed")
    a = p.parse_args(argv)
    set_threads(a.threads)
    t0 = time.perf_counter()
    out = Path(a.out)
    figdir = out.parent / "validation"
    figdir.mkdir(parents=True, exist_ok=True)
    conf = an.analysis_config("validate_bound", a.size)
    def log(msg):
        print(msg, flush=True)

    base = an.base_run(a.size)
    cov, covfit = covariance_study(base, a.store, log, conf["covariance"])
    report.scatter_cov(cov, figdir / "covariance.png")
    ranks = conf["rank"]["ranks"]
    syn, syn_out = rank_study(base, a.store, log, ranks, covfit["c3"])
    studies = [(syn, syn_out)]
    fm_note = ""
    have_fm = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file() or (
        FASHION_MNIST_DIR / "train-images-idx3-ubyte").is_file()
    if have_fm and not a.no_real_data:
        fcfg = base.cfg.replace(**{"experiment.task": "fashion_mnist", "bound.eps_model":
                                   "power_law", "bound.spectrum": [],
                                   "control.latency_budget_s": []})
        inst = plan_run(fcfg).inst
        fcfg = fcfg.replace(**{"control.latency_budget_s": [float(x) for x in inst.budget_s]})
        franks = conf["rank"]["fmnist_ranks"]
        eps = measured_eps(a.store, fcfg, max(franks), log)
        fm, fm_out = rank_study(base, a.store, log, franks, covfit["c3"], cfg=fcfg,
                                eps_override=eps, label="Fashion-MNIST")
        studies.append((fm, fm_out))
    elif have_fm:
        fm_note = ("The Fashion-MNIST check was skipped in this run (--no-real-data), although "
                   f"the data are installed at {FASHION_MNIST_DIR}.")
    else:
        fm_note = (f"Fashion-MNIST is not installed ({FASHION_MNIST_DIR} missing; "
                   "`apt-get install dataset-fashion-mnist`), so the real-data check was "
                   "skipped in this run.")
    report.plot_rank(studies, figdir / "rank.png")
    sp = sparsification_study(base, a.store, log, conf["sparsification"]["methods"],
                              conf["sparsification"]["rho"], syn_out["constants"])
    vs, vfit = v_study(conf["v"]["V"], int(conf["v"]["rounds"]))
    elapsed = time.perf_counter() - t0
    out.write_text(report.render(a, base, cov, covfit, studies, fm_note, sp, vs, vfit, elapsed),
                   encoding="utf-8")
    print(out)


if __name__ == "__main__":
    main()
