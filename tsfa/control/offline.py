"""TSFA offline stage: choose the LoRA rank by minimising the bound (docs/model.md §3) [DESIGN].

    J(r) = c5 eps(r) + cov(r) + Gamma sum_k p_k phi(rho_bar_k(r)),

cov(r) the covariance term in the spec's form ``bound.cov_form`` (linear in r in both forms),
with the ratio each client can afford on its ergodic equal-bandwidth rate R_bar_k

    rho_bar_k(r) = clip(((Tbar_k - T^cmp_k) R_bar_k - S_head) / S_1(r) / r, 1/r, 1),

``S_1(r) = q_b sum_m (d_in + d_out) + M ceil(log2 r)`` the bits of one rank component per module
(factor values plus its index). Two solvers: exact enumeration over the candidates
(:func:`optimal_rank`) and a CVXPY continuous relaxation in log variables (:func:`relaxed_rank`).
A spec whose budget cannot carry even one component per module is reported infeasible, naming the
binding client and quantity.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from tsfa.config.spec import SystemSpec
from tsfa.maths import bound as bd
from tsfa.maths.instance import SystemInstance, equal_share_ergodic_rate_bps, realize
from tsfa.maths.payload import PayloadModel
from tsfa.optim.result import INFEASIBLE, OPTIMAL, SolveResult


def component_bits(spec: SystemSpec, rank) -> np.ndarray:
    """S_1(r): bits of one rank component in every module, values plus index [bits]: SOFT's
    planning slope over r (:attr:`tsfa.maths.payload.PayloadModel.slope_bits`)."""
    one = lambda r: PayloadModel.from_spec(spec, "soft", int(r)).slope_bits / int(r)  # noqa: E731
    return np.vectorize(one, otypes=[float])(np.asarray(rank))


def affordable_components(spec: SystemSpec, inst: SystemInstance, rank) -> np.ndarray:
    """m_k(r) = ((Tbar_k - T^cmp_k) R_bar_k - S_head) / S_1(r): components per module client k can
    send within its budget on the ergodic equal-bandwidth rate (continuous, may be < 1).

    Shape: broadcast of rank (...,) against clients -> (..., K).
    """
    rbar = equal_share_ergodic_rate_bps(spec, inst.mean_gamma_hz)
    head = spec.lora.bits_per_param * spec.lora.head_params
    slack_bits = (inst.budget_s - inst.compute_s) * rbar - head
    return slack_bits / component_bits(spec, np.asarray(rank, float)[..., None])


def affordable_rho(spec: SystemSpec, inst: SystemInstance, rank) -> np.ndarray:
    """rho_bar_k(r) = clip(m_k(r) / r, 1/r, 1) (docs/model.md §3), shape (..., K)."""
    r = np.asarray(rank, float)[..., None]
    return np.clip(affordable_components(spec, inst, rank) / r, 1.0 / r, 1.0)


def _summarise(reasons: list[str], limit: int = 3) -> list[str]:
    if len(reasons) <= limit:
        return reasons
    return reasons[:limit] + [f"and {len(reasons) - limit} more client(s) likewise"]


def infeasibility_reasons(spec: SystemSpec, inst: SystemInstance, rank: int) -> list[str]:
    """Why rank ``rank`` cannot meet the latency budget (empty list when it can).

    Binding clients come first (largest shortfall); at most three are spelled out.
    """
    reasons = []
    short = inst.compute_s - inst.budget_s
    for k in sorted(np.flatnonzero(short >= 0), key=lambda i: -short[i]):
        reasons.append(
            f"the latency budget Tbar_{k} = {inst.budget_s[k]:.4g} s is at or below client {k}'s "
            f"compute latency T^cmp_{k} = {inst.compute_s[k]:.4g} s")
    m = affordable_components(spec, inst, rank)
    rbar = equal_share_ergodic_rate_bps(spec, inst.mean_gamma_hz)
    head = spec.lora.bits_per_param * spec.lora.head_params
    need = (head + component_bits(spec, rank)) / rbar
    over = np.where((m < 1.0) & (inst.budget_s > inst.compute_s), 1.0 - m, -np.inf)
    for k in sorted(np.flatnonzero(over > -np.inf), key=lambda i: -over[i]):
        reasons.append(
            f"client {k}'s uplink slack Tbar - T^cmp = {inst.budget_s[k] - inst.compute_s[k]:.4g} s "
            f"is below the {need[k]:.4g} s needed to send the head and one rank component per module "
            f"(rho = 1/r) at its ergodic equal-bandwidth rate {rbar[k] / 1e6:.4g} Mbit/s")
    return _summarise(reasons)


def rank_table(spec: SystemSpec, inst: SystemInstance | None = None, ranks=None) -> pd.DataFrame:
    """J(r) and its terms for every candidate rank (docs/model.md §3): one row per rank.

    Columns: rank, eps, rank_term, cov_term, sparse_term, J, rho_bar_mean, rho_bar_min, feasible.
    Infeasible ranks get J = inf.
    """
    inst = realize(spec) if inst is None else inst
    ranks = np.asarray(spec.lora.rank_candidates if ranks is None else ranks, dtype=int)
    b, tr = spec.bound, spec.training
    eps = eps_of(spec, ranks)
    rho = affordable_rho(spec, inst, ranks)  # (R, K)
    feasible = np.all(affordable_components(spec, inst, ranks) >= 1.0, axis=-1) & np.all(
        inst.budget_s > inst.compute_s)
    rank_t = bd.rank_term(eps, b.c5)
    cov_t = covariance_of(spec, ranks)
    phi_mean = np.sum(inst.weights * bd.phi(rho, spec.control.phi), axis=-1)  # one round, (R,)
    sparse_t = bd.sparsification_term(phi_mean, b.smoothness, tr.learning_rate, tr.local_steps,
                                      b.grad_bound, b.c4)
    total = np.where(feasible, rank_t + cov_t + sparse_t, np.inf)
    return pd.DataFrame({
        "rank": ranks, "eps": eps, "rank_term": rank_t, "cov_term": cov_t,
        "sparse_term": sparse_t, "J": total, "rho_bar_mean": rho @ inst.weights,
        "rho_bar_min": rho.min(axis=-1), "feasible": feasible,
    })


def covariance_of(spec: SystemSpec, ranks) -> np.ndarray:
    """The covariance term of J(r) in the spec's form ``bound.cov_form`` (docs/model.md §2)."""
    b, tr = spec.bound, spec.training
    return bd.covariance_term(ranks, tr.learning_rate, tr.local_steps, b.grad_bound, b.c3,
                              form=b.cov_form, grad_noise=b.grad_noise,
                              heterogeneity=b.heterogeneity)


