"""CVXPY reference solver for P2 on the convex (x = log rho, s = w / W_tot) form (paper.md §4).

    min_{x, s}  sum_k pv_k phi(e^{x_k}) + sum_k [ e^{x_k - log Rbar_k(s_k) + log(Q_k a_s)}
                                                + e^{log(Q_k h_s) - log Rbar_k(s_k)} ]
    s.t.        sum_k s_k <= 1,  s_k >= s_min,  log rho_min <= x_k <= 0,
    Rbar_k(s) = -rel_entr(s, s + g_k) / ln 2 = s log2(1 + g_k / s),  g_k = gamma_k / W_tot,

with times ``a_s = a / W_tot`` and ``h_s = h / W_tot`` in seconds, so every number is O(1)
(in raw hertz CLARABEL fails and SCS returns wrong answers). The coefficients enter as
parameters in the exponent (``log(Q a_s)``) so the problem is DPP: built once, re-solved each
round. A client with ``Q_k = 0`` has the known optimum ``rho_k = 1``, ``w_k = w_min`` (no latency
cost, phi decreasing); the per-client bounds ``x_k >= x_min_k`` and ``s_k <= s_max_k`` (parameters)
pin it there, and its latency coefficient is set to a harmless 1e-12. The whole objective is
divided by its largest coefficient for conditioning; the reported objective is re-evaluated in
numpy on the original P2.

phi variants: ``inv`` gives ``pv (e^{-x} - 1)``; ``inv_sq`` gives ``pv (t^2 - t)`` with the
epigraph ``t >= e^{-x}`` (exact because ``t^2 - t`` increases for t >= 1/2 and ``e^{-x} >= 1``);
``linear`` (``1 - e^x``, concave) is not DCP, nor is P2 convex: the builder raises ValueError and
the analytic (BCD) solver alone serves it. The constant ``-sum pv`` and ``sum Q c`` are dropped.
"""

from __future__ import annotations

import math
import time
import warnings

import cvxpy as cp
import numpy as np

from tsfa.optim.problem import P2Problem
from tsfa.optim.result import INFEASIBLE, SOLVER_ERROR, SolveResult

_CLARABEL_OPTS = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10,
                  "tol_ktratio": 1e-8, "max_iter": 400}


