"""The exact factored SVD compressor (tsfa.fl.compress.lowrank, docs/model.md §6)."""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from tsfa.fl.compress import SVD, CompressOptions, factored_svd, make_compressor

from .test_compress import EXACT, random_factors


class LargestTensor(TorchFunctionMode):
    """Records the largest number of elements of any tensor a torch call returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, tuple | list) else (out,):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


@pytest.mark.parametrize("protocol", ["update", "factor"])
@pytest.mark.parametrize("rho", [0.25, 0.5, 1.0])
def test_svd_equals_dense_svd_of_the_product_change(protocol, rho):
    gen = torch.Generator().manual_seed(0)
    params = random_factors(gen, shapes=[(30, 20), (25, 40)], r=6)
    deltas = random_factors(gen, 0.3, shapes=[(30, 20), (25, 40)], r=6)
    c = SVD(CompressOptions(protocol=protocol, **EXACT))
    up, _ = c.update(deltas, (), params, rho, np.random.default_rng(0))
    for mu, (B, A), (dB, dA) in zip(up.modules, params, deltas, strict=True):
        local = (B + dB) @ (A + dA)
        dW = local - B @ A if protocol == "update" else local
        U, S, Vh = torch.linalg.svd(dW)
        n = mu.B_values.shape[1]
        torch.testing.assert_close(mu.B_values @ mu.A_values, (U[:, :n] * S[:n]) @ Vh[:n],
                                   rtol=0, atol=1e-6)
        sv = torch.linalg.vector_norm(mu.B_values, dim=0) * torch.linalg.vector_norm(
            mu.A_values, dim=1)  # balanced factors: ||u_i sqrt(s_i)|| ||sqrt(s_i) v_i|| = s_i
        torch.testing.assert_close(sv, S[:n], rtol=0, atol=1e-6)


def test_factored_svd_matches_dense():
    gen = torch.Generator().manual_seed(1)
    L = torch.randn(50, 7, generator=gen, dtype=torch.float64)
    R = torch.randn(7, 40, generator=gen, dtype=torch.float64)
    U, S, Vh = factored_svd(L, R)
    torch.testing.assert_close(S, torch.linalg.svdvals(L @ R)[:7], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((U * S) @ Vh, L @ R, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(U.T @ U, torch.eye(7, dtype=torch.float64), atol=1e-12, rtol=0)


def test_svd_at_4096_never_forms_a_d_by_d_tensor(one_thread):
    """At d = 4,096 the exact SVD compressor works on factors only: no tensor larger than a few
    d x r blocks (its speed against SOFT and the dense SVD at ViT-Base's d = 768:
    benchmarks/bench_soft_selection.py; no wall time is asserted here)."""
    d, r = 4096, 8
    gen = torch.Generator().manual_seed(2)
    params = [(torch.randn(d, r, generator=gen, dtype=torch.float64),
               torch.randn(r, d, generator=gen, dtype=torch.float64))]
    deltas = [(0.1 * torch.randn(d, r, generator=gen, dtype=torch.float64),
               0.1 * torch.randn(r, d, generator=gen, dtype=torch.float64))]
    c = make_compressor("svd", **EXACT)  # with error feedback: memory factored too
    state = c.init(params)
    c.update(deltas, state, params, 0.25, np.random.default_rng(0))  # warm-up
    with LargestTensor() as seen:
        up, state = c.update(deltas, state, params, 0.25, np.random.default_rng(0))
    assert seen.largest <= 8 * d * r  # [B, dB, memory] stacks at most a few d x r blocks
    assert up.modules[0].B_values.shape == (d, 2) and state[0][0].shape == (d, 2 * r)


@pytest.mark.parametrize("sends", [True, False])
def test_svd_memory_stays_factored_and_truncated(sends):
    """The factored memory keeps 2r triplets, whether the client sends (residual) or defers."""
    gen = torch.Generator().manual_seed(3)
    params = random_factors(gen, shapes=[(40, 30)], r=4)
    c = make_compressor("svd", **EXACT)
    state = c.init(params)
    for _ in range(3):
        deltas = random_factors(gen, 0.3, shapes=[(40, 30)], r=4)
        state = c.update(deltas, state, params, 0.25, np.random.default_rng(0))[1] if sends \
            else c.defer(deltas, state, params)
        assert state[0][0].shape == (40, 8) and state[0][1].shape == (8, 30)