def eps_of(spec: SystemSpec, ranks) -> np.ndarray:
    """eps(r) from the spec's spectrum model (power law or given singular values)."""
    b = spec.bound
    if b.eps_model == "given":
        return bd.eps_from_spectrum(b.spectrum, ranks)
    return bd.eps_power_law(ranks, b.spectrum_dim, b.spectrum_decay)


def optimal_rank(spec: SystemSpec, inst: SystemInstance | None = None) -> SolveResult:
    """Exact r* = argmin_r J(r) over ``lora.rank_candidates`` by enumeration (docs/model.md §3).

    Returns status "optimal" with solution {"rank", "table"} or "infeasible" with the reason of
    the smallest candidate rank (the cheapest to send) in ``message``.
    """
    t0 = time.perf_counter()
    inst = realize(spec) if inst is None else inst
    table = rank_table(spec, inst)
    if not table["feasible"].any():
        r0 = int(table["rank"].iloc[0])
        reasons = infeasibility_reasons(spec, inst, r0)
        return SolveResult(INFEASIBLE, math.nan, {"table": table}, {}, len(table),
                           time.perf_counter() - t0, "enumeration",
                           "no candidate rank meets the latency budget: " + "; ".join(reasons))
    best = int(table["J"].to_numpy().argmin())
    return SolveResult(OPTIMAL, float(table["J"].iloc[best]),
                       {"rank": int(table["rank"].iloc[best]), "table": table}, {}, len(table),
                       time.perf_counter() - t0, "enumeration", "")


