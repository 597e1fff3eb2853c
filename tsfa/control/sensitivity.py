"""How far each parameter must move to change r* (docs/model.md §3, "sensitivity").

For each parameter and direction, a geometric scan then bisection finds the smallest move (a
factor for scale parameters, dB for the transmit power) at which the enumerated r* changes. The
printed move is rounded *outward* to 4 significant digits and checked: applying the printed
factor to the spec changes r* (tests/test_rank.py re-solves every row).

Realised budgets are held fixed (a budget is the user's requirement, not a function of the
parameter being moved): with a budget in seconds (the default) that is the spec itself; under
the relative rule (``control.latency_budget_s = []``) the moves apply to the spec with its
realised budgets written in seconds. Only the parameters that change the clients' side of J(r)
(bandwidth, power, budget, local steps) re-evaluate the K clients; the bound constants re-use it,
so ``tsfa rank`` stays within seconds at K = 100,000.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from tsfa.config.spec import SystemSpec
from tsfa.control.offline import client_terms, j_terms, optimal_rank, planning_rate_bps
from tsfa.maths.instance import realize

# parameters whose change can move r*: (dotted key, how to move it)
SENSITIVITY_KEYS = (
    ("wireless.bandwidth_total_hz", "scale"),
    ("wireless.tx_power_dbm", "shift"),
    ("control.latency_budget_s", "scale"),
    ("training.local_steps", "scale_int"),
    ("training.learning_rate", "scale"),
    ("bound.grad_bound", "scale"),
    ("bound.smoothness", "scale"),
    ("bound.spectrum_decay", "scale"),
    ("bound.c3", "scale"),
    ("bound.c4", "scale"),
    ("bound.c5", "scale"),
)
CLIENT_SIDE = ("wireless.bandwidth_total_hz", "wireless.tx_power_dbm", "control.latency_budget_s",
               "training.local_steps")


def _round_out(x: float, up: bool, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits, away from the threshold side."""
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10.0 ** (math.floor(math.log10(abs(x))) - digits + 1)
    return (math.ceil if up else math.floor)(x / scale) * scale


class _Evaluator:
    """J(r) of the spec with one parameter moved, the realised budgets held fixed."""

    def __init__(self, spec: SystemSpec, r_star: int | None = None):
        self.spec = spec
        self.inst = realize(spec)
        self.ranks = np.asarray(spec.lora.rank_candidates, int)
        self.rate = planning_rate_bps(spec, self.inst)
        self.base_terms = client_terms(spec, self.inst, self.ranks, self.rate)
        self.r0 = (r_star if r_star is not None
                   else self.rank_of(optimal_rank(spec, self.inst, self.base_terms)))

    @staticmethod
    def rank_of(res):
        return res.solution.get("rank") if res.ok else None

    def value(self, key: str):
        section, name = key.split(".")
        v = getattr(getattr(self.spec, section), name)
        return float(np.mean(self.inst.budget_s)) if key == "control.latency_budget_s" else v

    def new_value(self, key: str, how: str, amount: float):
        old = self.value(key)
        return (old + amount if how == "shift" else
                max(1, round(old * math.exp(amount))) if how == "scale_int" else
                old * math.exp(amount))

    def table(self, key: str, how: str, amount: float):
        """``(new value, J per rank)``, or ``(None, None)`` outside the allowed range."""
        old, new = self.value(key), self.new_value(key, how, amount)
        try:
            spec = self.spec if key == "control.latency_budget_s" else self.spec.replace(
                **{key: new})
        except ValueError:
            return None, None
        if key in CLIENT_SIDE:
            inst = self._instance(key, old, new)
            same_rate = key in ("control.latency_budget_s", "training.local_steps")
            terms = client_terms(spec, inst, self.ranks, self.rate if same_rate else None,
                                 stats=False)
        else:
            terms = self.base_terms
        return new, j_terms(spec, self.ranks, terms)["J"]

    def gap(self, key: str, how: str, amount: float) -> float | None:
        """``J(r0) - min_{r != r0} J(r)`` after the move: < 0 while r* stays r0 (+inf when r0
        turns infeasible; ``None`` outside the allowed range)."""
        _, j = self.table(key, how, amount)
        if j is None:
            return None
        i0 = int(np.flatnonzero(self.ranks == self.r0)[0])
        others = np.delete(j, i0)
        if not np.isfinite(j[i0]):
            return math.inf if np.isfinite(others).any() else math.inf
        return float(j[i0] - others.min()) if others.size else -math.inf

    def rank_after(self, key: str, how: str, amount: float):
        _, j = self.table(key, how, amount)
        if j is None:
            return None
        if not np.isfinite(j).any():
            return "infeasible"
        return int(self.ranks[int(np.argmin(j))])

    def _instance(self, key: str, old: float, new: float):
        """The realised system after the move, from the model's own scalings (no re-draw): the
        mean gains scale with the power (``gamma ~ P``), compute time with the local steps
        (``T^cmp ~ tau``), the budgets with their factor; bandwidth enters only through the
        spec (equal share ``W_tot / K``)."""
        inst = self.inst
        if key == "wireless.tx_power_dbm":
            return dataclasses.replace(inst, mean_gamma_hz=inst.mean_gamma_hz * 10 ** (
                (new - old) / 10))
        if key == "training.local_steps":
            return dataclasses.replace(inst, compute_s=inst.compute_s * (new / old))
        if key == "control.latency_budget_s":
            return dataclasses.replace(inst, budget_s=inst.budget_s * (new / old))
        return inst


