"""Covariance of separate aggregation: the row-space correction and FedEx-LoRA's residual
(tsfa.fl.correction, docs/model.md §2)."""

import numpy as np
import pytest
import torch

from tsfa.fl.aggregate import aggregate
from tsfa.fl.compress import make_compressor
from tsfa.fl.correction import covariance_norms, fedex_residual, local_factors, row_space_correction
from tsfa.fl.metrics import covariance_split

from .test_aggregate import P, client_deltas, uploads_of
from .test_compress import EXACT, random_factors
from .test_lowrank import LargestTensor


def clients(seed, name="ilora", rho=1.0, protocol="update"):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(12, 10), (9, 14)]
    params = random_factors(gen, shapes=shapes)
    deltas = [random_factors(gen, 0.2, shapes=shapes) for _ in P]
    c = make_compressor(name, error_feedback=False, protocol=protocol, **EXACT)
    return params, uploads_of(c, params, deltas, rho)


def ideal_and_separate(Bk, Ak, p):
    w = torch.as_tensor(p, dtype=Bk.dtype)
    ideal = torch.einsum("k,kor,kri->oi", w, Bk, Ak)
    return ideal, torch.einsum("k,kor->or", w, Bk) @ torch.einsum("k,kri->ri", w, Ak)


@pytest.mark.parametrize("name", ["ilora", "soft", "tlora"])
@pytest.mark.parametrize("protocol", ["update", "factor"])
def test_correction_leaves_a_residual_orthogonal_to_abar_rows(name, protocol):
    params, uploads = clients(0, name, 0.5, protocol)
    new = aggregate(params, uploads, P, protocol=protocol, correction="row_space")
    for (Bk, Ak), (Bn, An) in zip(local_factors(params, uploads, protocol), new, strict=True):
        ideal, separate = ideal_and_separate(Bk, Ak, P)
        left = ideal - Bn @ An  # sum_k p_k B_k A_k - (B_bar + dB) A_bar
        scale = float(torch.linalg.matrix_norm(ideal - separate))
        assert float(torch.linalg.matrix_norm(left @ An.T)) <= 1e-8 * max(scale, 1.0)
        assert torch.linalg.matrix_norm(left) < torch.linalg.matrix_norm(ideal - separate)


def test_ridge_shrinks_the_correction():
    params, uploads = clients(1)
    Bk, Ak = local_factors(params, uploads)[0]
    sizes = [float(torch.linalg.matrix_norm(row_space_correction(Bk, Ak, P, lam)[0]))
             for lam in (0.0, 0.1, 10.0)]
    assert sizes[0] > sizes[1] > sizes[2] > 0


def test_fedex_corrected_product_is_the_ideal_average():
    params, uploads = clients(2, "soft", 0.5)
    residuals, bits = fedex_residual(params, uploads, P, value_bits=16)
    assert bits == 16 * (12 * 10 + 9 * 14)
    for (Bk, Ak), res in zip(local_factors(params, uploads), residuals, strict=True):
        ideal, separate = ideal_and_separate(Bk, Ak, P)
        torch.testing.assert_close(separate + res, ideal, rtol=0, atol=1e-12)


def test_covariance_norms_from_factors_match_dense():
    params, uploads = clients(3, "tlora", 0.5)
    split = covariance_split(params, uploads, P)
    total = removed = remaining = 0.0
    for Bk, Ak in local_factors(params, uploads):
        ideal, separate = ideal_and_separate(Bk, Ak, P)
        cov = ideal - separate
        dB, a_bar = row_space_correction(Bk, Ak, P)
        total += float(torch.sum(cov**2))
        removed += float(torch.sum((dB @ a_bar) ** 2))
        remaining += float(torch.sum((cov - dB @ a_bar) ** 2))
        norms = covariance_norms(Bk, Ak, P)
        assert norms[0] ** 2 == pytest.approx(norms[1] ** 2 + norms[2] ** 2, rel=1e-9)
    np.testing.assert_allclose([split["cov_fro"], split["cov_removed_fro"],
                                split["cov_remaining_fro"]],
                               np.sqrt([total, removed, remaining]), rtol=1e-9)


def test_ffa_has_no_covariance():
    gen = torch.Generator().manual_seed(4)
    params = random_factors(gen)
    deltas = [[(dB, torch.zeros_like(dA)) for dB, dA in d] for d in client_deltas(gen)]
    uploads = uploads_of(make_compressor("ffa", error_feedback=False, **EXACT), params, deltas)
    assert covariance_split(params, uploads, P)["cov_fro"] == pytest.approx(0.0, abs=1e-12)


def test_correction_never_forms_a_d_by_d_tensor():
    d, r, k = 2048, 4, 3
    gen = torch.Generator().manual_seed(5)
    Bk = torch.randn(k, d, r, generator=gen, dtype=torch.float64)
    Ak = torch.randn(k, r, d, generator=gen, dtype=torch.float64)
    with LargestTensor() as seen:
        row_space_correction(Bk, Ak, P)
        covariance_norms(Bk, Ak, P)
    assert seen.largest < d * d // 16
