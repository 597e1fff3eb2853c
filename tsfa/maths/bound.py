"""Convergence bound of federated LoRA with SOFT (docs/model.md §2) and the rank floor eps(r).

Each term is a pure, vectorised function (numpy broadcasting over every argument); the bound is
their sum. The three effects named by the paper [PAPER] are the rank term, the sparsification
term and the covariance term; the form of each term and the constants c0..c5 are tsfa's [DESIGN]
reconstruction (FedAvg / local-SGD analyses with error feedback). All terms are dimensionless
(the bound is on the average squared gradient norm in the units of the loss).

The covariance term has two forms (:data:`COV_FORMS`, the spec's ``bound.cov_form``):
``linear_hetero`` (default: ||Cov||_F linear in r, growing with client dissimilarity, as measured)
and ``sqrt_r`` (the earlier reconstruction). docs/model.md §2 derives the first and lists the
measurements that rejected the second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    import pandas as pd

#: phi(rho) and d phi / d rho per variant (docs/model.md §2), each written once in operations that
#: numpy arrays and SymPy expressions share: :func:`phi` and :func:`phi_derivative` evaluate them,
#: :func:`tsfa.maths.symbolic.phi_expr` builds the same formula symbolically (and tests/test_symbolic.py
#: checks each derivative against SymPy's).
PHI_FORMS: dict[str, tuple[Callable, Callable]] = {
    "inv": (lambda rho: (1 - rho) / rho, lambda rho: -1 / rho**2),
    "inv_sq": (lambda rho: (1 - rho) / rho**2, lambda rho: (rho - 2) / rho**3),
    "linear": (lambda rho: 1 - rho, lambda rho: -(rho**0)),  # -1, shaped like rho
}
PHI_VARIANTS = tuple(PHI_FORMS)
#: Forms of the covariance term (docs/model.md §2); the first is the spec's default.
COV_FORMS = ("linear_hetero", "sqrt_r")


# --------------------------------------------------------------------------- phi
def phi_form(variant: str) -> tuple[Callable, Callable]:
    """``(phi, d phi / d rho)`` of ``variant`` (:data:`PHI_FORMS`); ValueError naming an unknown one."""
    if variant not in PHI_FORMS:
        raise ValueError(f"phi variant {variant!r}: must be one of {', '.join(PHI_VARIANTS)}")
    return PHI_FORMS[variant]


def phi(rho: ArrayLike, variant: str = "inv") -> np.ndarray:
    """Sparsification error factor phi(rho) (docs/model.md §2), rho in (0, 1].

    ``inv``: (1 - rho) / rho (error feedback with contraction rho, default);
    ``inv_sq``: (1 - rho) / rho^2; ``linear``: 1 - rho. All are 0 at rho = 1, decreasing in rho.
    """
    return phi_form(variant)[0](np.asarray(rho, dtype=float))


def phi_derivative(rho: ArrayLike, variant: str = "inv") -> np.ndarray:
    """d phi / d rho: ``-1/rho^2`` (inv), ``(rho - 2)/rho^3`` (inv_sq), ``-1`` (linear)."""
    return phi_form(variant)[1](np.asarray(rho, dtype=float))


# --------------------------------------------------------------------------- bound terms
def init_term(initial_gap, lr, local_steps, rounds, c0=1.0):
    """init = c0 (F0 - F*) / (eta tau T)  (docs/model.md §2)."""
    return c0 * np.asarray(initial_gap, float) / (
        np.asarray(lr, float) * np.asarray(local_steps, float) * np.asarray(rounds, float))


def noise_term(weights, smoothness, lr, grad_noise, c1=1.0):
    """noise = c1 L eta sigma^2 sum_k p_k^2  (docs/model.md §2). ``weights`` on the last axis."""
    p = np.asarray(weights, float)
    return c1 * np.asarray(smoothness, float) * np.asarray(lr, float) * np.asarray(
        grad_noise, float) ** 2 * np.sum(p * p, axis=-1)


def drift_term(smoothness, lr, local_steps, grad_noise, heterogeneity, c2=1.0):
    """drift = c2 L^2 eta^2 tau^2 (sigma^2 + zeta_h^2)  (docs/model.md §2)."""
    L, eta, tau = (np.asarray(x, float) for x in (smoothness, lr, local_steps))
    return c2 * L**2 * eta**2 * tau**2 * (np.asarray(grad_noise, float) ** 2
                                          + np.asarray(heterogeneity, float) ** 2)


def covariance_term_sqrt_r(rank, lr, local_steps, grad_bound, c3=1.0):
    """cov = c3 r eta^2 tau^2 G^4, the ``sqrt_r`` variant (docs/model.md §2).

    Bounds E||Cov||_F^2 / (eta tau)^2 with E||Cov||_F^2 <= c3 r (eta tau)^4 G^4: the r rank-1
    contributions of Cov add in quadrature, so ||Cov||_F grows as sqrt(r); no heterogeneity.
    """
    eta, tau, g = (np.asarray(x, float) for x in (lr, local_steps, grad_bound))
    return c3 * np.asarray(rank, float) * eta**2 * tau**2 * g**4


def covariance_term_linear_hetero(rank, lr, local_steps, grad_bound, grad_noise, heterogeneity,
                                  c3=1.0):
    """cov = c3 r eta tau G h, the ``linear_hetero`` form (docs/model.md §2), h from
    :func:`heterogeneity_factor`.

    It is ``G E||Cov||_F / (eta tau)`` with E||Cov||_F <= c3 r (eta tau)^2 h
    (:func:`covariance_magnitude`): the r rank-1 contributions of Cov add coherently (they are
    driven by the same client gradient deviation), so ||Cov||_F is linear in r, and each grows
    with the client dissimilarity h of tau local steps. Linear in r, like the ``sqrt_r`` term.
    """
    eta, tau, g = (np.asarray(x, float) for x in (lr, local_steps, grad_bound))
    return c3 * np.asarray(rank, float) * eta * tau * g * heterogeneity_factor(
        grad_bound, grad_noise, heterogeneity, local_steps)


def heterogeneity_factor(grad_bound, grad_noise, heterogeneity, local_steps):
    """h = (zeta_h^2 + sigma^2 / tau) / (G^2 + zeta_h^2), in [0, 1] (docs/model.md §2).

    The client dissimilarity of tau-step updates, drift zeta_h^2 plus sampling noise
    sigma^2 / tau, relative to the second moment G^2 + zeta_h^2 of a client's own stochastic
    gradient, which normalises the steps of an adaptive optimiser (AdamW, the default).
    """
    g2, s2, z2 = (np.asarray(x, float) ** 2 for x in (grad_bound, grad_noise, heterogeneity))
    return (z2 + s2 / np.asarray(local_steps, float)) / (g2 + z2)


def covariance_term(rank, lr, local_steps, grad_bound, c3=1.0, *, form="sqrt_r", grad_noise=None,
                    heterogeneity=None):
    """The covariance term of the bound (docs/model.md §2) in the form ``form`` (:data:`COV_FORMS`).

    ``linear_hetero`` (the spec's default, ``bound.cov_form``) needs ``grad_noise`` (sigma) and
    ``heterogeneity`` (zeta_h); ``sqrt_r`` is the earlier reconstruction. The keyword default
    ``sqrt_r`` keeps the five-argument call of earlier code; spec-driven callers pass
    ``form=spec.bound.cov_form``. Both forms are linear and increasing in r.
    """
    if form == "sqrt_r":
        return covariance_term_sqrt_r(rank, lr, local_steps, grad_bound, c3)
    if form == "linear_hetero":
        if grad_noise is None or heterogeneity is None:
            raise ValueError("covariance_term: form 'linear_hetero' needs grad_noise (sigma) and "
                             "heterogeneity (zeta_h); form 'sqrt_r' does not")
        return covariance_term_linear_hetero(rank, lr, local_steps, grad_bound, grad_noise,
                                             heterogeneity, c3)
    raise ValueError(f"covariance form {form!r}: must be one of {', '.join(COV_FORMS)}")


def covariance_magnitude(rank, lr, local_steps, grad_bound, grad_noise, heterogeneity, c3=1.0,
                         form="linear_hetero"):
    """The ||Cov||_F that form ``form`` predicts (docs/model.md §2), for calibration.

    ``linear_hetero``: E||Cov||_F = c3 r (eta tau)^2 h (:func:`heterogeneity_factor`);
    ``sqrt_r``: sqrt(E||Cov||_F^2) = sqrt(c3 r) (eta tau)^2 G^2. The covariance term is
    G times the first over eta tau, or the square of the second over (eta tau)^2.
    """
    eta_tau = np.asarray(lr, float) * np.asarray(local_steps, float)
    r = np.asarray(rank, float)
    if form == "linear_hetero":
        return c3 * r * eta_tau**2 * heterogeneity_factor(grad_bound, grad_noise, heterogeneity,
                                                          local_steps)
    if form == "sqrt_r":
        return np.sqrt(c3 * r) * eta_tau**2 * np.asarray(grad_bound, float) ** 2
    raise ValueError(f"covariance form {form!r}: must be one of {', '.join(COV_FORMS)}")


def sparsification_gamma(smoothness, lr, local_steps, grad_bound, c4=1.0):
    """Gamma = c4 L^2 eta^2 tau^2 G^2: the weight of phi in the sparsification term (docs/model.md §4)."""
    L, eta, tau, g = (np.asarray(x, float) for x in (smoothness, lr, local_steps, grad_bound))
    return c4 * L**2 * eta**2 * tau**2 * g**2


def mean_phi(rho, weights, variant="inv"):
    """(1/T) sum_t sum_k p_k phi(rho_k^t) for ``rho`` of shape (..., K) or (T, K).

    A 1-D ``rho`` is one round; a 2-D ``rho`` is averaged over its first axis (rounds).
    """
    rho = np.asarray(rho, float)
    per_round = np.sum(np.asarray(weights, float) * phi(rho, variant), axis=-1)
    return per_round.mean(axis=0) if rho.ndim >= 2 else per_round


def sparsification_term(phi_mean, smoothness, lr, local_steps, grad_bound, c4=1.0):
    """sparse = c4 L^2 eta^2 tau^2 G^2 (1/T) sum_t sum_k p_k phi(rho_k^t)  (docs/model.md §2).

    ``phi_mean`` is that weighted time average (see :func:`mean_phi`); non-increasing in rho.
    """
    return sparsification_gamma(smoothness, lr, local_steps, grad_bound, c4) * np.asarray(
        phi_mean, float)


def sparse_rank_factor(rank, rank_ref=8, exponent=0.0):
    """(r_ref / r)^b: the rank factor of the sparsification term (docs/model.md §8b) [-].

    1 at ``exponent`` b = 0 (the bound's form: the cost of sparsifying depends on the ratio rho
    alone). With phi = (1 - rho)/rho^2, b = 2 makes the term depend on the number of components
    sent, n = rho r, alone (``(1 - rho) (r_ref / n)^2``); a horizon calibration measures b from
    ratio pilots at two or more ranks."""
    return (float(rank_ref) / np.asarray(rank, float)) ** float(exponent)


def rank_term(eps, c5=1.0):
    """rank = c5 eps(r)  (docs/model.md §2), eps the energy fraction outside the best rank-r subspace."""
    return c5 * np.asarray(eps, float)


# --------------------------------------------------------------------------- eps(r)
def eps_from_spectrum(singular_values: ArrayLike, rank: ArrayLike) -> np.ndarray:
    """eps(r) = sum_{i>r} s_i^2 / sum_i s_i^2 for the spectrum sorted in decreasing order.

    Non-increasing in r, eps(0) = 1, eps(r) = 0 for r >= len(s). ``rank`` may be an array.
    """
    s = np.sort(np.abs(np.asarray(singular_values, float)))[::-1]
    energy = s * s
    total = energy.sum()
    if not total > 0:
        raise ValueError("singular_values: need at least one positive value")
    tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])  # tail[r] = sum_{i>r} s_i^2
    rank_arr = np.asarray(rank)
    if not (np.all(np.mod(rank_arr, 1) == 0) and np.all(rank_arr >= 0)):
        raise ValueError(f"rank = {rank!r}: must be integers >= 0")
    r = np.clip(rank_arr.astype(int), 0, len(s))
    return np.clip(tail[r] / total, 0.0, 1.0)


def power_law_spectrum(dim: int, decay: float) -> np.ndarray:
    """Singular values s_i = i^(-decay), i = 1..dim (the default eps model, docs/model.md §2)."""
    return np.arange(1, dim + 1, dtype=float) ** (-float(decay))


def eps_power_law(rank: ArrayLike, dim: int, decay: float) -> np.ndarray:
    """eps(r) for the power-law spectrum :func:`power_law_spectrum`."""
    return eps_from_spectrum(power_law_spectrum(dim, decay), rank)


def eps_from_matrix(update: ArrayLike, rank: ArrayLike) -> np.ndarray:
    """eps(r) measured from a matrix (the ideal update dW): its singular values via SVD."""
    return eps_from_spectrum(np.linalg.svd(np.asarray(update, float), compute_uv=False), rank)


def fit_power_law(rank: ArrayLike, eps: ArrayLike, dim: int) -> float:
    """Fit the power-law exponent ``decay`` of :func:`eps_power_law` to measured (r, eps) pairs.

    Least squares on log eps over a bounded scalar search (decay in [0, 20]).
    """
    from scipy.optimize import minimize_scalar

    r = np.asarray(rank, int)
    target = np.log(np.clip(np.asarray(eps, float), 1e-300, None))

    def loss(a):
        return float(np.sum((np.log(np.clip(eps_power_law(r, dim, a), 1e-300, None)) - target)
                            ** 2))

    return float(minimize_scalar(loss, bounds=(0.0, 20.0), method="bounded").x)


# --------------------------------------------------------------------------- table
#: The covariance term's formula per form (:data:`COV_FORMS`).
COV_FORMULAS = {"linear_hetero": "c3 r eta tau G (zeta_h^2 + sigma^2/tau) / (G^2 + zeta_h^2)",
                "sqrt_r": "c3 r eta^2 tau^2 G^4"}

TERM_FORMULAS = {
    "init": "c0 (F0 - F*) / (eta tau T)",
    "noise": "c1 L eta sigma^2 sum_k p_k^2",
    "drift": "c2 L^2 eta^2 tau^2 (sigma^2 + zeta_h^2)",
    "cov": COV_FORMULAS["sqrt_r"],  # the keyword default of bound_terms; see term_table
    "sparse": "c4 L^2 eta^2 tau^2 G^2 mean_t sum_k p_k phi(rho_k^t)",
    "rank": "c5 eps(r)",
}


def bound_terms(*, rank, rho, weights, eps, lr, local_steps, rounds, smoothness, grad_bound,
                grad_noise, heterogeneity, initial_gap, c=(1.0,) * 6, phi_variant="inv",
                cov_form="sqrt_r"):
    """All six terms of the bound (docs/model.md §2) as a dict of arrays; ``c = (c0, ..., c5)``.

    ``rho``: per-client ratios (K,), or a (T, K) history; ``eps``: eps(r) for the same rank;
    ``cov_form``: the covariance term's form (:func:`covariance_term`; spec-driven callers pass
    ``spec.bound.cov_form``).
    """
    c0, c1, c2, c3, c4, c5 = c
    return {
        "init": init_term(initial_gap, lr, local_steps, rounds, c0),
        "noise": noise_term(weights, smoothness, lr, grad_noise, c1),
        "drift": drift_term(smoothness, lr, local_steps, grad_noise, heterogeneity, c2),
        "cov": covariance_term(rank, lr, local_steps, grad_bound, c3, form=cov_form,
                               grad_noise=grad_noise, heterogeneity=heterogeneity),
        "sparse": sparsification_term(mean_phi(rho, weights, phi_variant), smoothness, lr,
                                      local_steps, grad_bound, c4),
        "rank": rank_term(eps, c5),
    }


def term_table(terms: dict, cov_form: str = "sqrt_r") -> tuple[pd.DataFrame, float]:
    """Labelled term table (term, formula, value, share of total) and the total bound;
    ``cov_form`` names the form the covariance term was computed in."""
    import pandas as pd

    formulas = {**TERM_FORMULAS, "cov": COV_FORMULAS[cov_form]}
    values = {k: float(np.asarray(v)) for k, v in terms.items()}
    total = float(sum(values.values()))
    df = pd.DataFrame({
        "term": list(values),
        "formula": [formulas[k] for k in values],
        "value": list(values.values()),
        "share": [v / total if total > 0 else np.nan for v in values.values()],
    })
    return df, total


__all__ = ["PHI_FORMS", "PHI_VARIANTS", "COV_FORMS", "phi_form", "phi", "phi_derivative",
           "init_term", "noise_term", "drift_term", "covariance_term_sqrt_r",
           "covariance_term_linear_hetero", "heterogeneity_factor", "covariance_term",
           "covariance_magnitude", "sparsification_gamma", "mean_phi", "sparsification_term",
           "sparse_rank_factor", "rank_term", "eps_from_spectrum", "power_law_spectrum", "eps_power_law",
           "eps_from_matrix", "fit_power_law", "COV_FORMULAS", "TERM_FORMULAS", "bound_terms",
           "term_table"]
