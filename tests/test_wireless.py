"""Tests of tsfa.maths.wireless (docs/model.md §1): rate, ergodic rate, fading, path loss, latency
(the payload: tests/maths/test_payload.py)."""

import math

import mpmath
import numpy as np
import pytest
from scipy import stats

from tsfa.maths import wireless as wl


def _rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- rate
def _random_w_gamma(n=4000, seed=1):
    """Bandwidths 1 Hz..1 GHz and SNR-bandwidth products such that gamma/w spans 1e-6..1e8."""
    rng = _rng(seed)
    w = 10.0 ** rng.uniform(0, 9, n)
    x = 10.0 ** rng.uniform(-6, 8, n)
    return w, x * w


def test_rate_matches_definition_and_limits():
    w, g = _random_w_gamma(n=300)
    with mpmath.workdps(40):
        exact = [float(wi * mpmath.log(1 + mpmath.mpf(gi) / wi, 2)) for wi, gi in zip(w, g, strict=True)]
    np.testing.assert_allclose(wl.rate_bps(w, g), exact, rtol=1e-13)
    assert wl.rate_bps(0.0, 1e6) == 0.0
    # R(w) -> gamma / ln 2 as w -> infinity
    assert wl.rate_bps(1e15, 1e3) == pytest.approx(1e3 / math.log(2), rel=1e-9)


def test_rate_derivative_central_differences():
    w, g = _random_w_gamma()
    h = 1e-5 * w
    fd = (wl.rate_bps(w + h, g) - wl.rate_bps(w - h, g)) / (2 * h)
    d = wl.rate_derivative(w, g)
    # Rounding of the difference quotient is ~ 1e-16 R / h = 1e-11 R / w.
    tol = 1e-6 * np.abs(d) + 1e-10 * wl.rate_bps(w, g) / w
    assert np.all(np.abs(fd - d) <= tol)
    assert np.all(np.isinf(wl.rate_derivative(0.0, g[:5])))


def test_rate_concave_and_increasing():
    rng = _rng(2)
    g = 10.0 ** rng.uniform(0, 12, (200, 1))
    w = np.sort(10.0 ** rng.uniform(0, 9, (1, 300)), axis=1)
    r = wl.rate_bps(w, g)
    d = wl.rate_derivative(w, g)
    assert np.all(np.diff(r, axis=1) >= 0)
    assert np.all(d > 0)
    assert np.all(np.diff(d, axis=1) <= 1e-12 * np.abs(d[:, :-1]))  # R' non-increasing: concave
    # chord below the curve at the midpoint
    w1, w2 = w[:, :-1], w[:, 1:]
    assert np.all(wl.rate_bps((w1 + w2) / 2, g) >= (r[:, :-1] + r[:, 1:]) / 2 * (1 - 1e-12))


@pytest.mark.parametrize("x", [1e-17, 1e-9, 1e-4, 9.99e-4, 1.001e-3])
def test_rate_derivative_accurate_at_tiny_snr(x):
    """dR/dw = (x^2/2 - 2x^3/3 + 3x^4/4 - ...) / ln 2 > 0 with x = gamma / w; mpmath reference."""
    import mpmath

    mpmath.mp.dps = 50
    ref = (mpmath.log1p(mpmath.mpf(x)) - mpmath.mpf(x) / (1 + mpmath.mpf(x))) / mpmath.log(2)
    assert wl.rate_derivative(1.0, x) == pytest.approx(float(ref), rel=1e-9, abs=0)


# --------------------------------------------------------------------------- ergodic rate
@pytest.mark.parametrize("snr_db", [-20, -10, 0, 10, 20, 30, 40, 50])
def test_ergodic_closed_form_vs_monte_carlo(snr_db):
    s = 10.0 ** (snr_db / 10)
    g2 = wl.draw_rayleigh_power(_rng(100 + snr_db), 10**6)
    mc = np.mean(np.log2(1 + s * g2))
    assert wl.ergodic_spectral_efficiency(s) == pytest.approx(mc, rel=5e-3)


