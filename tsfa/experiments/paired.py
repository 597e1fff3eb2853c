"""Paired comparisons over seeds (docs/validation_rank.md's statistics, figure 1's best set):
a Student-t interval of paired differences, and the *measured best set* of candidates whose
paired interval to the highest-mean candidate contains 0. Pure functions of final accuracies
(dimensionless); the runs behind them share seeds, so differences are taken seed by seed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

CONFIDENCE = 0.95


def t_interval(diff, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval of paired differences (nan width if n < 2)."""
    from scipy import stats

    d = np.asarray(diff, float)
    m = float(d.mean()) if len(d) else math.nan
    if len(d) < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return m, m - h, m + h


def best_set(acc: pd.DataFrame, confidence: float = CONFIDENCE, key: str = "rank",
             value: str = "final_accuracy") -> tuple[int, list[int], pd.Series, pd.DataFrame]:
    """(top, the measured best set, mean per candidate over its own seeds, the seed x candidate
    table) from per-run rows (``key``, seed, ``value``). The top is the highest mean over the
    seeds common to the candidates with the most seeds (a sequential design adds seeds to the
    contenders only); a candidate is in the best set when its paired t-interval to the top, over
    the seeds they share, contains 0."""
    piv = acc.pivot(index="seed", columns=key, values=value)
    counts = piv.count()
    full = piv[counts[counts == counts.max()].index].dropna()
    top = full.mean().idxmax()
    members = []
    for r in piv.columns:
        d = (piv[top] - piv[r]).dropna()
        if r == top or (len(d) and not t_interval(d, confidence)[1] > 0):
            members.append(r)
    return top, members, piv.mean(), piv


__all__ = ["CONFIDENCE", "t_interval", "best_set"]
