"""Reference policies of the online stage (docs/model.md §4, §6 ablations): equal bandwidth with a
fixed ratio, and the myopic per-round-budget policy. Both defer a client whose upload cannot meet
its per-round deadline when the policy has deadlines (:mod:`tsfa.control.base`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tsfa.control.base import BasePolicy, Decision
from tsfa.maths.bound import phi as phi_fn
from tsfa.maths.wireless import rate_bps


@dataclass(frozen=True)
class EqualBandwidthPolicy(BasePolicy):
    """Reference: ``w_k = W_tot / K`` and a fixed ratio ``fixed_rho`` every round; with deadlines a
    client whose upload would end after ``D_k`` defers (the offline stage's reference policy)."""

    fixed_rho: float = 1.0

    def decide(self, queues, gamma_hz) -> Decision:
        prob = self.problem(queues, gamma_hz)
        k = self.n_clients
        rho = np.full(k, float(np.clip(self.fixed_rho, self.rho_min, 1.0)))
        w = np.full(k, self.total_bandwidth_hz / k)
        if prob.defers:
            late = prob.latency_s(rho, w) > prob.deadline_s
            rho, w = np.where(late, 0.0, rho), np.where(late, 0.0, w)
        return self.decision(prob, rho, w, "optimal", queues=queues)


def _solve_rate(target_bps, gamma_hz, lo, hi, n=200):
    """Smallest w in [lo, hi] with ``R(w, gamma) >= target`` (vectorised bisection in log w);
    ``inf`` where even ``hi`` is not enough."""
    lo, hi = np.log(np.broadcast_to(lo, gamma_hz.shape)), np.log(np.broadcast_to(hi, gamma_hz.shape))
    ok = rate_bps(np.exp(hi), gamma_hz) >= target_bps
    done = rate_bps(np.exp(lo), gamma_hz) >= target_bps
    a, b = lo.copy(), hi.copy()
    for _ in range(n):
        mid = 0.5 * (a + b)
        up = rate_bps(np.exp(mid), gamma_hz) >= target_bps
        a, b = np.where(up, a, mid), np.where(up, mid, b)
    return np.where(done, np.exp(lo), np.where(ok, np.exp(b), np.inf))


@dataclass(frozen=True)
class MyopicPolicy(BasePolicy):
    """Reference: meet ``T_k <= Tbar_k`` every round, penalty-minimising, ignoring queues.

        min_w  sum_k p_k Gamma_k phi(rho_k(w_k)),  rho_k(w) = min(1, (R(w)(Tbar_k - c_k) - h) / a)
        s.t.   sum_k w_k <= W_tot,  w_k >= max(w_min, w_k^req),  R(w^req) (Tbar - c) = a rho_min + h.
    Convex (rho_k is concave in w, phi convex decreasing). Solved by water-filling on the
    multiplier: bandwidth goes where ``p Gamma |phi'(rho)| R'(w) (Tbar - c) / a`` is largest;
    bandwidth left once every client reaches rho = 1 is split equally. A client that cannot meet
    its budget even on the whole band defers when the policy has deadlines. If even rho_min cannot
    meet every remaining budget, every client gets rho_min with bandwidth proportional to its
    requirement (status "infeasible").
    """

    def decide(self, queues, gamma_hz) -> Decision:
        prob = self.problem(queues, gamma_hz)
        wt, wmin = self.total_bandwidth_hz, self.min_bandwidth_hz
        slack = self.budget_s - self.compute_s
        need_all = _solve_rate((self.slope_bits * self.rho_min + self.head_bits) / slack,
                               prob.gamma_hz, wmin, wt)
        send = np.isfinite(need_all) if prob.defers else np.ones(self.n_clients, bool)
        rho, w, status = np.zeros(self.n_clients), np.zeros(self.n_clients), "optimal"
        if send.any():
            rho[send], w[send], status = self._fill(prob.gamma_hz[send], slack[send],
                                                   (self.weights * self.sparsity_weights)[send])
        return self.decision(prob, rho, w, status, queues=queues)

    def _fill(self, g, slack, pg):
        wt, wmin, k = self.total_bandwidth_hz, self.min_bandwidth_hz, g.size
        need = lambda rho: _solve_rate((self.slope_bits * rho + self.head_bits) / slack,  # noqa: E731
                                       g, wmin, wt)
        lo = need(self.rho_min)
        if not np.all(np.isfinite(lo)) or lo.sum() > wt * (1 + 1e-12):
            req = np.where(np.isfinite(lo), lo, wt)
            w = np.maximum(wmin, req * (wt - k * wmin) / req.sum() + 0.0)
            return np.full(k, self.rho_min), w * wt / w.sum(), "infeasible"
        hi = np.maximum(need(1.0), lo)

        def rho_of(w):
            return np.clip((rate_bps(w, g) * slack - self.head_bits) / self.slope_bits,
                           self.rho_min, 1.0)

        def marginal(w):  # -d/dw p Gamma phi(rho(w)), 0 once rho = 1
            rho = rho_of(w)
            dphi = -(phi_fn(rho + 1e-7, self.phi) - phi_fn(rho, self.phi)) / 1e-7
            r_prime = rate_bps(w * (1 + 1e-7), g) - rate_bps(w, g)
            return np.where(w < hi, pg * dphi * r_prime / (w * 1e-7) * slack / self.slope_bits, 0)

        if hi.sum() <= wt:
            w = hi + (wt - hi.sum()) / k
        else:  # bisection on the multiplier, inner bisection per client (marginal decreasing)
            a_l, b_l = 0.0, float(np.max(marginal(lo))) + 1e-300
            for _ in range(60):
                lam = 0.5 * (a_l + b_l)
                a_w, b_w = lo.copy(), hi.copy()
                for _ in range(50):
                    mid = 0.5 * (a_w + b_w)
                    up = marginal(mid) > lam
                    a_w, b_w = np.where(up, mid, a_w), np.where(up, b_w, mid)
                w = a_w
                a_l, b_l = (a_l, lam) if w.sum() < wt else (lam, b_l)
            w = w + max(wt - w.sum(), 0.0) / k
        return rho_of(w), w, "optimal"
