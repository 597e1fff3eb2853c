"""P2 with a per-round deadline and deferral (docs/model.md §4 "Deep fades").

Given who sends, P2 restricted to the senders with their deadlines,

    min  sum_k p_k v_k phi(rho_k) + Q_k (a rho_k + h) / R(w_k)
    s.t. c_k + (a rho_k + h) / R(w_k) <= D_k,  sum_k w_k <= W_tot,  w_k >= w_min,  rho_min <= rho_k <= 1,

is convex in ``(log rho, w)`` for ``phi`` in {inv, inv_sq}: the deadline reads
``log(a e^x + h) - log R(w) <= log(D_k - c_k)`` (convex minus concave). It is solved exactly by the
reduced water-filling of :func:`tsfa.optim.p2_analytic.solve_joint` with two changes:

* a sender needs at least the share ``s_lo,k = max(s_min, s_req,k)``, ``R(s_req) (D_k - c_k) =
  a rho_min + h`` (the smallest upload must fit the deadline);
* the rho-step is capped by the deadline, ``rho_k(w) = clip(min(rho_free(w), rho_dl(w)), rho_min,
  1)`` with ``rho_dl(w) = ((D_k - c_k) R(w) - h) / a``. Where the cap binds the upload takes
  exactly its deadline and the marginal value of bandwidth is ``-p v phi'(rho_dl) (D - c) R'(w) /
  a`` (it meets the free marginal ``Q S R' / R^2`` continuously where the cap starts to bind). A
  client with ``Q_k = 0`` now wants bandwidth until ``rho_dl`` reaches 1, instead of ``rho = 1`` at
  ``w_min`` whatever its channel (the spike of docs/model.md §4).

Who sends is a mixed-integer choice; it is made by a Lagrangian test. A client defers when its
upload cannot fit its deadline even on the whole band (an outage), or when, at the bandwidth price
``lambda`` of the restricted solve, deferring is cheaper: ``p v phi(rho_min / 2) + Q c <
p v phi(rho) + Q T + lambda w``. The clients failing the test are dropped and the restricted
problem re-solved until no sender fails it or dropping no longer lowers the objective; then the
deferred clients that would gain at the final price are re-admitted the same way. Checked
against enumeration of every send set: the best set on all 60 instances of
tests/optim/test_deadline.py (K = 2..6).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from tsfa.maths.bound import phi_derivative
from tsfa.optim.problem import P2Problem
from tsfa.optim.result import OPTIMAL, SolveResult
from tsfa.optim.waterfill import LN2, _d_of_x, rho_step, scaled_rate, waterfill

_LOG_FLOOR = -700.0


def required_share(g, target, iters: int = 60) -> np.ndarray:
    """Smallest share ``s`` in (0, 1] with ``s log2(1 + g / s) >= target`` (scaled rate, see
    :mod:`tsfa.optim.waterfill`); ``inf`` where even ``s = 1`` is too little. Safeguarded Newton
    in ``log s`` (``log R`` is concave increasing in ``log s``)."""
    g, target = np.broadcast_arrays(np.asarray(g, float), np.asarray(target, float))
    full = scaled_rate(1.0, g)
    ok = full >= target
    with np.errstate(divide="ignore", invalid="ignore"):
        hi = np.log(np.clip(target / np.log2(1.0 + g), 1e-300, 1.0))
    hi = np.where(ok, hi, 0.0)
    lo = hi - 60.0
    v = hi.copy()
    for _ in range(iters):
        s = np.exp(v)
        x = g / s
        lg = np.log1p(x)
        f = np.log(s * lg / LN2) - np.log(np.where(ok, target, 1.0))
        lo, hi = np.where(f < 0, v, lo), np.where(f >= 0, v, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = v - f / (1.0 - x / ((1.0 + x) * lg))
        v_new = np.where((step > lo) & (step < hi), step, 0.5 * (lo + hi))
        if np.max(np.abs(v_new - v), initial=0.0) < 1e-13:
            v = v_new
            break
        v = v_new
    return np.where(ok, np.minimum(np.exp(hi), 1.0), np.inf)


@dataclasses.dataclass(frozen=True)
class _Senders:
    """Scaled data of the clients that send: shares, seconds (see :mod:`tsfa.optim.waterfill`)."""

    g: np.ndarray  # gamma / W_tot
    q: np.ndarray  # Q_k [s]
    pv: np.ndarray  # p_k v_k
    slack: np.ndarray  # D_k - c_k [s] (inf: no deadline)
    s_lo: np.ndarray  # smallest share
    a_s: float
    h_s: float
    rho_min: float
    phi: str

    def rho(self, x, lg):
        """``(rho, e, capped, rate)`` at SNR-on-share ``x = g / s`` (``lg = log(1 + x)``)."""
        rate = self.g * lg / (x * LN2)
        rho_f, e = rho_step(self.phi, self.pv, self.q * self.a_s, rate, self.rho_min)
        with np.errstate(invalid="ignore"):
            rho_dl = (self.slack * rate - self.h_s) / self.a_s
        # the cap binds below the free optimum; not where the free optimum is rho_min itself
        capped = (rho_dl < np.minimum(rho_f, 1.0)) & (rho_f > self.rho_min)
        rho = np.clip(np.where(capped, rho_dl, rho_f), self.rho_min, 1.0)
        return rho, np.where(capped, 0.0, e), capped, rate

    def logm_at(self, u, idx):
        """:meth:`logm` on the clients ``idx`` only."""
        sub = dataclasses.replace(self, g=self.g[idx], q=self.q[idx], pv=self.pv[idx],
                                  slack=self.slack[idx], s_lo=self.s_lo[idx])
        return sub.logm(u)

    def logm(self, u):
        """``log m(u)`` and ``d log m / d u`` of the marginal value of bandwidth (module doc)."""
        x = np.exp(u)
        lg = np.log1p(x)
        t = x / (1.0 + x)
        d = _d_of_x(x, lg)
        rho, e, capped, rate = self.rho(x, lg)
        s_bits = self.a_s * rho + self.h_s
        r1 = t / lg
        with np.errstate(divide="ignore", invalid="ignore"):
            f_free = (np.log(self.q * LN2) - 2.0 * np.log(self.g) + 2.0 * u
                      + np.log(s_bits * d / (lg * lg)))
            sl_free = 2.0 + t * t / d - 2.0 * r1 + (self.a_s * rho / s_bits) * e * (r1 - 1.0)
            f_cap = (np.log(self.pv * self.slack / (self.a_s * LN2))
                     + np.log(-phi_derivative(rho, self.phi)) + np.log(d))
            dlog_phi = {"inv": -2.0 / rho, "inv_sq": -1.0 / (2.0 - rho) - 3.0 / rho,
                        "linear": 0.0 * rho}[self.phi]
            sl_cap = dlog_phi * self.slack * rate * (r1 - 1.0) / self.a_s + t * t / d
        f = np.where(capped, f_cap, f_free)
        sl = np.where(capped, sl_cap, sl_free)
        low = ~(f > _LOG_FLOOR)
        return np.where(low, _LOG_FLOOR, f), np.where(low | ~(sl > 0), 1.0, sl)


def _scaled(p: P2Problem, mask: np.ndarray, s_lo: np.ndarray) -> _Senders:
    wt = p.total_bandwidth_hz
    return _Senders(p.gamma_hz[mask] / wt, p.queues[mask], (p.weights * p.penalty_weights)[mask],
                    (p.deadline_s - p.compute_s)[mask], s_lo[mask], p.slope_bits / wt,
                    p.head_bits / wt, p.rho_min, p.phi)


def waterfill_senders(p: P2Problem, mask: np.ndarray, s_lo: np.ndarray):
    """Exact restricted P2 over the senders ``mask`` (module docstring): ``(rho, w, lambda)``
    with full-length (K,) arrays (0 for the others) and ``lambda`` per Hz."""
    sd = _scaled(p, mask, s_lo)
    k = p.n_clients
    rho, w = np.zeros(k), np.zeros(k)
    if not mask.any():
        return rho, w, 0.0
    active = (sd.q > 0) | (sd.pv > 0)
    # where the deadline lets rho reach 1 the marginal value of bandwidth jumps down
    s_one = required_share(sd.g, (sd.a_s + sd.h_s) / sd.slack)
    with np.errstate(divide="ignore"):
        kinks = np.where(np.isfinite(s_one) & (s_one > sd.s_lo), np.log(sd.g / s_one), np.nan)
    s, lam, u, _ = waterfill(sd.logm, sd.g, sd.s_lo, active, kinks=kinks, logm_at=sd.logm_at)
    s = np.maximum(s, sd.s_lo)
    s = s / s.sum()  # excess from round-off, or band nobody values (lambda = 0): spread it,
    s = np.maximum(s, sd.s_lo)  # which only shortens uploads
    x = sd.g / s
    rho[mask] = sd.rho(x, np.log1p(x))[0]
    w[mask] = s * p.total_bandwidth_hz
    lam = 0.0 if not active.any() else lam
    return rho, w, lam / p.total_bandwidth_hz


def sender_floor(p: P2Problem) -> np.ndarray:
    """(K,) smallest share each client needs to send ``rho_min`` within its deadline on the
    round's channel, at least ``w_min / W_tot``; ``inf`` for an outage (deadline unreachable)."""
    wt = p.total_bandwidth_hz
    slack = p.deadline_s - p.compute_s
    with np.errstate(divide="ignore", invalid="ignore"):
        target = np.where(slack > 0, (p.slope_bits * p.rho_min + p.head_bits) / wt / slack, np.inf)
    need = required_share(p.gamma_hz / wt, np.where(np.isfinite(target), target, 0.0))
    need = np.where(np.isfinite(target), need, np.inf)
    return np.maximum(need, p.min_bandwidth_hz / wt)


