"""Building blocks of the analytic P2 solvers (docs/model.md §4): rho-step and bandwidth water-filling.

Scaling: bandwidth as shares ``s = w / W_tot``, ``g = gamma / W_tot``, times ``a / W_tot`` and
``h / W_tot`` in seconds; then ``Rbar(s) = s log2(1 + g / s) = R(w) / W_tot`` and all quantities
are O(1) whatever the bandwidth in Hz.

Marginal value of bandwidth. With the SNR on the allocated band ``x = g / s`` and ``u = log x``,
``L = log(1 + x)``, ``D = L - x / (1 + x)`` (so ``R' = D / ln 2``), the KKT marginal

    m(s) = Q S R'(s) / R(s)^2 = Q S ln2 psi(x) / g^2,      psi(x) = x^2 D / L^2,

with ``psi`` a universal increasing function; ``d log psi / d u`` lies in [1.8, 2], so Newton in
``u`` on ``log m(u) = log lambda`` converges in a few steps (safeguarded by a bracket).
"""

from __future__ import annotations

import math

import numpy as np

from tsfa.maths.wireless import rate_bps

LN2 = math.log(2.0)
_SERIES = np.array([(-1) ** n * (n - 1) / n for n in range(2, 16)])


def _d_of_x(x: np.ndarray, log1p_x: np.ndarray) -> np.ndarray:
    """``D(x) = log(1 + x) - x / (1 + x)``, by its series ``sum_n (-1)^n (n-1)/n x^n`` for x<1e-2."""
    direct = log1p_x - x / (1.0 + x)
    small = x < 1e-2
    if np.any(small):
        xs = x[small]
        acc = np.zeros_like(xs)
        for c in _SERIES[::-1]:  # Horner on x^2 (c2 + c3 x + ...)
            acc = acc * xs + c
        direct = direct.copy()
        direct[small] = acc * xs * xs
    return direct


def log_psi(u: np.ndarray):
    """``log psi(e^u)`` and its slope ``d log psi / d u`` (see module docstring), vectorised."""
    x = np.exp(u)
    lg = np.log1p(x)
    d = _d_of_x(x, lg)
    val = 2.0 * u + np.log(d) - 2.0 * np.log(lg)
    slope = 2.0 + x * x / ((1.0 + x) ** 2 * d) - 2.0 * x / ((1.0 + x) * lg)
    return val, slope


def dlog_rate_du(u: np.ndarray) -> np.ndarray:
    """``d log R / d u`` at fixed gamma, ``u = log(gamma / w)``: ``x / ((1 + x) L) - 1`` in (-1, 0)."""
    x = np.exp(u)
    return x / ((1.0 + x) * np.log1p(x)) - 1.0


def rho_step(variant: str, pv, qa, rate, rho_min: float):
    """Optimal rho for fixed bandwidth: ``argmin p v phi(rho) + Q a rho / R`` on [rho_min, 1].

    ``pv = p_k v_k``, ``qa = Q_k a`` and ``rate = R_k`` in any consistent units (only ``qa/rate``
    matters). Closed forms (docs/model.md §4):
      inv:    ``rho = clip(sqrt(pv R / (Q a)), rho_min, 1)``;
      inv_sq: stationarity ``c rho^3 + rho - 2 = 0`` with ``c = Q a / (p v R)`` (unique positive
              root, Cardano then two Newton polishes), clipped;
      linear: bang-bang on the sign of ``Q a / R - p v`` (ties -> 1).
    ``Q = 0`` gives rho = 1; ``p v = 0 < Q`` gives rho_min.
    Returns ``(rho, e)`` with ``e = d log rho / d log R`` (0 at a bound), shapes (K,).
    """
    pv, qa, rate = (np.asarray(z, dtype=float) for z in (pv, qa, rate))
    zero_q = qa <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        if variant == "inv":
            raw = np.sqrt(pv * rate / qa)
            e_int = np.full_like(raw, 0.5)
        elif variant == "inv_sq":
            c = qa / (pv * rate)
            p_, q_ = 1.0 / c, -2.0 / c
            sq = np.sqrt(q_ * q_ / 4.0 + p_**3 / 27.0)
            raw = np.cbrt(-q_ / 2.0 + sq) + np.cbrt(-q_ / 2.0 - sq)
            raw = np.where(np.isfinite(c) & (c > 0), raw, np.where(c > 0, 0.0, np.inf))
            for _ in range(2):
                fin = np.isfinite(raw) & (raw > 0)
                upd = raw - (c * raw**3 + raw - 2.0) / (3.0 * c * raw**2 + 1.0)
                raw = np.where(fin, upd, raw)
            e_int = c * raw**3 / (3.0 * c * raw**3 + raw)
        elif variant == "linear":
            raw = np.where(qa / rate > pv, 0.0, np.inf)
            e_int = np.zeros_like(raw)
        else:
            raise ValueError(f"phi: unknown variant {variant!r}")
    raw = np.where(zero_q | np.isnan(raw), np.inf, raw)  # nan (0/0) and +inf -> inf
    rho = np.clip(raw, rho_min, 1.0)
    interior = (raw > rho_min) & (raw < 1.0)
    return rho, np.where(interior, e_int, 0.0)


