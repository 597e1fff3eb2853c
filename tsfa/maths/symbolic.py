"""Symbolic (SymPy) form of the convergence bound and of the per-round problem P2.

Everything here mirrors the numeric modules (:mod:`tsfa.maths.bound`, :mod:`tsfa.maths.wireless`) and exists
to *derive* rather than to compute:

* the six terms of the bound of docs/model.md §2, with the three phi variants;
* the per-round drift-plus-penalty objective P2 of docs/model.md §4 and its closed-form rho-step
  ``rho = sqrt(V p_k Gamma R / (Q S_full))`` for ``phi = (1 - rho) / rho``, obtained by solving
  ``d/d rho = 0`` with the rate ``R`` held fixed;
* the offline objective of docs/model.md §3 on the interior (unclipped) branch of ``rho_bar(r)``,
  with the power-law fit ``eps(r) = a r^-b`` of the rank floor,

      J(r) = c5 a r^-b + c3 r eta^2 tau^2 G^4 + c4 L^2 eta^2 tau^2 G^2 phi(rho_bar(r)),
      rho_bar(r) = ((Tbar - Tcmp) Rbar - S_head) / (q_b r P),

  (``P = sum_m (d_in^m + d_out^m)``, so ``q_b r P = S_full(r)``), and its partial derivatives with
  respect to every system parameter, compiled to numpy with :func:`sympy.lambdify`.

All symbols are positive reals named as in docs/model.md. The forms are tsfa's [DESIGN]
reconstruction (see docs/model.md). Compiled functions are cached with :func:`functools.lru_cache`;
the module holds no other state.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import sympy as sp

from tsfa.maths.bound import phi_form

if TYPE_CHECKING:
    import pandas as pd

#: Parameters of the offline objective J(r), in the argument order of the compiled functions.
OFFLINE_PARAMETERS = ("Tbar", "Tcmp", "Rbar", "S_head", "q_b", "P", "eta", "tau", "G", "L",
                      "c3", "c4", "c5", "a", "b", "r")
#: Arguments of the compiled rho-step (docs/model.md §4).
RHO_STEP_PARAMETERS = ("V", "p_k", "Gamma", "R", "Q", "S_full")


def sym(name: str) -> sp.Symbol:
    """The positive real symbol ``name`` (SymPy symbols are equal by name and assumptions)."""
    return sp.Symbol(name, positive=True)


def phi_expr(rho: sp.Expr, variant: str = "inv") -> sp.Expr:
    """phi(rho) of docs/model.md §2: ``(1-rho)/rho`` (inv), ``(1-rho)/rho^2`` (inv_sq), ``1-rho``;
    the formula of :data:`tsfa.maths.bound.PHI_FORMS`, applied to a SymPy expression."""
    return phi_form(variant)[0](rho)


def rate_expr(w: sp.Expr | None = None, gamma: sp.Expr | None = None) -> sp.Expr:
    """``R(w) = w log2(1 + gamma / w)`` [bit/s] (docs/model.md §1)."""
    w = sym("w") if w is None else w
    gamma = sym("gamma") if gamma is None else gamma
    return w * sp.log(1 + gamma / w) / sp.log(2)


# --------------------------------------------------------------------------- bound (§2)
def bound_terms_expr(phi_variant: str = "inv", clients: int | None = None) -> dict[str, sp.Expr]:
    """The six terms of the bound of docs/model.md §2 as SymPy expressions.

    ``clients=None``: every client and round uses the same ratio ``rho``, so
    ``(1/T) sum_t sum_k p_k phi(rho) = phi(rho)`` (weights sum to one), and ``sum_k p_k^2`` is the
    symbol ``p2sum``. ``clients=K``: explicit symbols ``p_1..p_K`` and ``rho_1..rho_K`` (one
    round, or a stationary policy). The rank floor is the symbol ``eps_r`` and ``F0 - F*`` is
    ``Delta_F``.
    """
    eta, tau, T, L, G = (sym(n) for n in ("eta", "tau", "T", "L", "G"))
    sigma, zeta_h, r, eps_r, gap = (sym(n) for n in ("sigma", "zeta_h", "r", "eps_r", "Delta_F"))
    c0, c1, c2, c3, c4, c5 = (sym(f"c{i}") for i in range(6))
    if clients is None:
        p2sum = sym("p2sum")
        phi_mean = phi_expr(sym("rho"), phi_variant)
    else:
        p = [sym(f"p_{k}") for k in range(1, clients + 1)]
        rho = [sym(f"rho_{k}") for k in range(1, clients + 1)]
        p2sum = sp.Add(*(pk**2 for pk in p))
        phi_mean = sp.Add(*(pk * phi_expr(rk, phi_variant) for pk, rk in zip(p, rho, strict=True)))
    return {
        "init": c0 * gap / (eta * tau * T),
        "noise": c1 * L * eta * sigma**2 * p2sum,
        "drift": c2 * L**2 * eta**2 * tau**2 * (sigma**2 + zeta_h**2),
        "cov": c3 * r * eta**2 * tau**2 * G**4,
        "sparse": c4 * L**2 * eta**2 * tau**2 * G**2 * phi_mean,
        "rank": c5 * eps_r,
    }


def bound_expr(phi_variant: str = "inv", clients: int | None = None) -> sp.Expr:
    """The bound of docs/model.md §2: the sum of :func:`bound_terms_expr`."""
    return sp.Add(*bound_terms_expr(phi_variant, clients).values())


# --------------------------------------------------------------------------- P2 (§4)
def p2_client_objective_expr(phi_variant: str = "inv", rate_as_symbol: bool = False) -> sp.Expr:
    """Client k's summand of the drift-plus-penalty objective P2 (docs/model.md §4):

        V p_k Gamma phi(rho) + Q (Tcmp + (rho S_full + S_head) / R(w)),

    ``R(w) = w log2(1 + gamma / w)``, or the plain symbol ``R`` when ``rate_as_symbol``.
    """
    V, p, Gamma, Q, rho = (sym(n) for n in ("V", "p_k", "Gamma", "Q", "rho"))
    Tcmp, S_full, S_head = (sym(n) for n in ("Tcmp", "S_full", "S_head"))
    R = sym("R") if rate_as_symbol else rate_expr()
    return V * p * Gamma * phi_expr(rho, phi_variant) + Q * (Tcmp + (rho * S_full + S_head) / R)


def p2_objective_expr(clients: int, phi_variant: str = "inv") -> sp.Expr:
    """P2 for K explicit clients (docs/model.md §4): symbols ``p_k, Gamma_k, Q_k, rho_k, w_k, gamma_k,
    Tcmp_k`` with k = 1..K, shared ``V, S_full, S_head``. Constraints are not part of the expr."""
    one = p2_client_objective_expr(phi_variant)
    names = ("p_k", "Gamma", "Q", "rho", "w", "gamma", "Tcmp")
    return sp.Add(*(one.subs({sym(n): sym(f"{n.removesuffix('_k')}_{k}") for n in names},
                             simultaneous=True) for k in range(1, clients + 1)))


@lru_cache(maxsize=8)
def rho_step_closed_form() -> sp.Expr:
    """The unclipped rho-step of P2 for ``phi = (1 - rho)/rho`` (docs/model.md §4).

    Solves ``d/d rho [V p_k Gamma (1-rho)/rho + Q (rho S_full + S_head)/R] = 0`` for rho > 0 with
    the rate ``R`` a fixed symbol; the unique positive root is ``sqrt(V p_k Gamma R / (Q S_full))``.
    The solver then clips it to ``[1/r, 1]``.
    """
    rho = sym("rho")
    f = p2_client_objective_expr("inv", rate_as_symbol=True)
    roots = sp.solve(sp.Eq(sp.diff(f, rho), 0), rho)
    if len(roots) != 1:
        raise ArithmeticError(f"rho-step: expected one positive root, got {roots}")
    return sp.simplify(roots[0])


def rho_step_paper_form() -> sp.Expr:
    """``sqrt(V p_k Gamma R / (Q S_full))`` as written in docs/model.md §4."""
    V, p, Gamma, R, Q, S_full = (sym(n) for n in RHO_STEP_PARAMETERS)
    return sp.sqrt(V * p * Gamma * R / (Q * S_full))


# --------------------------------------------------------------------------- offline J(r) (§3)
def rho_bar_expr() -> sp.Expr:
    """Interior branch of the affordable ratio (docs/model.md §3):
    ``rho_bar(r) = ((Tbar - Tcmp) Rbar - S_head) / (q_b r P)`` (valid where 1/r < rho_bar < 1)."""
    Tbar, Tcmp, Rbar, S_head, q_b, P, r = (sym(n) for n in
                                           ("Tbar", "Tcmp", "Rbar", "S_head", "q_b", "P", "r"))
    return ((Tbar - Tcmp) * Rbar - S_head) / (q_b * r * P)


def offline_terms_expr(phi_variant: str = "inv") -> dict[str, sp.Expr]:
    """The three r-dependent terms of J(r) (docs/model.md §3) with ``eps(r) = a r^-b``."""
    eta, tau, G, L, r, a, b = (sym(n) for n in ("eta", "tau", "G", "L", "r", "a", "b"))
    c3, c4, c5 = sym("c3"), sym("c4"), sym("c5")
    return {
        "rank": c5 * a * r ** (-b),
        "cov": c3 * r * eta**2 * tau**2 * G**4,
        "sparse": c4 * L**2 * eta**2 * tau**2 * G**2 * phi_expr(rho_bar_expr(), phi_variant),
    }


def offline_objective_expr(phi_variant: str = "inv") -> sp.Expr:
    """J(r) = rank(r) + cov(r) + sparse(rho_bar(r)), interior branch (docs/model.md §3)."""
    return sp.Add(*offline_terms_expr(phi_variant).values())


def sensitivity_exprs(phi_variant: str = "inv") -> dict[str, sp.Expr]:
    """``dJ/dx`` for every x in :data:`OFFLINE_PARAMETERS` (docs/model.md §3), as SymPy expressions."""
    J = offline_objective_expr(phi_variant)
    return {name: sp.diff(J, sym(name)) for name in OFFLINE_PARAMETERS}


# --------------------------------------------------------------------------- numpy
def _keyword(fn: Callable, names: tuple[str, ...]) -> Callable[..., np.ndarray]:
    """Wrap a positional lambdified function so it takes (only) keyword arguments ``names``."""

    def call(**values):
        missing = [n for n in names if n not in values]
        unknown = sorted(set(values) - set(names))
        if missing or unknown:
            raise TypeError(f"expected keyword arguments {', '.join(names)}; "
                            f"missing {missing}, unknown {unknown}")
        args = [np.asarray(values[n], dtype=float) for n in names]
        return np.asarray(fn(*args), dtype=float) + np.zeros(np.broadcast(*args).shape)

    call.__doc__ = f"Keyword arguments: {', '.join(names)} (numpy arrays broadcast)."
    return call


@lru_cache(maxsize=8)
def _compiled(phi_variant: str) -> tuple[Callable, dict[str, Callable]]:
    args = [sym(n) for n in OFFLINE_PARAMETERS]
    J = _keyword(sp.lambdify(args, offline_objective_expr(phi_variant), "numpy"), OFFLINE_PARAMETERS)
    grads = {name: _keyword(sp.lambdify(args, e, "numpy"), OFFLINE_PARAMETERS)
             for name, e in sensitivity_exprs(phi_variant).items()}
    return J, grads


def offline_objective(phi_variant: str = "inv") -> Callable[..., np.ndarray]:
    """Numpy J(r) (interior branch, docs/model.md §3) taking the keywords :data:`OFFLINE_PARAMETERS`."""
    return _compiled(phi_variant)[0]


def sensitivities(phi_variant: str = "inv") -> dict[str, Callable[..., np.ndarray]]:
    """name -> numpy ``dJ/d name``, each taking the keywords :data:`OFFLINE_PARAMETERS` (§3)."""
    return dict(_compiled(phi_variant)[1])


@lru_cache(maxsize=8)
def rho_step() -> Callable[..., np.ndarray]:
    """Numpy unclipped rho-step (docs/model.md §4) taking the keywords :data:`RHO_STEP_PARAMETERS`."""
    args = [sym(n) for n in RHO_STEP_PARAMETERS]
    return _keyword(sp.lambdify(args, rho_step_closed_form(), "numpy"), RHO_STEP_PARAMETERS)


def sensitivity_table(values: dict, phi_variant: str = "inv") -> pd.DataFrame:
    """Sensitivities of J(r) at one point (docs/model.md §3): a row per parameter with its value,
    ``dJ/dx`` and the elasticity ``(x / J) dJ/dx``; ``J`` and ``rho_bar`` are in ``df.attrs``.

    ``values`` maps every name of :data:`OFFLINE_PARAMETERS` to a scalar. Raises ``ValueError``
    when rho_bar(r) is outside (1/r, 1), where J is on a clipped branch and these formulas do
    not apply.
    """
    import pandas as pd

    vals = {k: float(v) for k, v in values.items()}
    rho_bar = ((vals["Tbar"] - vals["Tcmp"]) * vals["Rbar"] - vals["S_head"]) / (
        vals["q_b"] * vals["r"] * vals["P"])
    if not 1.0 / vals["r"] < rho_bar < 1.0:
        raise ValueError(f"rho_bar = {rho_bar:g} at r = {vals['r']:g}: must lie in (1/r, 1) for the "
                         "interior branch")
    J = float(offline_objective(phi_variant)(**vals))
    grads = {n: float(f(**vals)) for n, f in sensitivities(phi_variant).items()}
    df = pd.DataFrame({
        "parameter": list(OFFLINE_PARAMETERS),
        "value": [vals[n] for n in OFFLINE_PARAMETERS],
        "dJ_dx": [grads[n] for n in OFFLINE_PARAMETERS],
        "elasticity": [vals[n] / J * grads[n] for n in OFFLINE_PARAMETERS],
    })
    df.attrs.update(J=J, rho_bar=rho_bar, phi_variant=phi_variant)
    return df
