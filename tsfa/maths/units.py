"""Unit conversions. dB and dBm appear only at the configuration and plotting boundary.

Everything inside tsfa is SI: watts, hertz, seconds, bits, metres.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def db_to_linear(x_db: ArrayLike) -> np.ndarray:
    """Power ratio from decibels: ``10 ** (x_db / 10)``."""
    return np.power(10.0, np.asarray(x_db, dtype=float) / 10.0)


def linear_to_db(x: ArrayLike) -> np.ndarray:
    """Decibels from a (positive) power ratio: ``10 log10(x)``."""
    return 10.0 * np.log10(np.asarray(x, dtype=float))


def dbm_to_w(p_dbm: ArrayLike) -> np.ndarray:
    """Watts from dBm: ``10 ** ((p_dbm - 30) / 10)``. Also W/Hz from dBm/Hz."""
    return db_to_linear(np.asarray(p_dbm, dtype=float) - 30.0)


def w_to_dbm(p_w: ArrayLike) -> np.ndarray:
    """dBm from watts."""
    return linear_to_db(p_w) + 30.0
