"""Wireless uplink model (docs/model.md §1): path loss, Rayleigh fading, FDMA rate and latency
(the payload is :mod:`tsfa.maths.payload`).

Pure numpy/scipy. Every random draw takes an explicit ``numpy.random.Generator``.
Units are in the names: ``_hz``, ``_w``, ``_s``, ``_bits``, ``_m``. The SNR-bandwidth product
``gamma_hz = P |h|^2 / N0`` has units of hertz (W / (W/Hz)), so the rate is
``R(w) = w log2(1 + gamma / w)`` in bit/s with ``w`` in Hz.

Everything in this module is tsfa's [DESIGN] reconstruction of the paper's system model.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from tsfa.maths.rng import substream

LN2 = math.log(2.0)


# --------------------------------------------------------------------------- channel
def path_loss_db(distance_m: ArrayLike, intercept_db: float = 128.1, slope_db: float = 37.6):
    """Path loss in dB (positive), docs/model.md §1: ``PL = intercept + slope * log10(d / 1 km)``.

    Args:
        distance_m: transmitter-receiver distance(s) in metres, > 0.
    Returns:
        Loss in dB, same shape. The channel power gain is ``beta = 10 ** (-PL / 10)``.
    """
    d_km = np.asarray(distance_m, dtype=float) / 1000.0
    return intercept_db + slope_db * np.log10(d_km)


def path_gain(distance_m: ArrayLike, intercept_db: float = 128.1, slope_db: float = 37.6):
    """Linear large-scale power gain ``beta_k = 10 ** (-PL_dB / 10)`` (dimensionless)."""
    return np.power(10.0, -path_loss_db(distance_m, intercept_db, slope_db) / 10.0)


def draw_distances_m(rng: np.random.Generator, n: int, min_m: float, max_m: float) -> np.ndarray:
    """Client distances ``d_k ~ U[min_m, max_m]`` in metres (docs/model.md §1)."""
    return rng.uniform(min_m, max_m, size=n)


def draw_rayleigh_power(rng: np.random.Generator, shape) -> np.ndarray:
    """Small-scale fading power ``|g|^2`` with ``g ~ CN(0, 1)``, hence ``|g|^2 ~ Exp(1)``.

    Drawn from the complex Gaussian itself (real and imaginary parts N(0, 1/2)).
    """
    re = rng.normal(0.0, math.sqrt(0.5), size=shape)
    im = rng.normal(0.0, math.sqrt(0.5), size=shape)
    return re * re + im * im


def fading_gains(seed: int, round_index: int, n_clients: int) -> np.ndarray:
    """Rayleigh fading powers ``|g_k^t|^2`` (K,) of round ``t`` for clients ``0..K-1`` [-].

    The one channel draw of tsfa: the simulator (``tsfa control``) and the federated trainer call
    it with the same ``(seed, t, K)`` and so see the same channels. Stateless: drawn from the
    substream ``("fading", t)`` of ``seed`` (:func:`tsfa.maths.rng.substream`), the real and
    imaginary parts of client k being its own two normal draws, so client k's value in round t
    depends on ``(seed, t, k)`` only: a 50-round run is a prefix of a 2,000-round run, and
    adding clients never changes the channels of the first ones.
    """
    z = substream(seed, "fading", round_index).standard_normal((int(n_clients), 2))
    return 0.5 * np.einsum("ij,ij->i", z, z)


def snr_bandwidth_hz(tx_power_w: ArrayLike, channel_gain: ArrayLike, noise_psd_w_per_hz: float):
    """``gamma_k = P_k |h_k|^2 / N0`` in Hz (docs/model.md §1). SNR on bandwidth w is ``gamma / w``."""
    return np.asarray(tx_power_w, dtype=float) * np.asarray(channel_gain, dtype=float) / float(
        noise_psd_w_per_hz
    )


# --------------------------------------------------------------------------- rate
def upload_time_s(bits: ArrayLike, bandwidth_hz: ArrayLike, gamma_hz: ArrayLike) -> np.ndarray:
    """Upload time ``S / R(w, gamma)`` [s] of ``bits`` on bandwidth ``w`` (docs/model.md §1);
    0 where nothing is sent (``bits = 0`` or ``w = 0``). The one formula behind the latency the
    controller plans for the wire and the latency the federated server measures."""
    s = np.asarray(bits, dtype=float)
    rate = np.broadcast_to(rate_bps(bandwidth_hz, gamma_hz), s.shape)
    return np.divide(s, rate, out=np.zeros(s.shape), where=(s > 0) & (rate > 0))


def rate_bps(bandwidth_hz: ArrayLike, gamma_hz: ArrayLike) -> np.ndarray:
    """Shannon rate on FDMA bandwidth ``w``: ``R(w) = w log2(1 + gamma / w)`` [bit/s] (docs/model.md §1).

    Concave and increasing in ``w``; ``R(0) = 0`` (limit); ``R(w) -> gamma / ln 2`` as w grows.
    Broadcasts over ``bandwidth_hz`` and ``gamma_hz``.
    """
    w = np.asarray(bandwidth_hz, dtype=float)
    g = np.asarray(gamma_hz, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = w * np.log1p(g / w) / LN2
    return np.where(w > 0, r, 0.0)


def rate_derivative(bandwidth_hz: ArrayLike, gamma_hz: ArrayLike) -> np.ndarray:
    """``dR/dw = log2(1 + x) - x / ((1 + x) ln 2)`` with ``x = gamma / w`` [bit/s/Hz].

    Positive and decreasing in ``w`` (R is concave); ``+inf`` at ``w = 0``.
    """
    w = np.asarray(bandwidth_hz, dtype=float)
    g = np.asarray(gamma_hz, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = g / w
        # log1p(x) - x/(1+x) cancels for small x; use its series sum_{n>=2} (-1)^n (n-1) x^n / n
        series = x * x * (0.5 - x * (2.0 / 3.0 - x * (0.75 - 0.8 * x)))
        d = np.where(x < 1e-3, series, np.log1p(x) - x / (1.0 + x)) / LN2
    return np.where(w > 0, d, np.inf)


def ergodic_spectral_efficiency(mean_snr: ArrayLike) -> np.ndarray:
    """``E[log2(1 + s |g|^2)] = exp(1/s) E1(1/s) / ln 2`` for ``|g|^2 ~ Exp(1)`` [bit/s/Hz].

    Closed form of the ergodic Rayleigh capacity (docs/model.md §1), ``s`` the mean linear SNR > 0.
    For ``1/s > 50`` the product ``e^x E1(x)`` is evaluated by its asymptotic series
    ``sum_n (-1)^n n! / x^(n+1)`` (relative error < 1e-12 there), avoiding overflow of ``e^x``.
    """
    s = np.asarray(mean_snr, dtype=float)
    x = 1.0 / s
    small = x <= 50.0
    xs = np.where(small, x, 1.0)
    direct = np.exp(xs) * special.exp1(xs)
    xl = np.where(small, 100.0, x)
    asym = np.zeros_like(xl)
    term = 1.0 / xl
    for n in range(12):
        asym = asym + term
        term = -term * (n + 1) / xl
    return np.where(small, direct, asym) / LN2


def ergodic_rate_bps(bandwidth_hz: ArrayLike, mean_gamma_hz: ArrayLike) -> np.ndarray:
    """Ergodic rate ``w E[log2(1 + gamma_bar |g|^2 / w)]`` [bit/s] on a fixed bandwidth ``w``.

    ``mean_gamma_hz = P beta / N0``; the mean SNR on ``w`` is ``mean_gamma_hz / w``.
    """
    w = np.asarray(bandwidth_hz, dtype=float)
    return w * ergodic_spectral_efficiency(np.asarray(mean_gamma_hz, dtype=float) / w)


# --------------------------------------------------------------------------- latency
def compute_latency_s(
    local_steps: int, batch_size: int, flops_per_sample: float, device_flops: ArrayLike
) -> np.ndarray:
    """``T^cmp_k = tau b C_s / f_k`` [s] (docs/model.md §1); ``C_s`` FLOPs/sample (fwd+bwd), f in FLOP/s."""
    return local_steps * batch_size * flops_per_sample / np.asarray(device_flops, dtype=float)


def uplink_latency_s(payload: ArrayLike, bandwidth_hz: ArrayLike, gamma_hz: ArrayLike):
    """``S / R(w)`` [s]; ``+inf`` when the rate is zero."""
    r = rate_bps(bandwidth_hz, gamma_hz)
    with np.errstate(divide="ignore"):
        return np.asarray(payload, dtype=float) / r
