"""LoRA layers and the SOFT orthogonality regulariser (tsfa.fl.lora, docs/model.md §1, §5)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tsfa.fl.lora import (
    LoRALinear,
    apply_lora,
    get_factors,
    get_head_state,
    orthogonality_defect,
    set_factors,
    soft_regulariser,
)
from tsfa.fl.vit import ViT
from tsfa.fl.vit_config import ViTConfig

CFG = ViTConfig(image_size=8, patch_size=4, in_chans=3, num_classes=5, dim=8, depth=2, heads=2)


def lora_vit(r=4, dtype=torch.float64):
    model = ViT(CFG, torch.Generator().manual_seed(0)).to(dtype)
    names = apply_lora(model, r=r, lora_alpha=8, generator=torch.Generator().manual_seed(1))
    return model, names


def test_noop_at_init():
    base = ViT(CFG, torch.Generator().manual_seed(0)).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    expected = base(x)
    model, _ = lora_vit()
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_merged_equals_unmerged_and_unmerge_restores():
    model, _ = lora_vit()
    gen = torch.Generator().manual_seed(2)
    set_factors(model, [(torch.randn(b.shape, generator=gen, dtype=b.dtype), a)
                        for b, a in get_factors(model)])
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    y = model(x)
    w0 = model.blocks[0].attn.query.base.weight.clone()
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()
    torch.testing.assert_close(model(x), y, rtol=1e-12, atol=1e-12)
    assert not torch.equal(model.blocks[0].attn.query.base.weight, w0)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()
    torch.testing.assert_close(model.blocks[0].attn.query.base.weight, w0, rtol=0, atol=1e-14)


def test_only_lora_and_head_train_and_names_in_order():
    model, names = lora_vit()
    assert names == ["blocks.0.attn.query", "blocks.0.attn.value",
                     "blocks.1.attn.query", "blocks.1.attn.value"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"{n}.lora_{f}" for n in names for f in "AB"} | {"head.weight", "head.bias"}
    assert trainable == expected


def test_lora_init_and_scaling():
    layer = LoRALinear(torch.nn.Linear(6, 5), r=3, lora_alpha=12)
    assert layer.scaling == 4.0
    assert layer.lora_A.shape == (3, 6) and layer.lora_B.shape == (5, 3)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) == 18
    assert layer.lora_A.abs().max() <= 1 / 6**0.5  # kaiming-uniform(a = sqrt 5) bound 1/sqrt(d_in)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 6)
    torch.testing.assert_close(layer(x), layer.base(x) + 4.0 * x @ (layer.lora_B @ layer.lora_A).T)
    with pytest.raises(ValueError, match="r = 0"):
        LoRALinear(torch.nn.Linear(6, 5), r=0, lora_alpha=1)


def test_factor_and_head_round_trip():
    model, _ = lora_vit()
    f = get_factors(model)
    assert [(b.shape, a.shape) for b, a in f] == [((8, 4), (4, 8))] * 4
    head = get_head_state(model)
    assert set(head) == {"weight", "bias"}
    with pytest.raises(ValueError, match="3 factor pairs"):
        set_factors(model, f[:3])


def orthogonal_factors(d_out, d_in, r, gen, dtype=torch.float64):
    qb, _ = torch.linalg.qr(torch.randn(d_out, r, generator=gen, dtype=dtype))
    qa, _ = torch.linalg.qr(torch.randn(d_in, r, generator=gen, dtype=dtype))
    cb = torch.rand(r, generator=gen, dtype=dtype) + 0.1
    ca = torch.rand(r, generator=gen, dtype=dtype) + 0.1
    return qb * cb, (qa * ca).T


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(6, 12), st.integers(6, 12), st.integers(0, 2**31 - 1))
def test_defect_zero_iff_orthogonal(r, d_out, d_in, seed):
    gen = torch.Generator().manual_seed(seed)
    B, A = orthogonal_factors(d_out, d_in, r, gen)
    assert orthogonality_defect(B, A) < 1e-24
    if r >= 2:
        B2 = B.clone()
        B2[:, 1] += 0.5 * B[:, 0]
        assert orthogonality_defect(B2, A) > 1e-6


def test_defect_formula_and_regulariser_sum():
    B = torch.tensor([[1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    A = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    # b_1 . b_2 = 1 and a_1 . a_2 = 1, each off-diagonal entry appears twice: 2 + 2
    assert orthogonality_defect(B, A).item() == 4.0
    model, _ = lora_vit()
    expected = sum(orthogonality_defect(b, a) for b, a in get_factors(model))
    torch.testing.assert_close(soft_regulariser(model), expected)
    assert soft_regulariser(model).requires_grad
