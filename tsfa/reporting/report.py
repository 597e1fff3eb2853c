"""Reports: the library's answers for a spec, as plain dicts and DataFrames (used by the CLI).

No printing here; the CLI renders these as tables or JSON.
"""

from __future__ import annotations

import numpy as np

from tsfa.config.spec import SystemSpec
from tsfa.control.offline import affordable_rho, eps_of, optimal_rank, relaxed_rank
from tsfa.control.sensitivity import rank_sensitivity
from tsfa.maths import bound as bd
from tsfa.maths.instance import realize


def bound_report(spec: SystemSpec, rank: int | None = None, rho: float | None = None) -> dict:
    """Bound term table at ``rank`` (default r*) and ``rho`` (default affordable rho_bar_k(r))."""
    inst = realize(spec)
    if rank is None:
        res = optimal_rank(spec, inst)
        rank = res.solution["rank"] if res.ok else spec.control.budget_reference_rank
    check_rank(spec, rank)
    if rho is None:
        rho_k = affordable_rho(spec, inst, rank)
    else:
        if not (np.isfinite(rho) and 1.0 / rank <= rho <= 1.0):
            raise ValueError(f"--rho = {rho}: must be between 1/r = {1.0 / rank:.4g} and 1")
        rho_k = np.full(inst.num_clients, float(rho))
    b, tr = spec.bound, spec.training
    terms = bd.bound_terms(
        rank=rank, rho=rho_k, weights=inst.weights, eps=eps_of(spec, rank), lr=tr.learning_rate,
        local_steps=tr.local_steps, rounds=tr.rounds, smoothness=b.smoothness,
        grad_bound=b.grad_bound, grad_noise=b.grad_noise, heterogeneity=b.heterogeneity,
        initial_gap=b.initial_gap, c=(b.c0, b.c1, b.c2, b.c3, b.c4, b.c5),
        phi_variant=spec.control.phi, cov_form=b.cov_form)
    table, total = bd.term_table(terms, b.cov_form)
    return {"rank": int(rank), "rho": rho_k, "rho_mean": float(rho_k @ inst.weights),
            "terms": table, "total": total}



RELAXATION_MAX_CLIENTS = 2_000  # the CVXPY relaxation has K exponential cones; skipped above


def rank_report(spec: SystemSpec, sensitivity: bool = True) -> dict:
    """Offline stage: enumeration table, r*, status, warnings, relaxation and r* sensitivities.

    The CVXPY relaxation is skipped above ``RELAXATION_MAX_CLIENTS`` clients (it is a
    cross-check of the enumeration, which is exact), with a note in ``relaxed``.
    """
    from tsfa.control.feasibility import spec_warnings

    inst = realize(spec)
    res = optimal_rank(spec, inst)
    out = {
        "status": res.status,
        "rank": res.solution.get("rank"),
        "objective": res.objective,
        "message": res.message,
        "warnings": spec_warnings(spec, inst, res.solution.get("rank")),
        "table": res.solution["table"],
        "solve_time_s": res.solve_time_s,
    }
    if res.ok and spec.control.phi == "inv":
        if inst.num_clients > RELAXATION_MAX_CLIENTS:
            out["relaxed"] = {"status": "skipped", "rank": None,
                              "note": f"K = {inst.num_clients} > {RELAXATION_MAX_CLIENTS}: the "
                                      "CVXPY relaxation is skipped (enumeration is exact)"}
        else:
            rel = relaxed_rank(spec, inst)
            out["relaxed"] = {"status": rel.status, "rank": rel.solution.get("rank"),
                              "objective": rel.objective,
                              "latency_multipliers": rel.multipliers.get("latency")}
    if res.ok and sensitivity:
        out["sensitivity"] = rank_sensitivity(spec)
    return out


