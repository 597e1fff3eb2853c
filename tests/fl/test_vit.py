"""ViT: config validation, shapes, FLOP count, HF key mapping (tsfa.fl.vit; loading in depth:
test_checkpoints.py)."""

import pytest
import torch

from tsfa.fl.checkpoints import CheckpointError, hf_to_tsfa_key, load_pretrained
from tsfa.fl.vit import ViT
from tsfa.fl.vit_config import ViTConfig, flops_per_sample


def tiny_cfg(**kw):
    return ViTConfig(**{**dict(image_size=8, patch_size=4, in_chans=3, num_classes=5, dim=8,
                              depth=2, heads=2, mlp_ratio=2.0), **kw})


@pytest.mark.parametrize(("field", "value"), [("dim", 0), ("heads", 3), ("patch_size", 3),
                                              ("mlp_ratio", -1.0), ("depth", 1.5),
                                              ("layer_norm_eps", 0.0), ("layer_norm_eps", True)])
def test_config_rejects_bad_values_and_names_field(field, value):
    with pytest.raises(ValueError, match=f"ViTConfig.{field}"):
        tiny_cfg(**{field: value})


def test_layer_norm_eps_reaches_every_norm_and_mlp_width_is_exact():
    model = ViT(tiny_cfg(layer_norm_eps=1e-6))
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps == {1e-6} and ViTConfig().layer_norm_eps == 1e-12
    assert ViTConfig(dim=48, heads=4, mlp_ratio=37 / 48).mlp_dim == 37
    assert ViTConfig.base().mlp_dim == 3072 and ViTConfig(dim=768, heads=12,
                                                          mlp_ratio=3072 / 768).mlp_dim == 3072


def test_tiny_forward_shape_and_reproducible_init():
    cfg = ViTConfig.tiny(num_classes=7, image_size=28, in_chans=1)
    m1, m2 = (ViT(cfg, torch.Generator().manual_seed(3)) for _ in range(2))
    x = torch.randn(4, 1, 28, 28)
    assert m1(x).shape == (4, 7)
    torch.testing.assert_close(m1(x), m2(x))


@pytest.mark.slow
def test_base_forward_shape_batch_1():
    cfg = ViTConfig.base(100)
    assert (cfg.image_size, cfg.patch_size, cfg.dim, cfg.depth, cfg.heads) == (224, 16, 768, 12, 12)
    with torch.no_grad():
        assert ViT(cfg)(torch.randn(1, 3, 224, 224)).shape == (1, 100)


def test_flops_hand_count():
    cfg = tiny_cfg()  # 4 patches, T = 5, d = 8, h = 16, 2 blocks, 5 classes, 3 x 4 x 4 inputs
    forward = 2 * 4 * 48 * 8 + 2 * (8 * 5 * 64 + 4 * 25 * 8 + 4 * 5 * 8 * 16) + 2 * 8 * 5
    assert flops_per_sample(cfg) == 3 * forward
    assert 1.0e11 < flops_per_sample(ViTConfig.base(100)) < 1.1e11


def fake_hf_state_dict(cfg: ViTConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """HF google/vit-base-patch16-224 names and shapes, at the tiny config's sizes."""
    d, h, p = cfg.dim, cfg.mlp_dim, cfg.patch_size
    sd = {"vit.embeddings.cls_token": (1, 1, d),
          "vit.embeddings.position_embeddings": (1, cfg.num_patches + 1, d),
          "vit.embeddings.patch_embeddings.projection.weight": (d, cfg.in_chans, p, p),
          "vit.embeddings.patch_embeddings.projection.bias": (d,),
          "vit.layernorm.weight": (d,), "vit.layernorm.bias": (d,),
          "vit.pooler.dense.weight": (d, d),
          "classifier.weight": (cfg.num_classes, d), "classifier.bias": (cfg.num_classes,)}
    for i in range(cfg.depth):
        pre = f"vit.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            sd[pre + f"attention.attention.{name}.weight"] = (d, d)
            sd[pre + f"attention.attention.{name}.bias"] = (d,)
        sd |= {pre + "attention.output.dense.weight": (d, d), pre + "attention.output.dense.bias": (d,),
               pre + "intermediate.dense.weight": (h, d), pre + "intermediate.dense.bias": (h,),
               pre + "output.dense.weight": (d, h), pre + "output.dense.bias": (d,),
               pre + "layernorm_before.weight": (d,), pre + "layernorm_before.bias": (d,),
               pre + "layernorm_after.weight": (d,), pre + "layernorm_after.bias": (d,)}
    return {k: torch.randn(s, generator=gen) for k, s in sd.items()}


def test_hf_key_mapping_examples():
    assert hf_to_tsfa_key("vit.encoder.layer.11.attention.attention.query.weight") == \
        "blocks.11.attn.query.weight"
    assert hf_to_tsfa_key("encoder.layer.0.attention.output.dense.bias") == "blocks.0.attn.out.bias"
    assert hf_to_tsfa_key("vit.encoder.layer.3.output.dense.weight") == "blocks.3.mlp.fc2.weight"
    assert hf_to_tsfa_key("vit.layernorm.bias") == "norm.bias"
    assert hf_to_tsfa_key("vit.pooler.dense.weight") is None


@pytest.mark.parametrize("include_head", [False, True])
def test_load_pretrained_maps_every_tensor(tmp_path, include_head):
    cfg = tiny_cfg()
    sd = fake_hf_state_dict(cfg, torch.Generator().manual_seed(0))
    path = tmp_path / "hf.pt"
    torch.save(sd, path)
    model = ViT(cfg)
    head_before = model.head.weight.clone()
    report = load_pretrained(model, path, include_head=include_head)
    ours = model.state_dict()
    assert report.skipped == ("vit.pooler.dense.weight",) + (
        () if include_head else ("classifier.weight", "classifier.bias"))
    assert report.keys_loaded == len(ours) - (0 if include_head else 2)
    assert set(report.missing) == (set() if include_head else {"head.weight", "head.bias"})
    for k, v in sd.items():
        name = hf_to_tsfa_key(k)
        if name is None or (name.startswith("head.") and not include_head):
            continue
        torch.testing.assert_close(ours[name], v, rtol=0, atol=0)
    if not include_head:
        torch.testing.assert_close(model.head.weight, head_before, rtol=0, atol=0)
    spot = "vit.encoder.layer.1.attention.attention.value.weight"
    torch.testing.assert_close(model.blocks[1].attn.value.weight, sd[spot], rtol=0, atol=0)


def test_load_pretrained_resizes_pos_embed_and_rejects_other_shapes(tmp_path):
    sd = fake_hf_state_dict(tiny_cfg(), torch.Generator().manual_seed(0))
    torch.save(sd, tmp_path / "hf.pt")
    report = load_pretrained(ViT(tiny_cfg(image_size=12)), tmp_path / "hf.pt")
    assert report.resized == ("pos_embed 2x2 -> 3x3 (bicubic)",)
    with pytest.raises(CheckpointError, match=r"(?s)mis-shaped \(\d+\):.*patch_embeddings"):
        load_pretrained(ViT(tiny_cfg(patch_size=2)), tmp_path / "hf.pt")
