"""The payload model (tsfa.maths.payload, docs/model.md §1, §6): exact counts, index coding,
equal-bits fitting and the affine relaxation the controller plans with."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsfa.config.spec import SystemSpec
from tsfa.maths.payload import (
    METHODS,
    PayloadModel,
    element_index_bits,
    fit_elements,
    full_factor_bits,
    index_bits,
    kept_components,
    module_plan,
)

VIT = SystemSpec()  # ViT-Base q,v: 24 modules of 768 x 768, head 76,900, q_b = 32


def test_payload_vit_base_hand_count():
    # Each rank component is a column of B and a row of A: 24 x 1536 = 36,864 values.
    # r = 16, rho = 1: 36,864 x 16 x 32 = 18,874,368 bits, plus the head 32 x 76,900 =
    # 2,460,800 bits; no index bits (all components sent, n = r is implied by rho).
    soft = PayloadModel.from_spec(VIT, "soft", 16)
    assert soft.bits(1.0) == 36_864 * 16 * 32 + 32 * 76_900 == 21_335_168
    # rho = 1/2: n = 8: 9,437,184 bits of values, the head, and 24 x 8 indices of 4 bits
    assert soft.bits(0.5) == 36_864 * 8 * 32 + 32 * 76_900 + 24 * 8 * 4
    # relaxation: slope S_full + M r ceil(log2 r), exact at every n < r
    assert soft.slope_bits == 36_864 * 16 * 32 + 24 * 16 * 4
    assert soft.relaxed_bits(0.5) == pytest.approx(soft.bits(0.5))
    assert full_factor_bits(16, 36_864, 32) == 18_874_368
    # 16-bit values halve every value's bits, not the index bits
    half = PayloadModel.from_spec(VIT.replace(**{"lora.bits_per_param": 16}), "soft", 16)
    assert half.bits(0.5) == 36_864 * 8 * 16 + 16 * 76_900 + 24 * 8 * 4


def test_index_bits_and_rank_one():
    assert [index_bits(n) for n in (1, 2, 3, 4, 5, 2**20, 2**20 + 1)] == [0, 1, 2, 2, 3, 20, 21]
    assert PayloadModel.from_spec(VIT, "soft", 1).bits(0.3) == 36_864 * 32 + 32 * 76_900


def test_element_positions_use_the_cheaper_code():
    assert element_index_bits(5, 100) == 5 * 7  # indices: 35 bits < 100-bit bitmap
    assert element_index_bits(20, 100) == 100  # bitmap: 100 < 140
    assert element_index_bits(0, 100) == element_index_bits(100, 100) == 0


@given(st.integers(0, 3000), st.integers(1, 200), st.sampled_from([16, 32]), st.booleans())
def test_fit_elements_is_the_largest_fitting_count(budget, numel, q, indexed):
    def cost(k):
        return k * q + (element_index_bits(k, numel) if indexed else 0)

    k = fit_elements(budget, numel, q, indexed)
    best = max((j for j in range(numel + 1) if cost(j) <= budget), default=0)
    assert k == best


@pytest.mark.parametrize(("rank", "rho", "n"), [
    (8, 3 / 8, 3),        # exact multiple despite round-off
    (8, 0.3751, 4),       # just above -> ceil
    (8, 1e-6, 1),         # at least one component
    (8, 0.0, 1),
    (8, 1.0, 8),
    (8, 1.5, 8),          # never more than r
    (1, 0.01, 1),
    (64, 1 / 64, 1),
    (64, 0.5, 32),
    (10, 0.15, 2),        # ceil(1.5) = 2
])
def test_kept_components_edge_cases(rank, rho, n):
    assert int(kept_components(rank, rho)) == n


def test_kept_components_vectorised_and_bits_vectorised():
    np.testing.assert_array_equal(kept_components(16, [1 / 16, 0.25, 0.26, 1.0]), [1, 4, 5, 16])
    pm = PayloadModel("tlora", 8, ((64, 32), (32, 64)), 100, 16)
    rho = np.array([[0.125, 1.0], [0.3, 0.125]])
    np.testing.assert_array_equal(pm.bits(rho), [[pm.bits(float(x)) for x in row] for row in rho])


@given(st.sampled_from([m for m in METHODS if m != "ilora"]), st.integers(1, 16),
       st.integers(1, 40), st.integers(1, 40), st.floats(0.01, 1.0), st.sampled_from([16, 32]))
def test_equal_bits_never_exceeds_soft_and_fills_it(method, rank, d_out, d_in, rho, q):
    if rank > min(d_out, d_in):
        return
    soft = module_plan("soft", rho, rank, d_out, d_in, q)
    plan = module_plan(method, rho, rank, d_out, d_in, q, equal_bits=True)
    budget = soft.bits(q)
    assert plan.bits(q) <= budget
    if method in ("tlora", "rlora"):  # one more value (and its position) would not fit
        share_b = q * soft.values_B + soft.index_bits // 2
        for k, numel, share in ((plan.values_B, d_out * rank, share_b),
                                (plan.values_A, rank * d_in, budget - share_b)):
            idx = (lambda j, n=numel: element_index_bits(j, n)) if method == "tlora" else \
                (lambda j: 0)
            assert k * q + idx(k) <= share
            assert k == numel or (k + 1) * q + idx(k + 1) > share
    else:  # one more component would not fit
        more = module_plan(method, min(1.0, (plan.n + 1) / rank), rank, d_out, d_in, q)
        assert plan.n == rank or more.bits(q) > budget


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("equal_bits", [False, True])
def test_relaxation_bounds_the_exact_count_at_every_ratio(method, equal_bits):
    pm = PayloadModel(method, 8, ((48, 40),) * 3, 50, 16, equal_bits)
    gaps = [pm.relaxed_bits(x) - pm.bits(x) for x in pm.ratios()]
    assert min(gaps) >= -1e-6 and min(gaps) == pytest.approx(0.0, abs=1e-6)
    if method in ("rlora", "slora", "svd", "ilora") and not equal_bits:  # no index bits
        assert pm.slope_bits == pm.bits(1.0) - pm.head_bits


def test_payload_model_validates():
    with pytest.raises(ValueError, match="method"):
        PayloadModel("topk", 4, ((8, 8),), 0)
    with pytest.raises(ValueError, match="rank"):
        PayloadModel("soft", 9, ((8, 16),), 0)
    ffa = PayloadModel("ffa", 4, ((8, 16),), 0)
    assert ffa.bits(1.0) == 32 * 4 * 8  # B only
    assert ffa.bits(0.25) == 32 * 8 + math.ceil(math.log2(4))
