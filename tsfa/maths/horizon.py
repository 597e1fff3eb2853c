"""The offline objective's weights measured in test error at the horizon (docs/model.md §8b)
[DESIGN, tsfa's own].

The bound's three r-dependent terms (docs/model.md §3) are written in one unit, the test error
(1 - accuracy) of the run at its horizon T:

    err(r, rho) = e0 + w_rank eps(r) + w_cov r + w_sparse sum_k p_k phi(pi_k rho_k)      (H)

with ``eps(r)`` the rank floor, ``phi`` the sparsification form (docs/model.md §2) and the three
weights measured on the user's task by pilot runs (:mod:`tsfa.experiments.weights`):

* rank pilots, every component sent (rho = 1), ranks r_1..r_n, seeds s: ``err_{r,s} = e0 + a_s
  + w_rank eps(r) + w_cov r``, a per-seed offset ``a_s`` (paired design), fitted by
  :func:`fit_rank_weights`;
* ratio pilots at one or more ranks, same seeds, with the method's error feedback:
  ``err_{r,rho,s} - err_{r,1,s} = w_sparse phi(rho) (r_ref / r)^b``, fitted per form and rank
  exponent b by :func:`fit_sparse_weight`; the model of least leave-one-out error is kept
  (:func:`select_phi_form`; b only with two or more ranks).

Every function here is pure (numpy/scipy, no I/O).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from tsfa.maths.bound import PHI_VARIANTS, phi


@dataclass(frozen=True)
class WeightEstimate:
    """One fitted weight: ``value`` [test error per unit of its regressor], ``stderr``, the number
    of pilot errors ``n`` it used and the ``method`` (one line)."""

    value: float
    stderr: float
    n: int
    method: str


def horizon_error(eps, rank, phi_mean, w_rank, w_cov, w_sparse, error_floor=0.0):
    """Predicted test error (H) at the horizon (docs/model.md §8b) [fraction, 0..1]:
    ``e0 + w_rank eps(r) + w_cov r + w_sparse phi_mean``; numpy broadcasting over every argument
    (``phi_mean`` = sum_k p_k phi(pi_k rho_k), 0 at rho = 1)."""
    return (float(error_floor) + float(w_rank) * np.asarray(eps, float)
            + float(w_cov) * np.asarray(rank, float) + float(w_sparse) * np.asarray(phi_mean,
                                                                                     float))


def _within_seed(values: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``values`` less their mean within each seed (the per-seed offsets of a paired design)."""
    out = np.array(values, float, copy=True)
    for s in np.unique(seeds):
        m = seeds == s
        out[m] -= out[m].mean(axis=0)
    return out


