"""Tables of analysis/compare_methods.py, computed from finished runs (no training here).

* :func:`summarise`: one run's row (accuracy, bits, latency, ||Cov||_F, wall time);
* :func:`cell_table`: mean, std and 95% t-interval over seeds per cell;
* :func:`paired`: SOFT minus each other method in the same (task, rank, policy, reading,
  budget), paired by seed, with a 95% t-interval over seeds and a verdict;
* :func:`separation`: the paired SOFT - X difference along training (5-round windows), to show
  whether T was long enough for the methods to separate;
* :func:`markdown`: docs/methods.md's generated part.

Accuracy is the mean test accuracy of the last five rounds (``final_accuracy(last=5)``), which
averages out the round-to-round noise of a 1,000-sample test set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tsfa.experiments.paired import t_interval
from tsfa.experiments.results import final_accuracy

KEYS = ["task", "rank", "policy", "reading", "budget"]
CELL = [*KEYS, "method"]
LAST = 5
METHOD_ORDER = ["soft", "tlora", "rlora", "slora", "svd", "ffa", "soft+rs", "ilora"]
READING_ORDER = ["update+EF", "EF SOFT only", "factor"]
WINDOWS = ("first third", "middle third", "last third")
TASK_NAMES = {"synthetic": "embedded synthetic task", "fashion_mnist": "Fashion-MNIST"}


def summarise(rounds: pd.DataFrame, clients: pd.DataFrame, cell: dict, seed: int) -> dict:
    """One run: accuracy (last 5 rounds, last round), bits per client and round, mean latency
    and budget, ||Cov||_F at the end, training wall time (sum over rounds)."""
    return {**cell, "seed": seed,
            "accuracy": final_accuracy(rounds, last=LAST),
            "final_accuracy": final_accuracy(rounds, last=1),
            "mean_rho": float(rounds["mean_rho"].mean()),
            "kbit_per_client_round": float(clients["bits"].mean()) / 1e3,
            "mean_latency_s": float(clients["latency_s"].mean()),
            "mean_budget_s": float(clients["budget_s"].mean()),
            "final_cov_fro": float(rounds["cov_fro"].iloc[-1]),
            "rounds": int(len(rounds)), "wall_s": float(rounds["wall_s"].sum())}


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    rd = {r: i for i, r in enumerate(READING_ORDER)}
    key = (df["task"].map({"synthetic": 0}).fillna(1) * 1e6 + df["rank"] * 1e4
           + (df["policy"] != "rho=1/8") * 1e3 + df["reading"].map(rd) * 100
           + (df["budget"] == "bits") * 10)
    if "method" in df:
        key = key + df["method"].map(rank).fillna(9) * 0.1
    return df.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def cell_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell: seeds, accuracy mean / std / 95% interval, mean rho, kbit, latency, budget."""
    rows = []
    for key, g in runs.groupby(CELL, sort=False):
        m, lo, hi = t_interval(g["accuracy"])
        rows.append({**dict(zip(CELL, key, strict=True)), "seeds": len(g), "acc_mean": m,
                     "acc_std": float(g["accuracy"].std(ddof=1)) if len(g) > 1 else np.nan,
                     "acc_lo": lo, "acc_hi": hi,
                     "final_mean": float(g["final_accuracy"].mean()),
                     "mean_rho": float(g["mean_rho"].mean()),
                     "kbit_per_client_round": float(g["kbit_per_client_round"].mean()),
                     "mean_latency_s": float(g["mean_latency_s"].mean()),
                     "mean_budget_s": float(g["mean_budget_s"].mean()),
                     "final_cov_fro": float(g["final_cov_fro"].mean()),
                     "wall_s": float(g["wall_s"].mean())})
    return _ordered(pd.DataFrame(rows))


def verdict(lo: float, hi: float) -> str:
    """SOFT above / below / not separated from the other method (95% interval of SOFT - X)."""
    if np.isnan(lo):
        return "n/a (1 seed)"
    return "SOFT above" if lo > 0 else "SOFT below" if hi < 0 else "not separated"


def paired(runs: pd.DataFrame, reference: str = "soft") -> pd.DataFrame:
    """reference - method per (task, rank, policy, reading, budget), paired by seed."""
    rows = []
    for key, g in runs.groupby(KEYS, sort=False):
        ref = g[g.method == reference].set_index("seed")["accuracy"]
        for method, h in g[g.method != reference].groupby("method", sort=False):
            other = h.set_index("seed")["accuracy"]
            seeds = sorted(set(ref.index) & set(other.index))
            if not seeds:
                continue
            d = (ref.loc[seeds] - other.loc[seeds]).to_numpy()
            m, lo, hi = t_interval(d)
            rows.append({**dict(zip(KEYS, key, strict=True)), "method": method,
                         "seeds": len(seeds), "diff": m, "lo": lo, "hi": hi,
                         "per_seed": " ".join(f"{x:+.3f}" for x in d),
                         "verdict": verdict(lo, hi)})
    cols = [*KEYS, "method", "seeds", "diff", "lo", "hi", "per_seed", "verdict"]
    return _ordered(pd.DataFrame(rows)) if rows else pd.DataFrame(columns=cols)


