"""Per-round TSFA optimisation P2 (docs/model.md §4): problem, result object and three solvers.

- :func:`solve_bcd` ("analytic"): block-coordinate descent, closed-form rho-step, KKT water-filling.
- :func:`solve_joint` ("joint"): global optimum via the reduced convex problem in w (phi inv/inv_sq).
- :class:`CvxpyP2` ("cvxpy"): DPP reference model, built once and re-solved.
- :mod:`tsfa.optim.p2_deadline`: per-round deadlines and deferral (``solve_deadline``).

Names resolve on first use (PEP 562), so the offline stage imports no cvxpy unless it solves the
relaxation.
"""

from __future__ import annotations

from tsfa._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(__name__, globals(), {
    ".p2_analytic": ("solve_bcd", "solve_joint"),
    ".p2_cvxpy": ("CvxpyP2", "solve_cvxpy"),
    ".problem": ("P2Constants", "P2Problem", "kkt_residual"),
    ".result": ("SolveResult",),
})
