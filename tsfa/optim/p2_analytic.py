"""Analytic P2 solvers (docs/model.md §4): block-coordinate descent and the reduced convex solver.

Both work in bandwidth shares (see :mod:`tsfa.optim.waterfill`) and are vectorised over clients.

``solve_bcd`` ("analytic"): alternate
  rho-step  rho_k = argmin_rho p_k v_k phi(rho) + Q_k a rho / R_k(w_k)   (closed form/bang-bang),
  w-step    min_w sum_k Q_k S_k / R_k(w_k) s.t. sum w <= W_tot, w >= w_min  (water-filling: KKT
            ``Q_k S_k R'_k / R_k^2 = lambda`` or ``w_k = w_min``; outer safeguarded Newton on
            log lambda, inner vectorised safeguarded Newton per client).
Each block is solved exactly, so the objective never increases; for phi in {inv, inv_sq} the
problem is convex in (log rho, w) (below) and BCD converges to the global optimum (slowly when
the blocks are strongly coupled). For ``linear`` P2 is not convex and BCD gives a KKT point.

``solve_joint`` ("joint"): global optimum for phi in {inv, inv_sq}. Proof of convexity:
  with x = log rho in [log rho_min, 0], F_k(x, w) = p v phi(e^x) + Q (a e^{x - log R(w)} + h / R(w)).
  phi(e^x) is e^{-x} - 1 (inv) or e^{-2x} - e^{-x} (inv_sq; second derivative
  e^{-x}(4 e^{-x} - 1) > 0 for x <= 0); log R is concave (log of a positive concave function),
  so e^{x - log R} is convex (convex increasing exp of a concave-in-(x, -w) argument... precisely:
  x - log R(w) is jointly convex, exp is convex increasing); 1/R is convex (convex decreasing
  of concave). Hence F_k is jointly convex on a convex box, and its partial minimum
  G_k(w) = min_x F_k(x, w) is convex in w [Boyd & Vandenberghe §3.2.5]. By Danskin,
  G_k'(w) = -Q S_k(rho*(w)) R'(w) / R(w)^2 with rho*(w) the closed-form rho-step (unique).
  P2 reduces to min sum_k G_k(w_k) s.t. sum w <= W_tot, w >= w_min, a separable convex problem
  whose KKT conditions (sufficient) are solved exactly by the same water-filling, with the
  marginal m_k(w) = Q (a rho*(w) + h) R'/R^2 (the rho-step folded into the inner Newton).

Hot path (both solvers): :func:`tsfa.optim.waterfill.joint_newton`, one Newton iteration on all
``(u_k, log lambda)`` at once (closed-form multiplier from the linearised budget, exact budget
rescaling, active set at ``w_min`` re-read each step) on the clients with ``Q_k > 0`` only: 3-4
vectorised evaluations per solve instead of nested outer/inner loops. BCD uses it for its w-step
(rho fixed, warm-started from the previous sweep). If it fails (non-finite value or 40
iterations) the bracketed nested :func:`tsfa.optim.waterfill.waterfill` is used instead.
"""

from __future__ import annotations

import math
import time

import numpy as np

from tsfa.optim.problem import P2Problem
from tsfa.optim.result import INFEASIBLE, OPTIMAL, USER_LIMIT, SolveResult
from tsfa.optim.waterfill import (
    LN2,
    dlog_rate_du,
    joint_newton,
    log_psi,
    rho_step,
    scaled_rate,
    waterfill,
)


class _Scaled:
    """P2 in shares and seconds: g = gamma / W, a_s = a / W [s], h_s = h / W [s], s_min."""

    def __init__(self, p: P2Problem):
        wt = p.total_bandwidth_hz
        self.g = p.gamma_hz / wt
        self.a_s, self.h_s = p.slope_bits / wt, p.head_bits / wt
        self.s_min = p.min_bandwidth_hz / wt
        self.pv = p.weights * p.penalty_weights
        self.q = p.queues
        self.active = self.q > 0

    @property
    def log_g2(self):
        return 2.0 * np.log(self.g)

    @property
    def log_q(self):
        with np.errstate(divide="ignore"):
            return np.log(self.q)

    def rate(self, s):
        return scaled_rate(s, self.g)


