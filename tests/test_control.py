"""Lyapunov controller, reference policies and simulator (docs/model.md §4, §7 defaults)."""

from __future__ import annotations

import numpy as np
import pytest

from tsfa.control.lyapunov import (
    EqualBandwidthPolicy,
    LyapunovController,
    MyopicPolicy,
    example_system,
    simulate,
    update_queues,
)


@pytest.fixture(scope="module")
def system():
    return example_system(np.random.default_rng(0))


def test_queue_update_is_the_lindley_recursion():
    q = update_queues([0.0, 5.0, 1.0], [3.0, 1.0, 2.0], [2.0, 10.0, 2.0])
    np.testing.assert_array_equal(q, [1.0, 0.0, 1.0])


@pytest.mark.parametrize("solver", ["analytic", "joint", "cvxpy"])
def test_decide_feasible_and_solvers_agree(system, solver):
    kw, mg = system["policy_kwargs"], system["mean_gamma_hz"]
    q = np.linspace(0.0, 30.0, mg.size)
    ref = LyapunovController(**kw, solver="joint").decide(q, mg)
    d = LyapunovController(**kw, solver=solver).decide(q, mg)
    assert d.status in ("optimal", "optimal_inaccurate")
    assert d.bandwidth_hz.sum() <= kw["total_bandwidth_hz"] * (1 + 1e-9)
    assert np.all(d.bandwidth_hz >= kw["min_bandwidth_hz"] * (1 - 1e-12))
    assert d.objective == pytest.approx(ref.objective, rel=1e-6)


def test_linear_phi_needs_analytic(system):
    with pytest.raises(ValueError, match="linear"):
        LyapunovController(**system["policy_kwargs"], phi="linear", solver="joint")


def test_long_run_meets_latency_budgets(system):
    """2,000 rounds, 10 clients, docs/model.md §7 defaults, V = 1: every time-averaged latency
    is within budget x 1.01 (Lyapunov: average <= Tbar + Q_T / T)."""
    ctrl = LyapunovController(**system["policy_kwargs"], V=1.0)
    res = simulate(ctrl, system["mean_gamma_hz"], 2000, np.random.default_rng(5))
    assert (res.summary["latency_ratio"] <= 1.01).all(), res.summary
    assert (res.rounds["queue_s"] >= 0).all()
    assert 1 / 16 < res.summary["mean_rho"].mean() < 1  # the controller trades rho


def test_v_sweep_penalty_down_queue_up(system):
    """Same fading draws for every V: penalty non-increasing, mean queue non-decreasing in V."""
    pens, queues = [], []
    for v in (0.1, 1.0, 10.0, 100.0):
        ctrl = LyapunovController(**system["policy_kwargs"], V=v)
        res = simulate(ctrl, system["mean_gamma_hz"], 600, np.random.default_rng(9))
        pens.append(res.average_penalty)
        queues.append(res.summary["mean_queue_s"].mean())
    assert all(a >= b for a, b in zip(pens, pens[1:], strict=False)), pens
    assert all(a <= b for a, b in zip(queues, queues[1:], strict=False)), queues


def test_reference_policies(system):
    kw, mg = system["policy_kwargs"], system["mean_gamma_hz"]
    eq = EqualBandwidthPolicy(**kw, fixed_rho=0.5).decide(np.zeros(mg.size), mg)
    np.testing.assert_allclose(eq.bandwidth_hz, kw["total_bandwidth_hz"] / mg.size)
    assert np.all(eq.rho == 0.5)
    my = MyopicPolicy(**kw).decide(np.zeros(mg.size), mg)
    assert my.status == "optimal"
    assert my.bandwidth_hz.sum() <= kw["total_bandwidth_hz"] * (1 + 1e-9)
    assert np.all(my.latency_s <= kw["budget_s"] * (1 + 1e-6))  # per-round budget met


# ---------------------------------------------------------------- default spec (tsfa.control.from_spec)
@pytest.fixture(scope="module")
def default_system():
    from tsfa.config.spec import SystemSpec
    from tsfa.control.from_spec import make_policy
    from tsfa.control.offline import optimal_rank
    from tsfa.maths.instance import realize

    spec = SystemSpec()
    inst = realize(spec)
    rank = optimal_rank(spec).solution["rank"]
    return {"make": lambda **kw: make_policy(spec, inst, rank=rank, **kw),
            "mean_gamma_hz": inst.mean_gamma_hz}


