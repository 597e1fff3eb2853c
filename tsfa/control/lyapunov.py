"""TSFA online stage: Lyapunov drift-plus-penalty controller, reference policies, simulator.

docs/model.md §4. Virtual queues ``Q_k^{t+1} = max(Q_k^t + T_k^t - Tbar_k, 0)`` [s] turn the long-term
constraints ``lim sup (1/T) sum_t E[T_k^t] <= Tbar_k`` into a per-round problem P2 (see
:mod:`tsfa.optim.problem`) with penalty weights ``v_k = V Gamma_k``. Every policy exposes
``decide(queues, gamma_hz) -> Decision`` and ``update_queues(queues, latency_s)``; the federated
trainer calls both each round with latencies from the real payloads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tsfa.maths.bound import phi as phi_fn
from tsfa.maths.units import dbm_to_w
from tsfa.maths.wireless import (
    draw_distances_m,
    draw_rayleigh_power,
    ergodic_rate_bps,
    path_gain,
    rate_bps,
    snr_bandwidth_hz,
)
from tsfa.optim import CvxpyP2, P2Problem, SolveResult, solve_bcd, solve_joint

SOLVERS = ("analytic", "joint", "cvxpy")


@dataclass(frozen=True)
class Decision:
    """One round's decision: rho (K,), bandwidth_hz (K,) [Hz], P2 objective, predicted
    latency_s (K,) [s], status (cvxpy words) and the solver's full result (if any)."""

    rho: np.ndarray
    bandwidth_hz: np.ndarray
    objective: float
    latency_s: np.ndarray
    status: str
    result: SolveResult | None = None


def update_queues(queues, latency_s, budget_s) -> np.ndarray:
    """``Q^{t+1} = max(Q^t + T^t - Tbar, 0)`` [s], elementwise (docs/model.md §4)."""
    return np.maximum(np.asarray(queues, float) + np.asarray(latency_s, float)
                      - np.asarray(budget_s, float), 0.0)


@dataclass(frozen=True)
class _Policy:
    """System arrays shared by every policy; shapes (K,) or scalars; units in the names."""

    weights: np.ndarray
    compute_s: np.ndarray
    budget_s: np.ndarray
    penalty_weights: np.ndarray  # Gamma_k (V applied by the Lyapunov controller)
    slope_bits: float
    head_bits: float
    total_bandwidth_hz: float
    min_bandwidth_hz: float
    rho_min: float
    phi: str = "inv"
    V: float = 1.0

    def __post_init__(self):
        k = np.atleast_1d(np.asarray(self.weights, float)).size
        for name in ("weights", "compute_s", "budget_s", "penalty_weights"):
            arr = np.broadcast_to(np.asarray(getattr(self, name), float), (k,)).copy()
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        if not (np.isfinite(self.V) and self.V >= 0):
            raise ValueError(f"V: must be a finite number >= 0, got {self.V!r}")
        if np.any(self.budget_s <= self.compute_s):
            raise ValueError("budget_s: every Tbar_k must exceed compute_s (T^cmp_k)")

    @property
    def n_clients(self) -> int:
        return int(self.weights.size)

    def problem(self, queues, gamma_hz) -> P2Problem:
        """P2 for this round (validated; raises ValueError naming a bad argument)."""
        return P2Problem(self.weights, gamma_hz, queues, self.V * self.penalty_weights,
                         self.compute_s, self.slope_bits, self.head_bits,
                         self.total_bandwidth_hz, self.min_bandwidth_hz, self.rho_min, self.phi)

    def update_queues(self, queues, latency_s) -> np.ndarray:
        """Virtual-queue update with this policy's budgets."""
        return update_queues(queues, latency_s, self.budget_s)

    def _decision(self, prob, rho, w, status, result=None) -> Decision:
        return Decision(rho, w, prob.objective(rho, w), prob.latency_s(rho, w), status, result)


