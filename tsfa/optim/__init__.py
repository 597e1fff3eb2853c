"""Per-round TSFA optimisation P2 (docs/model.md §4): problem, result object and three solvers.

- :func:`solve_bcd` ("analytic"): block-coordinate descent, closed-form rho-step, KKT water-filling.
- :func:`solve_joint` ("joint"): global optimum via the reduced convex problem in w (phi inv/inv_sq).
- :class:`CvxpyP2` ("cvxpy"): DPP reference model, built once and re-solved.
"""

from tsfa.optim.p2_analytic import solve_bcd, solve_joint
from tsfa.optim.p2_cvxpy import CvxpyP2, solve_cvxpy
from tsfa.optim.problem import P2Problem, kkt_residual
from tsfa.optim.result import SolveResult

__all__ = ["CvxpyP2", "P2Problem", "SolveResult", "kkt_residual", "solve_bcd", "solve_cvxpy",
           "solve_joint"]