def fit_eps_power(spec: SystemSpec) -> tuple[float, float]:
    """Convex fit eps(r) ~ a r^-b (log-log least squares on the candidates with eps > 0)."""
    ranks = np.asarray(spec.lora.rank_candidates, float)
    eps = eps_of(spec, ranks.astype(int))
    keep = eps > 0
    if keep.sum() < 2:
        return float(eps[0]) if eps[0] > 0 else 1e-12, 0.0
    slope, intercept = np.polyfit(np.log(ranks[keep]), np.log(eps[keep]), 1)
    return float(np.exp(intercept)), float(max(-slope, 0.0))


def relaxed_rank(spec: SystemSpec, inst: SystemInstance | None = None, solver: str = "CLARABEL"):
    """Continuous relaxation of the offline problem, solved with CVXPY (docs/model.md §3).

    With r = e^y and rho_k = e^{x_k} (phi = (1 - rho)/rho only; the other variants are not DCP
    in this form, so only enumeration serves them), the problem

        min  c5 a e^{-b y} + cov(1) e^y + Gamma sum_k p_k (e^{-x_k} - 1)
        s.t. x_k + y <= log m_k   (latency budget on the ergodic equal-bandwidth rate)
             x_k <= 0,  x_k + y >= 0,  log r_min <= y <= log r_max

    is convex (a geometric program in convex form). eps is replaced by its power-law fit a r^-b;
    the index overhead is fixed at its value for the largest candidate (conservative).
    Multipliers: ``latency`` (K,) of the budget constraints, in objective units per unit of log m_k.
    """
    import cvxpy as cp

    if spec.control.phi != "inv":
        raise ValueError(f"control.phi = {spec.control.phi!r}: the CVXPY relaxation is DCP only for "
                         "phi = 'inv'; use optimal_rank (enumeration) for the other variants")
    t0 = time.perf_counter()
    inst = realize(spec) if inst is None else inst
    ranks = spec.lora.rank_candidates
    rmin, rmax = float(min(ranks)), float(max(ranks))
    m = affordable_components(spec, inst, rmax)
    if np.any(m < 1.0) or np.any(inst.budget_s <= inst.compute_s):
        reasons = infeasibility_reasons(spec, inst, int(rmax))
        if reasons:
            return SolveResult(INFEASIBLE, math.nan, {}, {}, 0, time.perf_counter() - t0,
                               f"cvxpy:{solver}", "; ".join(reasons))
    a, b_exp = fit_eps_power(spec)
    bs, tr = spec.bound, spec.training
    cov_coef = float(covariance_of(spec, 1.0))  # both forms are linear in r
    gamma = float(bd.sparsification_gamma(bs.smoothness, tr.learning_rate, tr.local_steps,
                                          bs.grad_bound, bs.c4))
    k = inst.num_clients
    y = cp.Variable()
    x = cp.Variable(k)
    objective = (bs.c5 * a * cp.exp(-b_exp * y) + cov_coef * cp.exp(y)
                 + gamma * (inst.weights @ (cp.exp(-x) - 1.0)))
    latency = x + y <= np.log(m)
    cons = [latency, x <= 0, x + y >= 0, y >= math.log(rmin), y <= math.log(rmax)]
    prob = cp.Problem(cp.Minimize(objective), cons)
    prob.solve(solver=solver)
    status = prob.status
    if status not in (OPTIMAL, "optimal_inaccurate"):
        return SolveResult(status, math.nan, {}, {}, 0, time.perf_counter() - t0, f"cvxpy:{solver}",
                           f"cvxpy returned {status}")
    r_cont = float(np.exp(y.value))
    return SolveResult(
        status, float(prob.value),
        {"rank": r_cont, "rho": np.exp(x.value), "eps_fit": (a, b_exp)},
        {"latency": np.asarray(latency.dual_value, float)},
        int(prob.solver_stats.num_iters or 0), time.perf_counter() - t0, f"cvxpy:{solver}", "")


