"""Figures from federated runs on the embedded task (docs/model.md §7 figures 1-4, 6, 8).

Each function builds its run configs from the shared base run (``base.toml``) and its own
``<name>.toml`` (packaged in ``tsfa/experiments/configs``), gets the runs from the cache
(training only what is missing) and returns (the table behind the figure, the Figure).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tsfa.config.registry import COMPRESSORS
from tsfa.control.offline import affordable_rho
from tsfa.experiments.cache import cached_train, run_many
from tsfa.experiments.paired import best_set
from tsfa.experiments.results import LAST_ROUNDS as LAST
from tsfa.experiments.results import final_accuracy
from tsfa.experiments.runs import scaled_budget
from tsfa.maths.instance import realize
from tsfa.reporting.captions import NOTE
from tsfa.reporting.plots import COLUMN_WIDTH_IN, plt

COLORS = {"soft": "C0", "tlora": "C1", "rlora": "C2", "slora": "C3", "ilora": "k"}


def _style(method: str) -> dict:
    """Colour (fixed for the paper's methods, the cycle otherwise) and the registered label."""
    entry = COMPRESSORS.entry(method)
    return {"color": COLORS.get(method, f"C{4 + list(COMPRESSORS).index(method)}"),
            "label": entry.label or entry.name}


def _trainer(ctx):
    if ctx.train is None:
        raise ValueError(f"{ctx.name}: a training figure needs a trainer (make_figure(..., "
                         "train=tsfa.engines.local.train))")
    return ctx.train


def _run(ctx, **changes):
    run = cached_train(ctx.base.cfg.replace(**changes), ctx.store, _trainer(ctx), ctx.log,
                       **ctx.options)
    ctx.runs.add(run.path.name)  # the figure's provenance (its PNG and CSV carry the digest)
    return run


def _runs(ctx, **changes) -> list:
    """The run of ``changes`` at every seed of the size (``base.toml [seeds]``)."""
    return [_run(ctx, **changes, **{"experiment.seed": int(s)}) for s in ctx.seeds]


def _prefetch(ctx, variants) -> None:
    """Train the runs of every ``variants`` entry (dotted changes) at every seed that the cache
    lacks, ``ctx.jobs`` at a time (:func:`tsfa.experiments.cache.run_many`); the figure then
    reads them from the cache."""
    import time

    from tsfa.experiments.cache import lookup, run_path

    if ctx.jobs <= 1:
        return
    precision = ctx.options.get("precision", "fp32")
    cfgs = list({run_path(c, ctx.store, precision): c for c in (  # a run once (shared panels)
        ctx.base.cfg.replace(**v, **{"experiment.seed": int(s)})
        for v in variants for s in ctx.seeds)}.values())
    todo = sum(lookup(c, ctx.store, precision) is None for c in cfgs)
    t0, done = time.perf_counter(), [0]

    def progress(msg: str) -> None:  # one line per finished run, with an ETA
        if msg.startswith("finished"):
            done[0] += 1
            el = time.perf_counter() - t0
            ctx.log(f"{ctx.name}: {done[0]}/{todo} runs trained in {el:.0f} s, ETA "
                    f"{el / done[0] * (todo - done[0]):.0f} s")

    run_many(cfgs, ctx.store, _trainer(ctx), ctx.jobs, progress, **ctx.options)


def _final(ctx, **changes) -> dict:
    """Final accuracy over the seeds: mean, standard error (nan for one seed), number of seeds,
    and the per-seed values (``acc_seed<i>``)."""
    acc = np.array([final_accuracy(r.rounds) for r in _runs(ctx, **changes)])
    se = float(acc.std(ddof=1) / math.sqrt(len(acc))) if len(acc) > 1 else math.nan
    return {"final_accuracy": float(acc.mean()), "final_accuracy_se": se, "seeds": len(acc),
            **{f"acc_seed{s}": float(a) for s, a in zip(ctx.seeds, acc, strict=True)}}


def _seed_curves(ctx, columns, **changes) -> pd.DataFrame:
    """Per-round ``columns`` of the run at every seed (a ``seed`` column added)."""
    return pd.concat([r.rounds.assign(seed=int(s))[["seed", "round", *columns]]
                      for s, r in zip(ctx.seeds, _runs(ctx, **changes), strict=True)],
                     ignore_index=True)


def _band(ax, g: pd.DataFrame, column: str, **style):
    """Mean over seeds vs round with a band of +- one standard error (min-max for 2 seeds)."""
    st = g.groupby("round")[column]
    m, n = st.mean(), st.count()
    se = (st.std(ddof=1) / np.sqrt(n)).fillna(0.0)
    line = ax.plot(m.index, m.values, lw=1, **style)[0]
    ax.fill_between(m.index, m - se, m + se, color=line.get_color(), alpha=0.25, lw=0)
    return line


def caption(ctx) -> str:
    """What every training figure states: size, K, tau, T, test samples and seeds."""
    c = ctx.base.cfg
    s = c.system
    seeds = ",".join(str(x) for x in ctx.seeds)
    return (f"size {ctx.size}: K={s.clients.num_clients}, $\\tau$={s.training.local_steps}, "
            f"T={s.training.rounds}, {c.experiment.num_test} test; seeds {seeds} "
            "(mean $\\pm$ s.e.)")


def _title(ax, text, ctx=None):
    extra = f"\n{caption(ctx)}" if ctx is not None else ""
    ax.set_title(f"{text}\n{NOTE}{extra}", fontsize=5.5)


def _final_accuracy_plot(df: pd.DataFrame, group: str, x: str, styles: dict, xlabel: str,
                         title: str, log2_x: bool = False, ctx=None, ax=None):
    """Final accuracy vs ``x``, one line per value of ``group`` (``styles[value]``: fmt, label
    and optionally color), error bars from ``final_accuracy_se`` when present."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.8), constrained_layout=True)
    for key, g in df.groupby(group, sort=False):
        st = dict(styles[key])
        yerr = g["final_accuracy_se"].fillna(0.0) if "final_accuracy_se" in g else None
        ax.errorbar(g[x], g["final_accuracy"], yerr=yerr, fmt=st.pop("fmt"), lw=1, ms=3,
                    capsize=2, **st)
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"test accuracy (last {LAST} rounds)")
    ax.legend(fontsize=6)
    _title(ax, title, ctx)
    return fig if fig is not None else ax.figure


def fig1_rank(ctx):
    """J(r) with its terms (resolved system of the base run) and final accuracy vs r."""
    base = ctx.base
    table = base.table.copy()
    ranks = [int(r) for r in ctx.conf["sweep"]["ranks"]]
    _prefetch(ctx, [{"experiment.rank": r} for r in ranks])
    acc = pd.DataFrame([{"rank": r, **_final(ctx, **{"experiment.rank": r})} for r in ranks])
    table = table.merge(acc, on="rank", how="left")
    table["r_star"] = base.rank
    per_seed = acc.melt(id_vars="rank", value_vars=[f"acc_seed{s}" for s in ctx.seeds],
                        var_name="seed", value_name="acc").rename(
                            columns={"acc": "final_accuracy"})
    top, members, _, _ = best_set(per_seed) if len(ctx.seeds) > 1 else (
        int(acc.loc[acc["final_accuracy"].idxmax(), "rank"]), [], None, None)
    members = sorted(int(r) for r in members) or [int(top)]
    table["measured_best"] = int(top)
    table["in_best_set"] = table["rank"].isin(members)
    best = int(top)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(COLUMN_WIDTH_IN, 4.0), sharex=True,
                                   constrained_layout=True)
    labels = (("rank  $w_r\\epsilon(r)$", "covariance  $w_c r$",
               "sparse  $w_s\\phi(\\bar\\rho)(r_0/r)^b$") if base.calibrated else
              ("rank  $c_5\\epsilon(r)$", "covariance term (bound.cov_form)",
               "sparse  $\\Gamma\\phi(\\bar\\rho)$"))
    for col, style, label in (("J", "k-o", "J(r)"), *zip(("rank_term", "cov_term", "sparse_term"),
                                                          ("C0--", "C1--", "C2--"), labels, strict=True)):
        y = table[col].where(table[col] > 0)  # zero terms (eps = 0, rho = 1) off the log axis
        ax1.plot(table["rank"], y, style, lw=1, ms=3, label=label)
    ax1.axvline(base.rank, color="grey", lw=0.8, ls=":")
    ax1.set_yscale("log")
    ax1.legend(fontsize=6)
    weights = ("shipped calibration, test error at T" if base.calibrated
               else "default constants")
    ax1.set_ylabel("bound term (test error)" if base.calibrated
                   else "bound term (dimensionless)")
    _title(ax1, f"Offline objective, r* = {base.rank} ({weights})", ctx)
    t = table.dropna(subset=["final_accuracy"])
    ax2.errorbar(t["rank"], t["final_accuracy"], yerr=t["final_accuracy_se"].fillna(0.0),
                 fmt="C0-o", lw=1, ms=3, capsize=2, label="SOFT + TSFA (mean $\\pm$ s.e.)")
    ax2.axvline(base.rank, color="C3", lw=1, ls="--", label=f"predicted r* = {base.rank}")
    inb = t[t["rank"].isin(members)]
    ax2.plot(inb["rank"], inb["final_accuracy"], "o", mfc="none", mec="k", ms=8,
             label="measured best set {" + ", ".join(str(r) for r in members)
             + "} (paired 95% t)")
    ax2.plot([best], [float(t.loc[t["rank"] == best, "final_accuracy"].iloc[0])], "k*", ms=8,
             label=f"highest mean = {best}")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("LoRA rank $r$")
    ax2.set_ylabel(f"test accuracy (last {LAST} rounds)")
    ax2.legend(fontsize=6, loc="lower right")
    return table, fig


def fig2_covariance(ctx):
    """||Cov^t||_F of the uploaded factors (ILoRA: nothing dropped) vs rounds; one panel per
    swept quantity, the others at the base values."""
    sw = ctx.conf["sweep"]
    base = ctx.base
    panels = {"training.local_steps": ("$\\tau$", sw["local_steps"]),
              "clients.dirichlet_alpha": ("$\\alpha$", sw["dirichlet_alpha"]),
              "experiment.rank": ("$r$", sw["ranks"])}
    _prefetch(ctx, [{"experiment.method": "ilora", key: v}
                    for key, (_, values) in panels.items() for v in values])
    rows = []
    for key, (_, values) in panels.items():
        for v in values:
            rows.append(_seed_curves(ctx, ["cov_fro"], **{"experiment.method": "ilora", key: v})
                        .assign(parameter=key, value=float(v)))
    df = pd.concat(rows, ignore_index=True)
    fig, axes = plt.subplots(3, 1, figsize=(COLUMN_WIDTH_IN, 5.2), sharex=True,
                             constrained_layout=True)
    for ax, (key, (sym, values)) in zip(axes, panels.items(), strict=True):
        for i, v in enumerate(values):
            g = df[(df["parameter"] == key) & (df["value"] == float(v))]
            _band(ax, g, "cov_fro", color=plt.get_cmap("plasma")(i / max(1, len(values))),
                  label=f"{sym} = {v:g}" if not math.isinf(v) else f"{sym} = IID")
        ax.set_ylabel("$\\|\\mathrm{Cov}^t\\|_F$")
        ax.legend(fontsize=6, ncol=3)
    axes[-1].set_xlabel("round $t$")
    cfg = base.cfg.system
    _title(axes[0], f"ILoRA uploads; base $\\tau$={cfg.training.local_steps}, "
           f"$\\alpha$={cfg.clients.dirichlet_alpha:g}, r={base.rank}", ctx)
    return df, fig


def fig3_methods(ctx):
    """Test accuracy vs rounds for every method at r*, TSFA controller, the same budget."""
    _prefetch(ctx, [{"experiment.method": m} for m in ctx.conf["sweep"]["methods"]])
    rows = []
    for m in ctx.conf["sweep"]["methods"]:
        rows.append(_seed_curves(ctx, ["accuracy", "mean_rho", "total_bits", "mean_latency_s",
                                       "max_latency_s", "mean_queue_s"],
                                 **{"experiment.method": m}).assign(method=m))
    df = pd.concat(rows, ignore_index=True)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.6), constrained_layout=True)
    for m, g in df.groupby("method", sort=False):
        _band(ax, g, "accuracy", **_style(m))
    ax.set_xlabel("round $t$")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6, ncol=3)
    _title(ax, f"All methods, r = {ctx.base.rank}, same budget "
           f"(mean $\\bar T$ = {np.mean(ctx.base.budget_s):.2f} s)", ctx)
    return df, fig


def fig4_fixed_rho(ctx):
    """Final accuracy vs a fixed ratio rho (equal bandwidth), SOFT vs TLoRA vs RLoRA."""
    sw = ctx.conf["sweep"]
    _prefetch(ctx, [{"experiment.method": m, "experiment.controller": "fixed",
                     "experiment.rho": float(rho)} for m in sw["methods"] for rho in sw["rho"]])
    rows = []
    for m in sw["methods"]:
        for rho in sw["rho"]:
            ch = {"experiment.method": m, "experiment.controller": "fixed",
                  "experiment.rho": float(rho)}
            r = _run(ctx, **ch, **{"experiment.seed": int(ctx.seeds[0])}).rounds
            n = max(1, math.ceil(float(rho) * ctx.base.rank - 1e-9))
            rows.append({"method": m, "rho": float(rho), "components_sent": n,
                         **_final(ctx, **ch), "mean_bits": float(r["total_bits"].mean())})
    df = pd.DataFrame(rows)
    styles = {m: {"fmt": "-o", **_style(m)} for m in df["method"]}
    fig = _final_accuracy_plot(df, "method", "rho", styles, "fixed sparsification ratio $\\rho$",
                               f"Fixed $\\rho$, equal bandwidth, r = {ctx.base.rank}", log2_x=True,
                               ctx=ctx)
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
    def variants(f: float) -> tuple[list, float, dict]:
        budget = scaled_budget(base, f)
        spec = base.system.replace(**{"control.latency_budget_s": budget})
        inst = realize(spec)
        rho_bar = float(affordable_rho(spec, inst, base.rank) @ inst.weights)
        return budget, rho_bar, {
            label: {**ch, "control.latency_budget_s": budget} for label, ch in (
                ("TSFA", {"experiment.rank": base.rank}),
                ("offline only", {"experiment.rank": base.rank, "experiment.controller": "fixed",
                                  "experiment.rho": rho_bar}),
                (f"online only (r = {r_alt})", {"experiment.rank": r_alt}))}

    _prefetch(ctx, [ch for f in sw["slack_factor"] for ch in variants(float(f))[2].values()])
    rows = []
    for f in sw["slack_factor"]:
        budget, rho_bar, chs = variants(float(f))
        for label, ch in chs.items():
            # overshoot: time-averaged latency over the budget, worst client, mean over seeds
            over = [float((r.clients.groupby("client")["latency_s"].mean().to_numpy()
                           / np.asarray(budget)).max() - 1.0) for r in _runs(ctx, **ch)]
            lat = [float(r.rounds["mean_latency_s"].mean()) for r in _runs(ctx, **ch)]
            rows.append({"variant": label, "slack_factor": float(f),
                         "mean_budget_s": float(np.mean(budget)), "rho_bar": rho_bar,
                         **_final(ctx, **ch), "mean_latency_s": float(np.mean(lat)),
                         "budget_overshoot": float(np.mean(over)),
                         "budget_overshoot_se": float(np.std(over, ddof=1) / math.sqrt(len(over)))
                         if len(over) > 1 else math.nan})
    df = pd.DataFrame(rows)
    styles = {v: {"fmt": f, "label": v} for v, f in zip(df["variant"].unique(),
                                                         ("C0-o", "C1--s", "C2-.^"), strict=False)}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(COLUMN_WIDTH_IN, 4.4), sharex=True,
                                   constrained_layout=True)
    _final_accuracy_plot(df, "variant", "mean_budget_s", styles, "",
                         f"TSFA vs single-stage variants, r* = {base.rank}", ctx=ctx, ax=ax1)
    for (key, g), st in zip(df.groupby("variant", sort=False), styles.values(), strict=True):
        ax2.errorbar(g["mean_budget_s"], 100 * g["budget_overshoot"],
                     yerr=100 * g["budget_overshoot_se"].fillna(0.0), fmt=st["fmt"], lw=1,
                     ms=3, capsize=2, label=key)
    ax2.axhline(0.0, color="k", lw=0.8)
    ax2.axhline(1.0, color="grey", lw=0.8, ls=":", label="+1% (the claim's tolerance)")
    ax2.legend(fontsize=5.5)
    ax2.set_ylabel(f"budget overshoot [%] after T = {base.cfg.system.training.rounds}\n"
                   "(worst client, time-avg latency)")
    ax2.set_xlabel("mean latency budget $\\bar T_k$ [s]")
    return df, fig


def fig8_zeta(ctx):
    """SOFT with several zeta (0 = ablation): test accuracy and R(B, A) of the global factors."""
    _prefetch(ctx, [{"soft.zeta": float(z)} for z in ctx.conf["sweep"]["zeta"]])
    rows = []
    for z in ctx.conf["sweep"]["zeta"]:
        rows.append(_seed_curves(ctx, ["accuracy", "orth_defect", "kendall_tau"],
                                 **{"soft.zeta": float(z)}).assign(zeta=float(z)))
    df = pd.concat(rows, ignore_index=True)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(COLUMN_WIDTH_IN, 4.0), sharex=True,
                                   constrained_layout=True)
    for i, (z, g) in enumerate(df.groupby("zeta")):
        c = plt.get_cmap("viridis")(i / max(1, df["zeta"].nunique() - 1))
        _band(ax1, g, "accuracy", color=c, label=f"$\\zeta$ = {z:g}")
        _band(ax2, g, "orth_defect", color=c)
    ax1.set_ylabel("test accuracy")
    ax1.legend(fontsize=6)
    ax2.set_yscale("log")
    ax2.set_ylabel("$\\sum_m R(B_m, A_m)$")
    ax2.set_xlabel("round $t$")
    _title(ax1, f"SOFT orthogonality penalty, r = {ctx.base.rank}", ctx)
    return df, fig
