"""Estimators of the bound's quantities from pilot-run statistics (docs/model.md "Calibration").

tsfa's own [DESIGN] estimators; each is a pure numpy function of the statistics a pilot run
records (:mod:`tsfa.experiments.pilot`), and each returns an :class:`Estimate`: the value, its
standard error (a bootstrap over the independent units named in ``n``) and a one-line method.

* smoothness L: a high quantile of secant ratios ``||g(x') - g(x)|| / ||x' - x||`` of full-batch
  gradients at consecutive points of the trajectory (:func:`smoothness`);
* gradient noise sigma^2 = E||g_b - g||^2 and second moment G^2 = E||g_b||^2 of minibatch
  gradients g_b at batch size b (:func:`minibatch_moments`), rescaled to another batch size by
  ``sigma^2 b / b'`` (:func:`rescale_noise`);
* heterogeneity zeta_h^2 = sum_k p_k ||g_k - g||^2 of full client gradients (:func:`heterogeneity`);
* the rank floor eps(r) of a set of per-module update spectra, pooled (:func:`pooled_spectrum`);
* the covariance constant c3 of either bound form and the growth exponent of ||Cov||_F
  (:func:`covariance_constant`, :func:`loglog_slope`);
* c3..c5 and an intercept by non-negative least squares of final losses (:func:`fit_loss_constants`).

Shapes: gradient norms and squared distances are given per checkpoint (C,), per checkpoint and
minibatch (C, M) or per checkpoint and client (C, K). No I/O, no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_BOOTSTRAP = 400


@dataclass(frozen=True)
class Estimate:
    """``value`` with its standard error ``stderr`` from ``n`` independent units, and ``method``."""

    value: float
    stderr: float
    n: int
    method: str

    @property
    def rel_stderr(self) -> float:
        return self.stderr / abs(self.value) if self.value else float("inf")


def bootstrap_stderr(units: ArrayLike, statistic: Callable[[np.ndarray], float],
                     rng: np.random.Generator, n_boot: int = DEFAULT_BOOTSTRAP) -> float:
    """Standard deviation of ``statistic`` over ``n_boot`` resamples (with replacement) of the
    first axis of ``units``; 0 when there is a single unit."""
    x = np.asarray(units, float)
    if len(x) < 2:
        return 0.0
    idx = rng.integers(len(x), size=(n_boot, len(x)))
    return float(np.std([statistic(x[i]) for i in idx], ddof=1))


# --------------------------------------------------------------------------- smoothness
def secant_ratios(grad_diff_norm: ArrayLike, step_norm: ArrayLike) -> np.ndarray:
    """``||g(x') - g(x)|| / ||x' - x||`` per pair (pairs with a zero step are dropped)."""
    d = np.asarray(grad_diff_norm, float)
    s = np.asarray(step_norm, float)
    keep = s > 0
    return d[keep] / s[keep]


def smoothness(grad_diff_norm: ArrayLike, step_norm: ArrayLike, rng: np.random.Generator,
               quantile: float = 0.9) -> Estimate:
    """L = the ``quantile`` of the secant ratios along the trajectory (docs/model.md Calibration).

    A secant ratio is a lower bound on the local Lipschitz constant of the gradient; a high
    quantile rather than the maximum makes the estimate robust to a single noisy pair.
    Standard error: bootstrap over pairs.
    """
    ratios = secant_ratios(grad_diff_norm, step_norm)
    if ratios.size == 0:
        raise ValueError("smoothness: need at least one pair with a non-zero step")

    def stat(x):
        return float(np.quantile(x, quantile))

    return Estimate(stat(ratios), bootstrap_stderr(ratios, stat, rng), int(ratios.size),
                    f"q{quantile:g} of {ratios.size} secant ratios of full-batch gradients")


# --------------------------------------------------------------------------- minibatch moments
def minibatch_moments(dev_sq: ArrayLike, norm_sq: ArrayLike) -> tuple[Estimate, Estimate]:
    """sigma^2 = E||g_b - g||^2 and G^2 = E||g_b||^2 from minibatch gradients (docs/model.md
    Calibration).

    ``dev_sq`` (C, M): ``||g_b - g||^2`` of M minibatches at each of C checkpoints, ``g`` the
    full-batch gradient there; ``norm_sq`` (C, M): ``||g_b||^2``. The estimates are the means
    over minibatches and checkpoints (the trajectory average that the average-stationarity bound
    uses). Standard error: from the spread over minibatches within each checkpoint.
    """
    dev = np.atleast_2d(np.asarray(dev_sq, float))
    nrm = np.atleast_2d(np.asarray(norm_sq, float))
    if dev.shape != nrm.shape or dev.shape[1] < 1:
        raise ValueError(f"dev_sq {dev.shape} and norm_sq {nrm.shape}: need the same (C, M) shape")
    m = dev.shape[1]

    def strat_stderr(x):
        # independent checkpoints: var of the grand mean = sum_c var_c / (M C^2)
        if m < 2:
            return 0.0
        return float(np.sqrt(np.sum(np.var(x, axis=1, ddof=1)) / m) / x.shape[0])

    n = dev.size
    sig = Estimate(float(dev.mean()), strat_stderr(dev), n,
                   f"mean ||g_b - g||^2 over {m} minibatches x {dev.shape[0]} checkpoints")
    g2 = Estimate(float(nrm.mean()), strat_stderr(nrm), n,
                  f"mean ||g_b||^2 over {m} minibatches x {dev.shape[0]} checkpoints")
    return sig, g2


def rescale_noise(sigma_sq: float, batch_from: int, batch_to: int) -> float:
    """sigma^2 at batch size ``batch_to`` from its value at ``batch_from``: minibatch variance
    scales as 1/b for samples drawn with replacement."""
    return float(sigma_sq) * batch_from / batch_to


def second_moment_at_batch(g_sq: float, sigma_sq: float, batch_from: int, batch_to: int) -> float:
    """G^2 = ||g||^2 + sigma^2(b) moved from batch ``batch_from`` to ``batch_to``."""
    return float(g_sq) - float(sigma_sq) + rescale_noise(sigma_sq, batch_from, batch_to)


# --------------------------------------------------------------------------- heterogeneity
def heterogeneity(client_dev_sq: ArrayLike, weights: ArrayLike, rng: np.random.Generator
                  ) -> Estimate:
    """zeta_h^2 = sum_k p_k ||g_k - g||^2, averaged over checkpoints (docs/model.md Calibration).

    ``client_dev_sq`` (C, K): ``||g_k - g||^2`` of client k's full gradient against the weighted
    mean ``g = sum_k p_k g_k`` at each checkpoint; ``weights`` (K,) sum to one. Standard error:
    bootstrap over clients.
    """
    dev = np.atleast_2d(np.asarray(client_dev_sq, float))
    p = np.asarray(weights, float)
    if dev.shape[1] != p.shape[0]:
        raise ValueError(f"client_dev_sq has {dev.shape[1]} clients, weights {p.shape[0]}")

    def stat(cols):  # cols: (K', C + 1) rows = clients, last column the weight
        w = cols[:, -1]
        return float(np.mean(cols[:, :-1].T @ w) / w.sum())

    units = np.column_stack([dev.T, p])
    return Estimate(stat(units), bootstrap_stderr(units, stat, rng), int(p.size),
                    f"sum_k p_k ||g_k - g||^2 over {p.size} clients x {dev.shape[0]} checkpoints")


# --------------------------------------------------------------------------- eps(r)
def pooled_spectrum(spectra: list[ArrayLike]) -> np.ndarray:
    """One spectrum whose eps(r) is the pooled rank floor of several modules.

    With each module's singular values sorted in decreasing order, ``s_i = sqrt(sum_m s_{m,i}^2)``
    gives ``eps(r) = sum_m sum_{i>r} s_{m,i}^2 / sum_m sum_i s_{m,i}^2``, the energy fraction
    of all modules' updates outside their best rank-r subspaces (docs/model.md §2).
    """
    if not spectra:
        raise ValueError("pooled_spectrum: need at least one module spectrum")
    n = max(len(np.asarray(s)) for s in spectra)
    energy = np.zeros(n)
    for s in spectra:
        e = np.sort(np.abs(np.asarray(s, float)))[::-1] ** 2
        energy[:e.size] += e
    return np.sqrt(energy)


# --------------------------------------------------------------------------- covariance
def covariance_constant(measured_fro: ArrayLike, unit_prediction: ArrayLike,
                        rng: np.random.Generator, squared: bool = False) -> Estimate:
    """c3 such that the bound form's prediction matches measured ||Cov||_F (geometric mean).

    ``unit_prediction``: the form's prediction with c3 = 1, of ``E||Cov||_F`` (``squared=False``,
    the ``linear_hetero`` form) or of ``E||Cov||_F^2`` (``squared=True``, the ``sqrt_r`` form).
    ``log c3 = mean(log measured - log unit)`` (of the squares when ``squared``). Standard
    error: bootstrap over measurements.
    """
    m = np.asarray(measured_fro, float)
    u = np.asarray(unit_prediction, float)
    keep = (m > 0) & (u > 0)
    if not keep.any():
        raise ValueError("covariance_constant: need a positive measurement and prediction")
    logs = np.log(m[keep] ** 2 if squared else m[keep]) - np.log(u[keep])

    def stat(x):
        return float(np.exp(np.mean(x)))

    return Estimate(stat(logs), bootstrap_stderr(logs, stat, rng), int(keep.sum()),
                    "geometric mean of measured / predicted ||Cov||_F"
                    + ("^2" if squared else ""))


def loglog_slope(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    """Least-squares slope of log y on log x and its standard error (nan with 2 points)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if lx.size < 2:
        raise ValueError("loglog_slope: need at least two points")
    a = np.column_stack([lx, np.ones_like(lx)])
    coef, *_ = np.linalg.lstsq(a, ly, rcond=None)
    dof = lx.size - 2
    if dof <= 0:
        return float(coef[0]), float("nan")
    resid = ly - a @ coef
    cov = np.sum(resid**2) / dof * np.linalg.inv(a.T @ a)
    return float(coef[0]), float(np.sqrt(cov[0, 0]))


