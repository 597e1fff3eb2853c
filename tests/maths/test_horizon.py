"""The horizon weights (docs/model.md §8b): a planted problem, errors simulated from known weights
plus noise, is recovered within 10%; the phi form and the rank exponent that generated the data
are the ones selected."""

import numpy as np
import pytest

from tsfa.maths import bound as bd
from tsfa.maths import horizon as hz

RANKS = np.array([1, 2, 4, 8, 16])
RHOS = np.array([0.5, 0.25, 0.125])
TRUTH = {"w_rank": 0.30, "w_cov": 0.004, "w_sparse": 0.012, "error_floor": 0.40}


def eps(r):
    return bd.eps_power_law(np.asarray(r), 64, 1.0)


def planted(rng, form="inv", seeds=3, noise=0.001):
    """Rank pilots (rank, seed) and ratio pilots at rank 8 paired with them, from TRUTH, one
    offset per seed and Gaussian noise of sd ``noise`` (test error units)."""
    ranks, seed_of, errors, rho, excess = [], [], [], [], []
    for s in range(seeds):
        floor = TRUTH["error_floor"] + rng.normal(0, 0.02)
        err = hz.horizon_error(eps(RANKS), RANKS, 0.0, TRUTH["w_rank"], TRUTH["w_cov"], 0.0,
                               floor) + rng.normal(0, noise, len(RANKS))
        ranks.extend(RANKS)
        seed_of.extend([s] * len(RANKS))
        errors.extend(err)
        for p in RHOS:
            e = hz.horizon_error(eps(8), 8, bd.phi(p, form), TRUTH["w_rank"], TRUTH["w_cov"],
                                 TRUTH["w_sparse"], floor) + rng.normal(0, noise)
            rho.append(p)
            excess.append(float(e) - err[list(RANKS).index(8)])
    return (np.array(ranks), np.array(seed_of), np.array(errors), np.array(rho),
            np.array(excess))


@pytest.mark.parametrize("draw", range(10))
def test_planted_weights_recovered_within_10_percent(draw):
    rng = np.random.default_rng(100 + draw)
    ranks, seeds, errors, rho, excess = planted(rng)
    w = hz.fit_rank_weights(ranks, eps(ranks), errors, seeds)
    ws, _ = hz.fit_sparse_weight(rho, excess, "inv")
    for key, est in (("w_rank", w["w_rank"]), ("w_cov", w["w_cov"]), ("w_sparse", ws)):
        assert est.value == pytest.approx(TRUTH[key], rel=0.10), key
        # the stated standard error is of the right size (5 of them: it is estimated from 10 dof)
        assert abs(est.value - TRUTH[key]) < 5 * est.stderr, (key, est)
    # the floor: the mean of the seeds' floors, within the seed-offset spread
    assert w["error_floor"].value == pytest.approx(TRUTH["error_floor"], abs=0.05)


def test_seed_offsets_do_not_bias_the_weights():
    """Large per-seed offsets (a paired design) leave the within-seed fit exact without noise."""
    rng = np.random.default_rng(0)
    ranks, seeds, errors, _, _ = planted(rng, noise=0.0)
    errors = errors + 0.3 * seeds  # a strong seed effect
    w = hz.fit_rank_weights(ranks, eps(ranks), errors, seeds)
    assert w["w_rank"].value == pytest.approx(TRUTH["w_rank"], rel=1e-9)
    assert w["w_cov"].value == pytest.approx(TRUTH["w_cov"], rel=1e-9)


@pytest.mark.parametrize("form", bd.PHI_VARIANTS)
def test_generating_form_selected(form):
    rng = np.random.default_rng(7)
    _, _, _, rho, excess = planted(rng, form=form, noise=0.0005)
    sel = hz.select_phi_form(rho, excess)
    assert sel.form == form and sel.exponent == 0.0  # one rank: b is not identified
    assert sel.fits[form][0].value == pytest.approx(TRUTH["w_sparse"], rel=0.10)


def planted_two_ranks(rng, form, b, ranks=(8, 16), seeds=2, noise=0.0005, w=0.012):
    """Excess errors of ratio pilots at two ranks from w phi(rho) (8 / r)^b plus noise."""
    rho, rank, excess = [], [], []
    for _ in range(seeds):
        for r in ranks:
            for p in RHOS:
                rho.append(p)
                rank.append(r)
                excess.append(w * float(bd.phi(p, form)) * (8 / r) ** b + rng.normal(0, noise))
    return np.array(rho), np.array(rank), np.array(excess)


@pytest.mark.parametrize("form, b", [("inv_sq", 0.0), ("inv_sq", 1.5), ("inv_sq", 2.0),
                                     ("inv", 1.0), ("linear", 0.5)])
@pytest.mark.parametrize("draw", range(3))
def test_planted_rank_exponent_recovered(form, b, draw):
    """Ratio pilots at ranks 8 and 16 separate a ratio form (b = 0) from a count form (b = 2
    under inv_sq): the form, b within 10% (or 0.1 absolute near 0) and w_sparse within 10%."""
    rng = np.random.default_rng(500 + draw)
    rho, rank, excess = planted_two_ranks(rng, form, b)
    sel = hz.select_phi_form(rho, excess, rank=rank)
    assert sel.form == form
    assert sel.exponent == pytest.approx(b, rel=0.10, abs=0.1)
    assert sel.w.value == pytest.approx(0.012, rel=0.10)
    assert sel.rank_ref == 8.0 and sel.exponent_se < 0.5


def test_loo_error_is_the_held_out_prediction_error():
    """Independent reference: refit without each pilot by hand."""
    rho, rank, excess = planted_two_ranks(np.random.default_rng(3), "inv_sq", 1.0, noise=0.002)
    f = bd.phi(rho, "inv_sq") * (8 / rank) ** 1.0
    ref = 0.0
    for i in range(len(f)):
        m = np.arange(len(f)) != i
        w = max(0.0, np.linalg.lstsq(f[m, None], excess[m], rcond=None)[0][0])
        ref += (excess[i] - w * f[i]) ** 2
    assert hz.loo_error(rho, excess, "inv_sq", rank, 1.0, 8.0) == pytest.approx(ref, rel=1e-12)


def test_weights_are_nonnegative_when_the_data_say_otherwise():
    """An error that falls with rho < 1 (sparsification helps) fits w_sparse = 0, not < 0."""
    est, sse = hz.fit_sparse_weight([0.5, 0.25], [-0.01, -0.02], "inv")
    assert est.value == 0.0 and sse == pytest.approx(0.01**2 + 0.02**2)


def test_rank_fit_refuses_too_few_ranks():
    with pytest.raises(ValueError, match=">= 3 distinct ranks"):
        hz.fit_rank_weights([2, 4, 2, 4], eps([2, 4, 2, 4]), [0.5, 0.4, 0.5, 0.4], [0, 0, 1, 1])
