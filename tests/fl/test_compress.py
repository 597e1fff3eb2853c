"""Compressors, error feedback, payload bits (tsfa.fl.compress, docs/model.md §5, §6)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tsfa.fl.compress import (
    COMPRESSORS,
    SOFT,
    ILoRA,
    TLoRA,
    decode,
    element_indices,
    full_bits,
    make_compressor,
    n_keep,
    payload_bits,
    soft_importance,
    soft_select,
    with_error_feedback,
)

SHAPES = [(6, 9), (7, 5), (9, 9)]  # (d_out, d_in) per module
R = 4


def random_factors(gen, scale=1.0, shapes=SHAPES, r=R):
    return [(scale * torch.randn(o, r, generator=gen, dtype=torch.float64),
             scale * torch.randn(r, i, generator=gen, dtype=torch.float64)) for o, i in shapes]


def orthogonal_factors(d_out, d_in, r, gen):
    qb, _ = torch.linalg.qr(torch.randn(d_out, r, generator=gen, dtype=torch.float64))
    qa, _ = torch.linalg.qr(torch.randn(d_in, r, generator=gen, dtype=torch.float64))
    return qb * (torch.rand(r, generator=gen, dtype=torch.float64) + 0.1), \
        (qa * (torch.rand(r, generator=gen, dtype=torch.float64) + 0.1)).T


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(8, 16), st.integers(8, 16), st.integers(0, 2**31 - 1))
def test_soft_importance_is_singular_values_for_orthogonal_factors(r, d_out, d_in, seed):
    B, A = orthogonal_factors(d_out, d_in, r, torch.Generator().manual_seed(seed))
    s = torch.sort(soft_importance(B, A), descending=True).values
    torch.testing.assert_close(s, torch.linalg.svdvals(B @ A)[:r], rtol=1e-10, atol=1e-12)
    n = max(1, r // 2)  # SOFT truncation = optimal truncated SVD: error = unsent s_i^2
    idx = soft_select(B, A, n)
    err = torch.linalg.matrix_norm(B @ A - B[:, idx] @ A[idx, :]) ** 2
    torch.testing.assert_close(err, (s[n:] ** 2).sum(), rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_soft_truncation_error_within_half_defect(r, seed, mix):
    """docs/model.md §5: ||BA - B_I A_I||_F^2 = sum_{i not in I} s_i^2 + cross terms, and the cross
    terms are bounded by R(B, A) / 2, for any (not necessarily orthogonal) factors."""
    from tsfa.fl.lora import orthogonality_defect

    gen = torch.Generator().manual_seed(seed)
    B, A = orthogonal_factors(10, 12, r, gen)
    B = B + mix * torch.randn(B.shape, generator=gen, dtype=torch.float64) * B.norm() / 10
    A = A + mix * torch.randn(A.shape, generator=gen, dtype=torch.float64) * A.norm() / 10
    n = r // 2
    idx = soft_select(B, A, n)
    unsent = torch.tensor([i for i in range(r) if i not in set(idx.tolist())])
    err = torch.linalg.matrix_norm(B @ A - B[:, idx] @ A[idx, :]) ** 2
    diag = (soft_importance(B, A)[unsent] ** 2).sum()
    assert abs(err - diag) <= orthogonality_defect(B, A) / 2 + 1e-12


@settings(max_examples=50, deadline=None)
@given(st.floats(1e-6, 1.0), st.integers(1, 64))
def test_n_keep_bounds(rho, r):
    n = n_keep(rho, r)
    assert 1 <= n <= r and n >= rho * r - 1e-9 and (n == 1 or n - 1 < rho * r)


def test_n_keep_exact_fractions_and_validation():
    assert n_keep(0.3, 10) == 3 and n_keep(1 / 16, 16) == 1 and n_keep(1.0, 8) == 8
    with pytest.raises(ValueError, match="rho"):
        n_keep(0.0, 4)


def test_soft_sends_top_norm_products_of_compensated_factors():
    gen = torch.Generator().manual_seed(0)
    params = random_factors(gen)
    deltas = random_factors(gen, 0.1)
    up, _ = SOFT().update(deltas, (), params, 0.5, np.random.default_rng(0))
    for mu, (B, A), (dB, dA) in zip(up.modules, params, deltas, strict=True):
        s = soft_importance(B + dB, A + dA)
        assert set(mu.rank_index.tolist()) == set(torch.topk(s, 2).indices.tolist())
        torch.testing.assert_close(mu.B_values, dB[:, mu.rank_index], rtol=0, atol=0)
        torch.testing.assert_close(mu.A_values, dA[mu.rank_index], rtol=0, atol=0)


def test_tlora_sends_largest_magnitudes():
    gen = torch.Generator().manual_seed(1)
    params, deltas = random_factors(gen), random_factors(gen)
    up, _ = TLoRA().update(deltas, (), params, 0.25, np.random.default_rng(0))
    for mu, (dB, _) in zip(up.modules, deltas, strict=True):
        k = mu.B_values.numel()
        assert k == dB.shape[0]  # n = 1 column's worth of values
        kth = torch.sort(dB.abs().reshape(-1), descending=True).values[k - 1]
        assert (mu.B_values.abs() >= kth).all()


def test_rlora_indices_regenerate_from_seed_and_vary():
    gen = torch.Generator().manual_seed(2)
    params, deltas = random_factors(gen), random_factors(gen)
    c = make_compressor("rlora", error_feedback=False)
    up1, _ = c.update(deltas, (), params, 0.5, np.random.default_rng(5))
    up2, _ = c.update(deltas, (), params, 0.5, np.random.default_rng(5))
    up3, _ = c.update(deltas, (), params, 0.5, np.random.default_rng(6))
    for m1, m2, m3, (dB, dA) in zip(up1.modules, up2.modules, up3.modules, deltas, strict=True):
        assert m1.B_index is None and m1.seed == m2.seed != m3.seed
        ib, ia = element_indices(m1)
        assert len(set(ib.tolist())) == ib.numel() == m1.B_values.numel()
        torch.testing.assert_close(m1.B_values, dB.reshape(-1)[ib], rtol=0, atol=0)
        torch.testing.assert_close(m1.A_values, dA.reshape(-1)[ia], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
@pytest.mark.parametrize("rho", [0.25, 0.5, 1.0])
def test_error_feedback_telescopes(name, rho):
    """sum_t decode(upload_t) + e_T == sum_t message_t (docs/model.md §5), float64."""
    gen = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(4)
    c = make_compressor(name)
    params = random_factors(gen)
    state = c.init(params)
    sent_total = raw_total = None
    for _ in range(5):
        deltas = random_factors(gen, 0.3)
        raw = c.inner.message(deltas, params)
        upload, state = c.update(deltas, state, params, rho, rng)
        sent = decode(upload)
        raw_total = raw if raw_total is None else [
            tuple(x + y for x, y in zip(a, b, strict=True)) for a, b in zip(raw_total, raw, strict=True)]
        sent_total = sent if sent_total is None else [
            tuple(x + y for x, y in zip(a, b, strict=True)) for a, b in zip(sent_total, sent, strict=True)]
        params = [(B + 0.1 * dB, A + 0.1 * dA) for (B, A), (dB, dA) in zip(params, deltas, strict=True)]
    for s_mod, e_mod, r_mod in zip(sent_total, state, raw_total, strict=True):
        for s, e, r in zip(s_mod, e_mod, r_mod, strict=True):
            torch.testing.assert_close(s + e, r, rtol=0, atol=1e-12)
    lossless = name == "ilora" or (rho == 1.0 and name != "slora")
    memory_norm = sum(float(e.abs().max()) for mod in state for e in mod)
    assert (memory_norm < 1e-12) if lossless else (memory_norm > 1e-3)


def expected_bits(name, rho, shapes=SHAPES, r=R):
    """Independent count from the docs/model.md §1/§6 definitions."""
    n = max(1, math.ceil(rho * r - 1e-9))
    bits = 0
    for d_out, d_in in shapes:
        if name == "ilora":
            bits += 32 * r * (d_out + d_in)
            continue
        bits += 32 * n * (d_out + d_in)
        if name == "soft":
            bits += n * math.ceil(math.log2(r))
        if name == "tlora":
            bits += n * d_out * math.ceil(math.log2(d_out * r))
            bits += n * d_in * math.ceil(math.log2(r * d_in))
    return bits


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
@pytest.mark.parametrize("rho", [0.25, 0.5, 0.75, 1.0])
def test_payload_bits_matches_independent_count(name, rho):
    gen = torch.Generator().manual_seed(5)
    params, deltas = random_factors(gen), random_factors(gen)
    c = make_compressor(name, error_feedback=False)
    up, _ = c.update(deltas, c.init(params), params, rho, np.random.default_rng(0))
    assert payload_bits(up) == expected_bits(name, rho)
    held = 0  # what the Upload holds: values, plus indices that are not regenerated from a seed
    for mu in up.modules:
        held += 32 * (mu.B_values.numel() + mu.A_values.numel())
        if mu.rank_index is not None:
            held += mu.rank_index.numel() * math.ceil(math.log2(R))
        for idx, shape in ((mu.B_index, mu.shape_B), (mu.A_index, mu.shape_A)):
            if idx is not None:
                held += idx.numel() * math.ceil(math.log2(shape[0] * shape[1]))
    assert held == payload_bits(up)
    if name != "ilora":  # same number of values as SOFT at the same rho
        n = max(1, math.ceil(rho * R - 1e-9))
        assert sum(mu.B_values.numel() + mu.A_values.numel() for mu in up.modules) == \
            n * sum(o + i for o, i in SHAPES)


def test_full_bits_vit_base_calibration():
    """docs/model.md §7: ViT-Base q,v at r = 16 is about 18.9 Mbit of factors."""
    params = [(torch.zeros(768, 16), torch.zeros(16, 768))] * 24
    assert full_bits(params) == 32 * 16 * 24 * 1536 == 18_874_368
    up, _ = ILoRA().update(params, (), params, 1.0, np.random.default_rng(0))
    assert payload_bits(up) == full_bits(params)


def test_with_error_feedback_is_a_wrapper():
    c = with_error_feedback(SOFT())
    assert c.name == "soft" and c.space == "factors"
    with pytest.raises(ValueError, match="compressor"):
        make_compressor("topk")