# parameters whose change can move r*: (dotted key, how to move it)
SENSITIVITY_KEYS = (
    ("wireless.bandwidth_total_hz", "scale"),
    ("wireless.tx_power_dbm", "shift"),
    ("control.latency_budget_s", "scale"),
    ("training.local_steps", "scale_int"),
    ("training.learning_rate", "scale"),
    ("bound.grad_bound", "scale"),
    ("bound.smoothness", "scale"),
    ("bound.spectrum_decay", "scale"),
    ("bound.c3", "scale"),
    ("bound.c4", "scale"),
    ("bound.c5", "scale"),
)


def _moved(spec: SystemSpec, key: str, how: str, amount: float):
    section, name = key.split(".")
    value = getattr(getattr(spec, section), name)
    if how == "shift":
        new = value + amount
    elif how == "scale_int":
        new = max(1, round(value * math.exp(amount)))
    elif isinstance(value, tuple):  # per-client budgets move together
        new = [v * math.exp(amount) for v in value]
    else:
        new = value * math.exp(amount)
    return spec.replace(**{key: new}), new


def rank_sensitivity(spec: SystemSpec, max_log_factor: float = math.log(1e3),
                     max_shift_db: float = 60.0, tol: float = 1e-6) -> pd.DataFrame:
    """How far each parameter must move to change r* by one candidate (docs/model.md §3).

    For each parameter and direction, bisection finds the smallest move (a factor for scale
    parameters, dB for the transmit power) at which the enumerated r* changes; ``nan`` when
    r* does not change within 1000x (or 60 dB) or before the move leaves the allowed range.
    ``tol`` is the bisection precision on the log factor (or in dB).
    The latency budgets are frozen at their realised values (a budget is the user's requirement,
    not a function of the parameter being moved).
    """
    # Freeze the realised budgets: with the automatic rule the budget would scale with the rate
    # and hide every wireless sensitivity.
    spec = spec.replace(**{"control.latency_budget_s": realize(spec).budget_s.tolist()})
    base = optimal_rank(spec)
    r0 = base.solution.get("rank") if base.ok else None
    rows = []
    for key, how in SENSITIVITY_KEYS:
        limit = max_shift_db if how == "shift" else max_log_factor
        for direction in (+1.0, -1.0):
            def changed(amount, key=key, how=how, direction=direction):
                try:
                    moved, new = _moved(spec, key, how, direction * amount)
                except ValueError:
                    return None, None
                res = optimal_rank(moved)
                return (res.solution.get("rank") if res.ok else "infeasible"), new

            # scan outwards on a geometric grid until r* changes or the move leaves the valid range
            lo, hi = 0.0, None
            for amount in limit * np.geomspace(1e-3, 1.0, 40):
                r_new, _ = changed(amount)
                if r_new is None:
                    break
                if r_new != r0:
                    hi = amount
                    break
                lo = amount
            if hi is None:
                rows.append((key, "up" if direction > 0 else "down", np.nan, np.nan, r0, None))
                continue
            while hi - lo > tol:
                mid = 0.5 * (lo + hi)
                r_mid, _ = changed(mid)
                if r_mid is not None and r_mid != r0:
                    hi = mid
                else:
                    lo = mid
            r_new, new_value = changed(hi)
            move = hi * direction if how == "shift" else math.exp(direction * hi)
            if isinstance(new_value, list):
                new_value = float(np.mean(new_value))
            rows.append((key, "up" if direction > 0 else "down", move, new_value, r0, r_new))
    return pd.DataFrame(rows, columns=["parameter", "direction", "move", "new_value", "rank",
                                       "new_rank"])
