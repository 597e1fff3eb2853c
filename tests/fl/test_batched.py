"""All clients' local training in one batched computation equals the sequential reference
(tsfa.fl.batched, docs/model.md §5)."""

import math

import numpy as np
import pytest
import torch

from tsfa.fl import batched
from tsfa.fl.batched import (
    batched_local_train,
    sequential_local_train,
    stack_factors,
    stacked_soft_regulariser,
    stacked_soft_select,
)
from tsfa.fl.compress import soft_select
from tsfa.fl.lora import apply_lora, get_factors, get_head_state, set_factors, soft_regulariser
from tsfa.fl.vit import ViT
from tsfa.fl.vit_config import ViTConfig
from tsfa.maths.rng import substream

CFG = ViTConfig(image_size=8, patch_size=4, in_chans=3, num_classes=5, dim=32, depth=2, heads=2)
SIZES = (30, 5, 17, 9)  # unequal; with batch 8 client 1 draws 5 samples per step (padded)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
LR = 3e-3  # the default run's learning rate


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def setup(rank=4, dtype=torch.float64, sizes=SIZES, seed=0):
    """A LoRA ViT, K clients' data and K distinct starting factors and heads."""
    gen = torch.Generator().manual_seed(seed)
    model = ViT(CFG, gen).to(dtype)
    apply_lora(model, rank, 8.0, generator=gen)
    data = [(torch.randn(n, 3, 8, 8, generator=gen, dtype=dtype),
             torch.randint(CFG.num_classes, (n,), generator=gen)) for n in sizes]
    factors = [[(0.1 * torch.randn(b.shape, generator=gen, dtype=dtype), a)
                for b, a in get_factors(model)] for _ in sizes]
    heads = [{k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=dtype)
              for k, v in get_head_state(model).items()} for _ in sizes]
    return model, data, factors, heads


def mean_state(factors, heads):
    """The next round's global factors and head (plain averages, as a server would)."""
    glob = [(torch.stack([f[i][0] for f in factors]).mean(0),
             torch.stack([f[i][1] for f in factors]).mean(0)) for i in range(len(factors[0]))]
    return glob, {k: torch.stack([h[k] for h in heads]).mean(0) for k in heads[0]}


def max_diff(a, b) -> float:
    (fa, ha, la), (fb, hb, lb) = a, b
    d = [float((x - y).abs().max()) for f1, f2 in zip(fa, fb, strict=True)
         for p1, p2 in zip(f1, f2, strict=True) for x, y in zip(p1, p2, strict=True)]
    d += [float((h1[k] - h2[k]).abs().max()) for h1, h2 in zip(ha, hb, strict=True) for k in h1]
    return max(d + [abs(x - y) for x, y in zip(la, lb, strict=True)])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("zeta", [0.0, 0.1])
@pytest.mark.parametrize("rank", [4, 1])
@pytest.mark.parametrize("merged", [True, False])  # per-client merged weight / thin matmuls
def test_batched_equals_sequential_over_three_rounds(dtype, optimizer, zeta, rank, merged,
                                                     monkeypatch):
    """K = 4 clients of unequal size, 3 rounds of 5 local steps, each path from its own previous
    round (averaged): factors, heads and losses within 1e-10 (float64) / 1e-5 (float32).

    float64 shows the two paths compute the same function (differences ~1e-15). In float32 the
    rounding differences (other summation orders) are amplified by AdamW where a gradient entry is
    near its eps = 1e-8: on this seed the largest difference is 5e-7, but over 8 seeds one entry
    reached 1.1e-5 after 3 rounds (sequential float32 vs float64 differ by far more)."""
    monkeypatch.setattr(batched, "uses_merged_weight", lambda layer: merged)  # both exact forms
    model, data, factors, heads = setup(rank, dtype)
    start = {"seq": (factors, heads), "bat": (factors, heads)}
    for t in range(3):
        rngs = {p: [substream(0, "sampling", t, k) for k in range(len(data))] for p in start}
        seq = sequential_local_train(model, *start["seq"], data, rngs["seq"], 5, 8, LR,
                                     optimizer, zeta)
        bat = batched_local_train(model, *start["bat"], data, rngs["bat"], 5, 8, LR,
                                  optimizer, zeta)
        assert max_diff(seq, bat) <= TOL[dtype]
        assert all(math.isfinite(v) for v in bat[2])
        for r1, r2 in zip(rngs["seq"], rngs["bat"], strict=True):  # same draws consumed
            assert r1.integers(2**62) == r2.integers(2**62)
        glob = {"seq": mean_state(*seq[:2]), "bat": mean_state(*bat[:2])}
        start = {p: ([glob[p][0]] * len(data), [glob[p][1]] * len(data)) for p in glob}


