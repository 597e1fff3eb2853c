"""A verdict for each figure's claim, computed from the CSVs that ``tsfa figures`` writes (the
reviewer's checklist of docs/figures.md). Paired over seeds (the runs of a figure share seeds);
95% Student-t intervals (:mod:`tsfa.experiments.paired`). A claim is **accepted** when every
comparison it makes is resolved in its direction, **rejected** when one is resolved against it,
**unresolved** otherwise (with the comparison that is); "without hurting" is non-inferiority
within :data:`NONINFERIORITY`. Numbers are accuracy points (x100) unless
stated. Nothing here knows what the paper expects beyond the claim's direction.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from tsfa.experiments.paired import t_interval
from tsfa.experiments.results import final_accuracy

#: "Without hurting accuracy": the paired lower bound above minus this (accuracy, 1 point).
NONINFERIORITY = 0.01

CLAIMS = {
    "fig1_rank": "the accuracy peaks at r* (r* in the measured best set)",
    "fig2_covariance": "||Cov^t||_F grows with tau, with heterogeneity (smaller alpha) and with r",
    "fig3_methods": "SOFT beats TLoRA, RLoRA and SLoRA under the same budget, close to ILoRA",
    "fig4_fixed_rho": "SOFT degrades less than TLoRA and RLoRA as rho falls",
    "fig5_control_v": "the average penalty falls and the time-averaged queue grows with V",
    "fig6_budget": "TSFA beats each single-stage variant at every budget, within the budget (1%)",
    "fig7_client_compute": "SOFT's client compression is cheaper than SLoRA's (no SVD)",
    "fig8_zeta": "the orthogonality penalty keeps R(B, A) small without hurting accuracy",
}


def _pts(m, lo, hi) -> str:
    return f"{100 * m:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"


def _sign(lo: float, hi: float) -> int:
    """+1 / -1 when the interval excludes 0 on that side, 0 when it contains it (or is nan)."""
    if math.isnan(lo):
        return 0
    return 1 if lo > 0 else -1 if hi < 0 else 0


def _combine(signs: list[int]) -> str:
    if any(s < 0 for s in signs):
        return "rejected"
    return "accepted" if all(s > 0 for s in signs) else "unresolved"


def _seed_cols(df: pd.DataFrame) -> list[str]:
    return sorted(c for c in df.columns if c.startswith("acc_seed"))


def _final_by_seed(df: pd.DataFrame, group: str, column: str = "accuracy") -> pd.DataFrame:
    """Seed x ``group`` table of each run's final ``column``
    (:func:`tsfa.experiments.results.final_accuracy`, the one definition)."""
    return pd.Series({(s, g): final_accuracy(r, column=column)
                      for (g, s), r in df.groupby([group, "seed"])}).unstack()


def fig1(df: pd.DataFrame) -> tuple[str, str]:
    t = df.dropna(subset=["final_accuracy"])
    r_star = int(t["r_star"].iloc[0])
    members = sorted(int(r) for r in t.loc[t["in_best_set"].astype(bool), "rank"])
    top = int(t["measured_best"].iloc[0])
    cols = _seed_cols(t)
    piv = t.set_index("rank")[cols]
    text = (f"r* = {r_star}; best set {{{', '.join(map(str, members))}}} over {len(cols)} seeds; "
            + ", ".join(f"r={int(r)}: {100 * a:.1f}" for r, a in zip(t['rank'], t['final_accuracy'],
                                                                    strict=True)))
    if r_star not in piv.index:
        return text + "; r* not trained", "unresolved"
    if len(members) >= 3:
        return text + " (3 or more members)", "unresolved"
    if r_star in members:
        return text, "accepted"
    m, lo, hi = t_interval(piv.loc[top] - piv.loc[r_star])
    return text + f"; regret of r*: {_pts(m, lo, hi)}", "rejected"


def fig2(df: pd.DataFrame) -> tuple[str, str]:
    """Per panel: the run's mean ||Cov||_F over its rounds, paired between the swept extremes."""
    parts, signs = [], []
    per = df.groupby(["parameter", "value", "seed"])["cov_fro"].mean()
    for key, want in (("training.local_steps", 1), ("clients.dirichlet_alpha", -1),
                      ("experiment.rank", 1)):
        g = per.loc[key].unstack("value")
        # from the value the claim expects the smaller covariance at, to the other extreme
        a, b = (min(g.columns), max(g.columns))[::want]
        m, lo, hi = t_interval((g[b] - g[a]) / g[a])  # > 0 where the claim holds
        signs.append(_sign(lo, hi))
        name = key.split(".")[-1]
        means = ", ".join(f"{v:g}: {g[v].mean():.3g}" for v in sorted(g.columns))
        parts.append(f"{name} {a:g} -> {b:g}: relative change {_pts(m, lo, hi)} % "
                     f"(mean ||Cov||_F by {name}: {means})")
    return "; ".join(parts), _combine(signs)


def fig3(df: pd.DataFrame) -> tuple[str, str]:
    acc = _final_by_seed(df, "method")
    parts, signs = [], []
    for other in ("tlora", "rlora", "slora"):
        if other in acc:
            m, lo, hi = t_interval(acc["soft"] - acc[other])
            signs.append(_sign(lo, hi))
            parts.append(f"SOFT - {other}: {_pts(m, lo, hi)}")
    if "ilora" in acc:
        m, lo, hi = t_interval(acc["soft"] - acc["ilora"])
        parts.append(f"SOFT - ILoRA: {_pts(m, lo, hi)}")
    return "; ".join(parts), _combine(signs)