def test_default_spec_long_run_meets_latency_budgets(default_system):
    """Default SystemSpec (w_min = 20 kHz, V = control.V), joint solver, 2,000 i.i.d. Rayleigh
    rounds: every client's time-averaged latency within budget x 1.01 (measured max 1.0002)."""
    ctrl = default_system["make"]()
    assert isinstance(ctrl, LyapunovController) and ctrl.solver == "joint"
    res = simulate(ctrl, default_system["mean_gamma_hz"], 2000, np.random.default_rng(5))
    assert (res.summary["latency_ratio"] <= 1.01).all(), res.summary
    assert 1 / 16 <= res.summary["mean_rho"].min() and res.summary["mean_rho"].max() <= 1


def _sweep(default_system, vs, seed=9, rounds=2000):
    pens, queues = [], []
    for v in vs:
        res = simulate(default_system["make"](V=v), default_system["mean_gamma_hz"], rounds,
                       np.random.default_rng(seed))  # same draws for every V
        pens.append(res.average_penalty)
        queues.append(res.summary["mean_queue_s"].mean())
    return pens, queues


def test_default_spec_v_sweep_penalty_down_queue_up(default_system):
    """Default spec, same fading draws, V in {1, 3, 10, 100}: average penalty non-increasing and
    average queue non-decreasing (see _sweep for the numbers)."""
    pens, queues = _sweep(default_system, (1.0, 3.0, 10.0, 100.0))
    assert all(a >= b for a, b in zip(pens, pens[1:], strict=False)), pens
    assert all(a <= b for a, b in zip(queues, queues[1:], strict=False)), queues


def test_default_spec_v_sweep_low_v(default_system):
    """Low V: with w_min = 1 kHz (the old default) a client whose queue emptied got rho = 1 at
    w_min (hundreds of seconds of latency), and V = 0.1 queued more than V = 1 (81 s vs 20 s).
    The default w_min is now 1% of W_tot (20 kHz), a minimum resource block: V = 0.1 now queues
    less than V = 1 (measured 5.3 s vs 9.1 s)."""
    pens, queues = _sweep(default_system, (0.1, 1.0))
    assert pens[0] >= pens[1] and queues[0] <= queues[1], (pens, queues)


@pytest.mark.xfail(strict=True, reason=(
    "known, not fixed: below V ~ 0.3 queues empty often and the zero-queue decision (rho = 1 at "
    "w_min) still spikes; measured over 2,000 rounds: mean queue 5.3 s at V = 0.1 vs 2.9 s at "
    "V = 0.3. Minimising the exact one-round drift (keeping the quadratic term P2 drops) is the "
    "candidate fix; it changes P2 of docs/model.md §4."))
def test_default_spec_v_sweep_very_low_v(default_system):
    _, queues = _sweep(default_system, (0.1, 0.3))
    assert queues[0] <= queues[1], queues


def test_logged_rounds_reproduce_decisions(default_system):
    """Every round's inputs (gamma_hz, queue_before_s) and decisions (rho, bandwidth_hz, objective)
    are logged; re-solving P2 from the logged inputs alone gives the logged decision."""
    from tsfa.optim import P2Problem, solve_joint

    ctrl = default_system["make"]()
    res = simulate(ctrl, default_system["mean_gamma_hz"], 60, np.random.default_rng(3))
    rounds = res.rounds
    assert {"queue_before_s", "objective", "gamma_hz"} <= set(rounds.columns)
    k = ctrl.n_clients
    for t in (0, 1, 17, 42, 59):
        r = rounds[rounds["round"] == t].sort_values("client")
        q, g = r["queue_before_s"].to_numpy(), r["gamma_hz"].to_numpy()
        if t:  # the logged queue is the previous round's update
            prev = rounds[rounds["round"] == t - 1].sort_values("client")
            np.testing.assert_array_equal(q, prev["queue_s"].to_numpy())
        prob = P2Problem(ctrl.weights, g, q, ctrl.V * ctrl.penalty_weights, ctrl.compute_s,
                         ctrl.slope_bits, ctrl.head_bits, ctrl.total_bandwidth_hz,
                         ctrl.min_bandwidth_hz, ctrl.rho_min, ctrl.phi)
        sol = solve_joint(prob)
        np.testing.assert_allclose(sol.rho, r["rho"].to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(sol.bandwidth_hz, r["bandwidth_hz"].to_numpy(), rtol=1e-12)
        assert r["objective"].nunique() == 1 and len(r) == k
        assert r["objective"].iloc[0] == pytest.approx(sol.objective, rel=1e-12)
        assert r["objective"].iloc[0] == pytest.approx(
            prob.objective(r["rho"].to_numpy(), r["bandwidth_hz"].to_numpy()), rel=1e-12)
