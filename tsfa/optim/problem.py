"""The per-round drift-plus-penalty problem P2 on plain arrays (docs/model.md §4).

    min_{rho, w}  sum_k p_k v_k phi(rho_k) + sum_k Q_k (c_k + (a rho_k + h) / R(w_k, gamma_k))
    s.t.          sum_k w_k <= W_tot,   w_k >= w_min,   rho_min <= rho_k <= 1

with ``R(w, gamma) = w log2(1 + gamma / w)`` (:func:`tsfa.maths.wireless.rate_bps`), ``v_k = V Gamma_k``
already scaled by the caller, ``a`` the payload slope [bits per unit rho], ``h`` the head bits,
``c_k`` the compute latency [s]. KKT conditions (multiplier ``lambda >= 0`` of the bandwidth sum,
``mu_k >= 0`` of ``w_k >= w_min``), with ``S_k = a rho_k + h``:

    rho:  p_k v_k phi'(rho_k) + Q_k a / R_k  = 0 unless rho_k sits at a bound (projected gradient)
    w:    Q_k S_k R'_k(w_k) / R_k(w_k)^2 = lambda - mu_k,   mu_k (w_k - w_min) = 0
    lambda (W_tot - sum_k w_k) = 0

With a per-round deadline ``D_k`` (``deadline_s``, docs/model.md §4 "Deep fades") each client
either sends, within its deadline, ``c_k + (a rho_k + h) / R(w_k) <= D_k``, or defers: it sends
nothing (``rho_k = 0``, ``w_k = 0``: the update stays in its error-feedback memory), its round
latency is its compute time ``c_k`` and its penalty is ``p_k v_k phi(defer_rho)``, by default
``defer_rho = rho_min / 2`` (a deferred round counts as sending half of the smallest ratio: for
``phi = inv`` this is exactly the first-order cost of a missed round in the participation model
``phi(pi rho)``); the federated system sets it rank-independent (:class:`P2Constants`). A solution
encodes deferral as ``w_k = 0``; :mod:`tsfa.optim.p2_deadline` chooses who defers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from tsfa.maths.bound import PHI_VARIANTS, phi, phi_derivative
from tsfa.maths.wireless import rate_bps, rate_derivative, upload_time_s


def _vec(name: str, x, k: int | None) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(x, dtype=float))
    if arr.ndim != 1:
        raise ValueError(f"{name}: must be a 1-D array, got shape {arr.shape}")
    if k is not None:
        if arr.size == 1:
            arr = np.full(k, arr[0])
        elif arr.size != k:
            raise ValueError(f"{name}: must have length K={k}, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: must be finite")
    return arr


@dataclass(frozen=True)
class P2Constants:
    """The constants of P2 (docs/model.md §4): what stays fixed from round to round, shared by
    :class:`P2Problem` and the policies that build one each round
    (:class:`tsfa.control.base.BasePolicy`). Validated at creation.

    Args:
        slope_bits: a > 0, payload bits per unit rho.
        head_bits: h >= 0, rho-independent bits.
        total_bandwidth_hz: W_tot > 0 [Hz].
        min_bandwidth_hz: w_min > 0 [Hz].
        rho_min: 0 < rho_min <= 1 (1 / r).
        phi: one of ``tsfa.maths.bound.PHI_VARIANTS``.
        defer_rho: the ratio at which a deferred round is priced, ``phi(defer_rho)``, in
            (0, rho_min]; ``None``: ``rho_min / 2`` (half a component of this rank). The federated
            system prices it at half a component of the largest candidate rank, the same at every
            rank (:func:`tsfa.control.from_spec.policy_arrays`, docs/model.md §4).
    Raises:
        ValueError naming the argument and its allowed range.
    """

    slope_bits: float
    head_bits: float
    total_bandwidth_hz: float
    min_bandwidth_hz: float
    rho_min: float
    phi: str = "inv"
    defer_rho: float | None = None

    def __post_init__(self):
        checks = {
            "slope_bits": (self.slope_bits, "> 0", lambda x: x > 0),
            "head_bits": (self.head_bits, ">= 0", lambda x: x >= 0),
            "total_bandwidth_hz": (self.total_bandwidth_hz, "> 0", lambda x: x > 0),
            "min_bandwidth_hz": (self.min_bandwidth_hz, "> 0", lambda x: x > 0),
            "rho_min": (self.rho_min, "in (0, 1]", lambda x: 0 < x <= 1),
        }
        for name, (val, rng, ok) in checks.items():
            if not (np.isfinite(val) and ok(float(val))):
                raise ValueError(f"{name}: must be {rng}, got {val!r}")
            object.__setattr__(self, name, float(val))
        if self.phi not in PHI_VARIANTS:
            raise ValueError(f"phi: must be one of {PHI_VARIANTS}, got {self.phi!r}")
        if self.defer_rho is not None:
            if not (np.isfinite(self.defer_rho) and 0 < float(self.defer_rho) <= self.rho_min):
                raise ValueError(f"defer_rho: must be in (0, rho_min = {self.rho_min:g}], got "
                                 f"{self.defer_rho!r}")
            object.__setattr__(self, "defer_rho", float(self.defer_rho))

    @property
    def defer_phi(self) -> float:
        """Penalty factor of a deferred round, ``phi(defer_rho)`` (``defer_rho`` defaults to
        ``rho_min / 2``; module docstring)."""
        rho = 0.5 * self.rho_min if self.defer_rho is None else self.defer_rho
        return float(phi(rho, self.phi))

    def p2_constants(self) -> dict:
        """The fields of :class:`P2Constants` by name (e.g. to build a :class:`P2Problem`)."""
        return {f.name: getattr(self, f.name) for f in fields(P2Constants)}


@dataclass(frozen=True)
class _ClientArrays:
    """The per-client arrays of P2, the first fields of :class:`P2Problem`."""

    weights: np.ndarray
    gamma_hz: np.ndarray
    queues: np.ndarray
    penalty_weights: np.ndarray
    compute_s: np.ndarray


@dataclass(frozen=True)
class P2Problem(P2Constants, _ClientArrays):
    """One instance of P2 (docs/model.md §4). Arrays have shape (K,); scalars are broadcast.

    Fields, in this order (dataclasses take the bases' fields in reverse method-resolution order):

    Args:
        weights: p_k >= 0 (aggregation weights; any nonnegative scale).
        gamma_hz: gamma_k = P |h|^2 / N0 > 0 [Hz].
        queues: virtual queues Q_k >= 0 [s].
        penalty_weights: v_k = V Gamma_k >= 0 (already multiplied by V).
        compute_s: c_k >= 0 compute latency [s].
        slope_bits, head_bits, total_bandwidth_hz, min_bandwidth_hz, rho_min, phi: the
            constants, :class:`P2Constants`.
        deadline_s: ``None`` (no deadline, no deferral: the original P2) or the per-round
            latency deadline D_k > 0 [s], (K,) or scalar; ``inf`` entries have none.
    Raises:
        ValueError naming the argument and its allowed range. ``K w_min > W_tot`` is *not* an
        error: solvers return status ``"infeasible"`` with that reason.
    """

    deadline_s: np.ndarray | None = None

    def __post_init__(self):
        gamma = _vec("gamma_hz", self.gamma_hz, None)
        k = gamma.size
        if k < 1:
            raise ValueError("gamma_hz: need at least one client (K >= 1)")
        arrays = {
            "gamma_hz": gamma,
            "weights": _vec("weights", self.weights, k),
            "queues": _vec("queues", self.queues, k),
            "penalty_weights": _vec("penalty_weights", self.penalty_weights, k),
            "compute_s": _vec("compute_s", self.compute_s, k),
        }
        if np.any(gamma <= 0):
            raise ValueError("gamma_hz: must be > 0 (SNR-bandwidth product in Hz)")
        for name in ("weights", "queues", "penalty_weights", "compute_s"):
            if np.any(arrays[name] < 0):
                raise ValueError(f"{name}: must be >= 0")
        for name, arr in arrays.items():
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        super().__post_init__()
        if self.deadline_s is not None:
            dl = np.broadcast_to(np.asarray(self.deadline_s, float), (k,)).copy()
            if np.any(np.isnan(dl)) or np.any(dl <= 0):
                raise ValueError("deadline_s: must be > 0 (inf = no deadline) or None")
            dl.setflags(write=False)
            object.__setattr__(self, "deadline_s", dl)

    # ------------------------------------------------------------------ basics
    @property
    def n_clients(self) -> int:
        return int(self.gamma_hz.size)

    @property
    def infeasibility(self) -> str:
        """Empty string when feasible, else the reason (only ``K w_min > W_tot`` can fail)."""
        k, wmin, wtot = self.n_clients, self.min_bandwidth_hz, self.total_bandwidth_hz
        if k * wmin > wtot * (1 + 1e-12):
            return f"K * min_bandwidth_hz = {k} * {wmin:g} Hz exceeds total_bandwidth_hz {wtot:g} Hz"
        return ""

    @property
    def defers(self) -> bool:
        """True when clients may defer (a deadline is set)."""
        return self.deadline_s is not None

    def sent(self, bandwidth_hz) -> np.ndarray:
        """(K,) bool: who sends (``w_k > 0``); every client when deferral is off."""
        w = np.asarray(bandwidth_hz, float)
        return w > 0 if self.defers else np.ones(w.shape, bool)

    def latency_s(self, rho, bandwidth_hz) -> np.ndarray:
        """Per-client round latency ``T_k = c_k + (a rho_k + h) / R(w_k, gamma_k)`` [s], (K,);
        ``c_k`` for a deferred client."""
        bits = self.slope_bits * np.asarray(rho, float) + self.head_bits
        up = upload_time_s(np.where(self.sent(bandwidth_hz), bits, 0.0), bandwidth_hz,
                           self.gamma_hz)
        return self.compute_s + up

    def penalty(self, rho, bandwidth_hz) -> np.ndarray:
        """Per-client penalty ``p_k v_k phi(rho_k)`` (``phi(defer_rho)`` if deferred), (K,)."""
        sent = self.sent(bandwidth_hz)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(sent, phi(np.where(sent, rho, 1.0), self.phi), self.defer_phi)
        return self.weights * self.penalty_weights * f

    def objective(self, rho, bandwidth_hz) -> float:
        """P2 objective at ``(rho, w)``; the single numpy scorer used for every solver."""
        lat = self.latency_s(rho, bandwidth_hz)
        return float(np.sum(self.penalty(rho, bandwidth_hz))
                     + np.sum(np.where(self.queues > 0, self.queues * lat, 0.0)))

    def max_violation(self, rho, bandwidth_hz) -> float:
        """Largest relative constraint violation (0 when feasible): bandwidth sum, bounds of the
        clients that send, and their deadlines."""
        w, rho = np.asarray(bandwidth_hz, float), np.asarray(rho, float)
        sent = self.sent(w)
        if not sent.any():
            return 0.0
        worst = [(w.sum() - self.total_bandwidth_hz) / self.total_bandwidth_hz,
                 np.max((self.min_bandwidth_hz - w[sent]) / self.min_bandwidth_hz),
                 np.max(self.rho_min - rho[sent]), np.max(rho[sent] - 1.0), 0.0]
        if self.defers:
            lat, dl = self.latency_s(rho, w)[sent], self.deadline_s[sent]
            fin = np.isfinite(dl)
            if fin.any():
                worst.append(np.max((lat[fin] - dl[fin]) / dl[fin]))
        return float(max(worst))


def kkt_residual(problem: P2Problem, rho, bandwidth_hz, lam_per_hz: float) -> dict[str, float]:
    """Relative KKT residuals of P2 at ``(rho, w, lambda)`` (docs/model.md §4; conditions in module doc).

    Each residual is normalised by the magnitude of the terms it balances, so 0 means exact:
      ``rho``: projected gradient ``|rho - clip(rho - g/|scale|, rho_min, 1)|`` with
        ``g = p v phi'(rho) + Q a / R`` (``phi = linear`` uses the sign test at the bound).
      ``w``: interior clients ``|m_k - lambda| / (m_k + lambda)`` with
        ``m_k = Q S R'/R^2`` (lambda in per-Hz units); clients at ``w_min``:
        ``max(m_k - lambda, 0) / (m_k + lambda)`` (``mu_k = lambda - m_k >= 0``).
      ``slack``: ``lambda (W_tot - sum w) / (lambda W_tot + tiny)``; ``primal``: max violation.
    Returns ``{"rho": ..., "w": ..., "slack": ..., "primal": ..., "max": ...}``.
    """
    p = problem
    rho = np.asarray(rho, dtype=float)
    w = np.asarray(bandwidth_hz, dtype=float)
    rate = rate_bps(w, p.gamma_hz)
    pv = p.weights * p.penalty_weights
    g_pen = pv * phi_derivative(rho, p.phi)
    g_lat = p.queues * p.slope_bits / rate
    g = g_pen + g_lat
    scale = np.abs(g_pen) + np.abs(g_lat) + 1e-300
    step = np.clip(rho - g / scale, p.rho_min, 1.0)
    r_rho = float(np.max(np.abs(rho - step)))
    if p.phi == "linear":  # a linear objective in rho: optimality is the sign of g at the bound
        wrong = ((g < 0) & (rho < 1 - 1e-12)) | ((g > 0) & (rho > p.rho_min + 1e-12))
        r_rho = float(np.max(np.where(wrong, np.abs(g) / scale, 0.0)))
    m = p.queues * (p.slope_bits * rho + p.head_bits) * rate_derivative(w, p.gamma_hz) / rate**2
    at_min = w <= p.min_bandwidth_hz * (1 + 1e-9)
    den = m + lam_per_hz + 1e-300
    r_w = np.where(at_min, np.maximum(m - lam_per_hz, 0.0), np.abs(m - lam_per_hz)) / den
    slack = lam_per_hz * (p.total_bandwidth_hz - w.sum()) / (lam_per_hz * p.total_bandwidth_hz
                                                              + 1e-300)
    out = {"rho": r_rho, "w": float(np.max(r_w)), "slack": float(abs(slack)),
           "primal": p.max_violation(rho, w)}
    out["max"] = max(out.values())
    return out