def choose_senders(p: P2Problem, restricted, max_rounds: int = 30):
    """Who sends (module docstring): start from every client whose deadline is reachable (the
    largest floors deferred first while the floors exceed the band), re-solve ``restricted(mask,
    s_lo) -> (rho, w, lambda)`` and drop the clients that fail the Lagrangian test, the most
    failing first (all of them, else the worse half, ... until the objective falls; it never
    rises). Returns the best ``(rho, w, lambda, solves)``."""
    s_lo = sender_floor(p)
    mask = np.isfinite(s_lo) & (s_lo <= 1.0)
    if s_lo[mask].sum() > 1.0:  # the floors alone overfill the band: defer the hungriest
        order = np.flatnonzero(mask)[np.argsort(-s_lo[mask], kind="stable")]
        excess = np.cumsum(s_lo[order][::-1])[::-1]  # floors of order[i:]
        mask[order[excess > 1.0]] = False
    pv = p.weights * p.penalty_weights
    defer_cost = pv * p.defer_phi + p.queues * p.compute_s
    rho, w, lam = restricted(mask, s_lo)
    best, it = (p.objective(rho, w), rho, w, lam), 1
    while it < max_rounds:
        rho, w, lam = best[1:]
        gain = defer_cost - (p.penalty(rho, w) + p.queues * p.latency_s(rho, w) + lam * w)
        failing = np.flatnonzero(mask & (gain < -1e-12 * np.abs(defer_cost)))
        failing = failing[np.argsort(gain[failing], kind="stable")]  # most to gain first
        back = np.array([], int)
        if not failing.size:  # nobody fails: would a deferred client gain at this price?
            back = _readmit(p, ~mask & np.isfinite(s_lo) & (s_lo <= 1.0), s_lo, lam, defer_cost)
        n, accepted = max(failing.size, back.size), False
        while n and it < max_rounds:  # drop (re-admit) the n most failing (gaining); halve n
            trial = mask.copy()
            trial[failing[:n]] = False
            trial[back[:n]] = True
            if s_lo[trial].sum() > 1.0:  # the floors would overfill the band
                n //= 2
                continue
            out = restricted(trial, s_lo)
            it += 1
            obj = p.objective(*out[:2])
            if obj < best[0]:
                best, mask, accepted = (obj, *out), trial, True
                break
            n //= 2
        if not accepted:
            break
    return best[1], best[2], best[3], it


