"""Uploads under Rayleigh fading with a per-round deadline (docs/model.md §1 "Deep fades").

On a fixed bandwidth ``w`` with mean SNR ``s = gamma_bar / w`` the upload time of ``S`` bits is
``S / (w log2(1 + s X))`` with ``X = |g|^2 ~ Exp(1)``. Its mean is infinite (``E[1/X]``
diverges at ``X -> 0``), so no long-term budget set from the ergodic rate can be promised. With a
deadline ``u`` on the upload, a client whose upload would take longer defers it (its update stays
in the error-feedback memory) and the upload happens only when

    X >= x_th(S, u) = (2^{S / (u w)} - 1) / s,         participation  pi = exp(-x_th),

so the expected upload time per round is finite:

    E[S / R ; sent] = (S ln 2 / w) F(s, x_th),    F(s, x0) = int_{x0}^inf e^{-x} / ln(1 + s x) dx.

``F`` is computed as ``E1(x0) / s`` (the ``1/(s x)`` part, in closed form) plus the bounded
remainder ``1/ln(1 + y) - 1/y`` in (0, 1/2), integrated by Gauss-Legendre in ``log t`` (64 nodes,
relative error below 1e-7 against mpmath on -40..60 dB; tests/test_outage.py). Everything here is
tsfa's [DESIGN]; pure numpy/scipy.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

LN2 = math.log(2.0)
_Z_LO, _Z_HI = math.log(1e-12), math.log(60.0)
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(64)
_Z = 0.5 * (_Z_HI - _Z_LO) * _NODES + 0.5 * (_Z_HI + _Z_LO)
_T = np.exp(_Z)
_WT = 0.5 * (_Z_HI - _Z_LO) * _WEIGHTS * _T * np.exp(-_T)  # dz weights times t e^{-t}


def _log_remainder(y: np.ndarray) -> np.ndarray:
    """``1 / ln(1 + y) - 1 / y`` in (0, 1/2), by its series ``1/2 - y/12 + y^2/24`` below 1e-4."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        direct = 1.0 / np.log1p(y) - 1.0 / y
        return np.where(y < 1e-4, 0.5 - y / 12.0 + y * y / 24.0, direct)


