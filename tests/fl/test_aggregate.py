"""Server aggregation (tsfa.fl.aggregate, docs/model.md §2, §5, §6): both upload protocols."""

import numpy as np
import pytest
import torch

from tsfa.fl.aggregate import aggregate, aggregate_factors, fedavg, refactorise, uploaded_deltas
from tsfa.fl.compress import SVD, CompressOptions, ILoRA, ModuleUpload, SLoRA, Upload, make_compressor

from .test_compress import EXACT, random_factors

P = [0.5, 0.3, 0.2]


def client_deltas(gen, k=3):
    return [random_factors(gen, 0.2) for _ in range(k)]


def uploads_of(c, params, deltas, rho=0.5):
    rng = np.random.default_rng(0)
    return [c.update(d, c.init(params), params, rho, rng)[0] for d in deltas]


@pytest.mark.parametrize("normalise", [False, True])
def test_identity_plus_separate_aggregation_is_fedavg_of_factors(normalise):
    gen = torch.Generator().manual_seed(0)
    params = random_factors(gen)
    deltas = client_deltas(gen)
    uploads = uploads_of(ILoRA(CompressOptions(**EXACT)), params, deltas)
    new = aggregate(params, uploads, P, normalise=normalise)
    for m, (B, A) in enumerate(params):
        locals_b = [B + d[m][0] for d in deltas]
        locals_a = [A + d[m][1] for d in deltas]
        torch.testing.assert_close(new[m][0], sum(p * b for p, b in zip(P, locals_b, strict=True)))
        torch.testing.assert_close(new[m][1], sum(p * a for p, a in zip(P, locals_a, strict=True)))
    head = fedavg([{"w": b[0][0]} for b in deltas], P)
    torch.testing.assert_close(head["w"], sum(p * d[0][0] for p, d in zip(P, deltas, strict=True)))