def waterfill(logm, g, s_min: float, active, u0=None, tol: float = 1e-13, max_iter: int = 200,
              kinks=None, logm_at=None):
    """Bandwidth shares solving ``m_k(s_k) = lambda`` or ``s_k = s_min``, ``sum_k s_k = 1``.

    Problem (convex, separable, one coupling constraint; docs/model.md §4 w-step):
        min_s sum_k G_k(s_k)  s.t.  sum_k s_k <= 1, s_k >= s_min,   -G_k' = m_k decreasing.
    KKT: ``m_k(s_k) = lambda`` if ``s_k > s_min``, ``m_k(s_min) <= lambda`` otherwise.
    Args:
        logm: ``u -> (log m(u), d log m / du)`` on all K clients, ``u = log(g / s)``.
        g: scaled gains gamma / W_tot, (K,). active: bool (K,) clients with ``Q > 0``.
        s_min: smallest share, scalar or (K,).
        u0: warm start for ``u``, (K,).
        kinks: ``u`` (K,) where ``m`` may jump down as the share grows (``nan``: none); a client
            whose multiplier falls inside the jump is placed exactly there (the deadline
            solver's ``rho = 1`` points), instead of being bisected to it.
        logm_at: ``(u_sub, idx) -> logm`` on the clients ``idx`` only; with it each inner
            Newton step evaluates only the clients not yet converged (large K).
    Returns:
        ``(s, lam, u, iterations)``; ``lam`` is the multiplier in objective units per share.
    """
    k = g.size
    log_g = np.log(g)
    u_hi, u_lo = log_g - np.log(s_min), log_g.copy()
    if not np.any(active):
        s = np.full(k, 1.0 / k)
        return s, 0.0, log_g - np.log(s), 0
    lm_hi, _ = logm(u_hi)
    lm_lo, _ = logm(u_lo)
    l_lo, l_hi = float(np.min(lm_lo[active])), float(np.max(lm_hi[active]))
    u = np.clip(u_lo + 0.5 * (u_hi - u_lo) if u0 is None else u0, u_lo, u_hi)
    state = {"u": u}
    has_k = np.zeros(k, bool) if kinks is None else (np.isfinite(kinks) & (kinks > u_lo)
                                                      & (kinks < u_hi))
    if has_k.any():
        uk = np.where(has_k, kinks, u_lo)
        lm_k_hi, _ = logm(np.where(has_k, uk + 1e-9, u_lo))  # just below the kink's share
        lm_k_lo, _ = logm(np.where(has_k, uk - 1e-9, u_lo))  # just above it

    def shares(ell):
        u = state["u"]
        at_min = ~active | (lm_hi <= ell)
        at_one = active & (lm_lo > ell)
        free = ~(at_min | at_one)
        lo, hi = u_lo.copy(), u_hi.copy()
        if has_k.any():  # pin the clients whose ell falls in their jump; bracket the others
            kf = has_k & free
            pin = kf & (lm_k_lo <= ell) & (ell <= lm_k_hi)
            lo = np.where(kf & (ell > lm_k_hi), uk, lo)
            hi = np.where(kf & (ell < lm_k_lo), uk, hi)
            u = np.where(pin, uk, u)
            free = free & ~pin
        u = np.where(free, np.clip(u, lo, hi), np.where(at_min, u_hi, np.where(at_one, u_lo, u)))
        sl = np.ones(k)
        todo = free.copy()  # free clients whose Newton step has not yet fallen below 1e-14
        for _ in range(max_iter):
            idx = np.flatnonzero(todo)
            if not idx.size:
                break
            if logm_at is not None and idx.size < k:
                val, sl_i = logm_at(u[idx], idx)
            else:
                val, sl_i = (a[idx] for a in logm(u))
            sl[idx] = sl_i
            ui = u[idx]
            f = val - ell
            lo[idx] = np.where(f < 0, ui, lo[idx])
            hi[idx] = np.where(f > 0, ui, hi[idx])
            un = ui - f / sl_i
            bad = ~((un >= lo[idx]) & (un <= hi[idx]))  # a step onto the bracket end is fine
            un = np.where(bad, 0.5 * (lo[idx] + hi[idx]), un)
            todo[idx] = np.abs(un - ui) >= 1e-14
            u[idx] = un
        state["u"] = u
        s = np.clip(np.exp(log_g - u), s_min, 1.0)
        return s, free, sl

    ell = l_lo
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        s, free, sl = shares(ell)
        tot = s.sum()
        if abs(tot - 1.0) <= tol or (tot < 1.0 and ell <= l_lo):
            break  # (or: even at the lowest multiplier the demand leaves band unused)
        if tot > 1.0:
            l_lo = max(l_lo, ell)
        else:
            l_hi = min(l_hi, ell)
        dg = -np.sum(np.where(free, s / sl, 0.0)) / tot  # d log(sum s) / d ell
        nxt = ell - math.log(tot) / dg if dg < 0 else 0.5 * (l_lo + l_hi)
        creeping = abs(math.log(tot)) > 1e-2 and abs(nxt - ell) < 0.05 * (l_hi - l_lo)
        if creeping or not (l_lo < nxt < l_hi):  # short steps far from the budget: bisect
            nxt = 0.5 * (l_lo + l_hi)
        if l_hi - l_lo < 1e-15 * max(1.0, abs(ell)):
            break
        ell = nxt
    if np.any(free):  # absorb the last ~1e-13 of mismatch into the free shares
        fixed = s[~free].sum()
        s = np.where(free, s * (1.0 - fixed) / s[free].sum(), s)
        s = np.maximum(s, s_min)
    return s, math.exp(ell), state["u"], it


