"""Plotting: functions take result tables and return a matplotlib Figure (no I/O, no state).

Sized for a paper column (3.4 in wide) and readable there: axis labels carry units.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless by default; callers may switch before importing pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLUMN_WIDTH_IN = 3.4


def control_traces(traces: list[dict], title: str = ""):
    """Running time-averaged latency over budget, and virtual queues, vs rounds.

    ``traces``: one dict per round (``tsfa.control.simulate.RunningSummary.traces``) with
    ``round``, ``avg_latency_over_budget`` and ``queue_s`` of the traced clients (at most 20, so
    the figure and its memory do not grow with K).
    """
    rounds = np.array([t["round"] for t in traces])
    running = np.array([t["avg_latency_over_budget"] for t in traces])
    q = np.array([t["queue_s"] for t in traces])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(COLUMN_WIDTH_IN, 4.2), sharex=True,
                                   constrained_layout=True)
    ax1.plot(rounds, running, lw=0.8, alpha=0.8)
    ax1.axhline(1.0, color="k", ls="--", lw=0.8, label="budget")
    ax1.set_ylabel("avg latency / budget")
    ax1.legend(loc="upper right", fontsize=7)
    ax2.plot(rounds, q, lw=0.8, alpha=0.8)
    ax2.set_ylabel("virtual queue [s]")
    ax2.set_xlabel("round $t$")
    if title:
        ax1.set_title(title, fontsize=8)
    return fig