def fit_rank_weights(ranks: ArrayLike, eps: ArrayLike, errors: ArrayLike,
                     seeds: ArrayLike | None = None) -> dict[str, WeightEstimate]:
    """``w_rank``, ``w_cov`` and the floor ``e0`` of (H) from rank pilots at rho = 1.

    Model: ``err_{r,s} = e0 + a_s + w_rank eps(r) + w_cov r`` with one offset ``a_s`` per seed
    (sum 0), fitted by least squares within seeds, ``w_rank, w_cov >= 0`` (bounded least squares;
    a weight at its bound 0 has its unconstrained standard error). Standard errors from the
    residual variance (``n - p`` degrees of freedom; nan when there are none). ``e0`` is the
    mean over seeds of the errors less the fitted terms; its stderr is the seeds' spread.
    Needs >= 3 distinct ranks.
    """
    from scipy.optimize import lsq_linear

    r = np.asarray(ranks, float)
    e = np.asarray(eps, float)
    y = np.asarray(errors, float)
    s = np.zeros(len(y), int) if seeds is None else np.asarray(seeds)
    if not (len(r) == len(e) == len(y) == len(s)):
        raise ValueError("fit_rank_weights: ranks, eps, errors and seeds must have one entry per "
                         "pilot")
    if len(np.unique(r)) < 3:
        raise ValueError(f"fit_rank_weights: need pilots at >= 3 distinct ranks, got "
                         f"{sorted(set(r.tolist()))}")
    if not np.all(np.isfinite(y)):
        raise ValueError("fit_rank_weights: a pilot error is not finite")
    x = np.column_stack([e, r])
    xc, yc = _within_seed(x, s), _within_seed(y, s)
    scale = np.maximum(np.abs(xc).max(axis=0), 1e-300)  # columns to O(1)
    sol = lsq_linear(xc / scale, yc, bounds=(0.0, np.inf), method="bvls")
    coef = sol.x / scale
    n, p = len(y), 2 + len(np.unique(s))  # two weights and one offset per seed (e0 included)
    resid = yc - xc @ coef
    dof = n - p
    sigma2 = float(resid @ resid) / dof if dof > 0 else math.nan
    try:
        cov = sigma2 * np.linalg.inv(xc.T @ xc)
        se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    except np.linalg.LinAlgError:
        se = np.full(2, math.nan)
    floors = np.array([float(np.mean(y[s == v] - x[s == v] @ coef)) for v in np.unique(s)])
    e0 = float(floors.mean())  # the seeds' mean floor; its spread over seeds is its stderr
    e0_se = float(floors.std(ddof=1) / math.sqrt(len(floors))) if len(floors) > 1 else math.nan
    ranks_txt = sorted({int(v) for v in r})
    how = (f"least squares within {len(np.unique(s))} seed(s) of the final errors of {n} rank "
           f"pilots at rho = 1, ranks {ranks_txt}, on e0 + a_s + w_rank eps(r) + w_cov r")
    return {"w_rank": WeightEstimate(float(coef[0]), float(se[0]), n, how),
            "w_cov": WeightEstimate(float(coef[1]), float(se[1]), n, how),
            "error_floor": WeightEstimate(e0, e0_se, n, "mean over seeds of the pilot errors "
                                          "less the fitted rank terms")}


#: Exponents b of the sparsification term's rank factor tried by :func:`select_phi_form`
#: (0: the ratio form; 2 under inv_sq: the count form), step 0.05.
RANK_EXPONENTS = tuple(round(0.05 * i, 2) for i in range(61))


def _sparse_regressor(rho, rank, form: str, exponent: float, rank_ref: float) -> np.ndarray:
    """phi(rho) (r_ref / r)^b: the regressor of w_sparse (docs/model.md §8b)."""
    from tsfa.maths.bound import sparse_rank_factor

    rho = np.asarray(rho, float)
    factor = 1.0 if rank is None else sparse_rank_factor(rank, rank_ref, exponent)
    return phi(rho, form) * factor


def fit_sparse_weight(rho: ArrayLike, excess_error: ArrayLike, form: str, rank=None,
                      exponent: float = 0.0, rank_ref: float = 8.0) -> tuple[WeightEstimate,
                                                                              float]:
    """``w_sparse`` of (H) for the form ``form`` of phi and the rank exponent ``exponent`` (b),
    and the sum of squared residuals.

    ``excess_error``: err(r, rho) - err(r, 1) of ratio pilots paired by seed (same rank) at the
    ranks ``rank`` (None: one rank, no rank factor). Model ``excess = w_sparse phi(rho) (r_ref /
    r)^b``; least squares through the origin, ``w >= 0``: ``w = max(0, sum d f / sum f^2)``,
    standard error ``sqrt(SSE / (n - 1) / sum f^2)`` (nan for one pilot).
    """
    rho_a = np.asarray(rho, float)
    f = _sparse_regressor(rho_a, rank, form, exponent, rank_ref)
    d = np.asarray(excess_error, float)
    if len(f) != len(d) or not len(d):
        raise ValueError("fit_sparse_weight: need one excess error per ratio pilot, >= 1")
    if np.any(rho_a >= 1.0):
        raise ValueError("fit_sparse_weight: ratio pilots need rho < 1 (rho = 1 is the reference)")
    sxx = float(f @ f)
    w = max(0.0, float(f @ d) / sxx)
    resid = d - w * f
    sse = float(resid @ resid)
    se = math.sqrt(sse / (len(d) - 1) / sxx) if len(d) > 1 else math.nan
    rhos = sorted({float(v) for v in rho_a})
    ranks = "" if rank is None else (f" at ranks {sorted({int(v) for v in np.asarray(rank)})}, "
                                     f"rank factor (r_ref / r)^b, r_ref = {rank_ref:g}, "
                                     f"b = {exponent:g}")
    how = (f"least squares of {len(d)} paired excess errors err(rho) - err(1) at rho "
           f"{', '.join(f'{v:g}' for v in rhos)}{ranks} on w_sparse phi(rho), phi = {form}, "
           "with the method's error feedback")
    return WeightEstimate(w, se, len(d), how), sse


