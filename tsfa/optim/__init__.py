"""Per-round TSFA optimisation P2 (docs/model.md §4): problem, result object and three solvers.

- :func:`solve_bcd` ("analytic"): block-coordinate descent, closed-form rho-step, KKT water-filling.
- :func:`solve_joint` ("joint"): global optimum via the reduced convex problem in w (phi inv/inv_sq).
- :class:`CvxpyP2` ("cvxpy"): DPP reference model, built once and re-solved.
- :mod:`tsfa.optim.p2_deadline`: per-round deadlines and deferral (``solve_deadline``).

Names resolve on first use (PEP 562), so the offline stage imports no cvxpy unless it solves the
relaxation.
"""

from __future__ import annotations

import importlib

_WHERE = {"solve_bcd": "p2_analytic", "solve_joint": "p2_analytic", "CvxpyP2": "p2_cvxpy",
          "solve_cvxpy": "p2_cvxpy", "P2Problem": "problem", "kkt_residual": "problem",
          "SolveResult": "result"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"tsfa.optim.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'tsfa.optim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