def test_model_and_inputs_are_left_untouched():
    model, data, factors, heads = setup()
    own, own_head = get_factors(model), get_head_state(model)
    copies = [[(b.clone(), a.clone()) for b, a in f] for f in factors]
    out, out_heads, _ = batched_local_train(model, factors, heads, data,
                                            [np.random.default_rng(k) for k in range(4)],
                                            3, 8, 1e-2, "adamw", 0.1)
    for (b0, a0), (b1, a1) in zip(own, get_factors(model), strict=True):
        assert torch.equal(b0, b1) and torch.equal(a0, a1)
    assert all(torch.equal(v, get_head_state(model)[k]) for k, v in own_head.items())
    for f, c in zip(factors, copies, strict=True):
        assert all(torch.equal(b, cb) and torch.equal(a, ca) for (b, a), (cb, ca)
                   in zip(f, c, strict=True))
    b = out[0][0][0]  # an independent copy, not a view into the stacked tensor
    assert b.untyped_storage().nbytes() == b.numel() * b.element_size()
    assert not out[0][0][0].requires_grad and not out_heads[0]["weight"].requires_grad


def test_zero_steps_returns_the_inputs_and_nan_losses():
    model, data, factors, heads = setup(sizes=(4, 6))
    out, out_heads, losses = batched_local_train(model, factors, heads, data,
                                                 [np.random.default_rng(0)] * 2, 0, 8, 1e-2,
                                                 "sgd", 0.0)
    assert all(math.isnan(v) for v in losses)
    assert torch.equal(out[1][0][0], factors[1][0][0])
    assert torch.equal(out_heads[1]["bias"], heads[1]["bias"])


def test_bf16_autocast_runs_and_stays_close():
    model, data, factors, heads = setup(dtype=torch.float32)

    def run(precision):
        return batched_local_train(model, factors, heads, data,
                                   [np.random.default_rng(k) for k in range(4)], 3, 8, 1e-2,
                                   "adamw", 0.1, precision=precision)

    ref, low = run("fp32"), run("bf16")
    assert low[0][0][0][0].dtype == torch.float32  # parameters stay in the model's dtype
    assert all(math.isfinite(v) for v in low[2])
    assert max_diff(ref, low) < 0.1