def _threshold(ev: _Evaluator, key: str, how: str, direction: float, limit: float, scan: int,
               tol: float):
    """Smallest amount (in ``(0, limit]``) at which r* changes, or ``None``: a geometric scan
    for the first sign change of :meth:`_Evaluator.gap`, then the Illinois method (bisection
    where the gap is not finite). Integer parameters stop at the first amount that flips."""
    lo, g_lo, hi, g_hi = 0.0, -math.inf, None, None
    for amount in limit * np.geomspace(1e-3, 1.0, scan):
        g = ev.gap(key, how, direction * amount)
        if g is None:
            return None
        if g >= 0:
            hi, g_hi = amount, g
            break
        lo, g_lo = amount, g
    if hi is None:
        return None
    if how == "scale_int":  # bisect on the integer values themselves
        old = ev.value(key)
        a, b = ev.new_value(key, how, direction * lo), ev.new_value(key, how, direction * hi)
        while abs(b - a) > 1:
            mid = (a + b) // 2
            g = ev.gap(key, how, math.log(mid / old))
            a, b = (mid, b) if g is None or g < 0 else (a, mid)
        return abs(math.log(b / old))
    side = 0
    while hi - lo > tol * max(1.0, hi) and not _same_print(how, direction, lo, hi):
        if math.isfinite(g_lo) and math.isfinite(g_hi) and g_hi > g_lo:
            mid = hi - g_hi * (hi - lo) / (g_hi - g_lo)
            if not lo < mid < hi:
                mid = 0.5 * (lo + hi)
        else:
            mid = 0.5 * (lo + hi)
        g = ev.gap(key, how, direction * mid)
        if g is not None and g >= 0:
            hi, g_hi = mid, g
            if side == 1:
                g_lo *= 0.5  # Illinois: keep the stale end from stalling the secant
            side = 1
        else:
            lo, g_lo = mid, (-math.inf if g is None else g)
            if side == -1 and math.isfinite(g_hi):
                g_hi *= 0.5
            side = -1
    return hi


def rank_sensitivity(spec: SystemSpec, max_log_factor: float = math.log(1e3),
                     max_shift_db: float = 60.0, tol: float = 3e-5, scan: int = 5,
                     r_star: int | None = None) -> pd.DataFrame:
    """Smallest move of each parameter (and direction) that changes r* (module docstring);
    ``r_star``: the spec's r* when already solved (a run's plan), else solved here.

    Columns: parameter, direction, move (factor; dB for power), new_value (budgets: the mean),
    rank (r*), new_rank (r* after the printed move). ``nan`` when r* does not change within
    1000x (or 60 dB) or before the move leaves the allowed range. ``tol``: precision of the
    threshold on the log factor (or in dB) before the outward rounding.
    """
    ev = _Evaluator(spec, r_star)
    r0 = ev.r0
    rows = []
    for key, how in SENSITIVITY_KEYS if r0 is not None else ():  # nothing to move if infeasible
        limit = max_shift_db if how == "shift" else max_log_factor
        for direction in (+1.0, -1.0):
            label = "up" if direction > 0 else "down"
            hi = _threshold(ev, key, how, direction, limit, scan, tol)
            if hi is None:
                rows.append((key, label, np.nan, np.nan, r0, None))
                continue
            rows.append((key, label, *_printed(ev, key, how, direction, hi, r0)))
    return pd.DataFrame(rows, columns=["parameter", "direction", "move", "new_value", "rank",
                                       "new_rank"])


def _printed_move(how: str, direction: float, amount: float) -> float:
    """The move as printed for a threshold ``amount``: rounded outward to 4 digits."""
    value = direction * amount if how == "shift" else math.exp(direction * amount)
    return _round_out(value, up=direction > 0)


def _same_print(how: str, direction: float, lo: float, hi: float) -> bool:
    """The threshold is known to the printed precision once both ends of its bracket (and so
    every point between) print the same outward-rounded move (``lo > 0``: a flip was bracketed
    away from the origin)."""
    return lo > 0 and _printed_move(how, direction, lo) == _printed_move(how, direction, hi)


def _amount(how: str, move: float) -> float:
    """The scan amount (log factor or dB) of a printed move."""
    return move if how == "shift" else math.log(move)


def _printed(ev: _Evaluator, key: str, how: str, direction: float, hi: float, r0):
    """``(move, new_value, r*, new r*)`` with the move rounded outward to 4 digits and checked to
    change r* (integer parameters: the exact threshold value)."""
    move = _printed_move(how, direction, hi)
    if how == "scale_int":  # the threshold is an integer value: report it exactly
        new = ev.new_value(key, how, direction * hi)
        return new / ev.value(key), new, r0, ev.rank_after(key, how, direction * hi)
    for _ in range(5):  # one more unit in the last digit until the printed move changes r*
        r_new = ev.rank_after(key, how, _amount(how, move))
        if r_new not in (None, r0):
            break
        step = 10.0 ** (math.floor(math.log10(abs(move))) - 3)
        move += step if direction > 0 else -step
    return move, ev.new_value(key, how, _amount(how, move)), r0, r_new