def _readmit(p: P2Problem, deferred: np.ndarray, s_lo, lam: float, defer_cost) -> np.ndarray:
    """Deferred clients that would gain by sending at the bandwidth price ``lam`` [per Hz], most
    gaining first: each one's best ``pen + Q T + lam w`` over its own share (one-client
    water-filling, bisection on ``m(s) = lam``) against its deferral cost."""
    idx = np.flatnonzero(deferred)
    if not idx.size:
        return np.array([], int)
    mask = np.zeros(p.n_clients, bool)
    mask[idx] = True
    sd = _scaled(p, mask, s_lo)
    ell = math.log(max(lam * p.total_bandwidth_hz, 1e-300))
    lo, hi = np.log(sd.g), np.log(sd.g / sd.s_lo)  # u at s = 1 and at s = s_lo
    f_hi, f_lo = sd.logm(hi)[0], sd.logm(lo)[0]
    a, b = lo.copy(), hi.copy()
    for _ in range(60):
        mid = 0.5 * (a + b)
        up = sd.logm(mid)[0] >= ell  # marginal above the price: a larger share pays
        a, b = np.where(up, a, mid), np.where(up, mid, b)
    u = np.where(f_hi <= ell, hi, np.where(f_lo >= ell, lo, 0.5 * (a + b)))
    s = sd.g / np.exp(u)
    rho = sd.rho(np.exp(u), np.log1p(np.exp(u)))[0]
    w = s * p.total_bandwidth_hz
    sub = restrict(p, mask)
    cost = sub.penalty(rho, w) + sub.queues * sub.latency_s(rho, w) + lam * w
    gain = defer_cost[idx] - cost
    keep = gain > 1e-12 * np.abs(defer_cost[idx])
    return idx[keep][np.argsort(-gain[keep], kind="stable")]


