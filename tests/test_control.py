"""Lyapunov controller, reference policies and simulator (docs/model.md §4, §7 defaults)."""

from __future__ import annotations

import numpy as np
import pytest

from tsfa.control.base import update_queues
from tsfa.control.lyapunov import LyapunovController
from tsfa.control.reference import EqualBandwidthPolicy, MyopicPolicy
from tsfa.control.simulate import example_system, simulate


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
    for v in (1.0, 3.0, 10.0, 100.0):  # above the degenerate V < 0.3 (docs/model.md §4)
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
def _default(**changes):
    from tsfa.config.spec import SystemSpec
    from tsfa.control.from_spec import make_policy
    from tsfa.control.offline import optimal_rank
    from tsfa.maths.instance import realize

    spec = SystemSpec().replace(**changes)
    inst = realize(spec)
    rank = optimal_rank(spec).solution["rank"]
    return {"make": lambda **kw: make_policy(spec, inst, rank=rank, **kw),
            "mean_gamma_hz": inst.mean_gamma_hz, "spec": spec, "inst": inst, "rank": rank}


@pytest.fixture(scope="module")
def default_system():
    """The default spec: budget 40 s, per-round deadline with deferral."""
    return _default()


@pytest.fixture(scope="module")
def no_deadline_system():
    """The default spec as it was before issue 11: no deadline (the original P2) and the relative
    budget rule; the V trade-off tests and docs/model.md §4's V table were measured on it."""
    return _default(**{"control.deadline": "none", "control.latency_budget_s": []})


def test_default_spec_long_run_meets_latency_budgets(default_system):
    """Default SystemSpec (deadline 'defer', V = control.V), joint solver, 1,000 Rayleigh rounds:
    every client's time-averaged latency within budget x 1.01 and no round past a deadline."""
    ctrl = default_system["make"]()
    assert isinstance(ctrl, LyapunovController) and ctrl.solver == "joint"
    assert ctrl.deadline_s is not None
    res = simulate(ctrl, default_system["mean_gamma_hz"], 1000, 5)
    assert (res.summary["latency_ratio"] <= 1.01).all(), res.summary
    assert (res.summary["max_latency_s"] <= ctrl.deadline_s * (1 + 1e-9)).all()
    assert 1 / 16 <= res.summary["mean_rho"].min() and res.summary["mean_rho"].max() <= 1


def test_no_deadline_option_is_the_original_p2(no_deadline_system):
    """control.deadline = 'none' keeps the old behaviour: every client sends every round and the
    decision is the joint solver's on the original P2."""
    from tsfa.optim import solve_joint

    ctrl = no_deadline_system["make"]()
    assert ctrl.deadline_s is None
    res = simulate(ctrl, no_deadline_system["mean_gamma_hz"], 20, 3)
    assert res.rounds["sent"].all()
    r = res.rounds[res.rounds["round"] == 7]
    sol = solve_joint(ctrl.problem(r["queue_before_s"].to_numpy(), r["gamma_hz"].to_numpy()))
    np.testing.assert_array_equal(sol.rho, r["rho"].to_numpy())


def _sweep(system, vs, seed=9, rounds=2000):
    pens, queues = [], []
    for v in vs:
        res = simulate(system["make"](V=v), system["mean_gamma_hz"], rounds, seed)  # same draws
        pens.append(res.average_penalty)
        queues.append(res.summary["mean_queue_s"].mean())
    return pens, queues


def test_default_spec_v_sweep_penalty_down_queue_up(no_deadline_system):
    """Original P2 on the pre-issue-11 default spec, same fading draws, V in {1, 3, 10, 100}:
    average penalty non-increasing and average queue non-decreasing."""
    pens, queues = _sweep(no_deadline_system, (1.0, 3.0, 10.0, 100.0))
    assert all(a >= b for a, b in zip(pens, pens[1:], strict=False)), pens
    assert all(a <= b for a, b in zip(queues, queues[1:], strict=False)), queues


def test_default_spec_v_sweep_low_v_is_degenerate(no_deadline_system):
    """Low V on the original P2 (docs/model.md §4, "Very small V"): V = 0.1 is dominated by
    V = 0.3, more penalty *and* a longer queue (bang-bang decisions), where the theory's O(1/V),
    O(V) trade-off would give a shorter queue."""
    pens, queues = _sweep(no_deadline_system, (0.1, 0.3))
    assert pens[0] > pens[1] and queues[0] > queues[1], (pens, queues)


