"""Tests of tsfa.maths.estimators (docs/model.md, Calibration): each estimator on data whose true
value is known in closed form."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsfa.maths import bound as bd
from tsfa.maths import estimators as est


def rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- smoothness
def test_smoothness_of_a_quadratic_is_its_largest_curvature_along_the_steps():
    # f(x) = 0.5 x^T H x, g(x) = H x: the secant ratio along step d is ||H d|| / ||d||
    g = rng(1)
    eig = np.array([0.1, 0.5, 2.0, 5.0])
    q, _ = np.linalg.qr(g.normal(size=(4, 4)))
    h = q @ np.diag(eig) @ q.T
    steps = g.normal(size=(50, 4))
    steps[:5] = q[:, 3] * g.uniform(0.1, 2.0, (5, 1))  # five steps along the top eigenvector
    diff = np.linalg.norm(steps @ h, axis=1)
    step = np.linalg.norm(steps, axis=1)
    ratios = est.secant_ratios(diff, step)
    assert np.all(ratios <= 5.0 + 1e-12) and ratios.max() == pytest.approx(5.0)
    e = est.smoothness(diff, step, g, quantile=1.0)
    assert e.value == pytest.approx(5.0) and e.n == 50 and e.stderr >= 0
    assert est.smoothness(diff, step, g, quantile=0.5).value < e.value


def test_smoothness_drops_zero_steps_and_needs_a_pair():
    assert est.secant_ratios([1.0, 2.0], [0.0, 4.0]).tolist() == [0.5]
    with pytest.raises(ValueError, match="non-zero step"):
        est.smoothness([1.0], [0.0], rng())


# --------------------------------------------------------------------------- minibatch moments
def test_minibatch_moments_match_the_closed_form_of_sampling_with_replacement():
    g = rng(2)
    n, d, b = 400, 6, 8
    per_sample = g.normal(size=(n, d)) + np.linspace(0.0, 1.0, d)
    full = per_sample.mean(0)
    sigma_sq = np.mean(np.sum((per_sample - full) ** 2, axis=1)) / b  # E||g_b - g||^2
    g_sq = sigma_sq + np.sum(full**2)                                   # E||g_b||^2
    dev, nrm = [], []
    for _ in range(3):  # checkpoints
        idx = g.integers(n, size=(4000, b))
        gb = per_sample[idx].mean(1)
        dev.append(np.sum((gb - full) ** 2, axis=1))
        nrm.append(np.sum(gb**2, axis=1))
    s, m = est.minibatch_moments(dev, nrm)
    assert s.value == pytest.approx(sigma_sq, rel=0.05)
    assert m.value == pytest.approx(g_sq, rel=0.05)
    assert abs(s.value - sigma_sq) < 4 * s.stderr + 1e-12
    with pytest.raises(ValueError, match="same"):
        est.minibatch_moments(np.ones((2, 3)), np.ones((2, 4)))


def test_batch_rescaling():
    assert est.rescale_noise(0.8, 16, 32) == pytest.approx(0.4)
    # G^2 = ||g||^2 + sigma^2(b): 1.0 = 0.2 + 0.8 at b = 16 -> 0.2 + 0.4 at b = 32
    assert est.second_moment_at_batch(1.0, 0.8, 16, 32) == pytest.approx(0.6)


# --------------------------------------------------------------------------- heterogeneity
def test_heterogeneity_is_the_weighted_client_deviation():
    w = np.array([0.5, 0.3, 0.2])
    dev = np.array([[1.0, 2.0, 4.0], [3.0, 2.0, 0.0]])  # two checkpoints
    e = est.heterogeneity(dev, w, rng())
    assert e.value == pytest.approx(np.mean(dev @ w)) and e.n == 3 and e.stderr > 0
    with pytest.raises(ValueError, match="clients"):
        est.heterogeneity(dev, w[:2], rng())


# --------------------------------------------------------------------------- eps(r)
@given(st.lists(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=12), min_size=1, max_size=5)
       .filter(lambda m: sum(x * x for s in m for x in s) > 1e-6))
def test_pooled_spectrum_gives_the_pooled_energy_fraction(modules):
    ranks = np.arange(0, 14)
    tails = sum(np.array([np.sum(np.sort(np.square(s))[::-1][r:]) for r in ranks])
                for s in modules)
    total = sum(np.sum(np.square(s)) for s in modules)
    np.testing.assert_allclose(bd.eps_from_spectrum(est.pooled_spectrum(modules), ranks),
                               tails / total, atol=1e-12)


def test_pooled_spectrum_of_one_module_is_its_spectrum():
    s = np.array([0.5, 3.0, 1.0])
    np.testing.assert_allclose(est.pooled_spectrum([s]), [3.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="at least one"):
        est.pooled_spectrum([])


# --------------------------------------------------------------------------- covariance
@pytest.mark.parametrize("squared", [False, True])
def test_covariance_constant_recovers_c3(squared):
    unit = np.array([1e-4, 3e-4, 2e-3])
    c3 = 7.5
    measured = c3 * unit if not squared else np.sqrt(c3 * unit)
    e = est.covariance_constant(measured, unit, rng(), squared=squared)
    assert e.value == pytest.approx(c3) and e.stderr == pytest.approx(0.0, abs=1e-9)


def test_loglog_slope():
    x = np.array([2.0, 4.0, 8.0, 16.0])
    slope, se = est.loglog_slope(x, 3.0 * x**0.96)
    assert slope == pytest.approx(0.96) and se == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(est.loglog_slope(x[:2], x[:2])[1])


# --------------------------------------------------------------------------- loss fit
def test_fit_loss_constants_recovers_non_negative_coefficients_and_a_negative_intercept():
    g = rng(3)
    x = g.uniform(0, 1, (12, 2))
    y = -0.7 + x @ np.array([2.0, 0.0])
    coef, se = est.fit_loss_constants(y, x, g)
    np.testing.assert_allclose(coef, [-0.7, 2.0, 0.0], atol=1e-9)
    assert np.all(np.nan_to_num(se) >= 0)
    coef2, se2 = est.fit_loss_constants(y[:2], x[:2], g)
    assert np.all(np.isnan(se2)) and coef2.shape == (3,)


@pytest.mark.parametrize("seed", range(20))
def test_nnls_affine_attains_the_scipy_nnls_residual(seed):
    from scipy.optimize import nnls

    g = rng(seed)
    n, j = int(g.integers(3, 12)), int(g.integers(1, 4))
    x, y = g.normal(size=(n, j)), g.normal(size=n)
    ones = np.ones((n, 1))
    c, _ = nnls(np.column_stack([ones, -ones, x]), y)
    got = est.nnls_affine(y, x)
    assert np.all(got[1:] >= 0)
    assert np.sum((y - got[0] - x @ got[1:]) ** 2) <= np.sum((y - c[0] + c[1] - x @ c[2:]) ** 2) + 1e-9