def _infeasible(p: P2Problem, solver: str, t0: float) -> SolveResult:
    return SolveResult(INFEASIBLE, math.nan, {}, {}, 0, time.perf_counter() - t0, solver,
                       p.infeasibility)


def _all_at_min(p: P2Problem) -> bool:
    return p.n_clients * p.min_bandwidth_hz >= p.total_bandwidth_hz * (1 - 1e-12)


def _result(p, sc, rho, s, lam_s, it, t0, solver, status=OPTIMAL, msg=""):
    w = s * p.total_bandwidth_hz
    lam = lam_s / p.total_bandwidth_hz
    marg = _marginal(sc, rho, s)
    mu = np.where(s <= sc.s_min * (1 + 1e-9), np.maximum(lam_s - marg, 0.0), 0.0)
    return SolveResult(status, p.objective(rho, w), {"rho": rho, "bandwidth_hz": w},
                       {"bandwidth_per_hz": lam, "bandwidth_lower_per_hz": mu / p.total_bandwidth_hz},
                       it, time.perf_counter() - t0, solver, msg)


def solve_bcd(p: P2Problem, *, max_iter: int = 500, tol: float = 1e-10,
              bandwidth_hz0=None) -> SolveResult:
    """Block-coordinate descent on P2 ("analytic"; see module docstring).

    Stops when a sweep moves the shares (relative) and rho by less than ``tol`` (a fixed point of
    the sweep: each block is at its own optimum given the other); status ``user_limit`` if
    ``max_iter`` sweeps were not enough.
    ``bandwidth_hz0`` warm-starts the allocation (default: equal split).
    """
    t0 = time.perf_counter()
    if p.infeasibility:
        return _infeasible(p, "analytic", t0)
    sc = _Scaled(p)
    k = p.n_clients
    s = (np.full(k, 1.0 / k) if bandwidth_hz0 is None
         else np.asarray(bandwidth_hz0, float) / p.total_bandwidth_hz)
    if _all_at_min(p):
        s = np.full(k, sc.s_min)
    qa = sc.q * sc.a_s
    act = sc.active
    n_act = int(np.count_nonzero(act))
    all_act = n_act == k
    sel = (lambda z: z) if all_act else (lambda z: z[act])  # noqa: E731
    budget = 1.0 - (k - n_act) * sc.s_min
    u, lam = None, 0.0
    rho = np.ones(k)
    status, it = USER_LIMIT, 0
    for it in range(1, max_iter + 1):  # noqa: B007
        rho_new, _ = rho_step(p.phi, sc.pv, qa, sc.rate(s), p.rho_min)
        if _all_at_min(p):
            rho, status = rho_new, OPTIMAL
            lam = float(np.max(_marginal(sc, rho, s), initial=0.0))
            break
        if it > 1 and np.max(np.abs(rho_new - rho)) < tol:
            # rho did not move: the last w-step is already exact for it (a fixed point)
            rho, status = rho_new, OPTIMAL
            break
        out = None
        if n_act:  # w-step: KKT water-filling at fixed rho, Newton warm-started from the last u
            out = joint_newton(sel(sc.g), sel(sc.q), sel(sc.pv), sc.a_s, sc.h_s, sc.s_min, budget,
                               p.rho_min, p.phi, u0=u, rho_fixed=sel(rho_new))
        if out is not None:
            s_act, ell, _, _, u = out
            lam = math.exp(ell)
            if all_act:
                s_new = np.maximum(s_act, sc.s_min)
            else:
                s_new = np.full(k, sc.s_min)
                s_new[act] = np.maximum(s_act, sc.s_min)
        else:
            c = np.where(sc.active, np.log(np.where(sc.active, sc.q * (sc.a_s * rho_new + sc.h_s),
                                                    1.0) * LN2) - sc.log_g2, -np.inf)

            def logm(uu, c=c):
                val, sl = log_psi(uu)
                return c + val, sl

            s_new, lam, _, _ = waterfill(logm, sc.g, sc.s_min, sc.active)
        moved = max(np.max(np.abs(s_new - s) / s), np.max(np.abs(rho_new - rho)))
        s, rho = s_new, rho_new
        if moved < tol:  # a fixed point of the sweep: each block is already at its optimum
            status = OPTIMAL
            break
    msg = "" if status == OPTIMAL else f"BCD did not converge in {max_iter} sweeps"
    return _result(p, sc, rho, s, lam, it, t0, "analytic", status, msg)