def scaled_rate(s, g):
    """``Rbar(s) = R(s W_tot, g W_tot) / W_tot`` via :func:`tsfa.maths.wireless.rate_bps`."""
    return rate_bps(s, g)


def joint_newton(g, q, pv, a_s: float, h_s: float, s_min: float, budget: float, rho_min: float,
                 variant: str = "inv", u0=None, max_iter: int = 40, rho_fixed=None):
    """Reduced water-filling of the joint solver by one Newton iteration on (u, log lambda).

    With ``rho_fixed`` (shape (n,)) rho is held fixed instead (the w-step of BCD).
    Only clients with ``Q_k > 0`` are passed (arrays of shape (n,)); ``budget`` is the share left
    for them (``1 - n_idle s_min``). Unknowns: ``u_k = log(g_k / s_k)`` and ``ell = log lambda``;
    equations ``f_k(u_k) = ell`` (``f = log m`` with the rho-step folded in, see
    :func:`tsfa.optim.p2_analytic.solve_joint`) for clients above ``s_min``, ``u_k = u_max`` for
    clients with ``f_k(u_max) <= ell``, and ``sum_k s_k = budget``. Each iteration linearises every
    ``f_k`` (one vectorised evaluation) and the budget (``ds_k = -s_k du_k``), which gives ``ell`` in
    closed form and then every ``u_k``; the active set is re-read from ``ell``. Near the solution
    the convergence is quadratic (5-7 iterations from the equal split on the seeded instances);
    the loop stops once a step moved ``u`` by < 1e-8 and the budget holds to 1e-13.
    Returns ``(s, ell, iterations, at_min, u)`` with ``at_min = (f(u_max), mask at s_min)`` or
    ``None`` if no client came near ``s_min``; or ``None`` if ``max_iter`` was not enough or a value
    became non-finite (the caller then falls back to the bracketed :func:`waterfill`).
    """
    n = g.size
    log_g = np.log(g)
    u_hi = log_g - math.log(s_min)  # s = s_min
    u_lo = log_g - math.log(budget)  # s = budget
    const = np.log(q * LN2) - 2.0 * log_g
    if variant == "inv":
        kr = pv * g / (q * (a_s * LN2))  # rho_raw^2 = kr L / x  (= pv Rbar / (Q a_s))
    qa = q * a_s

    def evaluate(u):
        x = np.exp(u)
        lg = np.log1p(x)
        t = x / (1.0 + x)
        d = _d_of_x(x, lg) if x.min() < 1e-2 else lg - t
        if rho_fixed is not None:
            rho, interior, e = rho_fixed, None, 0.0
        elif variant == "inv":
            raw = np.sqrt(kr * (lg / x))
            rho = np.minimum(np.maximum(raw, rho_min), 1.0)
            interior = (raw > rho_min) & (raw < 1.0)
            e = 0.5
        else:
            rho, e = rho_step(variant, pv, qa, g * lg / (x * LN2), rho_min)
            interior = e > 0
        s_bits = a_s * rho + h_s
        f = const + 2.0 * u + np.log(s_bits * d / (lg * lg))
        r1 = t / lg
        sl = 2.0 + t * t / d - 2.0 * r1
        if interior is not None and interior.any():
            sl = sl + np.where(interior, (a_s * rho / s_bits) * e * (r1 - 1.0), 0.0)
        return f, sl, rho

    f_hi = None  # log m at s_min, evaluated only once some client may sit there
    u = log_g + math.log(n / budget) if u0 is None else np.asarray(u0, float)
    u = np.minimum(np.maximum(u, u_lo), u_hi)
    step, ell = math.inf, 0.0
    for it in range(1, max_iter + 1):
        s = np.exp(log_g - u)
        if step < 1e-8 and abs(s.sum() - budget) <= 1e-13 * budget:
            return s, ell, it - 1, (None if f_hi is None else (f_hi, u >= u_hi)), u
        f, sl, _ = evaluate(u)
        w = s / sl
        c = s + s * f / sl
        ell = (c.sum() - budget) / w.sum()
        un = u + (ell - f) / sl
        if f_hi is None and (un > u_hi).any():
            f_hi = evaluate(u_hi)[0]
        at_min = None
        if f_hi is not None:
            at_min = f_hi <= ell
            for _ in range(n):  # make the set at s_min consistent with ell (few passes)
                if not at_min.any():
                    break
                free = ~at_min
                if not free.any():
                    free = f_hi >= np.max(f_hi)
                ell = ((c[free].sum() - budget + s_min * (n - np.count_nonzero(free)))
                       / w[free].sum())
                new_min = f_hi <= ell
                if np.array_equal(new_min, at_min):
                    break
                at_min = new_min
            un = u + (ell - f) / sl
        if at_min is not None and at_min.any():  # pin, then rescale the free shares exactly
            un[at_min] = u_hi[at_min]
            free = ~at_min
            un[free] += math.log(np.exp(log_g[free] - un[free]).sum()
                                 / (budget - s_min * (n - np.count_nonzero(free))))
        else:
            un += math.log(np.exp(log_g - un).sum() / budget)
        un = np.minimum(np.maximum(un, u_lo), u_hi)
        step = float(np.max(np.abs(un - u)))
        u = un
        if not math.isfinite(step):
            return None
    return None
