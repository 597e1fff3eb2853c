"""Plotting: functions take result tables and return a matplotlib Figure (no I/O, no state).

Sized for a paper column (3.4 in wide) and readable there: axis labels carry units.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless by default; callers may switch before importing pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

COLUMN_WIDTH_IN = 3.4


def control_traces(rounds: pd.DataFrame, budget_s: np.ndarray, title: str = ""):
    """Running time-averaged latency over budget, and virtual queues, per client vs rounds.

    ``rounds``: one row per (round, client) with ``latency_s`` and ``queue_s`` (after update).
    """
    lat = rounds.pivot(index="round", columns="client", values="latency_s")
    q = rounds.pivot(index="round", columns="client", values="queue_s")
    running = lat.expanding().mean() / np.asarray(budget_s)[None, :]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(COLUMN_WIDTH_IN, 4.2), sharex=True,
                                   constrained_layout=True)
    ax1.plot(running.index, running.to_numpy(), lw=0.8, alpha=0.8)
    ax1.axhline(1.0, color="k", ls="--", lw=0.8, label="budget")
    ax1.set_ylabel("avg latency / budget")
    ax1.legend(loc="upper right", fontsize=7)
    ax2.plot(q.index, q.to_numpy(), lw=0.8, alpha=0.8)
    ax2.set_ylabel("virtual queue $Q_k$ [s]")
    ax2.set_xlabel("round $t$")
    if title:
        ax1.set_title(title, fontsize=8)
    return fig
