"""TSFA offline stage: choose the LoRA rank by minimising the bound (docs/model.md §3) [DESIGN].

    J(r) = c5 eps(r) + cov(r) + Gamma (r_ref / r)^b sum_k p_k phi(pi_k(r) rho_bar_k(r)),

(the rank factor is 1 at the default ``bound.sparse_rank_exponent`` b = 0; a horizon
calibration measures b, docs/model.md §8b),

cov(r) the covariance term in the spec's form ``bound.cov_form`` (linear in r in both forms),

with the ratio each client can afford on its planning rate ``R_plan_k`` (:func:`planning_rate_bps`)

    rho_bar_k(r) = clip(min(((Tbar_k - T^cmp_k) R_plan_k - S_head) / (r S_1(r)), rho_pi_k(r)), 1/r, 1),

``S_1(r)`` the bits of one rank component per module (factor values plus its index). With the
default per-round deadline (``control.deadline = 'defer'``) ``R_plan`` is the largest steady rate
whose expected upload time, deferring uploads slower than the deadline, stays within the uplink
budget on an equal share (finite under Rayleigh fading, :mod:`tsfa.maths.outage`); ``pi_k`` is
the probability that the upload fits the deadline and ``rho_pi`` the ratio maximising
``pi rho``. With ``'none'``, ``R_plan`` is the ergodic rate and ``pi = 1`` (the old model).
Two solvers: exact enumeration over the candidates (:func:`optimal_rank`) and a CVXPY continuous
relaxation in log variables (:func:`relaxed_rank`). A spec whose budget cannot carry even one
component per module is reported infeasible, naming the binding client and quantity.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import types

import numpy as np
import pandas as pd

from tsfa.config.spec import SystemSpec
from tsfa.maths import bound as bd
from tsfa.maths.instance import SystemInstance, equal_share_ergodic_rate_bps, realize
from tsfa.maths.outage import LN2, affordable_efficiency
from tsfa.maths.payload import PayloadModel
from tsfa.optim.result import INFEASIBLE, OPTIMAL, SolveResult


def component_bits(spec: SystemSpec, rank) -> np.ndarray:
    """S_1(r): bits of one rank component in every module, values plus index [bits]: SOFT's
    planning slope over r (:attr:`tsfa.maths.payload.PayloadModel.slope_bits`)."""
    one = lambda r: _soft_slope_bits(spec.lora, int(r)) / int(r)  # noqa: E731
    return np.vectorize(one, otypes=[float])(np.asarray(rank))


@functools.lru_cache(maxsize=1024)
def _soft_slope_bits(lora, rank: int) -> float:
    """SOFT's planning slope for a (frozen, hashable) ``lora`` section, cached: the sensitivity
    analysis asks for it hundreds of times."""
    return PayloadModel.from_spec(types.SimpleNamespace(lora=lora), "soft", rank).slope_bits


def planning_rate_bps(spec: SystemSpec, inst: SystemInstance) -> np.ndarray:
    """``R_plan_k`` [bit/s], (K,): the rate the offline stage plans client k's uploads with.

    ``deadline = 'defer'``: ``sigma*(s_k, kappa) W_tot / K`` (:func:`tsfa.maths.outage.
    affordable_efficiency`): a steady payload of ``b R_plan`` bits per round has an expected upload
    time of at most the uplink budget ``b`` when uploads slower than ``kappa b`` are deferred.
    ``'none'``: the ergodic rate ``R_bar_k`` on the equal share.
    """
    if spec.control.deadline == "none":
        return equal_share_ergodic_rate_bps(spec, inst.mean_gamma_hz)
    w = spec.wireless.bandwidth_total_hz / spec.clients.num_clients
    return affordable_efficiency(inst.mean_gamma_hz / w, spec.control.deadline_factor) * w


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Per-client planning constants of one realised system, (K,) (docs/model.md §3):
    ``budget_bits = (Tbar - T^cmp) R_plan - S_head`` (bits a round's budget carries beyond the
    head), ``cap_bits`` (``rho_pi`` times the factor bits at rho = 1: ``kappa W0(s 2^{-c0/kappa})
    w b / ln 2``; inf without a deadline or where the cap cannot bind), ``inv_wb = 1 / (w b)``,
    ``inv_snr = 1 / s`` on the equal share ``w``."""

    budget_bits: np.ndarray
    cap_bits: np.ndarray
    inv_wb: np.ndarray
    inv_snr: np.ndarray
    head_bits: float
    kappa: float | None


