"""Offline rank stage (docs/model.md §3): enumeration, relaxation, infeasibility, sensitivity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tsfa.config.spec import SystemSpec
from tsfa.control.offline import optimal_rank, rank_sensitivity, rank_table, relaxed_rank
from tsfa.maths import wireless as wl
from tsfa.maths.instance import realize
from tsfa.maths.units import dbm_to_w


def brute_force_rank(spec: SystemSpec) -> int:
    """Independent scalar re-implementation: grid over rho per client, loop over ranks.

    For each rank and client, the largest rho on a fine grid whose latency on the ergodic
    equal-bandwidth rate (Monte-Carlo-free closed form) fits the budget; then J by hand.
    """
    inst = realize(spec)
    lo, tr, b = spec.lora, spec.training, spec.bound
    w_eq = spec.wireless.bandwidth_total_hz / spec.clients.num_clients
    p_w = float(dbm_to_w(spec.wireless.tx_power_dbm))
    n0 = float(dbm_to_w(spec.wireless.noise_psd_dbm_hz))
    s = np.arange(1, b.spectrum_dim + 1, dtype=float) ** (-b.spectrum_decay)
    best, best_j = None, math.inf
    grid = np.linspace(0.0, 1.0, 20001)[1:]
    for r in spec.lora.rank_candidates:
        eps = float(np.sum(s[r:] ** 2) / np.sum(s**2))
        idx = math.ceil(math.log2(r)) if r > 1 else 0
        phis = []
        for k in range(inst.num_clients):
            gamma = p_w * inst.path_gain[k] / n0
            rbar = float(wl.ergodic_rate_bps(w_eq, gamma))
            bits = grid * r * (lo.bits_per_param * lo.params_per_rank + lo.n_modules * idx)
            latency = inst.compute_s[k] + (bits + lo.bits_per_param * lo.head_params) / rbar
            ok = grid[(latency <= inst.budget_s[k]) & (grid >= 1.0 / r)]
            if ok.size == 0:
                return -1
            rho = ok.max()
            phis.append((1 - rho) / rho)
        sparse = b.c4 * b.smoothness**2 * tr.learning_rate**2 * tr.local_steps**2 * b.grad_bound**2
        eta_tau = tr.learning_rate * tr.local_steps
        if b.cov_form == "sqrt_r":
            cov = b.c3 * r * eta_tau**2 * b.grad_bound**4
        else:  # linear_hetero: c3 r eta tau G (zeta_h^2 + sigma^2 / tau) / (G^2 + zeta_h^2)
            cov = b.c3 * r * eta_tau * b.grad_bound * (
                b.heterogeneity**2 + b.grad_noise**2 / tr.local_steps) / (
                b.grad_bound**2 + b.heterogeneity**2)
        j = b.c5 * eps + cov + sparse * float(np.dot(inst.weights, phis))
        if j < best_j:
            best, best_j = r, j
    return best


SPECS = {
    "default": SystemSpec(),
    "narrow": SystemSpec().replace(**{"wireless.bandwidth_total_hz": 1.0e6,
                                      "control.latency_budget_s": [42.0]}),
    "steep": SystemSpec().replace(**{"bound.spectrum_decay": 0.6, "bound.c3": 0.3}),
    "many_clients": SystemSpec().replace(**{"clients.num_clients": 40, "clients.seed": 3}),
    "rich_link": SystemSpec().replace(**{"wireless.tx_power_dbm": 40.0,
                                         "control.latency_budget_s": [40.0], "bound.c3": 0.2}),
    "sqrt_r": SystemSpec().replace(**{"bound.cov_form": "sqrt_r"}),
    "heterogeneous": SystemSpec().replace(**{"bound.heterogeneity": 3.0}),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_enumeration_equals_brute_force(name):
    spec = SPECS[name]
    res = optimal_rank(spec)
    assert res.status == "optimal"
    assert res.solution["rank"] == brute_force_rank(spec)


def test_default_spec_has_interior_optimal_rank():
    """docs/model.md §7: the defaults must give an interior r* (not the smallest nor largest)."""
    spec = SystemSpec()
    r = optimal_rank(spec).solution["rank"]
    assert min(spec.lora.rank_candidates) < r < max(spec.lora.rank_candidates)


def test_table_terms_monotone_and_sum():
    t = rank_table(SystemSpec())
    assert np.all(np.diff(t["rank_term"]) <= 0)
    assert np.all(np.diff(t["cov_term"]) > 0)
    assert np.all(np.diff(t["sparse_term"]) >= 0)  # bigger rank, smaller affordable ratio
    np.testing.assert_allclose(t["J"], t["rank_term"] + t["cov_term"] + t["sparse_term"])


@pytest.mark.parametrize("name", sorted(SPECS))
def test_relaxation_rounds_to_rstar_or_neighbour(name):
    spec = SPECS[name]
    r_star = optimal_rank(spec).solution["rank"]
    rel = relaxed_rank(spec)
    assert rel.status == "optimal"
    cands = list(spec.lora.rank_candidates)
    r = rel.solution["rank"]
    below = max([c for c in cands if c <= r + 1e-9], default=cands[0])
    above = min([c for c in cands if c >= r - 1e-9], default=cands[-1])
    i = cands.index(r_star)
    neighbours = set(cands[max(0, i - 1): i + 2])
    assert {below, above} & neighbours, (r, r_star)


def test_relaxation_kkt_latency_multipliers_nonnegative_and_complementary():
    spec = SPECS["narrow"]
    rel = relaxed_rank(spec)
    lam = rel.multipliers["latency"]
    assert np.all(lam >= -1e-8)
    # complementary slackness: a client with slack in its budget has a zero multiplier
    inst = realize(spec)
    from tsfa.control.offline import affordable_components

    m = affordable_components(spec, inst, max(spec.lora.rank_candidates))
    slack = np.log(m) - (np.log(rel.solution["rho"]) + np.log(rel.solution["rank"]))
    assert np.all(np.abs(lam * slack) < 1e-6)


def test_relaxation_rejects_non_dcp_phi():
    spec = SystemSpec().replace(**{"control.phi": "linear"})
    with pytest.raises(ValueError, match="control.phi"):
        relaxed_rank(spec)
    assert optimal_rank(spec).status == "optimal"  # enumeration serves every variant


INFEASIBLE = {
    "budget_below_compute": ({"control.latency_budget_s": [5.0]}, "compute latency"),
    "tiny_bandwidth": ({"wireless.bandwidth_total_hz": 2e4, "wireless.bandwidth_min_hz": 100.0,
                        "control.latency_budget_s": [60.0]}, "uplink slack"),
    "weak_transmitter": ({"wireless.tx_power_dbm": -45.0, "control.latency_budget_s": [60.0]},
                         "uplink slack"),
    "huge_head": ({"lora.head_params": 50_000_000}, "uplink slack"),
    "slow_devices": ({"clients.device_flops_min": 1e10, "clients.device_flops_max": 2e10,
                      "control.latency_budget_s": [60.0]}, "compute latency"),
    "thin_budget_rule": ({"control.budget_uplink_fraction": 0.001}, "uplink slack"),
}


@pytest.mark.parametrize("name", sorted(INFEASIBLE))
def test_infeasible_specs_report_cause(name):
    changes, cause = INFEASIBLE[name]
    spec = SystemSpec().replace(**changes)
    res = optimal_rank(spec)
    assert res.status == "infeasible"
    assert cause in res.message
    assert "client" in res.message
    rel = relaxed_rank(spec)
    assert rel.status == "infeasible" and cause in rel.message


def test_sensitivity_moves_change_rstar_exactly_at_reported_point():
    spec = SystemSpec()
    table = rank_sensitivity(spec)
    r0 = optimal_rank(spec).solution["rank"]
    budgets = realize(spec).budget_s.tolist()
    frozen = spec.replace(**{"control.latency_budget_s": budgets})
    found = table.dropna(subset=["move"])
    assert len(found) >= 5
    for row in found.itertuples():
        if row.parameter in ("control.latency_budget_s", "training.local_steps"):
            continue
        new = frozen.replace(**{row.parameter: row.new_value})
        assert optimal_rank(new).solution.get("rank") != r0
        # slightly less than the reported move leaves r* unchanged
        section, key = row.parameter.split(".")
        old = getattr(getattr(frozen, section), key)
        back = old + 0.99 * (row.new_value - old)
        assert optimal_rank(frozen.replace(**{row.parameter: back})).solution["rank"] == r0
