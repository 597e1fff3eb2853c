"""Lyapunov controller, reference policies and simulator (paper.md §4, §7 defaults)."""

from __future__ import annotations

import numpy as np
import pytest

from tsfa.control import (
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
    """2,000 rounds, 10 clients, paper.md §7 defaults, V = 1: every time-averaged latency
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
