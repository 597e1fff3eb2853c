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
* ratio pilots at one rank, same seeds, with the method's error feedback: ``err_{rho,s} -
  err_{1,s} = w_sparse phi(rho)``, fitted per form by :func:`fit_sparse_weight`; the form of
  least squared error is kept (:func:`select_phi_form`).

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


def fit_sparse_weight(rho: ArrayLike, excess_error: ArrayLike, form: str) -> tuple[
        WeightEstimate, float]:
    """``w_sparse`` of (H) for the form ``form`` of phi, and the sum of squared residuals.

    ``excess_error``: err(rho) - err(1) of ratio pilots paired by seed (same rank). Least squares
    through the origin, ``w >= 0``: ``w = max(0, sum d phi / sum phi^2)``, standard error
    ``sqrt(SSE / (n - 1) / sum phi^2)`` (nan for one pilot).
    """
    f = phi(np.asarray(rho, float), form)
    d = np.asarray(excess_error, float)
    if len(f) != len(d) or not len(d):
        raise ValueError("fit_sparse_weight: need one excess error per ratio pilot, >= 1")
    if np.any(np.asarray(rho, float) >= 1.0):
        raise ValueError("fit_sparse_weight: ratio pilots need rho < 1 (rho = 1 is the reference)")
    sxx = float(f @ f)
    w = max(0.0, float(f @ d) / sxx)
    resid = d - w * f
    sse = float(resid @ resid)
    se = math.sqrt(sse / (len(d) - 1) / sxx) if len(d) > 1 else math.nan
    rhos = sorted({float(v) for v in np.asarray(rho, float)})
    how = (f"least squares of {len(d)} paired excess errors err(rho) - err(1) at rho "
           f"{', '.join(f'{v:g}' for v in rhos)} on w_sparse phi(rho), phi = {form}, with the "
           "method's error feedback")
    return WeightEstimate(w, se, len(d), how), sse


def select_phi_form(rho: ArrayLike, excess_error: ArrayLike,
                    forms=PHI_VARIANTS) -> tuple[str, dict[str, tuple[WeightEstimate, float]]]:
    """The form of phi whose one-weight fit (:func:`fit_sparse_weight`) has the least squared
    error, and every form's (estimate, SSE). Ties keep the earlier form of ``forms``."""
    fits = {f: fit_sparse_weight(rho, excess_error, f) for f in forms}
    best = min(forms, key=lambda f: (fits[f][1], forms.index(f)))
    return best, fits


__all__ = ["WeightEstimate", "horizon_error", "fit_rank_weights", "fit_sparse_weight",
           "select_phi_form"]