def _plan(spec: SystemSpec, inst: SystemInstance, rate=None, slope_max: float = 0.0) -> _Plan:
    """The constants of :class:`_Plan`; ``slope_max``: the largest factor bits at rho = 1 of the
    ranks asked (the Lambert W is evaluated only where the cap may bind at such a rank)."""
    rate = planning_rate_bps(spec, inst) if rate is None else rate
    head = float(spec.lora.bits_per_param * spec.lora.head_params)
    w = spec.wireless.bandwidth_total_hz / spec.clients.num_clients
    b = np.maximum(inst.budget_s - inst.compute_s, 1e-300)
    inv_wb, inv_snr = 1.0 / (w * b), w / inst.mean_gamma_hz
    budget_bits = (inst.budget_s - inst.compute_s) * rate - head
    cap = np.full(budget_bits.shape, np.inf)
    kappa = None
    if spec.control.deadline == "defer":
        kappa = spec.control.deadline_factor
        with np.errstate(over="ignore", under="ignore"):
            z = np.exp2(-head * inv_wb / kappa) / inv_snr  # s 2^{-c0 / kappa}
        lz = np.log(np.maximum(z, np.e))  # W0(z) >= log z - log log z above e
        scale = kappa / (inv_wb * LN2)
        low = (lz - np.log(lz)) * scale < max(slope_max, 1.0)
        cap[low] = _lambert_w0(z[low]) * scale[low]
    return _Plan(budget_bits, cap, inv_wb, inv_snr, head, kappa)


def _slope(spec: SystemSpec, rank) -> np.ndarray:
    """Factor bits at rho = 1, ``r S_1(r)`` (the payload slope), shaped like ``rank``."""
    r = np.asarray(rank, float)
    return component_bits(spec, r) * r


def affordable_components(spec: SystemSpec, inst: SystemInstance, rank, rate=None) -> np.ndarray:
    """m_k(r) = ((Tbar_k - T^cmp_k) R_plan_k - S_head) / S_1(r): components per module client k can
    send within its budget on its planning rate (continuous, may be < 1).

    Shape: broadcast of rank (...,) against clients -> (..., K). ``rate``: ``R_plan`` if known.
    """
    rate = planning_rate_bps(spec, inst) if rate is None else rate
    head = spec.lora.bits_per_param * spec.lora.head_params
    slack_bits = (inst.budget_s - inst.compute_s) * rate - head
    return slack_bits / component_bits(spec, np.asarray(rank, float)[..., None])


def _lambert_w0(z: np.ndarray) -> np.ndarray:
    """Principal branch ``W0(z)`` for ``z >= 0`` (Halley's iteration from the asymptotic
    ``log z - log log z`` above e, ``log1p(z)`` below; three steps give 1e-15)."""
    big = z > np.e
    lz = np.log(np.where(big, z, np.e))
    y = np.where(big, lz - np.log(lz), np.log1p(z))
    for _ in range(3):
        ey = np.exp(y)
        f = y * ey - z
        y = y - f / (ey * (y + 1.0) - (y + 2.0) * f / (2.0 * y + 2.0))
    return y


def _pi(plan: _Plan, slope, rho) -> np.ndarray:
    """``pi = exp(-(2^{sigma / kappa} - 1) / s)``, ``sigma = (slope rho + h) / (w b)``."""
    arg = np.minimum((rho * slope + plan.head_bits) * (plan.inv_wb / plan.kappa), 1000.0)
    return np.exp((1.0 - np.exp2(arg)) * plan.inv_snr)  # (beyond 1000: pi = 0 in doubles)


def participation(spec: SystemSpec, inst: SystemInstance, rank, rho) -> np.ndarray:
    """``pi_k = P(upload at ratio rho fits D_k)`` on the equal share, shape (..., K); 1 without a
    deadline. ``pi = exp(-(2^{sigma(rho) / kappa} - 1) / s_k)`` (:mod:`tsfa.maths.outage`)."""
    if spec.control.deadline == "none":
        return np.ones(np.broadcast_shapes(np.shape(rho), (inst.num_clients,)))
    return _pi(_plan(spec, inst), _slope(spec, rank)[..., None], rho)


def affordable_rho(spec: SystemSpec, inst: SystemInstance, rank, rate=None) -> np.ndarray:
    """rho_bar_k(r) = clip(min(m_k(r) / r, rho_pi_k(r)), 1/r, 1) (docs/model.md §3), (..., K).

    ``rho_pi = kappa W0(s 2^{-c0 / kappa}) / (c1 ln 2)`` maximises ``pi(rho) rho`` (a larger ratio
    is deferred so often that fewer components get through); no such cap without a deadline.
    """
    slope = _slope(spec, rank)
    plan = _plan(spec, inst, rate, float(np.max(slope)))
    r = np.asarray(rank, float)[..., None]
    return np.clip(np.minimum(plan.budget_bits, plan.cap_bits) / slope[..., None], 1.0 / r, 1.0)


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
    rate = planning_rate_bps(spec, inst)
    m = affordable_components(spec, inst, rank, rate)
    head = spec.lora.bits_per_param * spec.lora.head_params
    need = (head + component_bits(spec, rank)) / rate
    over = np.where((m < 1.0) & (inst.budget_s > inst.compute_s), 1.0 - m, -np.inf)
    what = ("planning rate (expected upload time within the budget, uploads slower than the "
            "deadline deferred)" if spec.control.deadline == "defer" else
            "ergodic equal-bandwidth rate")
    for k in sorted(np.flatnonzero(over > -np.inf), key=lambda i: -over[i]):
        reasons.append(
            f"client {k}'s uplink slack Tbar - T^cmp = {inst.budget_s[k] - inst.compute_s[k]:.4g} s "
            f"is below the {need[k]:.4g} s needed to send the head and one rank component per module "
            f"(rho = 1/r) at its {what} {rate[k] / 1e6:.4g} Mbit/s")
    return _summarise(reasons)