def truncated_inverse_log(mean_snr: ArrayLike, x0: ArrayLike) -> np.ndarray:
    """``F(s, x0) = int_{x0}^inf e^{-x} / ln(1 + s x) dx`` for ``s > 0``, ``x0 >= 0`` (broadcast).

    ``+inf`` at ``x0 = 0`` (the untruncated mean of ``1 / ln(1 + s X)`` diverges).
    """
    s, x0 = np.broadcast_arrays(np.asarray(mean_snr, float), np.asarray(x0, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        singular = np.where(x0 > 0, special.exp1(np.where(x0 > 0, x0, 1.0)) / s, np.inf)
    y = s[..., None] * (x0[..., None] + _T)
    rem = np.exp(-x0) * (_log_remainder(y) @ _WT)
    return singular + rem


def deferral_threshold(payload_bits: ArrayLike, bandwidth_hz: ArrayLike, mean_gamma_hz: ArrayLike,
                       uplink_deadline_s: ArrayLike) -> np.ndarray:
    """Smallest fading power ``x_th`` at which ``S`` bits fit in ``u`` seconds on ``w`` [-].

    ``x_th = (2^{S / (u w)} - 1) w / gamma_bar``; 0 for an infinite deadline.
    """
    s_bits, w, g, u = (np.asarray(a, float) for a in (payload_bits, bandwidth_hz, mean_gamma_hz,
                                                        uplink_deadline_s))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        x = np.expm1(LN2 * s_bits / (u * w)) * w / g
    return np.where(np.isinf(u), 0.0, x)


def deferral_stats(payload_bits: ArrayLike, bandwidth_hz: ArrayLike, mean_gamma_hz: ArrayLike,
                   uplink_deadline_s: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Participation probability and expected upload time per round [s] of the rule "upload on
    ``w`` if it fits in ``u`` seconds, else defer" (module docstring); broadcast over arguments.

    Returns ``(pi, mean_uplink_s)``: ``pi = P(sent)``, ``mean_uplink_s = E[S / R ; sent]`` (a
    deferred round adds nothing). With ``u = inf`` the mean is ``+inf`` (no deadline).
    """
    s_bits, w, g = (np.asarray(a, float) for a in (payload_bits, bandwidth_hz, mean_gamma_hz))
    x_th = deferral_threshold(s_bits, w, g, uplink_deadline_s)
    pi = np.exp(-x_th)
    mean = s_bits * LN2 / w * truncated_inverse_log(g / w, x_th)
    return pi, np.where(pi > 0, mean, 0.0)


# ------------------------------------------------------------------ affordable spectral efficiency
def _load_ratio(log_snr: np.ndarray, log_sigma: np.ndarray, kappa: float) -> np.ndarray:
    """``G(s, sigma) = sigma ln2 F(s, (2^{sigma/kappa} - 1)/s)``: expected upload time over the
    uplink budget ``b`` when ``sigma = S / (w b)`` bit/s/Hz must be sent and the deadline is
    ``kappa b`` (module docstring)."""
    s, sig = np.exp(log_snr), np.exp(log_sigma)
    with np.errstate(over="ignore"):
        x_th = np.expm1(LN2 * sig / kappa) / s
    return sig * LN2 * truncated_inverse_log(s, x_th)


_LOG_SNR_GRID = np.linspace(math.log(1e-8), math.log(1e12), 241)
_LOG_SIGMA_GRID = np.linspace(math.log(1e-9), math.log(200.0), 121)
NEVER = 1e6  # sigma* when the expected upload time never reaches the budget [bit/s/Hz]


@functools.lru_cache(maxsize=32)
def _sigma_star_table(kappa: float) -> np.ndarray:
    """``log sigma*(s)`` on ``_LOG_SNR_GRID``: the first crossing of ``G(s, .) = 1``."""
    ls = _LOG_SNR_GRID[:, None]
    vals = _load_ratio(ls, _LOG_SIGMA_GRID[None, :], kappa)  # (S, Sigma)
    over = vals >= 1.0
    first = np.where(over.any(axis=1), over.argmax(axis=1), -1)
    out = np.full(_LOG_SNR_GRID.size, math.log(NEVER))
    rows = np.flatnonzero(first > 0)
    lo, hi = _LOG_SIGMA_GRID[first[rows] - 1], _LOG_SIGMA_GRID[first[rows]]
    for _ in range(50):  # vectorised bisection inside the bracketing grid cell
        mid = 0.5 * (lo + hi)
        up = _load_ratio(_LOG_SNR_GRID[rows], mid, kappa) >= 1.0
        lo, hi = np.where(up, lo, mid), np.where(up, mid, hi)
    out[rows] = 0.5 * (lo + hi)
    out[first == 0] = _LOG_SIGMA_GRID[0]
    out.setflags(write=False)
    return out


def affordable_efficiency(mean_snr: ArrayLike, kappa: float) -> np.ndarray:
    """``sigma*(s)`` [bit/s/Hz]: the largest ``S / (w b)`` whose expected upload time under the
    deadline ``kappa b`` stays within ``b`` (first crossing of ``G = 1``; ``NEVER`` if ``G`` stays
    below 1, which happens at low SNR for ``kappa`` below about 3.5: the deadline alone keeps the
    mean within budget). Interpolated in ``log s`` on a table built once per ``kappa``
    (-80..120 dB; outside, the low/high-SNR end is extended with slope 1 / 0 in log-log).
    """
    table = _sigma_star_table(float(kappa))
    ls = np.log(np.asarray(mean_snr, float))
    inside = np.interp(ls, _LOG_SNR_GRID, table)
    # low-SNR regime: sigma* proportional to s (or NEVER throughout)
    below = np.where(table[0] >= math.log(NEVER), table[0], table[0] + ls - _LOG_SNR_GRID[0])
    return np.exp(np.where(ls < _LOG_SNR_GRID[0], below, inside))