@dataclass(frozen=True)
class LyapunovController(_Policy):
    """Drift-plus-penalty controller: each round solves P2 with ``solver`` in SOLVERS."""

    solver: str = "joint"
    _cvx: dict = field(default_factory=dict, compare=False, repr=False)  # built-once model

    def __post_init__(self):
        super().__post_init__()
        if self.solver not in SOLVERS:
            raise ValueError(f"solver: must be one of {SOLVERS}, got {self.solver!r}")
        if self.solver != "analytic" and self.phi == "linear":
            raise ValueError("solver: phi='linear' makes P2 non-convex; only 'analytic' serves it")

    def decide(self, queues, gamma_hz) -> Decision:
        """Solve P2 for the current queues [s] and gains gamma_hz (K,) [Hz]."""
        prob = self.problem(queues, gamma_hz)
        if self.solver == "analytic":
            res = solve_bcd(prob)
        elif self.solver == "joint":
            res = solve_joint(prob)
        else:
            if "model" not in self._cvx:
                self._cvx["model"] = CvxpyP2(self.n_clients, self.phi)
            res = self._cvx["model"].solve(prob)
        if not res.solution:
            k = self.n_clients
            nan = np.full(k, math.nan)
            return Decision(nan, nan, math.nan, nan, res.status, res)
        return self._decision(prob, res.rho, res.bandwidth_hz, res.status, res)


@dataclass(frozen=True)
class EqualBandwidthPolicy(_Policy):
    """Reference: ``w_k = W_tot / K`` and a fixed ratio ``fixed_rho`` every round."""

    fixed_rho: float = 1.0

    def decide(self, queues, gamma_hz) -> Decision:
        prob = self.problem(queues, gamma_hz)
        k = self.n_clients
        rho = np.full(k, float(np.clip(self.fixed_rho, self.rho_min, 1.0)))
        return self._decision(prob, rho, np.full(k, self.total_bandwidth_hz / k), "optimal")


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
class MyopicPolicy(_Policy):
    """Reference: meet ``T_k <= Tbar_k`` every round, penalty-minimising, ignoring queues.

        min_w  sum_k p_k Gamma_k phi(rho_k(w_k)),  rho_k(w) = min(1, (R(w)(Tbar_k - c_k) - h) / a)
        s.t.   sum_k w_k <= W_tot,  w_k >= max(w_min, w_k^req),  R(w^req) (Tbar - c) = a rho_min + h.
    Convex (rho_k is concave in w, phi convex decreasing). Solved by water-filling on the
    multiplier: bandwidth goes where ``p Gamma |phi'(rho)| R'(w) (Tbar - c) / a`` is largest;
    bandwidth left once every client reaches rho = 1 is split equally. If even rho_min cannot
    meet every budget, every client gets rho_min with bandwidth proportional to its requirement
    (status "infeasible").
    """

    def decide(self, queues, gamma_hz) -> Decision:
        prob = self.problem(queues, gamma_hz)
        g = prob.gamma_hz
        wt, wmin, k = self.total_bandwidth_hz, self.min_bandwidth_hz, self.n_clients
        slack = self.budget_s - self.compute_s
        need = lambda rho: _solve_rate((self.slope_bits * rho + self.head_bits) / slack,  # noqa: E731
                                       g, wmin, wt)
        lo = need(self.rho_min)
        if not np.all(np.isfinite(lo)) or lo.sum() > wt * (1 + 1e-12):
            req = np.where(np.isfinite(lo), lo, wt)
            w = np.maximum(wmin, req * (wt - k * wmin) / req.sum() + 0.0)
            w = w * wt / w.sum()
            return self._decision(prob, np.full(k, self.rho_min), w, "infeasible")
        hi = np.maximum(need(1.0), lo)
        pg = self.weights * self.penalty_weights

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
        return self._decision(prob, rho_of(w), w, "optimal")


@dataclass(frozen=True)
class SimulationResult:
    """``rounds``: one row per (round, client): rho, bandwidth_hz, latency_s, queue_before_s (the
    queue the decision saw), queue_s (after the update), gamma_hz (the round's gain), objective
    (the P2 objective of the round's decision, repeated on the round's K rows), status. Inputs
    (gamma_hz, queue_before_s) and decisions (rho, bandwidth_hz, objective) of every round are
    thus logged for independent re-checking. ``summary``: per client time-averaged latency vs
    budget, mean rho, mean bandwidth share, mean queue. ``average_penalty``:
    (1/T) sum_t sum_k p_k Gamma_k phi(rho)."""

    rounds: pd.DataFrame
    summary: pd.DataFrame
    average_penalty: float