@pytest.mark.parametrize("name", ["soft", "tlora", "rlora", "ilora", "ffa"])
def test_factor_protocol_at_rho_one_without_ef_is_fedit(name):
    """Clients send their whole local factors: the server's B, A are sum_k p_k B_k, sum_k p_k A_k
    (FFA: A frozen and kept)."""
    gen = torch.Generator().manual_seed(8)
    params = random_factors(gen)
    deltas = client_deltas(gen)
    if name == "ffa":
        deltas = [[(dB, torch.zeros_like(dA)) for dB, dA in d] for d in deltas]
    for fill in ("global", "zero"):
        c = make_compressor(name, error_feedback=False, protocol="factor", fill=fill, **EXACT)
        new = aggregate(params, uploads_of(c, params, deltas, 1.0), P, protocol="factor", fill=fill)
        for m, (B, A) in enumerate(params):
            fedit_b = sum(p * (B + d[m][0]) for p, d in zip(P, deltas, strict=True))
            fedit_a = sum(p * (A + d[m][1]) for p, d in zip(P, deltas, strict=True))
            torch.testing.assert_close(new[m][0], fedit_b, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(new[m][1], fedit_a, rtol=1e-12, atol=1e-12)


def soft_upload(idx, cols, rows, d_out=3, d_in=2, r=4):
    mu = ModuleUpload((d_out, r), (r, d_in), cols, rows, rank_index=torch.tensor(idx))
    return Upload("soft", "factors", (mu,))


def test_per_rank_index_aggregation_by_hand():
    """Client 1 sends ranks {0, 2}, client 2 sends {2, 3}; rank 1 is sent by nobody."""
    B, A = torch.zeros(3, 4, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64)
    one = torch.ones(3, 2, dtype=torch.float64)
    u1 = soft_upload([0, 2], one, one[:2])
    u2 = soft_upload([2, 3], 2 * one, 2 * one[:2])
    p = [0.75, 0.25]
    (nb, na), = aggregate_factors([(B, A)], [u1, u2], p)
    torch.testing.assert_close(nb[0], torch.tensor([0.75, 0.0, 0.75 + 0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(na[:, 1], torch.tensor([0.75, 0.0, 1.25, 0.5], dtype=torch.float64))
    (nb, na), = aggregate_factors([(B, A)], [u1, u2], p, normalise=True)
    torch.testing.assert_close(nb[0], torch.tensor([1.0, 0.0, 1.25, 2.0], dtype=torch.float64))


def test_factor_protocol_fill_by_hand():
    """Local factor values: client 1 sends ranks {0, 2} (value 1), client 2 ranks {2, 3}
    (value 2); the global B is 10 everywhere. A missing entry is the global value or zero."""
    B, A = torch.full((3, 4), 10.0, dtype=torch.float64), torch.full((4, 2), 10.0,
                                                                       dtype=torch.float64)
    one = torch.ones(3, 2, dtype=torch.float64)
    ups = [soft_upload([0, 2], one, one[:2]), soft_upload([2, 3], 2 * one, 2 * one[:2])]
    p = [0.75, 0.25]
    expect = {"global": [0.75 + 2.5, 10.0, 0.75 + 0.5, 7.5 + 0.5],
              "zero": [0.75, 0.0, 0.75 + 0.5, 0.5]}
    for fill, row in expect.items():
        (nb, _), = aggregate([(B, A)], ups, p, protocol="factor", fill=fill)
        torch.testing.assert_close(nb[0], torch.tensor(row, dtype=torch.float64))
        (nb, _), = aggregate([(B, A)], ups, p, normalise=True, protocol="factor", fill=fill)
        torch.testing.assert_close(nb[0], torch.tensor([1.0, 10.0 if fill == "global" else 0.0,
                                                        1.25, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("name", ["tlora", "rlora"])
def test_elementwise_aggregation_equals_masked_sum(name):
    gen = torch.Generator().manual_seed(1)
    params = random_factors(gen)
    deltas = client_deltas(gen)
    uploads = uploads_of(make_compressor(name, error_feedback=False, **EXACT), params, deltas)
    new = aggregate(params, uploads, P)
    sent = [uploaded_deltas(u) for u in uploads]
    for m, (B, _) in enumerate(params):
        expect = B + sum(p * s[m][0] for p, s in zip(P, sent, strict=True))
        torch.testing.assert_close(new[m][0], expect)
        # what was sent equals the delta where sent, zero elsewhere
        mask = sent[0][m][0] != 0
        torch.testing.assert_close(sent[0][m][0][mask], deltas[0][m][0][mask])


def test_slora_single_client_full_rank_recovers_local_product():
    gen = torch.Generator().manual_seed(2)
    params = random_factors(gen)
    deltas = random_factors(gen, 0.2)
    up, _ = SLoRA(CompressOptions(**EXACT)).update(deltas, (), params, 1.0,
                                                   np.random.default_rng(0))
    ((B0, A0), (dB, dA)) = params[0], deltas[0]
    new = aggregate(params, [up], [1.0])
    # the upload is only the top-r part of dW (rank <= 2r), so compare against that
    dW = (B0 + dB) @ (A0 + dA) - B0 @ A0
    U, S, Vh = torch.linalg.svd(dW)
    target = B0 @ A0 + (U[:, :4] * S[:4]) @ Vh[:4]
    Bt, At = refactorise(target, 4)
    torch.testing.assert_close(new[0][0] @ new[0][1], Bt @ At, rtol=1e-10, atol=1e-10)
    W = torch.randn(6, 4, generator=gen, dtype=torch.float64) @ torch.randn(
        4, 9, generator=gen, dtype=torch.float64)  # rank 4: refactorising at r = 4 is exact
    b, a = refactorise(W, 4)
    assert b.shape == (6, 4) and a.shape == (4, 9)
    torch.testing.assert_close(b @ a, W, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("protocol", ["update", "factor"])
def test_svd_and_slora_servers_agree(protocol):
    """Same triplets, same server: the factored SVD compressor and SLoRA give one product."""
    gen = torch.Generator().manual_seed(9)
    params = random_factors(gen)
    deltas = client_deltas(gen)
    opts = CompressOptions(protocol=protocol, **EXACT)
    new = [aggregate(params, uploads_of(c, params, deltas), P, protocol=protocol)
           for c in (SVD(opts), SLoRA(opts))]
    for (b1, a1), (b2, a2) in zip(*new, strict=True):
        torch.testing.assert_close(b1 @ a1, b2 @ a2, rtol=1e-9, atol=1e-10)


def test_separate_aggregation_misses_ideal_by_covariance():
    """docs/model.md §2: sum_k p_k B_k A_k - Bbar Abar = Cov (identity uploads)."""
    from tsfa.maths.covariance import covariance_frobenius

    gen = torch.Generator().manual_seed(3)
    params = random_factors(gen)
    deltas = client_deltas(gen)
    uploads = uploads_of(ILoRA(CompressOptions(**EXACT)), params, deltas, 1.0)
    (Bn, An) = aggregate(params, uploads, P)[0]
    B, A = params[0]
    ideal = sum(p * (B + d[0][0]) @ (A + d[0][1]) for p, d in zip(P, deltas, strict=True))
    gap = torch.linalg.matrix_norm(ideal - Bn @ An).item()
    dB = np.stack([d[0][0].numpy() for d in deltas])
    dA = np.stack([d[0][1].numpy() for d in deltas])
    assert gap == pytest.approx(covariance_frobenius(dB, dA, np.asarray(P)), rel=1e-9)


def test_weights_validated():
    gen = torch.Generator().manual_seed(4)
    params = random_factors(gen)
    up = ILoRA().update(params, (), params, 1.0, np.random.default_rng(0))[0]
    with pytest.raises(ValueError, match="weights"):
        aggregate(params, [up, up], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        aggregate(params, [up], [-1.0])
    with pytest.raises(ValueError, match="correction"):
        aggregate(params, [up], [1.0], correction="fedex")
