"""Warnings about a spec the offline and online stages can serve, but not as the user may expect
(docs/model.md §1 "Deep fades", §3). Infeasibility itself is a status of
:func:`tsfa.control.offline.optimal_rank`; these are the softer cases, each naming the clients:

* a physically implausible link: mean SNR on the equal share below -20 dB;
* a budget above a day;
* with deferral: clients that would upload in fewer than half of the rounds at the chosen rank
  (their budget holds only by deferring the rest);
* without a deadline (``control.deadline = 'none'``): under Rayleigh fading the mean upload time
  is infinite, so no client's long-term budget is guaranteed; the least-SNR clients are named.
"""

from __future__ import annotations

import numpy as np

from tsfa.config.spec import SystemSpec
from tsfa.control.offline import affordable_rho, participation
from tsfa.maths.instance import SystemInstance
from tsfa.maths.units import linear_to_db

SNR_FLOOR_DB = -20.0
DAY_S = 86_400.0
MIN_PARTICIPATION = 0.5


def _names(idx, values, fmt: str, limit: int = 3) -> str:
    """``client 3 (x), client 7 (y) and 12 more`` for the clients ``idx`` (worst first)."""
    shown = ", ".join(f"client {int(k)} ({fmt.format(values[k])})" for k in idx[:limit])
    return shown + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def spec_warnings(spec: SystemSpec, inst: SystemInstance, rank: int | None = None) -> list[str]:
    """One line per warning (module docstring); ``rank`` enables the participation check."""
    out = []
    w = spec.wireless.bandwidth_total_hz / spec.clients.num_clients
    snr_db = linear_to_db(inst.mean_gamma_hz / w)
    low = np.argsort(snr_db)
    weak = low[snr_db[low] < SNR_FLOOR_DB]
    if weak.size:
        out.append(f"{weak.size} client(s) have a mean SNR below {SNR_FLOOR_DB:g} dB on the equal "
                   f"share W_tot / K (physically implausible link; check distances, power, "
                   f"bandwidth): " + _names(weak, snr_db, "{:.1f} dB"))
    long = np.argsort(-inst.budget_s)
    long = long[inst.budget_s[long] > DAY_S]
    if long.size:
        out.append(f"{long.size} client(s) have a latency budget above a day: "
                   + _names(long, inst.budget_s, "{:.3g} s"))
    if spec.control.deadline == "none":
        out.append("control.deadline = 'none': under Rayleigh fading the mean upload time is "
                   "infinite (E[1/|g|^2] diverges), so no client's long-term budget is "
                   "guaranteed; deep fades hit the lowest-SNR clients hardest: "
                   + _names(low, snr_db, "{:.1f} dB") + "; set control.deadline = 'defer'")
    elif rank is not None:
        rho = affordable_rho(spec, inst, rank)
        pi = participation(spec, inst, rank, rho)
        rare = np.argsort(pi)
        rare = rare[pi[rare] < MIN_PARTICIPATION]
        if rare.size:
            out.append(f"{rare.size} client(s) upload in fewer than half of the rounds at r = "
                       f"{rank} (their uploads would miss the per-round deadline; the budget "
                       "holds by deferring them): " + _names(rare, 100 * pi, "{:.0f}% of rounds"))
    return out