def _marginal(sc: _Scaled, rho, s):
    lp, _ = log_psi(np.log(sc.g / s))
    return sc.q * (sc.a_s * rho + sc.h_s) * LN2 * np.exp(lp - sc.log_g2)


def solve_joint(p: P2Problem) -> SolveResult:
    """Global optimum of P2 for phi in {inv, inv_sq} by reduced water-filling ("joint").

    Raises:
        ValueError for ``phi = "linear"`` (P2 is not convex there; use :func:`solve_bcd`).
    """
    t0 = time.perf_counter()
    if p.phi == "linear":
        raise ValueError("phi='linear': P2 is not convex in (log rho, w); the joint solver "
                         "needs phi in ('inv', 'inv_sq'); use the analytic (BCD) solver")
    if p.infeasibility:
        return _infeasible(p, "joint", t0)
    sc = _Scaled(p)
    qa = sc.q * sc.a_s
    if _all_at_min(p):
        s = np.full(p.n_clients, sc.s_min)
        rho, _ = rho_step(p.phi, sc.pv, qa, sc.rate(s), p.rho_min)
        lam = float(np.max(_marginal(sc, rho, s), initial=0.0))
        return _result(p, sc, rho, s, lam, 0, t0, "joint")
    act = sc.active
    n_act = int(np.count_nonzero(act))
    if n_act:
        all_act = n_act == p.n_clients
        sel = (lambda z: z) if all_act else (lambda z: z[act])  # noqa: E731
        budget = 1.0 - (p.n_clients - n_act) * sc.s_min
        out = joint_newton(sel(sc.g), sel(sc.q), sel(sc.pv), sc.a_s, sc.h_s, sc.s_min, budget,
                           p.rho_min, p.phi)
        if out is not None:
            s_act, ell, it, at_min, _ = out
            lam_s = math.exp(ell)
            # mu_k = lambda - m_k(w_min) >= 0 at w_min (idle clients: m = 0); 0 elsewhere
            mu_act = 0.0 if at_min is None else np.where(
                at_min[1], np.maximum(lam_s - np.exp(at_min[0]), 0.0), 0.0)
            if all_act:
                s, mu = np.maximum(s_act, sc.s_min), np.zeros(p.n_clients) + mu_act
            else:
                s, mu = np.full(p.n_clients, sc.s_min), np.full(p.n_clients, lam_s)
                s[act], mu[act] = np.maximum(s_act, sc.s_min), mu_act
            rho, _ = rho_step(p.phi, sc.pv, qa, sc.rate(s), p.rho_min)
            wt = p.total_bandwidth_hz
            w = s * wt
            return SolveResult(OPTIMAL, p.objective(rho, w), {"rho": rho, "bandwidth_hz": w},
                               {"bandwidth_per_hz": lam_s / wt, "bandwidth_lower_per_hz": mu / wt},
                               it, time.perf_counter() - t0, "joint")
    # fallback (no client with Q > 0, or Newton failed): bracketed water-filling
    log_const = np.where(sc.active, sc.log_q + math.log(LN2), -np.inf) - sc.log_g2

    def logm(uu):
        rate = sc.rate(sc.g * np.exp(-uu))
        rho, e = rho_step(p.phi, sc.pv, qa, rate, p.rho_min)
        s_bits = sc.a_s * rho + sc.h_s
        val, sl = log_psi(uu)
        sl = sl + (sc.a_s * rho / s_bits) * e * dlog_rate_du(uu)
        return log_const + np.log(s_bits) + val, sl

    s, lam, _, it = waterfill(logm, sc.g, sc.s_min, sc.active)
    rho, _ = rho_step(p.phi, sc.pv, qa, sc.rate(s), p.rho_min)
    return _result(p, sc, rho, s, lam, it, t0, "joint")