# --------------------------------------------------------------------------- loss fit
def nnls_affine(loss: ArrayLike, features: ArrayLike) -> np.ndarray:
    """``(a, c)`` minimising ``||loss - a - features @ c||`` with ``c >= 0`` and ``a`` free.

    ``features`` (N, J) with a few columns (the bound's terms); the result has length J + 1, the
    intercept first. Exact by enumeration of the active sets: least squares on every subset of
    the columns, the best fit whose coefficients are all non-negative (2^J small solves).
    """
    y = np.asarray(loss, float)
    x = np.asarray(features, float).reshape(len(y), -1)
    j = x.shape[1]
    best, best_res = np.concatenate([[y.mean()], np.zeros(j)]), float(np.sum((y - y.mean()) ** 2))
    for mask in range(1, 2**j):
        cols = [i for i in range(j) if mask >> i & 1]
        a = np.column_stack([np.ones(len(y)), x[:, cols]])
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        res = float(np.sum((y - a @ coef) ** 2))
        if np.all(coef[1:] >= 0) and res < best_res - 1e-15 * max(best_res, 1.0):
            best = np.zeros(j + 1)
            best[0], best[1 + np.asarray(cols)] = coef[0], coef[1:]
            best_res = res
    return best


def fit_loss_constants(loss: ArrayLike, features: ArrayLike, rng: np.random.Generator,
                       n_boot: int = DEFAULT_BOOTSTRAP) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative least squares ``loss ~ a + features @ c`` (:func:`nnls_affine`) with
    bootstrap standard errors over the runs (nan with fewer than three runs).

    ``features`` (N, J): the bound's unit terms (their c = 1 values) per pilot run, e.g. eps(r)
    for c5. The free intercept absorbs the terms that do not change between the runs.
    """
    y = np.asarray(loss, float)
    x = np.asarray(features, float).reshape(len(y), -1)
    coef = nnls_affine(y, x)
    if len(y) < 3:
        return coef, np.full(coef.shape, np.nan)
    boots = [nnls_affine(y[i], x[i]) for i in rng.integers(len(y), size=(n_boot, len(y)))]
    return coef, np.std(boots, axis=0, ddof=1)
