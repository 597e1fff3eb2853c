"""Tests of tsfa.maths.symbolic (docs/model.md §2-§4) against the numeric model (bound, wireless).

The finite differences below are taken of J(r) assembled from tsfa.maths.bound and tsfa.maths.wireless
functions, never of the SymPy expression, so a wrong derivation fails here.
"""

import numpy as np
import pytest
import sympy as sp
from scipy.optimize import minimize_scalar

from tsfa.maths import bound as bd
from tsfa.maths import symbolic as sy
from tsfa.maths import wireless as wl
from tsfa.maths.payload import full_factor_bits


def numeric_offline_objective(variant="inv", **v):
    """J(r) = rank + cov + sparse(rho_bar(r)) (docs/model.md §3, interior branch) from numeric code."""
    s_full = full_factor_bits(v["r"], v["P"], v["q_b"])
    rho_bar = ((v["Tbar"] - v["Tcmp"]) * v["Rbar"] - v["S_head"]) / s_full
    return (bd.rank_term(v["a"] * v["r"] ** (-v["b"]), v["c5"])
            + bd.covariance_term(v["r"], v["eta"], v["tau"], v["G"], v["c3"])
            + bd.sparsification_term(bd.phi(rho_bar, variant), v["L"], v["eta"], v["tau"], v["G"],
                                     v["c4"]))


def richardson(f, x, h):
    """Central difference with one Richardson step: error O(h^4) instead of O(h^2)."""
    def central(step):
        return (f(x + step) - f(x - step)) / (2 * step)

    return (4 * central(h / 2) - central(h)) / 3


def numerator_elasticity(v):
    """|x / N dN/dx| of N = (Tbar - Tcmp) Rbar - S_head, so steps move rho_bar by ~1e-4 at most."""
    n = (v["Tbar"] - v["Tcmp"]) * v["Rbar"] - v["S_head"]
    out = dict.fromkeys(v, 0.0)
    out.update(Tbar=v["Tbar"] * v["Rbar"] / n, Tcmp=v["Tcmp"] * v["Rbar"] / n,
               Rbar=(v["Tbar"] - v["Tcmp"]) * v["Rbar"] / n, S_head=v["S_head"] / n)
    return out


def random_interior_point(rng):
    """Random parameters with comparable terms and rho_bar(r) well inside (1/r, 1)."""
    v = dict(Tcmp=rng.uniform(1, 60), Rbar=10 ** rng.uniform(5, 7), S_head=10 ** rng.uniform(5, 7),
             q_b=rng.choice([8.0, 16.0, 32.0]), P=10 ** rng.uniform(3, 5), eta=10 ** rng.uniform(-4, -2),
             tau=rng.uniform(1, 50), G=rng.uniform(0.5, 5), L=rng.uniform(1, 20),
             c3=rng.uniform(0.1, 3), c4=rng.uniform(0.1, 3), c5=rng.uniform(0.1, 3),
             a=rng.uniform(0.2, 1), b=rng.uniform(0.3, 2), r=rng.uniform(2, 64))
    rho_target = rng.uniform(1 / v["r"] + 0.05, 0.95)
    v["Tbar"] = v["Tcmp"] + (rho_target * v["q_b"] * v["r"] * v["P"] + v["S_head"]) / v["Rbar"]
    return v


@pytest.mark.parametrize("variant", bd.PHI_VARIANTS)
@pytest.mark.parametrize("seed", range(6))
def test_sensitivities_match_finite_differences_of_numeric_bound(variant, seed):
    v = random_interior_point(np.random.default_rng(seed))
    J = float(numeric_offline_objective(variant, **v))
    assert float(sy.offline_objective(variant)(**v)) == pytest.approx(J, rel=1e-12)
    grads = sy.sensitivities(variant)
    assert set(grads) == set(sy.OFFLINE_PARAMETERS)
    for name, fn in grads.items():
        h = 1e-4 * abs(v[name]) / max(1.0, numerator_elasticity(v)[name])
        fd = richardson(lambda x, n=name: float(numeric_offline_objective(variant, **{**v, n: x})),
                        v[name], h)
        d = float(fn(**v))
        rounding = 1e-14 * J / h
        assert abs(fd - d) <= 1e-5 * abs(d) + rounding, (name, d, fd)


