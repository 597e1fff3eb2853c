"""Solver result object shared by every P2 solver (docs/model.md §4; STYLE.md practice 4).

A non-optimal status is *returned*, never raised: the caller decides what to do with it.
Status strings are cvxpy's: ``"optimal"``, ``"optimal_inaccurate"``, ``"infeasible"``,
``"unbounded"``, ``"solver_error"``, ``"user_limit"`` (iteration limit hit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OPTIMAL = "optimal"
OPTIMAL_INACCURATE = "optimal_inaccurate"
INFEASIBLE = "infeasible"
SOLVER_ERROR = "solver_error"
USER_LIMIT = "user_limit"


@dataclass(frozen=True)
class SolveResult:
    """Outcome of one P2 solve.

    Attributes:
        status: cvxpy's word for the outcome (see module docstring).
        objective: drift-plus-penalty objective of P2 at ``solution`` (``nan`` if none),
            evaluated by :meth:`tsfa.optim.problem.P2Problem.objective`, so every solver is
            scored by the same numpy function.
        solution: ``{"rho": (K,) sparsification ratios, "bandwidth_hz": (K,) Hz}``; empty when
            there is no solution (infeasible instance).
        multipliers: ``{"bandwidth_per_hz": lambda}`` of ``sum_k w_k <= W_tot`` in objective
            units per Hz (the caller's units), ``{"bandwidth_lower_per_hz": (K,) mu_k}`` of
            ``w_k >= w_min`` when the solver provides it.
        iterations: outer iterations (BCD sweeps, multiplier updates, or the conic solver's).
        solve_time_s: wall-clock time of the solve, seconds.
        solver: ``"analytic"`` (BCD), ``"joint"`` (reduced convex water-filling) or
            ``"cvxpy:<SOLVER>"``.
        message: human-readable detail (reason of infeasibility, convergence note, ...).
    """

    status: str
    objective: float
    solution: dict[str, np.ndarray] = field(default_factory=dict)
    multipliers: dict[str, np.ndarray | float] = field(default_factory=dict)
    iterations: int = 0
    solve_time_s: float = 0.0
    solver: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        """True for ``optimal`` and ``optimal_inaccurate`` (a usable solution exists)."""
        return self.status in (OPTIMAL, OPTIMAL_INACCURATE)

    @property
    def rho(self) -> np.ndarray:
        """Sparsification ratios, shape (K,)."""
        return self.solution["rho"]

    @property
    def bandwidth_hz(self) -> np.ndarray:
        """Bandwidth allocation [Hz], shape (K,)."""
        return self.solution["bandwidth_hz"]
