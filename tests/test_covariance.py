"""Tests of tsfa.maths.covariance (docs/model.md §2): sum_k p_k B_k A_k = B_bar A_bar + Cov, exactly."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsfa.maths import covariance as cv


def _instance(seed, k, d_out, r, d_in, alpha=1.0):
    rng = np.random.default_rng(seed)
    b0 = rng.normal(size=(d_out, r))
    a0 = rng.normal(size=(r, d_in))
    db = rng.normal(size=(k, d_out, r))
    da = rng.normal(size=(k, r, d_in))
    p = rng.dirichlet(np.full(k, alpha))
    p = p / p.sum()
    return b0, a0, db, da, p


def _loop_cov(db, da, p):
    """Cov = sum_k p_k (dB_k - dB_bar)(dA_k - dA_bar) with plain loops (independent of einsum)."""
    k = len(p)
    mean_b = sum(p[i] * db[i] for i in range(k))
    mean_a = sum(p[i] * da[i] for i in range(k))
    return sum(p[i] * (db[i] - mean_b) @ (da[i] - mean_a) for i in range(k))


def _loop_products(b, a, p):
    k = len(p)
    ideal = sum(p[i] * b[i] @ a[i] for i in range(k))
    separate = sum(p[i] * b[i] for i in range(k)) @ sum(p[i] * a[i] for i in range(k))
    return ideal, separate


@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(1, 12), st.integers(1, 6),
       st.integers(1, 12), st.sampled_from([0.1, 0.5, 1.0, 10.0]))
def test_identity_random_instances(seed, k, d_out, r, d_in, alpha):
    b0, a0, db, da, p = _instance(seed, k, d_out, r, d_in, alpha)
    b, a = b0 + db, a0 + da
    cov = cv.factor_covariance(db, da, p)
    assert cov.shape == (d_out, d_in)
    ideal = cv.product_average(b, a, p)
    separate = cv.separate_average(b, a, p)
    scale = 1.0 + np.abs(ideal).max()
    np.testing.assert_allclose(ideal, separate + cov, rtol=0, atol=1e-10 * scale)
    # independent loop-based computation
    loop_ideal, loop_separate = _loop_products(b, a, p)
    loop_cov = _loop_cov(db, da, p)
    np.testing.assert_allclose(loop_ideal, loop_separate + loop_cov, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(cov, loop_cov, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(ideal, loop_ideal, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(separate, loop_separate, rtol=0, atol=1e-10 * scale)
    assert cv.covariance_frobenius(db, da, p) == pytest.approx(np.linalg.norm(loop_cov),
                                                               rel=1e-9, abs=1e-12 * scale)


def test_identity_nonzero_in_general():
    _, _, db, da, p = _instance(3, 4, 5, 3, 6)
    assert cv.covariance_frobenius(db, da, p) > 1e-3


@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 5))
def test_cov_zero_for_identical_clients(seed, k, r):
    rng = np.random.default_rng(seed)
    db = np.broadcast_to(rng.normal(size=(1, 7, r)), (k, 7, r))
    da = np.broadcast_to(rng.normal(size=(1, r, 4)), (k, r, 4))
    p = rng.dirichlet(np.ones(k))
    assert np.abs(cv.factor_covariance(db, da, p / p.sum())).max() <= 1e-12


@given(st.integers(0, 2**32 - 1), st.integers(2, 6), st.integers(0, 5))
def test_cov_zero_for_single_active_client(seed, k, j):
    _, _, db, da, _ = _instance(seed, k, 6, 3, 5)
    p = np.zeros(k)
    p[j % k] = 1.0
    assert np.abs(cv.factor_covariance(db, da, p)).max() <= 1e-12


def test_predicted_covariance_matches_bound_term():
    from tsfa.maths.bound import covariance_term

    pred = cv.predicted_covariance_sq(8, 0.01, 5, 3.0, 1.4)
    # c3 r (eta tau)^4 G^4 = 1.4 * 8 * 0.05^4 * 81
    assert pred == pytest.approx(1.4 * 8 * 0.05**4 * 81)
    assert pred / (0.01 * 5) ** 2 == pytest.approx(covariance_term(8, 0.01, 5, 3.0, 1.4))


@pytest.mark.parametrize(("db_shape", "da_shape", "p", "match"), [
    ((2, 3, 4), (2, 4), [0.5, 0.5], "3-D"),
    ((2, 3, 4), (2, 5, 6), [0.5, 0.5], "shapes"),
    ((2, 3, 4), (3, 4, 6), [0.5, 0.5], "shapes"),
    ((2, 3, 4), (2, 4, 6), [1.0], "shapes"),
    ((2, 3, 4), (2, 4, 6), [0.7, 0.7], "weights"),
    ((2, 3, 4), (2, 4, 6), [1.5, -0.5], "weights"),
])
def test_bad_shapes_and_weights(db_shape, da_shape, p, match):
    with pytest.raises(ValueError, match=match):
        cv.factor_covariance(np.zeros(db_shape), np.zeros(da_shape), p)
