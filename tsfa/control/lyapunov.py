"""TSFA online stage: the Lyapunov drift-plus-penalty controller (docs/model.md §4).

Virtual queues (:mod:`tsfa.control.base`) turn the long-term latency constraint into a per-round
problem P2 (:mod:`tsfa.optim.problem`) with penalty weights ``v_k = V Gamma_k``. Every policy
exposes ``decide(queues, gamma_hz) -> Decision``, ``update_queues(queues, latency_s)`` and
``initial_queues()``; the federated server calls them each round with latencies from the real
payloads, and defers the clients whose ``Decision.sent`` is False. The reference policies live in
:mod:`tsfa.control.reference`, the simulator in :mod:`tsfa.control.simulate`; :func:`start_queues`
gives a run's warm start (docs/model.md §4, "Finite horizon").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from tsfa.config.choices import SOLVERS
from tsfa.control.base import BasePolicy, Decision
from tsfa.control.simulate import steady_queues
from tsfa.optim import CvxpyP2, P2Problem, solve_bcd, solve_joint
from tsfa.optim.p2_cvxpy import MAX_CLIENTS, restricted_solver
from tsfa.optim.p2_deadline import max_latency_p2, sender_floor, solve_deadline, waterfill_senders
from tsfa.optim.result import INFEASIBLE, OPTIMAL

__all__ = ["SOLVERS", "LyapunovController", "start_queues"]


@dataclass(frozen=True)
class LyapunovController(BasePolicy):
    """Drift-plus-penalty controller: each round solves P2 with ``solver`` in SOLVERS.

    ``analytic`` (block-coordinate descent) serves only the original P2 (``per_client``, no
    deadline); ``joint`` and ``cvxpy`` serve every variant (deadlines and deferral,
    :mod:`tsfa.optim.p2_deadline`; the ``max`` constraint by a search over the round's latency
    cap). ``cvxpy`` is limited to K <= ``tsfa.optim.p2_cvxpy.MAX_CLIENTS``.
    """

    solver: str = "joint"
    _cvx: dict = field(default_factory=dict, compare=False, repr=False)  # built-once models

    def __post_init__(self):
        super().__post_init__()
        if self.solver not in SOLVERS:
            raise ValueError(f"solver: must be one of {SOLVERS}, got {self.solver!r}")
        variant = self.deadline_s is not None or self.constraint == "max"
        if self.solver == "analytic" and variant:
            raise ValueError("solver = 'analytic': block-coordinate descent is not exact with a "
                             "per-round deadline or the max constraint (they couple rho and w); "
                             "use 'joint' or 'cvxpy', or control.deadline = 'none'")
        if self.solver != "analytic" and self.phi == "linear":
            raise ValueError("solver: phi='linear' makes P2 non-convex; only 'analytic' serves it "
                             "(with control.deadline = 'none' and constraint = 'per_client')")
        if self.solver == "cvxpy" and self.n_clients > MAX_CLIENTS:
            raise ValueError(f"solver = 'cvxpy': limited to K <= {MAX_CLIENTS} clients, got K = "
                             f"{self.n_clients}; use 'joint' (same optimum, tested against it)")

    def _restricted(self, prob: P2Problem):
        """Solver of P2 restricted to a set of senders: ``(mask, s_lo) -> (rho, w, lambda)``."""
        if self.solver == "cvxpy":
            return restricted_solver(prob, self._cvx)
        return lambda mask, s_lo: waterfill_senders(prob, mask, s_lo)

    def decide(self, queues, gamma_hz) -> Decision:
        """Solve P2 for the current queues [s] and gains gamma_hz (K,) [Hz]."""
        queues = np.atleast_1d(np.asarray(queues, float))
        prob = self.problem(queues, gamma_hz)
        if self.constraint == "max":
            return self._decide_max(prob, queues)
        if prob.defers:
            res = solve_deadline(prob, self._restricted(prob))
        elif self.solver == "analytic":
            res = solve_bcd(prob)
        elif self.solver == "joint":
            res = solve_joint(prob)
        else:
            key = (self.n_clients, "original")
            if key not in self._cvx:
                self._cvx[key] = CvxpyP2(self.n_clients, self.phi)
            res = self._cvx[key].solve(prob)
        if not res.solution or not np.all(np.isfinite(res.rho)):
            return self.failed(res.status, res)
        return self.decision(prob, res.rho, res.bandwidth_hz, res.status, res)

    def _decide_max(self, prob: P2Problem, queues) -> Decision:
        """``min V pen + Z max_k T_k``: search over the round's latency cap tau
        (:func:`tsfa.optim.p2_deadline.max_latency_p2`); deferral only with deadlines."""
        idle = dataclasses.replace(prob, queues=np.zeros(prob.n_clients))

        def evaluate(tau):
            dl = np.full(prob.n_clients, tau) if self.deadline_s is None else np.minimum(
                self.deadline_s, tau)
            sub = dataclasses.replace(idle, deadline_s=dl)
            restricted = self._restricted(sub)
            if self.deadline_s is not None:
                res = solve_deadline(sub, restricted)
                return res.rho, res.bandwidth_hz
            s_lo = sender_floor(sub)  # no deferral: every client must make the cap
            if not np.all(np.isfinite(s_lo)) or s_lo.sum() > 1.0:
                return None
            rho, w, _ = restricted(np.ones(prob.n_clients, bool), s_lo)
            return (rho, w) if np.all(np.isfinite(rho)) else None

        rho, w, tau, n = max_latency_p2(prob, float(queues[0]), evaluate)
        if rho is None:
            return self.failed(INFEASIBLE)
        return self.decision(prob, rho, w, OPTIMAL, None, queues)


def start_queues(policy, spec, mean_gamma_hz, horizon: int, seed) -> np.ndarray | None:
    """Q^0 of a run under ``spec.control.queue_start``: :func:`tsfa.control.simulate.steady_queues`
    for the Lyapunov controller under ``steady``; None (start from zero) otherwise."""
    if spec.control.queue_start == "steady" and isinstance(policy, LyapunovController):
        return steady_queues(policy, mean_gamma_hz, horizon, seed)
    return None
