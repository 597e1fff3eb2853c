"""Compressors, error feedback, payload bits (tsfa.fl.compress, docs/model.md §1, §5, §6)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tsfa.config.choices import METHODS
from tsfa.fl.compress import (
    SOFT,
    SVD,
    CompressOptions,
    ILoRA,
    TLoRA,
    decode,
    decode_head,
    element_indices,
    encode_head,
    head_bits,
    make_compressor,
    n_keep,
    payload_bits,
    reconstruct,
    soft_importance,
    soft_select,
    wire_dtype,
    with_error_feedback,
)

SHAPES = [(6, 9), (7, 5), (9, 9)]  # (d_out, d_in) per module
R = 4
EXACT = dict(value_bits=64)  # float64 on the wire: no rounding, for exact identities


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


@pytest.mark.parametrize("protocol", ["update", "factor"])
def test_soft_sends_top_norm_products_of_compensated_factors(protocol):
    gen = torch.Generator().manual_seed(0)
    params = random_factors(gen)
    deltas = random_factors(gen, 0.1)
    c = SOFT(CompressOptions(protocol=protocol, **EXACT))
    up, _ = c.update(deltas, (), params, 0.5, np.random.default_rng(0))
    for mu, (B, A), (dB, dA) in zip(up.modules, params, deltas, strict=True):
        s = soft_importance(B + dB, A + dA)
        assert set(mu.rank_index.tolist()) == set(torch.topk(s, 2).indices.tolist())
        sent_b = dB if protocol == "update" else B + dB  # the change, or the local factor
        sent_a = dA if protocol == "update" else A + dA
        torch.testing.assert_close(mu.B_values, sent_b[:, mu.rank_index], rtol=0, atol=0)
        torch.testing.assert_close(mu.A_values, sent_a[mu.rank_index], rtol=0, atol=0)


def test_tlora_sends_largest_magnitudes():
    gen = torch.Generator().manual_seed(1)
    params, deltas = random_factors(gen), random_factors(gen)
    up, _ = TLoRA(CompressOptions(**EXACT)).update(deltas, (), params, 0.25,
                                                   np.random.default_rng(0))
    for mu, (dB, _) in zip(up.modules, deltas, strict=True):
        k = mu.B_values.numel()
        assert k == dB.shape[0]  # n = 1 column's worth of values
        kth = torch.sort(dB.abs().reshape(-1), descending=True).values[k - 1]
        assert (mu.B_values.abs() >= kth).all()


def test_rlora_indices_regenerate_from_seed_and_vary():
    gen = torch.Generator().manual_seed(2)
    params, deltas = random_factors(gen), random_factors(gen)
    c = make_compressor("rlora", error_feedback=False, **EXACT)
    up1, _ = c.update(deltas, (), params, 0.5, np.random.default_rng(5))
    up2, _ = c.update(deltas, (), params, 0.5, np.random.default_rng(5))
    up3, _ = c.update(deltas, (), params, 0.5, np.random.default_rng(6))
    for m1, m2, m3, (dB, dA) in zip(up1.modules, up2.modules, up3.modules, deltas, strict=True):
        assert m1.B_index is None and m1.seed == m2.seed != m3.seed
        ib, ia = element_indices(m1)
        assert len(set(ib.tolist())) == ib.numel() == m1.B_values.numel()
        torch.testing.assert_close(m1.B_values, dB.reshape(-1)[ib], rtol=0, atol=0)
        torch.testing.assert_close(m1.A_values, dA.reshape(-1)[ia], rtol=0, atol=0)


def _sum(a, b):
    return b if a is None else [tuple(x + y for x, y in zip(u, v, strict=True))
                                for u, v in zip(a, b, strict=True)]


def _dense(c, msg):
    """A message as dense tensors (the factored SVD message (L, R) as L R)."""
    return [(m[0] @ m[1],) if isinstance(c.inner, SVD) else m for m in msg]


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("rho", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("protocol", ["update", "factor"])
def test_error_feedback_telescopes(name, rho, protocol):
    """sum_t reconstruct(upload_t) + e_T == sum_t message_t (docs/model.md §5), float64."""
    gen = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(4)
    c = make_compressor(name, protocol=protocol, **EXACT)
    if name == "svd":  # keep the whole factored residual (<= 9 triplets here): exact EF
        c = with_error_feedback(SVD(c.options, memory_rank=64))
    params = random_factors(gen)
    state = c.init(params)
    sent_total = raw_total = None
    for _ in range(5):
        deltas = random_factors(gen, 0.3)
        if name == "ffa":  # A frozen: no change of A
            deltas = [(dB, torch.zeros_like(dA)) for dB, dA in deltas]
        raw = _dense(c, c.message(deltas, params))
        upload, state = c.update(deltas, state, params, rho, rng)
        raw_total = _sum(raw_total, raw)
        sent_total = _sum(sent_total, reconstruct(upload, params, protocol))
        params = [(B + 0.1 * dB, A + 0.1 * dA) for (B, A), (dB, dA) in zip(params, deltas, strict=True)]
    for s_mod, e_mod, r_mod in zip(sent_total, _dense(c, state), raw_total, strict=True):
        for s, e, r in zip(s_mod, e_mod, r_mod, strict=True):
            torch.testing.assert_close(s + e, r, rtol=0, atol=1e-10)
    product = name in ("slora", "svd")
    lossless = name == "ilora" or (rho == 1.0 and (not product or protocol == "factor"))
    memory_norm = sum(float(e.abs().max()) for mod in _dense(c, state) for e in mod)
    assert (memory_norm < 1e-10) if lossless else (memory_norm > 1e-3)


def expected_bits(name, rho, q, shapes=SHAPES, r=R):
    """Independent count from the docs/model.md §1/§6 definitions (equal values)."""
    n = max(1, math.ceil(rho * r - 1e-9))
    bits = 0
    for d_out, d_in in shapes:
        if name == "ilora":
            bits += q * r * (d_out + d_in)
            continue
        bits += q * n * (d_out if name == "ffa" else d_out + d_in)
        if name in ("soft", "ffa") and n < r:
            bits += n * math.ceil(math.log2(r))
        if name == "tlora" and n < r:  # the cheaper of element indices and a bitmap
            bits += min(n * d_out * math.ceil(math.log2(d_out * r)), d_out * r)
            bits += min(n * d_in * math.ceil(math.log2(r * d_in)), r * d_in)
    return bits


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("rho", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("q", [16, 32])
def test_payload_bits_matches_independent_count(name, rho, q):
    gen = torch.Generator().manual_seed(5)
    params, deltas = random_factors(gen), random_factors(gen)
    c = make_compressor(name, error_feedback=False, value_bits=q)
    up, _ = c.update(deltas, c.init(params), params, rho, np.random.default_rng(0))
    assert payload_bits(up) == expected_bits(name, rho, q)
    if name not in ("ilora", "ffa"):  # same number of values as SOFT at the same rho
        n = max(1, math.ceil(rho * R - 1e-9))
        assert sum(mu.B_values.numel() + mu.A_values.numel() for mu in up.modules) == \
            n * sum(o + i for o, i in SHAPES)


def test_soft_at_rho_one_sends_no_index_bits():
    """All r components sent: the server knows n = r from rho, so no rank index is on the air."""
    gen = torch.Generator().manual_seed(6)
    params = random_factors(gen)
    up, _ = SOFT().update(params, (), params, 1.0, np.random.default_rng(0))
    assert payload_bits(up) == 32 * R * sum(o + i for o, i in SHAPES)


@pytest.mark.parametrize(("bits", "fmt", "dtype"), [(16, "bf16", torch.bfloat16),
                                                    (16, "fp16", torch.float16),
                                                    (32, "bf16", torch.float32)])
def test_values_travel_at_their_precision_and_are_decoded(bits, fmt, dtype):
    gen = torch.Generator().manual_seed(7)
    params = [(b.float(), a.float()) for b, a in random_factors(gen)]
    deltas = [(b.float(), a.float()) for b, a in random_factors(gen, 0.01)]
    c = make_compressor("soft", value_bits=bits, value_dtype=fmt)
    up, memory = c.update(deltas, c.init(params), params, 0.5, np.random.default_rng(0))
    assert all(mu.B_values.dtype == dtype == mu.A_values.dtype for mu in up.modules)
    dec = decode(up, torch.float32)
    for (dB, _), mu, (eB, _) in zip(dec, up.modules, memory, strict=True):
        assert dB.dtype == torch.float32
        torch.testing.assert_close(dB[:, mu.rank_index], mu.B_values.float(), rtol=0, atol=0)
        if bits == 16:  # the rounding error stays in the client's memory
            assert float(eB[:, mu.rank_index].abs().max()) > 0
    head = encode_head({"w": torch.randn(5, 3), "b": torch.randn(3)}, wire_dtype(bits, fmt))
    assert head_bits(head) == bits * 18
    assert decode_head(head)["w"].dtype == torch.float32
    with pytest.raises(ValueError, match="bits_per_param"):
        wire_dtype(8)


def test_ilora_vit_base_calibration():
    """docs/model.md §7: ViT-Base q,v at r = 16 is about 18.9 Mbit of factors."""
    params = [(torch.zeros(768, 16), torch.zeros(16, 768))] * 24
    up, _ = ILoRA().update(params, (), params, 0.3, np.random.default_rng(0))
    assert payload_bits(up) == 32 * 16 * 24 * 1536 == 18_874_368


def test_make_compressor_options_and_policies():
    c = with_error_feedback(SOFT())
    assert c.name == "soft" and c.space == "factors" and c.frozen == ()
    assert make_compressor("ffa").frozen == ("A",)
    assert make_compressor("svd").space == "product"
    assert isinstance(make_compressor("tlora", "proposed"), TLoRA)  # baselines without EF
    assert not isinstance(make_compressor("soft", "proposed"), SOFT)  # SOFT wrapped with EF
    assert isinstance(make_compressor("soft", "none"), SOFT)
    with pytest.raises(ValueError, match="experiment.method"):
        make_compressor("topk")
    with pytest.raises(ValueError, match="upload"):
        make_compressor("soft", protocol="factors")


@pytest.mark.parametrize("name", ["soft", "tlora", "slora"])
def test_deferred_client_keeps_the_whole_message(name):
    """A client that sends nothing this round adds its whole message to its memory."""
    gen = torch.Generator().manual_seed(8)
    params, deltas = random_factors(gen), random_factors(gen, 0.1)
    c = make_compressor(name, **EXACT)
    state = c.defer(deltas, c.init(params), params)
    for e, m in zip(state, c.message(deltas, params), strict=True):
        for x, y in zip(e, m, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
