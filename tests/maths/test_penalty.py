"""The controller's penalty normalisation (docs/model.md §4): with ``Gamma_k`` of
:func:`tsfa.maths.penalty.penalty_scale_s2`, a queue at ``V`` times the uplink budget makes the
operating ratio P2's own optimum, checked with the joint solver (an independent computation)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsfa.maths.penalty import operating_ratio, penalty_scale_s2
from tsfa.maths.wireless import rate_bps
from tsfa.optim import P2Problem, solve_joint

W_TOT = 1e6


@settings(max_examples=30, deadline=None)
@given(phi=st.sampled_from(["inv", "inv_sq"]), rank=st.sampled_from([2, 8, 32]),
       frac=st.floats(0.15, 0.85), V=st.floats(0.1, 10.0), gamma=st.floats(1e6, 1e9))
def test_queue_at_v_times_the_uplink_budget_gives_the_operating_ratio(phi, rank, frac, V, gamma):
    slope, head = 1e6 * rank, 2e5
    rate = float(rate_bps(W_TOT, gamma))  # one client takes the whole band
    slack = (head + frac * slope) / rate  # the budget of ratio `frac`
    rho_op = float(operating_ratio(slack, rate, slope, head, 1.0 / rank))
    assert rho_op == pytest.approx(max(frac, 1.0 / rank))
    if frac <= 1.0 / rank:
        return
    p = 1.0
    g = float(penalty_scale_s2(p, slack, rate, slope, head, 1.0 / rank, phi))
    prob = P2Problem(np.array([p]), np.array([gamma]), np.array([V * slack]),
                     np.array([V * g]), np.array([1.0]), slope, head, W_TOT, 1e3, 1.0 / rank, phi)
    res = solve_joint(prob)
    assert res.bandwidth_hz[0] == pytest.approx(W_TOT)
    assert res.rho[0] == pytest.approx(rho_op, rel=1e-6)


def test_scale_is_rank_and_form_free_in_queue_units():
    """Gamma_k differs across ranks and phi forms, the queue level it implies does not:
    Q* = V p Gamma |phi'(rho*)| R / a = V (Tbar - T^cmp) for each."""
    from tsfa.maths.bound import phi_derivative

    rate, slack, head = 2e5, 3.0, 1e4
    for phi in ("inv", "inv_sq", "linear"):
        for rank in (1, 4, 16, 64):
            slope = 3e4 * rank
            g = penalty_scale_s2(0.25, slack, rate, slope, head, 1.0 / rank, phi)
            rho = operating_ratio(slack, rate, slope, head, 1.0 / rank)
            q = 0.25 * g * abs(phi_derivative(rho, phi)) * rate / slope
            assert q == pytest.approx(slack)