def test_meta_device_shapes():
    """The device path at shape level: every tensor is created on the model's device, no host
    copy of a device tensor (the meta device has no data)."""
    model, data, factors, heads = setup(dtype=torch.float32)
    model.to("meta")
    to_meta = [[(b.to("meta"), a.to("meta")) for b, a in f] for f in factors]
    heads_meta = [{k: v.to("meta") for k, v in h.items()} for h in heads]
    data_meta = [(x.to("meta"), y.to("meta")) for x, y in data]
    out, out_heads, losses = batched_local_train(model, to_meta, heads_meta, data_meta,
                                                 [np.random.default_rng(k) for k in range(4)],
                                                 2, 8, 1e-2, "adamw", 0.1)
    assert out[3][1][0].device.type == "meta" and out[3][1][0].shape == factors[3][1][0].shape
    assert out_heads[2]["weight"].shape == heads[2]["weight"].shape
    assert all(math.isnan(v) for v in losses)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    model, data, factors, heads = setup()
    cpu = batched_local_train(model, factors, heads, data,
                              [np.random.default_rng(k) for k in range(4)], 3, 8, 1e-2, "adamw", 0.1)
    model.to("cuda")
    gpu = batched_local_train(model, factors, heads, data,
                              [np.random.default_rng(k) for k in range(4)], 3, 8, 1e-2, "adamw", 0.1)
    assert gpu[0][0][0][0].device.type == "cuda"
    to_cpu = ([[(b.cpu(), a.cpu()) for b, a in f] for f in gpu[0]],
              [{k: v.cpu() for k, v in h.items()} for h in gpu[1]], gpu[2])
    assert max_diff(cpu, to_cpu) <= 1e-10


def test_stacked_regulariser_and_selection_match_per_client():
    model, _, factors, _ = setup(rank=6)
    stacked = stack_factors(factors, model)
    regs = stacked_soft_regulariser(stacked)
    for k, f in enumerate(factors):
        set_factors(model, f)
        torch.testing.assert_close(regs[k], soft_regulariser(model), rtol=1e-12, atol=0)
    for (b, a), i in zip(stacked, range(len(stacked)), strict=True):
        chosen = stacked_soft_select(b, a, 3)
        for k, f in enumerate(factors):
            assert torch.equal(chosen[k], soft_select(f[i][0], f[i][1], 3))


@pytest.mark.parametrize("bad", ["lengths", "optimizer", "shapes", "model"])
def test_rejects_bad_arguments(bad):
    model, data, factors, heads = setup()
    rngs = [np.random.default_rng(k) for k in range(4)]
    args = dict(model=model, factors=factors, heads=heads, data=data, rngs=rngs, steps=1,
                batch=8, lr=1e-2, optimizer="adamw", zeta=0.0)
    if bad == "lengths":
        args["rngs"] = rngs[:3]
    elif bad == "optimizer":
        args["optimizer"] = "lbfgs"
    elif bad == "shapes":
        args["factors"] = [f[:-1] for f in factors]
    else:
        args["model"] = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError if bad == "model" else ValueError):
        batched_local_train(**args)


@pytest.mark.parametrize("frozen", [("A",), ("B",)])
def test_frozen_factor_is_not_trained_and_paths_agree(frozen):
    """A frozen factor (FFA-LoRA: A) keeps its value in both paths; the paths agree (float64)."""
    model, data, factors, heads = setup(4, torch.float64)
    factors = [[(b + 0.1, a) for b, a in f] for f in factors]  # B != 0: A gets a gradient
    rngs = {p: [substream(0, "sampling", 0, k) for k in range(len(data))] for p in ("s", "b")}
    seq = sequential_local_train(model, factors, heads, data, rngs["s"], 3, 8, LR, "adamw", 0.0,
                                 frozen=frozen)
    bat = batched_local_train(model, factors, heads, data, rngs["b"], 3, 8, LR, "adamw", 0.0,
                              frozen=frozen)
    assert max_diff(seq, bat) <= TOL[torch.float64]
    i = 1 if frozen == ("A",) else 0
    for out in (seq, bat):
        for f_out, f_in in zip(out[0], factors, strict=True):
            for m_out, m_in in zip(f_out, f_in, strict=True):
                assert torch.equal(m_out[i], m_in[i]) and not torch.equal(m_out[1 - i], m_in[1 - i])


def test_frozen_rejects_unknown_factor_names():
    model, data, factors, heads = setup()
    rngs = [substream(0, "sampling", 0, k) for k in range(len(data))]
    with pytest.raises(ValueError, match="frozen"):
        batched_local_train(model, factors, heads, data, rngs, 1, 8, LR, "adamw", 0.0,
                            frozen=("C",))