def solve_deadline(p: P2Problem, restricted=None) -> SolveResult:
    """P2 with deadlines and deferral; ``restricted`` solves the senders' problem (default: the
    exact reduced water-filling :func:`waterfill_senders`; :class:`tsfa.optim.CvxpyP2` provides
    a CVXPY one). Solution: ``rho``, ``bandwidth_hz`` (0 for a deferred client) and ``sent``."""
    if not p.defers:
        raise ValueError("deadline_s: solve_deadline needs a P2Problem with deadlines")
    if p.phi == "linear":
        raise ValueError("phi='linear': P2 is not convex; deadlines and deferral need phi in "
                         "('inv', 'inv_sq')")
    t0 = time.perf_counter()
    rho, w, lam, it = choose_senders(p, restricted or (lambda m, s: waterfill_senders(p, m, s)))
    sent = w > 0
    return SolveResult(OPTIMAL, p.objective(rho, w), {"rho": rho, "bandwidth_hz": w, "sent": sent},
                       {"bandwidth_per_hz": lam}, it, time.perf_counter() - t0, "joint",
                       f"{int(sent.sum())} of {p.n_clients} clients send")


def restrict(p: P2Problem, mask: np.ndarray, **changes) -> P2Problem:
    """The same P2 on the clients of ``mask`` only (arrays sliced, scalars kept)."""
    sl = {f: getattr(p, f)[mask] for f in ("weights", "gamma_hz", "queues", "penalty_weights",
                                           "compute_s")}
    if p.deadline_s is not None:
        sl["deadline_s"] = p.deadline_s[mask]
    return dataclasses.replace(p, **sl, **changes)


def max_latency_p2(p: P2Problem, z_s: float, evaluate, grid: int = 8, refine: int = 14):
    """The ``max`` variant of P2 (docs/model.md §4): ``min V pen + Z max_k T_k``.

    ``= min_tau Z tau + Pen(tau)`` with ``Pen(tau)`` the least penalty when every client finishes
    by ``min(tau, D_k)`` (queues 0; deferral as in ``p``). ``evaluate(tau) -> (rho, w)`` gives
    that allocation (``None`` if none exists). Search: ``grid`` log-spaced values of
    ``tau - max_k c_k`` between the smallest and the largest useful tau, then golden-section
    refinement around the best. Returns ``(rho, w, tau, evaluations)``.
    """
    c_max = float(np.max(p.compute_s))
    wt, k = p.total_bandwidth_hz, p.n_clients
    full = (p.slope_bits + p.head_bits) / scaled_rate(wt / k, p.gamma_hz)
    hi = float(np.max(p.compute_s + full)) - c_max  # everyone at rho = 1 on equal shares
    if p.defers and np.all(np.isfinite(p.deadline_s)):
        hi = min(hi, float(np.max(p.deadline_s)) - c_max)
    hi = max(hi, 1e-9)
    cache: dict = {}

    def cost(log_tau):
        if log_tau not in cache:
            out = evaluate(c_max + math.exp(log_tau))
            if out is None:
                cache[log_tau] = (math.inf, None)
            else:
                rho, w = out
                val = float(np.sum(p.penalty(rho, w)) + z_s * np.max(p.latency_s(rho, w)))
                cache[log_tau] = (val, out)
        return cache[log_tau][0]

    pts = np.linspace(math.log(hi) - 12.0, math.log(hi), grid) if z_s > 0 else [math.log(hi)]
    vals = [cost(t) for t in pts]
    i = int(np.argmin(vals))
    if z_s > 0 and math.isfinite(vals[i]):
        a, b = pts[max(i - 1, 0)], pts[min(i + 1, len(pts) - 1)]
        gr = (math.sqrt(5) - 1) / 2
        c, d = b - gr * (b - a), a + gr * (b - a)
        for _ in range(refine):
            if cost(c) <= cost(d):
                b, d = d, c
                c = b - gr * (b - a)
            else:
                a, c = c, d
                d = a + gr * (b - a)
    best = min(cache, key=lambda t: cache[t][0])
    val, out = cache[best]
    if out is None:
        return None, None, math.nan, len(cache)
    return out[0], out[1], c_max + math.exp(best), len(cache)