def test_sensitivity_table_columns_and_elasticities():
    v = random_interior_point(np.random.default_rng(11))
    df = sy.sensitivity_table(v)
    assert list(df["parameter"]) == list(sy.OFFLINE_PARAMETERS)
    J = float(numeric_offline_objective(**v))
    assert df.attrs["J"] == pytest.approx(J, rel=1e-12)
    row = df.set_index("parameter")
    np.testing.assert_allclose(row["elasticity"], row["value"] / J * row["dJ_dx"], rtol=1e-12)
    # J is linear in c3 and c5 through one term each: elasticity = share of that term
    assert row.loc["c3", "elasticity"] == pytest.approx(
        float(bd.covariance_term(v["r"], v["eta"], v["tau"], v["G"], v["c3"])) / J, rel=1e-10)
    assert row.loc["a", "elasticity"] == pytest.approx(row.loc["c5", "elasticity"], rel=1e-12)
    # Tbar enters through rho_bar: raising the budget lowers J
    assert row.loc["Tbar", "dJ_dx"] < 0 < row.loc["Tcmp", "dJ_dx"]


def test_sensitivity_table_rejects_clipped_branch():
    v = random_interior_point(np.random.default_rng(12))
    v["Tbar"] = v["Tcmp"] + 10 * (v["q_b"] * v["r"] * v["P"] + v["S_head"]) / v["Rbar"]
    with pytest.raises(ValueError, match="rho_bar"):
        sy.sensitivity_table(v)


def test_keyword_functions_check_arguments_and_broadcast():
    v = random_interior_point(np.random.default_rng(13))
    J = sy.offline_objective()
    with pytest.raises(TypeError, match="missing"):
        J(**{k: x for k, x in v.items() if k != "r"})
    with pytest.raises(TypeError, match="unknown"):
        J(**v, V=1.0)
    rs = np.array([v["r"], v["r"] * 1.01])
    out = J(**{**v, "r": rs})
    assert out.shape == (2,)
    # a derivative that does not depend on every argument still broadcasts
    assert sy.sensitivities()["c5"](**{**v, "r": rs}).shape == (2,)
    assert sy.sensitivities() is not sy.sensitivities()  # callers cannot mutate the cache


# --------------------------------------------------------------------------- rho-step (§4)
def test_rho_step_closed_form_equals_paper():
    expr = sy.rho_step_closed_form()
    assert sp.simplify(expr - sy.rho_step_paper_form()) == 0
    assert expr.free_symbols == {sy.sym(n) for n in sy.RHO_STEP_PARAMETERS}


@pytest.mark.parametrize("seed", range(5))
def test_rho_step_equals_numeric_formula_and_minimises_numeric_p2(seed):
    rng = np.random.default_rng(seed)
    V, p, Q = rng.uniform(0.1, 10), rng.uniform(0.05, 1), rng.uniform(0.1, 10)
    gamma = wl.snr_bandwidth_hz(0.2, wl.path_gain(rng.uniform(50, 500)), 10 ** (-20.4))
    w = rng.uniform(5e4, 5e5)
    R = float(wl.rate_bps(w, gamma))
    Gamma = float(bd.sparsification_gamma(rng.uniform(1, 20), 10 ** rng.uniform(-4, -2),
                                          rng.uniform(1, 50), rng.uniform(0.5, 5)))
    S_full = float(full_factor_bits(16, 36_864, 32))
    S_head = 32 * 76_900
    rho = float(sy.rho_step()(V=V, p_k=p, Gamma=Gamma, R=R, Q=Q, S_full=S_full))
    assert rho == pytest.approx(np.sqrt(V * p * Gamma * R / (Q * S_full)), rel=1e-13)

    def objective(x):  # numeric per-client summand of P2
        return V * p * Gamma * bd.phi(x) + Q * (1.0 + (x * S_full + S_head) / R)

    best = minimize_scalar(objective, bounds=(rho * 1e-2, rho * 1e2), method="bounded",
                           options={"xatol": 1e-12 * rho})
    assert best.x == pytest.approx(rho, rel=1e-5)
    # stationarity with the numeric phi'
    assert V * p * Gamma * bd.phi_derivative(rho) + Q * S_full / R == pytest.approx(
        0.0, abs=1e-10 * Q * S_full / R)
    # the symbolic objective (with the symbolic Shannon rate) equals the numeric one
    f = sy.p2_client_objective_expr()
    vals = {"V": V, "p_k": p, "Gamma": Gamma, "Q": Q, "rho": 0.3, "Tcmp": 1.0, "S_full": S_full,
            "S_head": S_head, "w": w, "gamma": float(gamma)}
    assert float(f.subs({sy.sym(k): x for k, x in vals.items()})) == pytest.approx(
        float(objective(0.3)), rel=1e-12)