def separation(curves: pd.DataFrame, reference: str = "soft", other: str = "tlora",
               windows: int = 3) -> pd.DataFrame:
    """Paired reference - other accuracy in the first, middle and last third of the T rounds
    (mean over each window's rounds, then over seeds), per (task, rank, policy, reading,
    budget): stable differences over the last two thirds mean the methods have separated."""
    rows = []
    for key, g in curves.groupby(KEYS, sort=False):
        a = g[g.method == reference].pivot(index="round", columns="seed", values="accuracy")
        b = g[g.method == other].pivot(index="round", columns="seed", values="accuracy")
        seeds = sorted(set(a.columns) & set(b.columns))
        if not seeds or a.empty:
            continue
        d = (a[seeds] - b[seeds]).dropna()
        t = len(d)
        row = {**dict(zip(KEYS, key, strict=True)), "seeds": len(seeds), "rounds": t}
        for i, name in enumerate(WINDOWS[:windows]):
            row[name] = float(d.iloc[t * i // windows:t * (i + 1) // windows].mean().mean())
        for name, col in (("ref", a), ("other", b)):
            acc = col[seeds].mean(axis=1)
            row[f"{name}_gain_last_third"] = float(acc.iloc[-t // 3:].mean()
                                                   - acc.iloc[-2 * t // 3:-t // 3].mean())
        rows.append(row)
    return _ordered(pd.DataFrame(rows)) if rows else pd.DataFrame()


def _acc(r) -> str:
    if np.isnan(r.acc_lo):
        return f"{r.acc_mean:.3f} (1)"
    return f"{r.acc_mean:.3f} ± {r.acc_std:.3f}" + ("" if r.seeds == 3 else f" ({r.seeds})")


def _ci(d) -> str:
    if np.isnan(d.lo):
        return f"{100 * d.diff:+.1f} (1 seed)"
    return f"{100 * d.diff:+.1f} [{100 * d.lo:+.1f}, {100 * d.hi:+.1f}]"


def grid_markdown(tab: pd.DataFrame, task: str, methods: list[str]) -> list[str]:
    """One table per task: rows (policy, rank, reading, budget), columns methods; cells the mean
    ± std over seeds of the last-5-round accuracy (number of seeds in brackets if not 3)."""
    t = tab[tab.task == task]
    methods = [m for m in METHOD_ORDER if m in set(t.method) and m in methods]
    lines = ["| policy | r | reading | budget | " + " | ".join(methods) + " |",
             "|---|--:|---|---|" + "--:|" * len(methods)]
    for key, g in t.groupby(["policy", "rank", "reading", "budget"], sort=False):
        by = {r.method: r for r in g.itertuples()}
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | "
                     + " | ".join(_acc(by[m]) if m in by else "" for m in methods) + " |")
    return lines


def paired_markdown(pairs: pd.DataFrame, methods: list[str] | None = None) -> list[str]:
    lines = ["| task | policy | r | reading | budget | SOFT - | seeds | points [95% CI] | per seed "
             "| verdict |", "|---|---|--:|---|---|---|--:|--:|---|---|"]
    for d in pairs.itertuples():
        if methods is not None and d.method not in methods:
            continue
        lines.append(f"| {TASK_NAMES.get(d.task, d.task)} | {d.policy} | {d.rank} | {d.reading} | "
                     f"{d.budget} | {d.method} | {d.seeds} | {_ci(d)} | {d.per_seed} | "
                     f"{d.verdict} |")
    return lines


def separation_markdown(sep: pd.DataFrame) -> list[str]:
    win = [c for c in WINDOWS if c in sep.columns]
    lines = ["| task | policy | r | reading | budget | seeds | T | " + " | ".join(win)
             + " | SOFT gain, last third | TLoRA gain, last third |",
             "|---|---|--:|---|---|--:|--:|" + "--:|" * (len(win) + 2)]
    for _, r in sep.iterrows():
        lines.append(f"| {TASK_NAMES.get(r.task, r.task)} | {r.policy} | {r['rank']} | "
                     f"{r.reading} | {r.budget} | {r.seeds} | {r.rounds} | "
                     + " | ".join(f"{100 * r[c]:+.1f}" for c in win)
                     + f" | {100 * r.ref_gain_last_third:+.1f} | "
                     f"{100 * r.other_gain_last_third:+.1f} |")
    return lines


__all__ = ["summarise", "t_interval", "cell_table", "paired", "separation", "verdict",
           "grid_markdown", "paired_markdown", "separation_markdown"]
