"""Covariance effect of separately aggregated LoRA factors (docs/model.md §2) [PAPER effect, exact identity].

With client factors B_k = B + dB_k, A_k = A + dA_k from a common start (B, A) and weights p_k
summing to one, B_bar = sum_k p_k B_k and A_bar = sum_k p_k A_k:

    sum_k p_k B_k A_k = B_bar A_bar + Cov,   Cov = sum_k p_k (dB_k - dB_bar)(dA_k - dA_bar).

Separate aggregation therefore misses the ideal (product-averaged) update by exactly -Cov.
Shapes: dB (K, d_out, r), dA (K, r, d_in), p (K,). Pure numpy.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _check(delta_b, delta_a, weights):
    db = np.asarray(delta_b, dtype=float)
    da = np.asarray(delta_a, dtype=float)
    p = np.asarray(weights, dtype=float)
    if db.ndim != 3 or da.ndim != 3:
        raise ValueError(f"delta_b and delta_a: expected 3-D (K, d_out, r) and (K, r, d_in), "
                         f"got shapes {db.shape} and {da.shape}")
    if db.shape[0] != da.shape[0] or db.shape[2] != da.shape[1] or p.shape != (db.shape[0],):
        raise ValueError(f"shapes do not match: delta_b {db.shape}, delta_a {da.shape}, "
                         f"weights {p.shape}")
    if np.any(p < 0) or not np.isclose(p.sum(), 1.0, rtol=0, atol=1e-9):
        raise ValueError("weights: must be >= 0 and sum to 1")
    return db, da, p


def factor_covariance(delta_b: ArrayLike, delta_a: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """Cov = sum_k p_k (dB_k - dB_bar)(dA_k - dA_bar), shape (d_out, d_in) (docs/model.md §2).

    Computed as sum_k p_k dB_k dA_k - dB_bar dA_bar, never forming anything larger than d_out x d_in.
    """
    db, da, p = _check(delta_b, delta_a, weights)
    mean_b = np.einsum("k,kor->or", p, db)
    mean_a = np.einsum("k,kri->ri", p, da)
    centred_b = db - mean_b
    centred_a = da - mean_a
    return np.einsum("k,kor,kri->oi", p, centred_b, centred_a)


def covariance_frobenius(delta_b: ArrayLike, delta_a: ArrayLike, weights: ArrayLike) -> float:
    """||Cov||_F for one module (see :func:`factor_covariance`)."""
    return float(np.linalg.norm(factor_covariance(delta_b, delta_a, weights)))


def product_average(factors_b: ArrayLike, factors_a: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """The ideal aggregate sum_k p_k B_k A_k, shape (d_out, d_in)."""
    b, a, p = _check(factors_b, factors_a, weights)
    return np.einsum("k,kor,kri->oi", p, b, a)


def separate_average(factors_b: ArrayLike, factors_a: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """What separate aggregation yields: B_bar A_bar, shape (d_out, d_in)."""
    b, a, p = _check(factors_b, factors_a, weights)
    return np.einsum("k,kor->or", p, b) @ np.einsum("k,kri->ri", p, a)


def predicted_covariance_sq(rank, lr, local_steps, grad_bound, c3=1.0):
    """Predicted magnitude E||Cov||_F^2 <= c3 r (eta tau)^4 G^4 (docs/model.md §2, [DESIGN]).

    The bound's covariance term equals this divided by (eta tau)^2 (see
    :func:`tsfa.maths.bound.covariance_term`).
    """
    eta_tau = np.asarray(lr, float) * np.asarray(local_steps, float)
    return c3 * np.asarray(rank, float) * eta_tau**4 * np.asarray(grad_bound, float) ** 4
