"""Tests of tsfa.maths.bound (docs/model.md §2): each term by hand, monotonicity, eps(r), fit, table."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsfa.maths import bound as bd

POINT = dict(rank=8, lr=0.01, local_steps=5, rounds=50, smoothness=2.0, grad_bound=3.0,
             grad_noise=0.5, heterogeneity=1.5, initial_gap=4.0)
C = (1.1, 1.2, 1.3, 1.4, 1.5, 1.6)
WEIGHTS = np.array([0.5, 0.3, 0.2])
RHO = np.array([0.25, 0.5, 1.0])


def test_terms_by_hand():
    # eta tau = 0.05; (eta tau)^2 = 0.0025
    # init   1.1 * 4 / (0.01 * 5 * 50) = 4.4 / 2.5 = 1.76
    # noise  1.2 * 2 * 0.01 * 0.25 * (0.25 + 0.09 + 0.04) = 0.006 * 0.38 = 0.00228
    # drift  1.3 * 4 * 0.0025 * (0.25 + 2.25) = 0.013 * 2.5 = 0.0325
    # cov    1.4 * 8 * 0.0025 * 81 = 2.268
    # Gamma  1.5 * 4 * 0.0025 * 9 = 0.135
    # phi    (1-rho)/rho = 3, 1, 0 -> mean 0.5*3 + 0.3*1 + 0 = 1.8; sparse = 0.135 * 1.8 = 0.243
    # rank   1.6 * 0.1 = 0.16
    p = POINT
    assert bd.init_term(p["initial_gap"], p["lr"], p["local_steps"], p["rounds"], C[0]) == \
        pytest.approx(1.76)
    assert bd.noise_term(WEIGHTS, p["smoothness"], p["lr"], p["grad_noise"], C[1]) == \
        pytest.approx(0.00228)
    assert bd.drift_term(p["smoothness"], p["lr"], p["local_steps"], p["grad_noise"],
                         p["heterogeneity"], C[2]) == pytest.approx(0.0325)
    assert bd.covariance_term(p["rank"], p["lr"], p["local_steps"], p["grad_bound"], C[3]) == \
        pytest.approx(2.268)
    assert bd.sparsification_gamma(p["smoothness"], p["lr"], p["local_steps"], p["grad_bound"],
                                   C[4]) == pytest.approx(0.135)
    assert bd.mean_phi(RHO, WEIGHTS) == pytest.approx(1.8)
    assert bd.sparsification_term(1.8, p["smoothness"], p["lr"], p["local_steps"],
                                  p["grad_bound"], C[4]) == pytest.approx(0.243)
    assert bd.rank_term(0.1, C[5]) == pytest.approx(0.16)
    terms = bd.bound_terms(rho=RHO, weights=WEIGHTS, eps=0.1, c=C, **p)
    expected = dict(init=1.76, noise=0.00228, drift=0.0325, cov=2.268, sparse=0.243, rank=0.16)
    assert set(terms) == set(expected)
    for k, v in expected.items():
        assert float(terms[k]) == pytest.approx(v, rel=1e-12), k


def test_phi_variants_and_derivatives_by_hand():
    rho = np.array([0.25, 0.5, 1.0])
    np.testing.assert_allclose(bd.phi(rho, "inv"), [3.0, 1.0, 0.0])
    np.testing.assert_allclose(bd.phi(rho, "inv_sq"), [12.0, 2.0, 0.0])
    np.testing.assert_allclose(bd.phi(rho, "linear"), [0.75, 0.5, 0.0])
    for v in bd.PHI_VARIANTS:
        h = 1e-6
        fd = (bd.phi(rho[:2] + h, v) - bd.phi(rho[:2] - h, v)) / (2 * h)
        np.testing.assert_allclose(bd.phi_derivative(rho[:2], v), fd, rtol=1e-6)
    with pytest.raises(ValueError, match="cube"):
        bd.phi(0.5, "cube")
    with pytest.raises(ValueError, match="cube"):
        bd.phi_derivative(0.5, "cube")


def test_all_lists_every_public_name():
    """``__all__`` (what the alias ``tsfa.bound`` re-exports) is every public name of the module."""
    import types

    public = {n for n, v in vars(bd).items() if not n.startswith("_")
              and not isinstance(v, types.ModuleType) and getattr(v, "__module__", bd.__name__)
              == bd.__name__ and n not in ("annotations", "TYPE_CHECKING")}
    assert set(bd.__all__) == public


def test_mean_phi_history_averages_rounds():
    hist = np.array([[0.25, 0.5, 1.0], [1.0, 1.0, 1.0]])  # round means 1.8 and 0
    assert bd.mean_phi(hist, WEIGHTS) == pytest.approx(0.9)


def test_terms_broadcast():
    r = np.array([1, 2, 4, 8])
    out = bd.covariance_term(r, 0.01, 5, 3.0)
    assert out.shape == (4,)
    np.testing.assert_allclose(out / out[0], r)


# --------------------------------------------------------------------------- monotonicity
spectra = st.lists(st.floats(0.0, 1e3, allow_nan=False), min_size=1, max_size=40).filter(
    lambda s: sum(x * x for x in s) > 1e-200)


@given(spectra)
def test_rank_term_non_increasing_in_r(s):
    r = np.arange(0, len(s) + 3)
    eps = bd.eps_from_spectrum(s, r)
    term = bd.rank_term(eps, 1.7)
    assert np.all(np.diff(term) <= 0)
    assert eps[0] == pytest.approx(1.0) and eps[-1] == 0.0
    assert np.all((eps >= 0) & (eps <= 1))


@given(st.sampled_from(bd.PHI_VARIANTS),
       st.lists(st.floats(1e-3, 1.0), min_size=2, max_size=30),
       st.floats(1e-3, 10), st.floats(1e-4, 1), st.integers(1, 50), st.floats(1e-2, 10))
def test_sparsification_term_non_increasing_in_rho(variant, rhos, L, eta, tau, G):
    rho = np.sort(np.asarray(rhos))
    term = bd.sparsification_term(bd.phi(rho, variant), L, eta, tau, G)
    assert np.all(np.diff(term) <= 1e-12 * np.abs(term[:-1]))
    assert np.all(term >= 0)
    assert bd.phi(1.0, variant) == 0.0


@given(st.lists(st.integers(1, 512), min_size=2, max_size=20, unique=True),
       st.floats(1e-4, 1), st.integers(1, 50), st.floats(1e-2, 10), st.floats(1e-3, 10))
def test_covariance_term_increasing_in_r(ranks, eta, tau, G, c3):
    r = np.sort(np.asarray(ranks))
    term = bd.covariance_term(r, eta, tau, G, c3)
    assert np.all(np.diff(term) > 0)


# --------------------------------------------------------------------------- eps(r)
def _orthogonal(rng, n):
    q, rr = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(rr))


@pytest.mark.parametrize("seed", range(4))
def test_eps_from_matrix_known_spectrum(seed):
    rng = np.random.default_rng(seed)
    m, n = 30, 20
    s = np.sort(rng.uniform(0.1, 5.0, n))[::-1]
    update = _orthogonal(rng, m)[:, :n] @ np.diag(s) @ _orthogonal(rng, n).T
    ranks = np.arange(0, n + 2)
    energy = s**2
    hand = np.array([energy[r:].sum() / energy.sum() for r in ranks])
    np.testing.assert_allclose(bd.eps_from_matrix(update, ranks), hand, atol=1e-12)
    np.testing.assert_allclose(bd.eps_from_spectrum(rng.permutation(s), ranks), hand, atol=1e-14)


def test_eps_from_spectrum_by_hand_and_errors():
    # s = (3, 2, 1): energies 9, 4, 1, total 14 -> eps(1) = 5/14, eps(2) = 1/14
    np.testing.assert_allclose(bd.eps_from_spectrum([1, 3, 2], [0, 1, 2, 3]),
                               [1, 5 / 14, 1 / 14, 0])
    with pytest.raises(ValueError, match="singular_values"):
        bd.eps_from_spectrum([0.0, 0.0], 1)


def test_power_law_spectrum_and_eps():
    np.testing.assert_allclose(bd.power_law_spectrum(4, 1.0), [1, 1 / 2, 1 / 3, 1 / 4])
    e = 1 + 1 / 4 + 1 / 9 + 1 / 16
    np.testing.assert_allclose(bd.eps_power_law([1, 2], 4, 1.0), [(e - 1) / e, (1 / 9 + 1 / 16) / e])


@pytest.mark.parametrize("decay", [0.3, 0.8, 1.0, 1.7, 3.0])
def test_fit_power_law_recovers_exponent(decay):
    ranks = np.array([1, 2, 4, 8, 16, 32, 64])
    eps = bd.eps_power_law(ranks, 768, decay)
    assert bd.fit_power_law(ranks, eps, 768) == pytest.approx(decay, abs=1e-4)


def test_fit_power_law_tolerates_noise():
    rng = np.random.default_rng(5)
    ranks = np.array([1, 2, 4, 8, 16, 32, 64])
    eps = bd.eps_power_law(ranks, 768, 1.2) * np.exp(rng.normal(0, 0.01, ranks.size))
    assert bd.fit_power_law(ranks, eps, 768) == pytest.approx(1.2, abs=0.02)


# --------------------------------------------------------------------------- table
@given(st.lists(st.floats(1e-6, 1e3), min_size=6, max_size=6))
def test_term_table_shares_sum_to_one(values):
    terms = dict(zip(bd.TERM_FORMULAS, values, strict=True))
    df, total = bd.term_table(terms)
    assert total == pytest.approx(sum(values))
    assert df["share"].sum() == pytest.approx(1.0, rel=1e-12)
    assert list(df["term"]) == list(bd.TERM_FORMULAS)
    assert list(df["formula"]) == list(bd.TERM_FORMULAS.values())


def test_term_table_from_bound_terms():
    terms = bd.bound_terms(rho=RHO, weights=WEIGHTS, eps=0.1, c=C, **POINT)
    df, total = bd.term_table(terms)
    assert total == pytest.approx(1.76 + 0.00228 + 0.0325 + 2.268 + 0.243 + 0.16)
    assert df.set_index("term").loc["cov", "share"] == pytest.approx(2.268 / total)


# --------------------------------------------------------------------------- covariance forms
def test_covariance_forms_by_hand():
    # POINT: r = 8, eta tau = 0.05, G = 3, sigma = 0.5, zeta_h = 1.5, c3 = 1.4
    # h = (2.25 + 0.25 / 5) / (9 + 2.25) = 2.3 / 11.25
    # linear_hetero = 1.4 * 8 * 0.05 * 3 * h = 1.68 * 2.3 / 11.25 = 0.343466...
    p = POINT
    h = bd.heterogeneity_factor(p["grad_bound"], p["grad_noise"], p["heterogeneity"],
                                p["local_steps"])
    assert h == pytest.approx(2.3 / 11.25)
    new = bd.covariance_term(p["rank"], p["lr"], p["local_steps"], p["grad_bound"], C[3],
                             form="linear_hetero", grad_noise=p["grad_noise"],
                             heterogeneity=p["heterogeneity"])
    assert new == pytest.approx(1.68 * 2.3 / 11.25)
    terms = bd.bound_terms(rho=RHO, weights=WEIGHTS, eps=0.1, c=C, cov_form="linear_hetero", **p)
    assert float(terms["cov"]) == pytest.approx(1.68 * 2.3 / 11.25)
    # the term is G times the predicted E||Cov||_F over eta tau
    mag = bd.covariance_magnitude(p["rank"], p["lr"], p["local_steps"], p["grad_bound"],
                                  p["grad_noise"], p["heterogeneity"], C[3])
    assert 3.0 * mag / 0.05 == pytest.approx(new)
    # sqrt_r: the term is E||Cov||_F^2 / (eta tau)^2
    old_mag = bd.covariance_magnitude(p["rank"], p["lr"], p["local_steps"], p["grad_bound"],
                                      p["grad_noise"], p["heterogeneity"], C[3], "sqrt_r")
    assert old_mag**2 / 0.05**2 == pytest.approx(2.268)


def test_covariance_term_keeps_the_five_argument_call():
    assert bd.covariance_term(8, 0.01, 5, 3.0, 1.4) == pytest.approx(2.268)  # sqrt_r
    with pytest.raises(ValueError, match="grad_noise"):
        bd.covariance_term(8, 0.01, 5, 3.0, 1.4, form="linear_hetero")
    with pytest.raises(ValueError, match="cubic"):
        bd.covariance_term(8, 0.01, 5, 3.0, form="cubic")
    with pytest.raises(ValueError, match="cubic"):
        bd.covariance_magnitude(8, 0.01, 5, 3.0, 1.0, 1.0, form="cubic")


def test_default_form_magnitude_grows_linearly_in_r_the_variant_as_sqrt_r():
    """Measured ||Cov||_F grows as r^0.91-0.96 (docs/model.md §2): the default predicts slope 1,
    the sqrt_r variant 0.5."""
    r = np.array([2, 4, 8, 16])
    for form, slope in (("linear_hetero", 1.0), ("sqrt_r", 0.5)):
        m = bd.covariance_magnitude(r, 3e-3, 5, 0.25, 0.25, 0.4, 7.0, form)
        assert np.polyfit(np.log(r), np.log(m), 1)[0] == pytest.approx(slope)


def test_default_form_grows_with_heterogeneity_the_variant_does_not():
    zeta = np.array([0.0, 0.05, 0.4, 1.0, 100.0])
    new = bd.covariance_term(4, 3e-3, 5, 0.25, form="linear_hetero", grad_noise=0.25,
                             heterogeneity=zeta)
    old = bd.covariance_term(4, 3e-3, 5, 0.25 + 0 * zeta)
    assert np.all(np.diff(new) > 0) and np.all(np.diff(old) == 0)
    h = bd.heterogeneity_factor(0.25, 0.25, zeta, 5)
    assert np.all((h > 0) & (h <= 1)) and h[-1] == pytest.approx(1.0, abs=1e-4)
    # the pilot statistics of the embedded task (docs/model.md §2): IID vs Dir(0.1), tau = 5
    h_iid = bd.heterogeneity_factor(np.sqrt(0.0624), np.sqrt(0.0595), np.sqrt(0.0012), 5)
    h_dir = bd.heterogeneity_factor(np.sqrt(0.0719), np.sqrt(0.0659), np.sqrt(0.205), 5)
    assert 2.5 < h_dir / h_iid < 5.0


def test_term_table_names_the_covariance_form():
    terms = bd.bound_terms(rho=RHO, weights=WEIGHTS, eps=0.1, c=C, cov_form="linear_hetero",
                           **POINT)
    df, _ = bd.term_table(terms, "linear_hetero")
    assert df.set_index("term").loc["cov", "formula"] == bd.COV_FORMULAS["linear_hetero"]
    assert bd.COV_FORMS[0] == "linear_hetero"


_ZERO_OR_POSITIVE = st.one_of(st.just(0.0), st.floats(1e-6, 10))  # no subnormals: zeta^2 underflows


@given(st.lists(st.integers(1, 512), min_size=2, max_size=20, unique=True),
       st.floats(1e-4, 1), st.integers(1, 50), st.floats(1e-2, 10), _ZERO_OR_POSITIVE,
       _ZERO_OR_POSITIVE, st.floats(1e-3, 10))
def test_linear_hetero_increasing_in_r(ranks, eta, tau, G, sigma, zeta, c3):
    r = np.sort(np.asarray(ranks))
    term = bd.covariance_term(r, eta, tau, G, c3, form="linear_hetero", grad_noise=sigma,
                              heterogeneity=zeta)
    if sigma > 0 or zeta > 0:  # else h = 0: no dissimilarity, no covariance
        assert np.all(np.diff(term) > 0)
        np.testing.assert_allclose(term / term[0], r / r[0])


def test_covariance_form_is_selectable_in_the_spec():
    from tsfa.config.spec import SpecError, SystemSpec
    from tsfa.control.offline import rank_table

    spec = SystemSpec()
    assert spec.bound.cov_form == "linear_hetero"
    b, tr = spec.bound, spec.training
    r = np.asarray(spec.lora.rank_candidates)
    eta_tau = tr.learning_rate * tr.local_steps
    h = (b.heterogeneity**2 + b.grad_noise**2 / tr.local_steps) / (b.grad_bound**2
                                                                   + b.heterogeneity**2)
    np.testing.assert_allclose(rank_table(spec)["cov_term"], b.c3 * r * eta_tau * b.grad_bound * h)
    old = spec.replace(**{"bound.cov_form": "sqrt_r"})
    np.testing.assert_allclose(rank_table(old)["cov_term"], b.c3 * r * eta_tau**2 * b.grad_bound**4)
    with pytest.raises(SpecError, match="bound.cov_form"):
        spec.replace(**{"bound.cov_form": "cubic"})
