"""The online controller's penalty normalisation (docs/model.md §4, "The penalty's normalisation").

P2 weighs ``p_k phi(rho_k)`` by ``V Gamma_k`` against ``Q_k T_k`` [s^2]. At an interior optimum
the ratio satisfies ``p_k V Gamma_k |phi'(rho_k)| = Q_k a / R_k`` (docs/model.md §4), so the queue
level at which the controller holds client k's budget is ``Q_k* = V p_k Gamma_k |phi'(rho_k*)|
R_k / a``: it scales with the slope of phi at the operating ratio. Normalising ``Gamma_k`` by
that slope makes ``Q_k* = V (Tbar_k - T^cmp_k)`` whatever the rank and the phi form, so V keeps
one meaning and the queue's fluctuation over a finite horizon (which sets the overshoot of the
time-averaged latency, §4 "Finite horizon") does not grow with ``r`` or with a steeper phi.
Pure functions on arrays; SI units in the names.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from tsfa.maths.bound import phi_derivative


def operating_ratio(uplink_budget_s: ArrayLike, rate_bps: ArrayLike, slope_bits: float,
                    head_bits: float, rho_min: float) -> np.ndarray:
    """``rho_k* = clip(((Tbar_k - T^cmp_k) R_k - h) / a, rho_min, 1)``: the ratio whose upload
    takes exactly the uplink budget ``Tbar_k - T^cmp_k`` [s] at the rate ``R_k`` [bit/s]
    (docs/model.md §4); ``a`` [bits per unit rho], ``h`` [bits]."""
    s = np.asarray(uplink_budget_s, float)
    r = np.asarray(rate_bps, float)
    return np.clip((s * r - float(head_bits)) / float(slope_bits), float(rho_min), 1.0)


def penalty_scale_s2(weights: ArrayLike, uplink_budget_s: ArrayLike, rate_bps: ArrayLike,
                     slope_bits: float, head_bits: float, rho_min: float,
                     phi: str) -> np.ndarray:
    """``Gamma_k = (Tbar_k - T^cmp_k) u_k / (p_k |phi'(rho_k*)|)`` [s^2] (docs/model.md §4):
    ``u_k = a / R_k`` the upload time of the whole rank at rate ``R_k`` [s], ``rho_k*``
    :func:`operating_ratio`. Then ``Q_k* = V (Tbar_k - T^cmp_k)`` at the operating ratio: queue
    levels of the order of the uplink budget at V = 1, for every rank and phi form."""
    p = np.asarray(weights, float)
    s = np.asarray(uplink_budget_s, float)
    r = np.asarray(rate_bps, float)
    rho = operating_ratio(s, r, slope_bits, head_bits, rho_min)
    slope = np.abs(phi_derivative(rho, phi))
    return s * (float(slope_bits) / r) / (p * slope)


__all__ = ["operating_ratio", "penalty_scale_s2"]