def client_terms(spec: SystemSpec, inst: SystemInstance, ranks, rate=None,
                 stats: bool = True) -> dict:
    """The K-dependent part of J(r) for each rank (R,): ``phi_mean`` = ``sum_k p_k phi(pi_k
    rho_bar_k)``, ``feasible``, and (``stats``) the means/minima of rho_bar and pi (the rest of J
    depends on the bound constants only; :mod:`tsfa.control.sensitivity` re-uses this part).
    ``rate``: :func:`planning_rate_bps` if already known."""
    ranks = np.asarray(ranks, dtype=int)
    slope = _slope(spec, ranks)[:, None]  # (R, 1)
    plan = _plan(spec, inst, rate, float(np.max(slope)))
    rho = np.clip(np.minimum(plan.budget_bits, plan.cap_bits) / slope, 1.0 / ranks[:, None], 1.0)
    pi = np.ones(1) if plan.kappa is None else _pi(plan, slope, rho)
    # pi = 0 (a client that never meets its deadline) would make phi infinite; the floor keeps
    # phi finite and huge for every form (inv_sq squares it: 1e-300 underflowed to a division
    # by zero), so J(r) stays comparable across ranks instead of turning to inf - inf = nan.
    eff = np.maximum(rho * pi, 1e-100)
    # m_k(r) >= 1 for every client  <=>  min_k budget_bits_k >= S_1(r)
    feasible = (np.min(plan.budget_bits) >= slope[:, 0] / ranks) & bool(
        np.all(inst.budget_s > inst.compute_s))
    pi = np.broadcast_to(pi, rho.shape)
    out = {"phi_mean": bd.phi(eff, spec.control.phi) @ inst.weights, "feasible": feasible}
    if stats:
        out |= {"rho_bar_mean": rho @ inst.weights, "rho_bar_min": rho.min(axis=-1),
                "participation_mean": pi @ inst.weights, "participation_min": pi.min(axis=-1)}
    return out


def rank_table(spec: SystemSpec, inst: SystemInstance | None = None, ranks=None,
               terms: dict | None = None) -> pd.DataFrame:
    """J(r) and its terms for every candidate rank (docs/model.md §3): one row per rank.

    Columns: rank, eps, rank_term, cov_term, sparse_term, J, rho_bar_mean, rho_bar_min,
    participation_mean, participation_min (pi: share of rounds the upload fits the deadline),
    feasible. Infeasible ranks get J = inf. ``terms``: :func:`client_terms` if already known.
    """
    ranks = np.asarray(spec.lora.rank_candidates if ranks is None else ranks, dtype=int)
    if terms is None:
        terms = client_terms(spec, realize(spec) if inst is None else inst, ranks)
    parts = j_terms(spec, ranks, terms)
    return pd.DataFrame({
        "rank": ranks, **parts,
        **{n: terms[n] for n in ("rho_bar_mean", "rho_bar_min", "participation_mean",
                                 "participation_min", "feasible")},
    })


def j_terms(spec: SystemSpec, ranks, terms: dict) -> dict:
    """``eps``, ``rank_term``, ``cov_term``, ``sparse_term`` and ``J`` (inf where infeasible) per
    rank, from the clients' part :func:`client_terms`."""
    b, tr = spec.bound, spec.training
    eps = eps_of(spec, ranks)
    rank_t = bd.rank_term(eps, b.c5)
    cov_t = covariance_of(spec, ranks)
    sparse_t = bd.sparsification_term(terms["phi_mean"], b.smoothness, tr.learning_rate,
                                      tr.local_steps, b.grad_bound, b.c4) * bd.sparse_rank_factor(
        ranks, b.sparse_rank_ref, b.sparse_rank_exponent)
    total = np.where(terms["feasible"], rank_t + cov_t + sparse_t, np.inf)
    return {"eps": eps, "rank_term": rank_t, "cov_term": cov_t, "sparse_term": sparse_t,
            "J": total}


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


def optimal_rank(spec: SystemSpec, inst: SystemInstance | None = None,
                 terms: dict | None = None) -> SolveResult:
    """Exact r* = argmin_r J(r) over ``lora.rank_candidates`` by enumeration (docs/model.md §3).

    Returns status "optimal" with solution {"rank", "table"} or "infeasible" with the reason of
    the smallest candidate rank (the cheapest to send) in ``message``.
    """
    t0 = time.perf_counter()
    if terms is None and inst is None:
        inst = realize(spec)
    table = rank_table(spec, inst, terms=terms)
    if not table["feasible"].any():
        inst = realize(spec) if inst is None else inst
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
    if spec.bound.sparse_rank_exponent != 0:
        raise ValueError(f"bound.sparse_rank_exponent = {spec.bound.sparse_rank_exponent:g}: the "
                         "CVXPY relaxation models the ratio form only (exponent 0); use "
                         "optimal_rank (enumeration)")
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