def test_rho_step_matches_optim_solver_if_present():
    waterfill = pytest.importorskip("tsfa.optim.waterfill")
    rng = np.random.default_rng(3)
    pv, qa, rate = rng.uniform(1, 5, 6), rng.uniform(1e6, 1e7, 6), rng.uniform(1e5, 1e7, 6)
    rho, _ = waterfill.rho_step("inv", pv, qa, rate, 1e-9)
    expected = sy.rho_step()(V=1.0, p_k=1.0, Gamma=pv, R=rate, Q=1.0, S_full=qa)
    np.testing.assert_allclose(rho, np.clip(expected, 1e-9, 1.0), rtol=1e-13)


# --------------------------------------------------------------------------- bound (§2)
@pytest.mark.parametrize("variant", bd.PHI_VARIANTS)
def test_symbolic_bound_equals_numeric_bound_terms(variant):
    rng = np.random.default_rng(4)
    w = rng.dirichlet(np.ones(3))
    rho = rng.uniform(0.1, 1, 3)
    pt = dict(rank=8, lr=0.003, local_steps=7, rounds=40, smoothness=3.0, grad_bound=2.0,
              grad_noise=0.7, heterogeneity=1.3, initial_gap=2.5)
    c = tuple(rng.uniform(0.5, 2, 6))
    numeric = bd.bound_terms(rho=rho, weights=w, eps=0.12, c=c, phi_variant=variant, **pt)
    subs = {"r": 8, "eta": 0.003, "tau": 7, "T": 40, "L": 3.0, "G": 2.0, "sigma": 0.7,
            "zeta_h": 1.3, "Delta_F": 2.5, "eps_r": 0.12}
    subs |= {f"c{i}": c[i] for i in range(6)}
    subs |= {f"p_{k + 1}": w[k] for k in range(3)} | {f"rho_{k + 1}": rho[k] for k in range(3)}
    sym_terms = sy.bound_terms_expr(variant, clients=3)
    assert set(sym_terms) == set(numeric)
    for name, e in sym_terms.items():
        val = float(e.subs({sy.sym(k): x for k, x in subs.items()}))
        assert val == pytest.approx(float(numeric[name]), rel=1e-12), name
    total = float(sy.bound_expr(variant, clients=3).subs({sy.sym(k): x for k, x in subs.items()}))
    assert total == pytest.approx(sum(float(x) for x in numeric.values()), rel=1e-12)
    # homogeneous form: one rho for every client, sum_k p_k^2 as a symbol
    hom = sy.bound_terms_expr(variant)
    h_subs = {k: x for k, x in subs.items() if not k.startswith(("p_", "rho_"))}
    h_subs |= {"rho": 0.4, "p2sum": float(np.sum(w**2))}
    num_h = bd.bound_terms(rho=np.full(3, 0.4), weights=w, eps=0.12, c=c, phi_variant=variant, **pt)
    for name, e in hom.items():
        assert float(e.subs({sy.sym(k): x for k, x in h_subs.items()})) == pytest.approx(
            float(num_h[name]), rel=1e-12), name


def test_p2_objective_sums_clients():
    f2 = sy.p2_objective_expr(2)
    assert sy.sym("rho_1") in f2.free_symbols and sy.sym("gamma_2") in f2.free_symbols
    assert sy.sym("rho") not in f2.free_symbols
    drho = sp.diff(f2, sy.sym("rho_1"))
    assert sy.sym("rho_2") not in drho.free_symbols  # separable in rho given w


@pytest.mark.parametrize("variant", bd.PHI_VARIANTS)
def test_phi_derivative_forms_are_sympys_derivatives(variant):
    """Each hand-written d phi / d rho of bd.PHI_FORMS is SymPy's derivative of its phi."""
    rho = sy.sym("rho")
    f, df = bd.phi_form(variant)
    assert sy.phi_expr(rho, variant) == f(rho)
    assert sp.simplify(sp.diff(f(rho), rho) - df(rho)) == 0


def test_unknown_phi_variant():
    with pytest.raises(ValueError, match="cube"):
        sy.phi_expr(sy.sym("rho"), "cube")
