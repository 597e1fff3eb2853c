"""Uploads under Rayleigh fading with a deadline (tsfa.maths.outage; docs/model.md §1 "Deep fades")
and the one channel draw (tsfa.maths.wireless.fading_gains)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tsfa.maths import outage
from tsfa.maths.wireless import fading_gains, rate_bps


@pytest.mark.parametrize("snr_db", [-40, -20, -5, 0, 10, 30, 60])
@pytest.mark.parametrize("x0", [1e-9, 1e-4, 1e-2, 0.3, 2.0, 10.0])
def test_truncated_inverse_log_matches_mpmath(snr_db, x0):
    """F(s, x0) = int_{x0}^inf e^{-x} / ln(1 + s x) dx to 1e-9 relative (64-node quadrature of the
    bounded remainder plus E1 in closed form)."""
    import mpmath

    mpmath.mp.dps = 30
    s = 10.0 ** (snr_db / 10)
    ref = mpmath.quad(lambda x: mpmath.exp(-x) / mpmath.log(1 + s * x),
                      [x0, x0 + 1e-6, x0 + 1e-3, x0 + 1, x0 + 10, mpmath.inf])
    assert float(outage.truncated_inverse_log(s, x0)) == pytest.approx(float(ref), rel=1e-9)


def test_untruncated_mean_is_infinite():
    assert np.isinf(outage.truncated_inverse_log(100.0, 0.0))
    pi, mean = outage.deferral_stats(1e6, 1e5, 1e9, math.inf)
    assert pi == 1.0 and np.isinf(mean)


@pytest.mark.parametrize("snr_db, deadline_s", [(-10, 30.0), (10, 5.0), (35, 2.0)])
def test_deferral_stats_match_monte_carlo(snr_db, deadline_s):
    """Participation P(S/R <= u) and E[S/R ; sent] against 2e6 Rayleigh draws."""
    bits, w = 2e6, 2e5
    gamma = w * 10 ** (snr_db / 10)
    x = np.random.default_rng(3).exponential(size=2_000_000)
    upload = bits / rate_bps(w, gamma * x)
    sent = upload <= deadline_s
    pi, mean = outage.deferral_stats(bits, w, gamma, deadline_s)
    assert pi == pytest.approx(sent.mean(), abs=2e-3)
    assert mean == pytest.approx(np.mean(np.where(sent, upload, 0.0)), rel=5e-3)


@pytest.mark.parametrize("kappa", [2.0, 4.0, 10.0])
@pytest.mark.parametrize("snr", [1e-3, 0.5, 30.0, 1e4])
def test_affordable_efficiency_is_the_first_crossing(kappa, snr):
    """sigma* is where the expected upload time with deferral reaches the budget: G(s, sigma*) = 1
    and G < 1 below it (or G < 1 everywhere and sigma* = NEVER)."""
    sig = float(outage.affordable_efficiency(snr, kappa))
    grid = np.geomspace(1e-9, min(sig, 200.0), 400)
    g_below = outage._load_ratio(np.log(snr), np.log(grid[:-1]), kappa)
    assert np.all(g_below < 1.0 + 1e-6)
    if sig < 0.99 * outage.NEVER:  # interpolated in log s: 1e-3 of the budget
        assert outage._load_ratio(np.log(snr), np.log(sig), kappa) == pytest.approx(1.0, rel=1e-3)
    else:  # low SNR and kappa below ~3.5: the deadline alone keeps the mean within the budget
        assert kappa < 3.6 and snr < 1.0


def test_fading_gains_are_stateless_per_round_and_client():
    """Client k's power in round t depends on (seed, t, k) only: prefix over clients, same value
    whatever the run length, different rounds and seeds differ; |g|^2 ~ Exp(1)."""
    a = fading_gains(7, 12, 50)
    np.testing.assert_array_equal(a, fading_gains(7, 12, 1000)[:50])
    np.testing.assert_array_equal(a, fading_gains(7, 12, 50))
    assert not np.array_equal(a, fading_gains(7, 13, 50))
    assert not np.array_equal(a, fading_gains(8, 12, 50))
    draws = np.concatenate([fading_gains(1, t, 500) for t in range(40)])
    assert stats.kstest(draws, "expon").pvalue > 0.01