def loo_error(rho: ArrayLike, excess_error: ArrayLike, form: str, rank=None,
              exponent: float = 0.0, rank_ref: float = 8.0) -> float:
    """Leave-one-out squared prediction error of :func:`fit_sparse_weight` (each pilot predicted
    by the fit to the others) [test error^2]; nan for fewer than 2 pilots."""
    rho_a, d = np.asarray(rho, float), np.asarray(excess_error, float)
    if len(d) < 2:
        return math.nan
    r_a = None if rank is None else np.asarray(rank, float)
    f = _sparse_regressor(rho_a, r_a, form, exponent, rank_ref)
    out = 0.0
    for i in range(len(d)):
        m = np.arange(len(d)) != i
        sxx = float(f[m] @ f[m])
        w = max(0.0, float(f[m] @ d[m]) / sxx) if sxx > 0 else 0.0
        out += (d[i] - w * f[i]) ** 2
    return float(out)


@dataclass(frozen=True)
class SparseFit:
    """The chosen sparsification model: phi ``form``, rank ``exponent`` b with its ``exponent_se``
    (half-width of the b whose SSE is within one residual variance of the least, nan with one
    rank), ``rank_ref``, the weight ``w`` and every form's ``fits`` at its best b: form ->
    (estimate, SSE, LOO error, b)."""

    form: str
    exponent: float
    exponent_se: float
    rank_ref: float
    w: WeightEstimate
    fits: dict


def select_phi_form(rho: ArrayLike, excess_error: ArrayLike, forms=PHI_VARIANTS, rank=None,
                    exponents=RANK_EXPONENTS) -> SparseFit:
    """The sparsification model of least leave-one-out error (:func:`loo_error`) over the forms
    of phi and, when the ratio pilots span two or more ranks, the rank exponents b
    (``exponents``; b = 0 only with one rank: b is not identified). Ties keep the earlier form
    and the smaller b. ``rank_ref`` is the smallest ratio-pilot rank."""
    r_a = None if rank is None else np.asarray(rank, float)
    two = r_a is not None and len(np.unique(r_a)) >= 2
    bs = tuple(exponents) if two else (0.0,)
    ref = float(np.min(r_a)) if r_a is not None else 8.0
    fits, best = {}, None
    for f in forms:
        scored = [(loo_error(rho, excess_error, f, r_a if two else None, b, ref), b) for b in bs]
        loo, b = min(scored, key=lambda t: (t[0], t[1]))
        est, sse = fit_sparse_weight(rho, excess_error, f, r_a if two else None, b, ref)
        fits[f] = (est, sse, loo, b)
        if best is None or loo < fits[best][2]:
            best = f
    est, sse, loo, b = fits[best]
    se = math.nan
    if two:
        n = len(np.asarray(excess_error))
        sses = np.array([fit_sparse_weight(rho, excess_error, best, r_a, x, ref)[1] for x in bs])
        ok = np.asarray(bs)[sses <= sse * (1.0 + 1.0 / max(n - 2, 1))]
        se = float((ok.max() - ok.min()) / 2.0)
    return SparseFit(best, float(b), se, ref, est, fits)


__all__ = ["WeightEstimate", "horizon_error", "fit_rank_weights", "RANK_EXPONENTS",
           "fit_sparse_weight", "loo_error", "SparseFit", "select_phi_form"]
