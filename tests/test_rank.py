"""Offline rank stage (docs/model.md §3): enumeration, relaxation, infeasibility, sensitivity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tsfa.config.spec import SystemSpec
from tsfa.control.offline import optimal_rank, rank_table, relaxed_rank
from tsfa.control.sensitivity import rank_sensitivity
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


NONE = {"control.deadline": "none"}  # the ergodic-rate model the brute force re-implements
SPECS = {
    "default": SystemSpec().replace(**NONE),
    "narrow": SystemSpec().replace(**NONE, **{"wireless.bandwidth_total_hz": 1.0e6,
                                              "control.latency_budget_s": [42.0]}),
    "steep": SystemSpec().replace(**NONE, **{"bound.spectrum_decay": 0.6, "bound.c3": 0.3}),
    "many_clients": SystemSpec().replace(**NONE, **{"clients.num_clients": 40, "clients.seed": 3,
                                                    "control.latency_budget_s": [70.0]}),
    "rich_link": SystemSpec().replace(**NONE, **{"wireless.tx_power_dbm": 40.0,
                                                 "control.latency_budget_s": [40.0],
                                                 "bound.c3": 0.2}),
    "sqrt_r": SystemSpec().replace(**NONE, **{"bound.cov_form": "sqrt_r"}),
    "heterogeneous": SystemSpec().replace(**NONE, **{"bound.heterogeneity": 3.0}),
    "relative_rule": SystemSpec().replace(**NONE, **{"control.latency_budget_s": []}),
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
    "thin_budget_rule": ({"control.latency_budget_s": [], "control.budget_uplink_fraction": 0.001},
                         "uplink slack"),
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


def _apply(spec: SystemSpec, row):
    """The spec with the printed move of one sensitivity row applied to its own value."""
    section, key = row.parameter.split(".")
    old = getattr(getattr(spec, section), key)
    if isinstance(old, tuple):
        return spec.replace(**{row.parameter: [b * row.move for b in old]})
    if row.parameter == "wireless.tx_power_dbm":
        return spec.replace(**{row.parameter: old + row.move})
    if row.parameter == "training.local_steps":
        return spec.replace(**{row.parameter: round(old * row.move)})
    return spec.replace(**{row.parameter: old * row.move})


def _one_digit_back(spec: SystemSpec, row):
    """The spec moved by the printed move less one unit of its 4th significant digit (toward no
    move): the threshold lies within that last digit."""
    unit = 10.0 ** (math.floor(math.log10(abs(row.move))) - 3)
    back = row.move - unit if row.direction == "up" else row.move + unit
    return _apply(spec, row._replace(move=back))


def test_sensitivity_factor_applied_to_the_spec_flips_rstar():
    """Default spec (budget in seconds): every printed move, applied as printed to the spec the
    user edits, changes r* (to the printed new rank); one unit of its last printed digit less
    does not (the threshold is within the printed precision; integer keys are exact)."""
    spec = SystemSpec()
    table = rank_sensitivity(spec)
    r0 = optimal_rank(spec).solution["rank"]
    found = table.dropna(subset=["move"])
    assert len(found) >= 8
    keys = set(found["parameter"])
    assert {"wireless.bandwidth_total_hz", "wireless.tx_power_dbm",
            "control.latency_budget_s"} <= keys
    for row in found.itertuples():
        moved = optimal_rank(_apply(spec, row))
        assert (moved.solution.get("rank") if moved.ok else "infeasible") != r0, row
        assert moved.solution.get("rank", "infeasible") == row.new_rank or not moved.ok
        if row.parameter == "training.local_steps":
            continue
        assert optimal_rank(_one_digit_back(spec, row)).solution.get("rank") == r0, row


def test_budget_in_seconds_makes_the_spec_count():
    """With the default budget in seconds, editing the bandwidth (x4), the distances, the power
    or K changes J(r) (and r* where the sensitivity says so); under the relative rule the budget
    moves with the link and J(r) stays almost the same (why it is not the default)."""
    spec = SystemSpec()
    assert spec.control.latency_budget_s == (40.0,)
    base = rank_table(spec)["J"].to_numpy()
    for change in ({"wireless.bandwidth_total_hz": 8e6}, {"clients.distance_max_m": 900.0},
                   {"wireless.tx_power_dbm": 17.0}, {"clients.num_clients": 20}):
        moved = rank_table(spec.replace(**change))["J"].to_numpy()
        assert not np.allclose(moved, base, rtol=1e-3), change
    wide = SystemSpec().replace(**{"wireless.bandwidth_total_hz": 2e6 * 0.5})
    assert optimal_rank(wide).solution["rank"] != optimal_rank(spec).solution["rank"]


def test_deferral_planning_model_against_monte_carlo():
    """Offline model with deferral (docs/model.md §3): at the planned ratio rho_bar_k(r), the
    reference policy (equal share, upload unless it would end after D_k) has the participation
    pi_k the table uses and a mean latency within the budget (at it when the budget binds)."""
    from tsfa.control.offline import affordable_rho, participation, planning_rate_bps
    from tsfa.maths.payload import PayloadModel

    spec = SystemSpec().replace(**{"clients.distance_min_m": 200.0, "clients.distance_max_m": 3000.0,
                                   "control.latency_budget_s": [60.0]})
    inst = realize(spec)
    r = 16
    rho = affordable_rho(spec, inst, r)
    pi = participation(spec, inst, r, rho)
    pay = PayloadModel.from_spec(spec, "soft", r)
    bits = pay.slope_bits * rho + pay.head_bits
    w = spec.wireless.bandwidth_total_hz / spec.clients.num_clients
    slack = inst.budget_s - inst.compute_s
    x = np.random.default_rng(0).exponential(size=(400_000, 1))
    upload = bits / wl.rate_bps(w, inst.mean_gamma_hz * x)
    sent = upload <= spec.control.deadline_factor * slack
    np.testing.assert_allclose(sent.mean(axis=0), pi, atol=3e-3)
    mean_up = np.where(sent, upload, 0.0).mean(axis=0)
    assert np.all(mean_up <= slack * 1.01), (mean_up / slack)
    binding = (rho > 1 / r) & (rho < 1) & (rho * pay.slope_bits + pay.head_bits
                                             >= 0.999 * slack * planning_rate_bps(spec, inst))
    assert binding.any()
    np.testing.assert_allclose(mean_up[binding], slack[binding], rtol=0.02)