def simulate(policy, mean_gamma_hz, n_rounds: int, rng: np.random.Generator,
             queues0=None) -> SimulationResult:
    """Run ``policy`` over ``n_rounds`` of i.i.d. block Rayleigh fading (docs/model.md §1, §4).

    ``gamma_k^t = mean_gamma_k |g_k^t|^2`` with all draws made up front from ``rng``, so two
    policies given equally seeded generators see the same channels. Latency is the predicted
    ``T_k = c_k + S_k(rho_k) / R_k(w_k)`` (relaxed payload).
    """
    mean_gamma = np.asarray(mean_gamma_hz, float)
    k = policy.n_clients
    gains = mean_gamma * draw_rayleigh_power(rng, (n_rounds, k))
    q = np.zeros(k) if queues0 is None else np.asarray(queues0, float)
    rows = {n: np.empty((n_rounds, k))
            for n in ("rho", "bandwidth_hz", "latency_s", "queue_before_s", "queue_s")}
    status, objective, penalty = [], np.empty(n_rounds), 0.0
    for t in range(n_rounds):
        d = policy.decide(q, gains[t])
        q_before, q = q, policy.update_queues(q, d.latency_s)
        for n, v in zip(rows, (d.rho, d.bandwidth_hz, d.latency_s, q_before, q), strict=True):
            rows[n][t] = v
        status.append(d.status)
        objective[t] = d.objective
        penalty += float(np.sum(policy.weights * policy.penalty_weights * phi_fn(d.rho, policy.phi)))
    rounds = pd.DataFrame({"round": np.repeat(np.arange(n_rounds), k),
                           "client": np.tile(np.arange(k), n_rounds),
                           **{n: v.ravel() for n, v in rows.items()},
                           "gamma_hz": gains.ravel(), "objective": np.repeat(objective, k),
                           "status": np.repeat(status, k)})
    summary = pd.DataFrame({
        "client": np.arange(k),
        "mean_latency_s": rows["latency_s"].mean(axis=0),
        "budget_s": policy.budget_s,
        "mean_rho": rows["rho"].mean(axis=0),
        "mean_bandwidth_share": rows["bandwidth_hz"].mean(axis=0) / policy.total_bandwidth_hz,
        "mean_queue_s": rows["queue_s"].mean(axis=0),
    })
    summary["latency_ratio"] = summary["mean_latency_s"] / summary["budget_s"]
    return SimulationResult(rounds, summary, penalty / n_rounds)


def example_system(rng: np.random.Generator, n_clients: int = 10, rank: int = 16) -> dict:
    """Representative system of docs/model.md §7 as plain arrays for the policy constructors.

    W_tot = 2 MHz, P = 23 dBm, N0 = -174 dBm/Hz, d ~ U[50, 500] m, ViT-Base q,v payload
    (slope 32 * 36,864 * r bits, head 32 * 76,900 bits), T^cmp ~ U[5, 30] s,
    ``Tbar_k = T^cmp_k + 0.5 S(1) / Rbar_k(W_tot / K)`` (ergodic rate on equal bandwidth),
    p_k = 1/K, w_min = 0.1 W_tot / K, rho_min = 1/r, and the normalisation
    ``Gamma_k = U_k^2 / p_k`` with ``U_k = S(1) / Rbar_k`` the mean uplink time at rho = 1: the
    rho-step ``rho^2 = p V Gamma R / (Q a)`` then gives interior ratios for queues of the order of
    ``U_k`` at V = 1 (docs/model.md §7 "V = 1 after normalisation"). Returns
    ``{"policy_kwargs": {...}, "mean_gamma_hz": (K,)}``.
    """
    wt = 2e6
    d = draw_distances_m(rng, n_clients, 50.0, 500.0)
    mean_gamma = snr_bandwidth_hz(dbm_to_w(23.0), path_gain(d), dbm_to_w(-174.0))
    slope, head = 32.0 * 36864 * rank, 32.0 * 76900
    compute = rng.uniform(5.0, 30.0, n_clients)
    uplink = (slope + head) / ergodic_rate_bps(wt / n_clients, mean_gamma)
    kwargs = dict(weights=np.full(n_clients, 1.0 / n_clients), compute_s=compute,
                  budget_s=compute + 0.5 * uplink, penalty_weights=uplink**2 * n_clients,
                  slope_bits=slope, head_bits=head, total_bandwidth_hz=wt,
                  min_bandwidth_hz=0.1 * wt / n_clients, rho_min=1.0 / rank)
    return {"policy_kwargs": kwargs, "mean_gamma_hz": mean_gamma}