def fig4(df: pd.DataFrame) -> tuple[str, str]:
    """Degradation acc(rho = max) - acc(rho = min), paired: SOFT's minus each baseline's."""
    cols = _seed_cols(df)
    lo_r, hi_r = df["rho"].min(), df["rho"].max()

    def drop(method):
        g = df[df["method"] == method].set_index("rho")[cols]
        return (g.loc[hi_r] - g.loc[lo_r]).to_numpy(float)

    parts, signs = [], []
    for other in ("tlora", "rlora"):
        if other in set(df["method"]):
            m, lo, hi = t_interval(drop(other) - drop("soft"))  # > 0: SOFT degrades less
            signs.append(_sign(lo, hi))
            parts.append(f"{other}'s loss - SOFT's, rho {hi_r:g} -> {lo_r:g}: {_pts(m, lo, hi)}")
    soft = drop("soft")
    parts.append(f"SOFT loses {100 * soft.mean():.2f}")
    return "; ".join(parts), _combine(signs)


def fig5(df: pd.DataFrame) -> tuple[str, str]:
    s = df.groupby("V")[["average_penalty", "time_avg_queue_s", "max_latency_ratio"]].first()
    pen = np.diff(s["average_penalty"].to_numpy())
    q = np.diff(s["time_avg_queue_s"].to_numpy())
    text = (f"V {', '.join(f'{v:g}' for v in s.index)}: penalty "
            f"{', '.join(f'{x:.3g}' for x in s['average_penalty'])}; queue [s] "
            f"{', '.join(f'{x:.3g}' for x in s['time_avg_queue_s'])}; worst time-avg latency / "
            f"budget {s['max_latency_ratio'].max():.3f} (one fading draw, no seeds: analytic)")
    ok = [bool(np.all(pen <= 1e-12)), bool(np.all(q >= -1e-12))]
    return text, "accepted" if all(ok) else "rejected" if not any(ok) else "partly rejected"


def fig6(df: pd.DataFrame) -> tuple[str, str]:
    cols = _seed_cols(df)
    parts, signs = [], []
    for f, g in df.groupby("slack_factor"):
        g = g.set_index("variant")
        tsfa = g.loc["TSFA", cols].to_numpy(float)
        for v in g.index:
            if v == "TSFA":
                continue
            m, lo, hi = t_interval(tsfa - g.loc[v, cols].to_numpy(float))
            signs.append(_sign(lo, hi))
            parts.append(f"slack x{f:g}: TSFA - {v}: {_pts(m, lo, hi)}")
        over = float(g.loc["TSFA", "budget_overshoot"])
        signs.append(1 if over <= 0.01 else -1)
        parts.append(f"slack x{f:g}: TSFA overshoot {100 * over:+.2f}%")
    return "; ".join(parts), _combine(signs)


def fig7(df: pd.DataFrame) -> tuple[str, str]:
    piv = df.pivot_table(index=["model", "rank"], columns="method", values="seconds_median")
    ratio = piv["soft"] / piv["slora"]
    text = "; ".join(f"{m} r={r}: SOFT / SLoRA = {x:.2g}" for (m, r), x in ratio.items())
    return text + " (median wall times of the run that drew the figure)", (
        "accepted" if (ratio < 1).all() else "rejected" if (ratio > 1).all() else "mixed")


def fig8(df: pd.DataFrame) -> tuple[str, str]:
    acc = _final_by_seed(df, "zeta")
    last = df.sort_values("round").groupby(["zeta", "seed"]).tail(1)
    r = last.groupby(["seed", "zeta"])["orth_defect"].mean().unstack("zeta")
    parts, signs = [], []
    for z in [z for z in acc.columns if z > 0]:
        m, lo, hi = t_interval(np.log(r[0.0]) - np.log(r[z]))  # > 0: a smaller defect
        signs.append(_sign(lo, hi))
        parts.append(f"zeta {z:g}: R(B, A) at the end x{math.exp(-m):.3g} of zeta 0's "
                     f"(log ratio {-m:+.2f} [{-hi:+.2f}, {-lo:+.2f}])")
        m, lo, hi = t_interval(acc[z] - acc[0.0])
        # not hurting: non-inferior within NONINFERIORITY (lower bound above -margin)
        signs.append(-1 if hi < 0 else 1 if lo > -NONINFERIORITY else 0)
        parts.append(f"accuracy zeta {z:g} - zeta 0: {_pts(m, lo, hi)} (margin "
                     f"-{100 * NONINFERIORITY:g})")
    return "; ".join(parts), _combine(signs)


CHECKS = {"fig1_rank": fig1, "fig2_covariance": fig2, "fig3_methods": fig3,
          "fig4_fixed_rho": fig4, "fig5_control_v": fig5, "fig6_budget": fig6,
          "fig7_client_compute": fig7, "fig8_zeta": fig8}


def verdicts(folder: str | Path) -> pd.DataFrame:
    """One row per figure whose CSV is in ``folder``: claim, the numbers that decide it, verdict."""
    rows = []
    for name, check in CHECKS.items():
        path = Path(folder) / f"{name}.csv"
        if path.is_file():
            numbers, verdict = check(pd.read_csv(path))
            rows.append({"figure": name, "claim": CLAIMS[name], "numbers": numbers,
                         "verdict": verdict})
    return pd.DataFrame(rows)


def _cell(x) -> str:
    """``x`` as the text of a Markdown table cell (a pipe would end the cell)."""
    return str(x).replace("|", "\\|")


def verdict_table(folder: str | Path) -> str:
    """:func:`verdicts` as a markdown table."""
    v = verdicts(folder)
    lines = ["| figure | claim | numbers (paired 95% t over seeds) | verdict |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {r.figure} | {_cell(r.claim)} | {_cell(r.numbers)} | **{r.verdict}** |"
              for r in v.itertuples()]
    return "\n".join(lines) + "\n"


__all__ = ["CLAIMS", "CHECKS", "verdicts", "verdict_table"]
