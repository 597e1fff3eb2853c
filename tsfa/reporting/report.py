"""Reports: the library's answers for a spec, as plain dicts and DataFrames (used by the CLI).

No printing here; the CLI renders these as tables or JSON.
"""

from __future__ import annotations

import numpy as np

from tsfa.config.spec import SystemSpec
from tsfa.control.offline import affordable_rho, eps_of, optimal_rank, rank_sensitivity, relaxed_rank
from tsfa.maths import bound as bd
from tsfa.maths.instance import realize


def bound_report(spec: SystemSpec, rank: int | None = None, rho: float | None = None) -> dict:
    """Bound term table at ``rank`` (default r*) and ``rho`` (default affordable rho_bar_k(r))."""
    inst = realize(spec)
    if rank is None:
        res = optimal_rank(spec, inst)
        rank = res.solution["rank"] if res.ok else spec.control.budget_reference_rank
    cap = min(spec.lora.d_in, spec.lora.d_out)
    if not 1 <= rank <= cap:
        raise ValueError(f"--rank = {rank}: must be between 1 and min(lora.d_in, lora.d_out) = {cap}")
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



def rank_report(spec: SystemSpec, sensitivity: bool = True) -> dict:
    """Offline stage: enumeration table, r*, status, relaxation and r* sensitivities."""
    inst = realize(spec)
    res = optimal_rank(spec, inst)
    out = {
        "status": res.status,
        "rank": res.solution.get("rank"),
        "objective": res.objective,
        "message": res.message,
        "table": res.solution["table"],
        "solve_time_s": res.solve_time_s,
    }
    if res.ok and spec.control.phi == "inv":
        rel = relaxed_rank(spec, inst)
        out["relaxed"] = {"status": rel.status, "rank": rel.solution.get("rank"),
                          "objective": rel.objective,
                          "latency_multipliers": rel.multipliers.get("latency")}
    if res.ok and sensitivity:
        out["sensitivity"] = rank_sensitivity(spec)
    return out


def control_report(spec: SystemSpec, rounds: int, V: float | None = None, solver: str = "joint",
                   rank: int | None = None, policy: str = "tsfa", rho: float = 1.0) -> dict:
    """Simulate the online stage for ``rounds`` rounds of i.i.d. Rayleigh fading (docs/model.md §4).

    The fading stream is seeded by ``clients.seed``; the rank defaults to the offline r*.
    Returns the per-round table (inputs: gains and queues before the round; decisions: rho,
    bandwidth, objective), the per-client summary, the average penalty and the policy used.
    """
    from tsfa.control.from_spec import make_policy
    from tsfa.control.lyapunov import simulate
    from tsfa.maths.rng import substream

    inst = realize(spec)
    if rank is None:
        res = optimal_rank(spec, inst)
        if not res.ok:
            return {"status": res.status, "message": res.message}
        rank = res.solution["rank"]
    pol = make_policy(spec, inst, rank, policy, solver, rho, V)
    sim = simulate(pol, inst.mean_gamma_hz, rounds, substream(spec.clients.seed, "fading"))
    return {"status": "optimal", "message": "", "rank": int(rank), "V": pol.V, "solver": solver,
            "policy": policy, "budget_s": inst.budget_s, "rounds": sim.rounds,
            "summary": sim.summary, "average_penalty": sim.average_penalty}


def rounds_as_records(rounds) -> list[dict]:
    """Per-round JSON records: inputs (gamma_hz, queue_before_s) and decisions, per client list."""
    out = []
    for t, g in rounds.groupby("round", sort=True):
        rec = {"round": int(t)}
        for col in ("gamma_hz", "queue_before_s", "rho", "bandwidth_hz", "latency_s", "queue_s"):
            if col in g:
                rec[col] = g[col].to_numpy()
        for col in ("objective", "status"):
            if col in g:
                rec[col] = g[col].iloc[0]
        out.append(rec)
    return out