def control_setup(spec: SystemSpec, V: float | None = None, solver: str = "joint",
                  rank: int | None = None, policy: str = "tsfa", rho: float = 1.0,
                  payload=None) -> dict:
    """Everything a controller run needs before its first round: the realised system, the rank
    (default r*), the policy, warnings and the record's header (:func:`tsfa.reporting.
    control_record.p2_inputs`). ``status`` is the offline stage's when it is not "optimal".
    Raises ValueError naming a bad argument (rank, solver, V, rho)."""
    from tsfa.control.feasibility import spec_warnings
    from tsfa.control.from_spec import make_policy
    from tsfa.reporting.control_record import p2_inputs

    inst = realize(spec)
    if rank is None:
        res = optimal_rank(spec, inst)
        if not res.ok:
            return {"status": res.status, "message": res.message,
                    "warnings": spec_warnings(spec, inst)}
        rank = res.solution["rank"]
    check_rank(spec, rank)
    pol = make_policy(spec, inst, rank, policy, solver, rho, V, payload)
    return {"status": "optimal", "message": "", "rank": int(rank), "policy": pol, "inst": inst,
            "warnings": spec_warnings(spec, inst, rank),
            "inputs": p2_inputs(spec, inst, pol, rank, solver, policy)}


def check_rank(spec: SystemSpec, rank, option: str = "--rank") -> int:
    """``rank`` as an int in [1, min(d_in, d_out)], else ValueError naming ``option``."""
    cap = min(spec.lora.d_in, spec.lora.d_out)
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or not 1 <= rank <= cap:
        raise ValueError(f"{option} = {rank}: must be an integer between 1 and min(lora.d_in, "
                         f"lora.d_out) = {cap}")
    return int(rank)


def control_report(spec: SystemSpec, rounds: int, V: float | None = None, solver: str = "joint",
                   rank: int | None = None, policy: str = "tsfa", rho: float = 1.0,
                   sinks=(), keep_rounds: bool | None = None, setup: dict | None = None,
                   horizon: int | None = None, fading_seed: int | None = None) -> dict:
    """Simulate the online stage for ``rounds`` rounds of block Rayleigh fading (docs/model.md §4).

    Fading: :func:`tsfa.maths.wireless.fading_gains` with ``fading_seed`` (a run's
    ``experiment.seed``, the trainer's draw; default ``clients.seed``).
    Each round goes to every callable of ``sinks`` as it is made (the streaming writers of
    :mod:`tsfa.reporting.control_record`); the per-client summary is kept in O(K) memory. The
    per-round table ``rounds`` is returned only with ``keep_rounds`` (default: when K x rounds is
    at most 1e6). Returns the setup's status, rank, V, solver, policy, budgets, warnings and P2
    inputs, plus summary, average_penalty, traces and late_rounds (rounds in which a sender
    ended after its deadline: 0 by construction). Queues start as ``control.queue_start`` says
    (:func:`tsfa.control.lyapunov.start_queues`) for a run of ``horizon`` rounds (default
    ``rounds``).
    """
    from tsfa.control.lyapunov import start_queues
    from tsfa.control.simulate import RoundsTable, RunningSummary, run_rounds

    setup = control_setup(spec, V, solver, rank, policy, rho) if setup is None else setup
    if setup["status"] != "optimal":
        return setup
    pol, inst = setup["policy"], setup["inst"]
    keep = (pol.n_clients * rounds <= 1_000_000) if keep_rounds is None else keep_rounds
    acc = RunningSummary(pol)
    sinks = [acc.add, *sinks] + ([table := RoundsTable(pol.n_clients)] if keep else [])
    seed = spec.clients.seed if fading_seed is None else int(fading_seed)
    q0 = start_queues(pol, spec, inst.mean_gamma_hz, rounds if horizon is None else horizon, seed)
    for rec in run_rounds(pol, inst.mean_gamma_hz, rounds, seed, q0):
        for sink in sinks:
            sink(rec)
    out = {k: v for k, v in setup.items() if k not in ("policy", "inst")}
    return out | {"V": pol.V, "solver": solver, "policy": policy, "budget_s": inst.budget_s,
                  "summary": acc.summary(), "average_penalty": acc.average_penalty,
                  "traces": acc.traces, "late_rounds": acc.late,
                  **({"rounds": table.frame()} if keep else {})}
