"""Figures from federated runs on the embedded task (docs/model.md §7 figures 1-4, 6, 8).

Each function builds its run configs from the shared base run (``base.toml``) and its own
``<name>.toml`` (packaged in ``tsfa/experiments/configs``), gets the runs from the cache
(training only what is missing) and returns (the table behind the figure, the Figure).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tsfa.control.offline import affordable_rho
from tsfa.experiments.cache import cached_train
from tsfa.experiments.runs import scaled_budget
from tsfa.maths.instance import realize
from tsfa.reporting.plots import COLUMN_WIDTH_IN, plt
from tsfa.reporting.results import LAST_ROUNDS as LAST
from tsfa.reporting.results import final_accuracy

from . import NOTE

LABELS = {"soft": "SOFT", "tlora": "TLoRA", "rlora": "RLoRA", "slora": "SLoRA", "ilora": "ILoRA"}
COLORS = {"soft": "C0", "tlora": "C1", "rlora": "C2", "slora": "C3", "ilora": "k"}


def _run(ctx, **changes):
    return cached_train(ctx.base.cfg.replace(**changes), ctx.store, ctx.log, **ctx.options)


def _title(ax, text):
    ax.set_title(f"{text}\n{NOTE}", fontsize=6)


def _final_accuracy_plot(df: pd.DataFrame, group: str, x: str, styles: dict, xlabel: str,
                         title: str, log2_x: bool = False):
    """Final accuracy vs ``x``, one line per value of ``group`` (``styles[value]``: fmt, label
    and optionally color)."""
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.6), constrained_layout=True)
    for key, g in df.groupby(group, sort=False):
        st = dict(styles[key])
        ax.plot(g[x], g["final_accuracy"], st.pop("fmt"), lw=1, ms=3, **st)
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test accuracy (last {LAST} rounds)")
    ax.legend(fontsize=6)
    _title(ax, title)
    return fig


def fig1_rank(ctx):
    """J(r) with its terms (resolved system of the base run) and final accuracy vs r."""
    base = ctx.base
    table = base.table.copy()
    acc = {}
    for r in ctx.conf["sweep"]["ranks"]:
        acc[int(r)] = final_accuracy(_run(ctx, **{"experiment.rank": int(r)}).rounds)
    table["final_accuracy"] = table["rank"].map(acc)
    table["r_star"] = base.rank
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(COLUMN_WIDTH_IN, 4.0), sharex=True,
                                   constrained_layout=True)
    for col, style, label in (("J", "k-o", "J(r)"), ("rank_term", "C0--", "rank  $c_5\\epsilon(r)$"),
                              ("cov_term", "C1--", "cov  $c_3 r\\eta^2\\tau^2G^4$"),
                              ("sparse_term", "C2--", "sparse  $\\Gamma\\phi(\\bar\\rho)$")):
        y = table[col].where(table[col] > 0)  # zero terms (eps = 0, rho = 1) off the log axis
        ax1.plot(table["rank"], y, style, lw=1, ms=3, label=label)
    ax1.axvline(base.rank, color="grey", lw=0.8, ls=":")
    ax1.set_yscale("log")
    ax1.set_ylabel("bound term (dimensionless)")
    ax1.legend(fontsize=6)
    _title(ax1, f"Offline objective, r* = {base.rank} (default constants)")
    t = table.dropna(subset=["final_accuracy"])
    ax2.plot(t["rank"], t["final_accuracy"], "C0-o", lw=1, ms=3, label="SOFT + TSFA")
    ax2.axvline(base.rank, color="grey", lw=0.8, ls=":", label="r*")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("LoRA rank $r$")
    ax2.set_ylabel(f"test accuracy (last {LAST} rounds)")
    ax2.legend(fontsize=6)
    return table, fig


def fig2_covariance(ctx):
    """||Cov^t||_F of the uploaded factors (ILoRA: nothing dropped) vs rounds; one panel per
    swept quantity, the others at the base values."""
    sw = ctx.conf["sweep"]
    base = ctx.base
    panels = {"training.local_steps": ("$\\tau$", sw["local_steps"]),
              "clients.dirichlet_alpha": ("$\\alpha$", sw["dirichlet_alpha"]),
              "experiment.rank": ("$r$", sw["ranks"])}
    rows = []
    for key, (_, values) in panels.items():
        for v in values:
            run = _run(ctx, **{"experiment.method": "ilora", key: v})
            rows.append(pd.DataFrame({"parameter": key, "value": float(v),
                                      "round": run.rounds["round"],
                                      "cov_fro": run.rounds["cov_fro"]}))
    df = pd.concat(rows, ignore_index=True)
    fig, axes = plt.subplots(3, 1, figsize=(COLUMN_WIDTH_IN, 5.2), sharex=True,
                             constrained_layout=True)
    for ax, (key, (sym, values)) in zip(axes, panels.items(), strict=True):
        for i, v in enumerate(values):
            g = df[(df["parameter"] == key) & (df["value"] == float(v))]
            ax.plot(g["round"], g["cov_fro"], color=plt.get_cmap("plasma")(i / max(1, len(values))),
                    lw=1, label=f"{sym} = {v:g}" if not math.isinf(v) else f"{sym} = IID")
        ax.set_ylabel("$\\|\\mathrm{Cov}^t\\|_F$")
        ax.legend(fontsize=6, ncol=3)
    axes[-1].set_xlabel("round $t$")
    cfg = base.cfg.system
    _title(axes[0], f"ILoRA uploads; base $\\tau$={cfg.training.local_steps}, "
           f"$\\alpha$={cfg.clients.dirichlet_alpha:g}, r={base.rank}")
    return df, fig


def fig3_methods(ctx):
    """Test accuracy vs rounds for every method at r*, TSFA controller, the same budget."""
    rows = []
    for m in ctx.conf["sweep"]["methods"]:
        r = _run(ctx, **{"experiment.method": m}).rounds
        rows.append(r.assign(method=m)[["method", "round", "accuracy", "mean_rho", "total_bits",
                                        "mean_latency_s", "max_latency_s", "mean_queue_s"]])
    df = pd.concat(rows, ignore_index=True)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.6), constrained_layout=True)
    for m, g in df.groupby("method", sort=False):
        ax.plot(g["round"], g["accuracy"], color=COLORS[m], lw=1, label=LABELS[m])
    ax.set_xlabel("round $t$")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6, ncol=3)
    _title(ax, f"All methods, r = {ctx.base.rank}, same budget "
           f"(mean $\\bar T$ = {np.mean(ctx.base.budget_s):.2f} s)")
    return df, fig


def fig4_fixed_rho(ctx):
    """Final accuracy vs a fixed ratio rho (equal bandwidth), SOFT vs TLoRA vs RLoRA."""
    sw = ctx.conf["sweep"]
    rows = []
    for m in sw["methods"]:
        for rho in sw["rho"]:
            r = _run(ctx, **{"experiment.method": m, "experiment.controller": "fixed",
                             "experiment.rho": float(rho)}).rounds
            n = max(1, math.ceil(float(rho) * ctx.base.rank - 1e-9))
            rows.append({"method": m, "rho": float(rho), "components_sent": n,
                         "final_accuracy": final_accuracy(r),
                         "mean_bits": float(r["total_bits"].mean())})
    df = pd.DataFrame(rows)
    styles = {m: {"fmt": "-o", "color": COLORS[m], "label": LABELS[m]} for m in df["method"]}
    fig = _final_accuracy_plot(df, "method", "rho", styles, "fixed sparsification ratio $\\rho$",
                               f"Fixed $\\rho$, equal bandwidth, r = {ctx.base.rank}", log2_x=True)
    return df, fig


def fig6_budget(ctx):
    """Final accuracy vs the latency budget: TSFA (r*, controller), offline only (r*, fixed
    rho_bar(r*), equal bandwidth), online only (controller at a fixed non-optimal r)."""
    sw = ctx.conf["sweep"]
    base = ctx.base
    r_alt = int(sw["online_only_rank"])
    if r_alt == base.rank:  # a non-optimal rank: the nearest other candidate
        others = [r for r in base.table["rank"] if r != base.rank]
        r_alt = int(min(others, key=lambda r: abs(math.log(r / base.rank))))
    rows = []
    for f in sw["slack_factor"]:
        budget = scaled_budget(base, float(f))
        spec = base.system.replace(**{"control.latency_budget_s": budget})
        inst = realize(spec)
        rho_bar = float(affordable_rho(spec, inst, base.rank) @ inst.weights)
        variants = {
            "TSFA": {"experiment.rank": base.rank},
            "offline only": {"experiment.rank": base.rank, "experiment.controller": "fixed",
                             "experiment.rho": rho_bar},
            f"online only (r = {r_alt})": {"experiment.rank": r_alt},
        }
        for label, ch in variants.items():
            r = _run(ctx, **ch, **{"control.latency_budget_s": budget}).rounds
            rows.append({"variant": label, "slack_factor": float(f),
                         "mean_budget_s": float(np.mean(budget)), "rho_bar": rho_bar,
                         "final_accuracy": final_accuracy(r),
                         "mean_latency_s": float(r["mean_latency_s"].mean())})
    df = pd.DataFrame(rows)
    styles = {v: {"fmt": f, "label": v} for v, f in zip(df["variant"].unique(),
                                                         ("C0-o", "C1--s", "C2-.^"), strict=False)}
    fig = _final_accuracy_plot(df, "variant", "mean_budget_s", styles,
                               "mean latency budget $\\bar T_k$ [s]",
                               f"TSFA vs single-stage variants, r* = {base.rank}")
    return df, fig


def fig8_zeta(ctx):
    """SOFT with several zeta (0 = ablation): test accuracy and R(B, A) of the global factors."""
    rows = []
    for z in ctx.conf["sweep"]["zeta"]:
        r = _run(ctx, **{"soft.zeta": float(z)}).rounds
        rows.append(r.assign(zeta=float(z))[["zeta", "round", "accuracy", "orth_defect",
                                             "kendall_tau"]])
    df = pd.concat(rows, ignore_index=True)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(COLUMN_WIDTH_IN, 4.0), sharex=True,
                                   constrained_layout=True)
    for i, (z, g) in enumerate(df.groupby("zeta")):
        c = plt.get_cmap("viridis")(i / max(1, df["zeta"].nunique() - 1))
        ax1.plot(g["round"], g["accuracy"], color=c, lw=1, label=f"$\\zeta$ = {z:g}")
        ax2.plot(g["round"], g["orth_defect"], color=c, lw=1)
    ax1.set_ylabel("test accuracy")
    ax1.legend(fontsize=6)
    ax2.set_yscale("log")
    ax2.set_ylabel("$\\sum_m R(B_m, A_m)$")
    ax2.set_xlabel("round $t$")
    _title(ax1, f"SOFT orthogonality penalty, r = {ctx.base.rank}")
    return df, fig