def test_short_run_is_a_prefix_of_a_long_run(default_system):
    """Fading per (seed, round, client): 30 rounds are exactly the first 30 of 80, and the logged
    gains are mean_gamma x fading_gains(seed, t, K) (the trainer's draw)."""
    from tsfa.maths.wireless import fading_gains

    ctrl = default_system["make"]()
    short = simulate(ctrl, default_system["mean_gamma_hz"], 30, 11).rounds
    long = simulate(ctrl, default_system["mean_gamma_hz"], 80, 11).rounds
    cols = ["gamma_hz", "rho", "bandwidth_hz", "queue_s", "sent"]
    np.testing.assert_array_equal(short[cols].to_numpy(), long[long["round"] < 30][cols].to_numpy())
    r = long[long["round"] == 42]
    np.testing.assert_array_equal(r["gamma_hz"], default_system["mean_gamma_hz"]
                                  * fading_gains(11, 42, ctrl.n_clients))


class _StubPayload:
    """The PayloadModel interface (.bits(rho), .slope_bits, .head_bits) with a step count."""

    slope_bits, head_bits = 1000.0, 50.0

    def bits(self, rho):
        return (np.ceil(np.asarray(rho) * 4) * 250 + 50).astype(np.int64)


def test_decision_carries_sent_and_planned_bits(system):
    """Decision.sent (bool) and planned_bits = payload.bits(rho) for senders, 0 for deferred;
    without a payload model the relaxed a rho + h."""
    kw, mg = dict(system["policy_kwargs"]), system["mean_gamma_hz"]
    k = mg.size
    kw["deadline_s"] = kw["budget_s"] + 2 * (kw["budget_s"] - kw["compute_s"])
    gains = mg * np.where(np.arange(k) == 0, 1e-9, 1.0)  # client 0 in a deep fade: defers
    d = LyapunovController(**kw).decide(np.full(k, 5.0), gains)
    assert d.sent.dtype == bool and not d.sent[0] and d.sent[1:].all()
    np.testing.assert_allclose(d.planned_bits[1:], kw["slope_bits"] * d.rho[1:] + kw["head_bits"])
    assert d.planned_bits[0] == 0 and d.rho[0] == 0 and d.bandwidth_hz[0] == 0
    assert d.latency_s[0] == kw["compute_s"][0]
    d2 = LyapunovController(**kw, payload=_StubPayload()).decide(np.full(k, 5.0), gains)
    np.testing.assert_array_equal(d2.planned_bits[1:], _StubPayload().bits(d2.rho[1:]))
    from tsfa.config.spec import SystemSpec
    from tsfa.maths.payload import PayloadModel

    real = PayloadModel.from_spec(SystemSpec(), "soft", 16)  # priced per level n / r, exactly
    d3 = LyapunovController(**kw, payload=real).decide(np.full(k, 5.0), gains)
    np.testing.assert_array_equal(d3.planned_bits, np.where(d3.sent, real.bits(d3.rho), 0))


def test_max_constraint_changes_decisions_and_meets_its_budget():
    """control.constraint = 'max': one queue on max_k T_k; the decisions differ from per_client
    and, after 600 rounds, the mean of the round's slowest latency is within 1% of the budget."""
    sys_max = _default(**{"control.constraint": "max", "clients.num_clients": 6})
    sys_pc = _default(**{"clients.num_clients": 6})
    ctrl = sys_max["make"]()
    assert ctrl.initial_queues().shape == (1,)
    res = simulate(ctrl, sys_max["mean_gamma_hz"], 600, 4)
    per_round_max = res.rounds.groupby("round")["latency_s"].max()
    assert per_round_max.mean() <= 1.01 * ctrl.max_budget_s, per_round_max.mean()
    other = simulate(sys_pc["make"](), sys_pc["mean_gamma_hz"], 50, 4).rounds
    assert not np.allclose(res.rounds[res.rounds["round"] < 50]["rho"].to_numpy(),
                           other["rho"].to_numpy())


def test_variant_solver_limits(system):
    kw = dict(system["policy_kwargs"])
    kw["deadline_s"] = kw["budget_s"] * 2
    with pytest.raises(ValueError, match="analytic"):
        LyapunovController(**kw, solver="analytic")
    with pytest.raises(ValueError, match="max"):
        LyapunovController(**system["policy_kwargs"], constraint="max", solver="analytic")
    big = {k: (np.resize(v, 600) if isinstance(v, np.ndarray) else v) for k, v in
           system["policy_kwargs"].items()}
    big["weights"] = np.full(600, 1 / 600)
    big["min_bandwidth_hz"] = 1.0
    with pytest.raises(ValueError, match="K <= 500"):
        LyapunovController(**big, solver="cvxpy")