def test_ergodic_branches_agree_and_rate_scales():
    # the asymptotic series (1/s > 50) and the direct e^x E1(x) agree around the switch
    s = np.array([1 / 50.0 * (1 - 1e-9), 1 / 50.0 * (1 + 1e-9)])
    a, b = wl.ergodic_spectral_efficiency(s)
    assert a == pytest.approx(b, rel=1e-8)
    # low-SNR limit: E[log2(1 + s X)] ~ s / ln 2
    assert wl.ergodic_spectral_efficiency(1e-8) == pytest.approx(1e-8 / math.log(2), rel=1e-7)
    # Jensen: ergodic rate below the rate at the mean SNR
    assert wl.ergodic_rate_bps(2e5, 1e9) < wl.rate_bps(2e5, 1e9)
    assert wl.ergodic_rate_bps(2e5, 1e9) == pytest.approx(
        2e5 * wl.ergodic_spectral_efficiency(1e9 / 2e5), rel=1e-14)


def test_rayleigh_power_is_exponential():
    g2 = wl.draw_rayleigh_power(_rng(7), 20_000)
    assert stats.kstest(g2, "expon").pvalue > 0.01
    assert g2.shape == (20_000,)
    # same seed, same draws
    np.testing.assert_array_equal(g2, wl.draw_rayleigh_power(_rng(7), 20_000))


# --------------------------------------------------------------------------- path loss
def test_path_loss_reference_values():
    # PL = 128.1 + 37.6 log10(d / 1 km):
    #   250 m: log10(0.25) = -0.602060 -> 128.1 - 22.6374 = 105.4626 dB
    #   1 km:  log10(1) = 0             -> 128.1 dB
    #   50 m:  log10(0.05) = -1.301030  -> 128.1 - 48.9187 = 79.1813 dB
    #   500 m: log10(0.5) = -0.301030   -> 128.1 - 11.3187 = 116.7813 dB
    pl = wl.path_loss_db([250.0, 1000.0, 50.0, 500.0])
    np.testing.assert_allclose(pl, [105.4626, 128.1, 79.1813, 116.7813], atol=1e-4)
    np.testing.assert_allclose(wl.path_gain(250.0), 10 ** (-10.54626), rtol=1e-4)


def test_mean_snr_calibration_at_250_m():
    # docs/model.md §7: 23 dBm, -174 dBm/Hz, 200 kHz, 250 m -> about 38 dB
    # 23 - (-174) - 105.46 - 10 log10(2e5) = 197 - 105.46 - 53.01 = 38.53 dB
    gamma = wl.snr_bandwidth_hz(10 ** (-0.7), wl.path_gain(250.0), 10 ** (-20.4))
    assert 10 * np.log10(gamma / 2e5) == pytest.approx(38.53, abs=0.01)


def test_distances_in_range_and_seeded():
    d = wl.draw_distances_m(_rng(3), 1000, 50.0, 500.0)
    assert d.shape == (1000,) and d.min() >= 50.0 and d.max() <= 500.0
    np.testing.assert_array_equal(d, wl.draw_distances_m(_rng(3), 1000, 50.0, 500.0))


# --------------------------------------------------------------------------- latency
def test_compute_latency_by_hand():
    # tau b C_s / f = 20 x 32 x 5.28e10 / 1e12 = 33.792 s; at 4e12 FLOP/s: 8.448 s
    np.testing.assert_allclose(wl.compute_latency_s(20, 32, 5.28e10, [1e12, 4e12]),
                               [33.792, 8.448], rtol=1e-12)


def test_uplink_latency():
    # 1e6 bits on w = 1e5 Hz with gamma = 3e5 Hz: R = 1e5 log2(4) = 2e5 bit/s -> 5 s
    assert wl.uplink_latency_s(1e6, 1e5, 3e5) == pytest.approx(5.0)
    assert np.isinf(wl.uplink_latency_s(1e6, 0.0, 3e5))