class CvxpyP2:
    """P2 for a fixed number of clients, built once with ``cp.Parameter`` and re-solved.

    Args:
        n_clients: K.
        phi: ``"inv"`` or ``"inv_sq"`` (``"linear"`` raises ValueError: not DCP).
        solver: a conic solver with exponential cones (``"CLARABEL"`` default, or ``"SCS"``).
    """

    def __init__(self, n_clients: int, phi: str = "inv", solver: str = "CLARABEL"):
        if phi not in ("inv", "inv_sq"):
            raise ValueError(f"phi={phi!r}: not DCP in the (log rho, w) form; only 'inv' and "
                             "'inv_sq' have a CVXPY reference, use the analytic solver")
        if n_clients < 1:
            raise ValueError(f"n_clients: must be >= 1, got {n_clients}")
        k = n_clients
        self.n_clients, self.phi, self.solver = k, phi, solver
        self.pv = cp.Parameter(k, nonneg=True, name="pv")
        self.log_qa = cp.Parameter(k, name="log_qa")
        self.log_qh = cp.Parameter(k, name="log_qh")
        self.g = cp.Parameter(k, pos=True, name="g")
        self.s_min = cp.Parameter(nonneg=True, name="s_min")
        self.s_max = cp.Parameter(k, nonneg=True, name="s_max")
        self.x_min = cp.Parameter(k, nonpos=True, name="x_min")
        self.x = cp.Variable(k, name="x")
        self.s = cp.Variable(k, name="s")
        log_rate = cp.log(-cp.rel_entr(self.s, self.s + self.g) / math.log(2.0))
        lat = cp.sum(cp.exp(self.x - log_rate + self.log_qa)) + cp.sum(
            cp.exp(self.log_qh - log_rate))
        cons = [self.x >= self.x_min, self.x <= 0, self.s >= self.s_min, self.s <= self.s_max]
        self.budget = cp.sum(self.s) <= 1
        cons.append(self.budget)
        if phi == "inv":
            pen = self.pv @ cp.exp(-self.x)
        else:
            self.t = cp.Variable(k, name="t")
            cons.append(self.t >= cp.exp(-self.x))
            pen = self.pv @ (cp.square(self.t) - self.t)
        self.problem = cp.Problem(cp.Minimize(pen + lat), cons)
        if not self.problem.is_dcp(dpp=True):  # pragma: no cover - a construction error
            raise RuntimeError("P2 CVXPY model is not DPP")

    def solve(self, p: P2Problem, **solver_opts) -> SolveResult:
        """Set the parameters from ``p`` and solve. Status and multipliers as in SolveResult."""
        t0 = time.perf_counter()
        name = f"cvxpy:{self.solver}"
        if p.n_clients != self.n_clients or p.phi != self.phi:
            raise ValueError(f"problem: built for K={self.n_clients}, phi={self.phi!r}; got "
                             f"K={p.n_clients}, phi={p.phi!r}")
        if p.infeasibility:
            return SolveResult(INFEASIBLE, math.nan, {}, {}, 0, 0.0, name, p.infeasibility)
        wt = p.total_bandwidth_hz
        pv = p.weights * p.penalty_weights
        qa, qh = p.queues * p.slope_bits / wt, p.queues * p.head_bits / wt
        scale = max(float(np.max(pv)), float(np.max(qa)), float(np.max(qh)), 1e-300)
        floor = 1e-12
        self.pv.value = pv / scale
        self.log_qa.value = np.log(np.maximum(qa / scale, floor))
        self.log_qh.value = np.log(np.maximum(qh / scale, floor))
        self.g.value = p.gamma_hz / wt
        self.s_min.value = p.min_bandwidth_hz / wt
        idle = p.queues <= 0  # known optimum rho = 1, w = w_min (no latency cost, phi decreasing)
        self.s_max.value = np.where(idle, p.min_bandwidth_hz / wt, 1.0)
        self.x_min.value = np.where(idle, 0.0, math.log(p.rho_min))
        opts = dict(_CLARABEL_OPTS) if self.solver == "CLARABEL" else {}
        opts.update(solver_opts)
        try:
            with warnings.catch_warnings():  # "may be inaccurate": the status says so
                warnings.simplefilter("ignore", UserWarning)
                self.problem.solve(solver=self.solver, **opts)
        except cp.error.SolverError as exc:
            return SolveResult(SOLVER_ERROR, math.nan, {}, {}, 0, time.perf_counter() - t0, name,
                               str(exc))
        status = self.problem.status
        stats = self.problem.solver_stats
        iters = int(stats.num_iters or 0) if stats is not None else 0
        if self.x.value is None or self.s.value is None:
            return SolveResult(status, math.nan, {}, {}, iters, time.perf_counter() - t0, name,
                               "no primal solution returned")
        rho = np.clip(np.exp(self.x.value), p.rho_min, 1.0)
        s = np.maximum(self.s.value, p.min_bandwidth_hz / wt)
        s = s / max(1.0, s.sum())  # remove solver-tolerance excess of the budget
        s = np.maximum(s, p.min_bandwidth_hz / wt)
        w = s * wt
        lam = float(self.budget.dual_value) * scale / wt if self.budget.dual_value is not None \
            else math.nan
        return SolveResult(status, p.objective(rho, w), {"rho": rho, "bandwidth_hz": w},
                           {"bandwidth_per_hz": lam}, iters, time.perf_counter() - t0, name,
                           f"{stats.solver_name if stats else ''}")


def solve_cvxpy(p: P2Problem, solver: str = "CLARABEL", **solver_opts) -> SolveResult:
    """One-shot convenience: build :class:`CvxpyP2` for ``p`` and solve (prefer re-using one)."""
    return CvxpyP2(p.n_clients, p.phi, solver).solve(p, **solver_opts)
