"""Checkpoints into tsfa's ViT (tsfa.fl.checkpoints): transformers folders and files, timm names,
all-or-nothing loading with one message, position-embedding resizing, the load record."""

import hashlib
import json

import pytest
import torch
from torch.nn import functional as F

from tsfa.fl.checkpoints import (
    HF_BLOCK_NAMES,
    CheckpointError,
    convert_checkpoint,
    load_pretrained,
    load_vit,
    map_key,
    resize_pos_embed,
    vit_config_from_hf,
)
from tsfa.fl.lora import apply_lora
from tsfa.fl.vit import ViT
from tsfa.fl.vit_config import ViTConfig

torch.set_num_threads(1)
SMALL = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
             num_attention_heads=2, intermediate_size=40, num_labels=5)


def random_hf_vit(layer_norm_eps=1e-12, seed=0, model_cls="ViTForImageClassification", **kw):
    """A transformers ViT of the small config with *every* parameter random (norms included, so a
    swapped LayerNorm cannot pass)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(**{**SMALL, **kw}, layer_norm_eps=layer_norm_eps)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    return model


def saved_state(model, folder) -> dict:
    """The tensors as ``save_pretrained`` writes them (transformers 4.x and 5.x: the
    ``encoder.layer.{i}.attention.attention.query`` names; 5.x renames them in memory)."""
    st = pytest.importorskip("safetensors.torch")
    model.save_pretrained(folder)
    return st.load_file(str(folder / "model.safetensors"))


def hf_logits(model, x, interpolate=False):
    with torch.no_grad():
        return model(pixel_values=x, interpolate_pos_encoding=interpolate).logits


def tsfa_logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("eps", [1e-12, 1e-6, 0.1])
def test_save_pretrained_folder_loads_every_key_and_gives_the_same_logits(tmp_path, eps):
    pytest.importorskip("safetensors")
    hf = random_hf_vit(eps)
    hf.save_pretrained(tmp_path / "ckpt")
    model, report = load_vit(tmp_path / "ckpt", include_head=True)
    assert model.cfg.layer_norm_eps == eps and model.cfg.mlp_dim == 40
    assert report.keys_loaded == len(model.state_dict()) == len(hf.state_dict())
    assert report.format == "transformers" and not report.missing and not report.skipped
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(tsfa_logits(model, x), hf_logits(hf, x), rtol=0, atol=1e-5)
    weights = tmp_path / "ckpt" / "model.safetensors"
    assert report.source == str(weights)
    assert report.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert report.as_dict()["keys_loaded"] == report.keys_loaded


def test_torch_bin_with_a_transformers_4_config(tmp_path):
    """transformers 4.x: pytorch_model.bin, "torch_dtype" in config.json, the names of the
    model in memory (on 5.x: layers.{i}.attention.q_proj, ... also mapped)."""
    hf = random_hf_vit(1e-12, seed=1)
    folder = tmp_path / "v4"
    folder.mkdir()
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    config = {**hf.config.to_dict(), "torch_dtype": "float32", "transformers_version": "4.46.3"}
    config.pop("dtype", None)
    (folder / "config.json").write_text(json.dumps(config))
    cfg = vit_config_from_hf(config)
    model = ViT(cfg)
    for path in (folder, folder / "pytorch_model.bin"):  # the folder, or the file beside config
        report = load_pretrained(model, path, include_head=True)
        assert report.keys_loaded == len(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(tsfa_logits(model, x), hf_logits(hf, x), rtol=0, atol=1e-5)


def test_vit_model_checkpoint_skips_pooler_and_keeps_a_new_head(tmp_path):
    hf = random_hf_vit(model_cls="ViTModel")  # no "vit." prefix, a pooler, no classifier
    torch.save(saved_state(hf, tmp_path / "saved"), tmp_path / "vitmodel.pt")
    model = ViT(vit_config_from_hf(hf.config.to_dict(), num_classes=7))
    head = model.head.weight.clone()
    report = load_pretrained(model, tmp_path / "vitmodel.pt")
    assert set(report.skipped) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert set(report.missing) == {"head.weight", "head.bias"}
    torch.testing.assert_close(model.head.weight, head, rtol=0, atol=0)
    norm2 = next(p for n, p in hf.named_parameters() if n.endswith("1.layernorm_after.weight"))
    torch.testing.assert_close(model.blocks[1].norm2.weight, norm2, rtol=0, atol=0)


def timm_state_dict(hf_state: dict) -> dict:
    """timm's VisionTransformer names for a transformers ViT state dict (fused qkv)."""
    out = {"cls_token": hf_state["vit.embeddings.cls_token"],
           "pos_embed": hf_state["vit.embeddings.position_embeddings"],
           "patch_embed.proj.weight": hf_state["vit.embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": hf_state["vit.embeddings.patch_embeddings.projection.bias"],
           "norm.weight": hf_state["vit.layernorm.weight"], "norm.bias": hf_state["vit.layernorm.bias"],
           "head.weight": hf_state["classifier.weight"], "head.bias": hf_state["classifier.bias"]}
    for i in range(SMALL["num_hidden_layers"]):
        h, t = f"vit.encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[t + f"attn.qkv.{kind}"] = torch.cat(
                [hf_state[h + f"attention.attention.{n}.{kind}"] for n in ("query", "key", "value")])
            out |= {t + f"attn.proj.{kind}": hf_state[h + f"attention.output.dense.{kind}"],
                    t + f"norm1.{kind}": hf_state[h + f"layernorm_before.{kind}"],
                    t + f"norm2.{kind}": hf_state[h + f"layernorm_after.{kind}"],
                    t + f"mlp.fc1.{kind}": hf_state[h + f"intermediate.dense.{kind}"],
                    t + f"mlp.fc2.{kind}": hf_state[h + f"output.dense.{kind}"]}
    return out


def test_timm_names_load_and_give_the_same_logits(tmp_path):
    hf = random_hf_vit(1e-6, seed=2)  # timm's LayerNorm eps
    sd = timm_state_dict(saved_state(hf, tmp_path / "saved"))
    assert len(sd) == len(hf.state_dict()) - 4 * SMALL["num_hidden_layers"]  # q, k, v fused
    torch.save(sd, tmp_path / "timm.pth")
    model, report = load_vit(tmp_path / "timm.pth", include_head=True, heads=2)
    assert model.cfg == ViTConfig(16, 4, 3, 5, 16, 2, 2, 2.5, 1e-6)  # eps: timm's default
    assert report.format == "timm" and report.keys_loaded == len(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(tsfa_logits(model, x), hf_logits(hf, x), rtol=0, atol=1e-5)
    assert map_key("blocks.3.attn.qkv.bias") == tuple(f"blocks.3.attn.{n}.bias"
                                                      for n in ("query", "key", "value"))
    with pytest.raises(CheckpointError, match="heads="):
        load_vit(tmp_path / "timm.pth")


def test_both_transformers_namings_reach_every_block_parameter():
    """The block rules of HF_KEY_MAP come from one table (HF_BLOCK_NAMES): the 4.x name
    (``encoder.layer.{i}``, as saved) and the 5.x name (``layers.{i}``, in memory) of each block
    parameter map to ours, and together they reach every parameter of one of our blocks."""
    ours = {k for k in ViT(ViTConfig.tiny()).state_dict() if k.startswith("blocks.1.")}
    for prefix, col in (("vit.encoder.layer.1.", 1), ("layers.1.", 2)):
        mapped = [map_key(f"{prefix}{names[col]}.{p}") for names in HF_BLOCK_NAMES
                  for p in ("weight", "bias")]
        assert sorted(k for (k,) in mapped) == sorted(ours), prefix


@pytest.mark.parametrize("damage", ["rename", "reshape", "both"])
def test_renamed_or_reshaped_key_fails_naming_it_and_loads_nothing(tmp_path, damage):
    hf = random_hf_vit(seed=3)
    sd = saved_state(hf, tmp_path / "saved")
    if damage in ("rename", "both"):
        good = "vit.encoder.layer.1.attention.attention.value.weight"
        sd["vit.encoder.layer.1.attention.attention.valu.weight"] = sd.pop(good)
    if damage in ("reshape", "both"):
        sd["vit.encoder.layer.0.intermediate.dense.bias"] = torch.zeros(41)
    torch.save(sd, tmp_path / "bad.pt")
    model = ViT(vit_config_from_hf(hf.config.to_dict()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_pretrained(model, tmp_path / "bad.pt", include_head=True)
    msg = str(err.value)
    renamed = "unexpected (1):" in msg and "attention.attention.valu.weight" in msg and (
        "missing (1):" in msg and "blocks.1.attn.value.weight" in msg)
    reshaped = "mis-shaped (1):" in msg and "intermediate.dense.bias" in msg and "(41,)" in msg
    assert (renamed, reshaped) == (damage != "reshape", damage != "rename"), msg
    assert err.value.__cause__ is None and err.value.__context__ is None
    for k, v in model.state_dict().items():  # all or nothing
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_config_contradicting_the_model_is_reported(tmp_path):
    pytest.importorskip("safetensors")
    hf = random_hf_vit(1e-6)
    hf.save_pretrained(tmp_path / "ckpt")
    model = ViT(ViTConfig(16, 4, 3, 5, 16, 2, heads=4, mlp_ratio=2.5))  # heads and eps differ
    with pytest.raises(CheckpointError) as err:
        load_pretrained(model, tmp_path / "ckpt")
    assert "num_attention_heads = 2" in str(err.value) and "layer_norm_eps = 1e-06" in str(err.value)
    with pytest.raises(ValueError, match="hidden_act"):
        vit_config_from_hf({**hf.config.to_dict(), "hidden_act": "relu"})
    with pytest.raises(CheckpointError, match="no weights file"):
        load_vit(tmp_path)


@pytest.mark.parametrize("image_size", [8, 24])
def test_position_embeddings_interpolated_as_transformers(tmp_path, image_size):
    hf = random_hf_vit(seed=4)
    torch.save(hf.state_dict(), tmp_path / "hf.bin")
    model = ViT(vit_config_from_hf(hf.config.to_dict(), image_size=image_size))
    report = load_pretrained(model, tmp_path / "hf.bin", include_head=True)
    g = image_size // 4
    assert report.resized == (f"pos_embed 4x4 -> {g}x{g} (bicubic)",)
    x = torch.randn(2, 3, image_size, image_size)
    torch.testing.assert_close(tsfa_logits(model, x), hf_logits(hf, x, interpolate=True),
                               rtol=0, atol=1e-5)


def test_timm_position_embeddings_resized_with_antialias_as_timm():
    gen = torch.Generator().manual_seed(5)
    pos = torch.randn(1, 1 + 36, 8, generator=gen)
    out = resize_pos_embed(pos, 4, antialias=True)
    grid = pos[:, 1:].reshape(1, 6, 6, 8).permute(0, 3, 1, 2)  # timm's resample_abs_pos_embed
    ref = F.interpolate(grid, size=(4, 4), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 16, 8))
    torch.testing.assert_close(out[:, :1], pos[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(resize_pos_embed(pos, 6), pos, rtol=0, atol=1e-6)
    const = torch.ones(1, 1 + 16, 3) * torch.tensor([1.0, -2.0, 3.0])
    torch.testing.assert_close(resize_pos_embed(const, 7), torch.ones(1, 50, 3) * const[0, 0])


def test_sharded_safetensors_and_lora_wrapped_model(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    src = ViT(ViTConfig.tiny(), torch.Generator().manual_seed(6))
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    keys = sorted(sd)
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        st.save_file({k: sd[k] for k in ks}, str(tmp_path / name))
    index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    model = ViT(ViTConfig.tiny())
    apply_lora(model, r=2, lora_alpha=4)
    report = load_pretrained(model, tmp_path)
    assert report.format == "tsfa" and report.keys_loaded == len(sd) - 2  # all but the head
    blob = b"".join((tmp_path / n).read_bytes() for n in ("a.safetensors", "b.safetensors"))
    assert report.sha256 == hashlib.sha256(blob).hexdigest()
    torch.testing.assert_close(model.blocks[0].attn.query.base.weight, sd["blocks.0.attn.query.weight"])
    x = torch.randn(2, 3, 32, 32)
    src.head.load_state_dict(model.head.state_dict())
    torch.testing.assert_close(tsfa_logits(model, x), tsfa_logits(src, x))  # LoRA is a no-op
    tensors, rep = convert_checkpoint(tmp_path, ViTConfig.tiny(), include_head=True)
    assert set(tensors) == set(sd) and rep.missing == ()


def test_unreadable_files_fail_with_one_line(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch state dict"):
        load_pretrained(ViT(ViTConfig.tiny()), tmp_path / "junk.bin")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(ViT(ViTConfig.tiny()), tmp_path / "nowhere.pt")


def test_cifar100_task_builds_its_vit_from_a_transformers_folder(tmp_path):
    """experiment.pretrained = a save_pretrained folder: the ViT comes from its config.json
    (100 classes, 32 px), position embeddings resized, the load recorded in Task.checkpoint."""
    from tests.fl.test_data import write_cifar
    from tsfa.config.experiment import ExperimentSpec
    from tsfa.fl.tasks import build_model, build_task

    pytest.importorskip("safetensors")
    hf = random_hf_vit(1e-6, seed=7)
    hf.save_pretrained(tmp_path / "ckpt")
    write_cifar(tmp_path, n_train=30, n_test=10)
    exp = ExperimentSpec(task="cifar100", data_dir=str(tmp_path), pretrained=str(tmp_path / "ckpt"),
                         num_train=30, num_test=10)
    task = build_task(exp, num_clients=2, dirichlet_alpha=1.0)
    assert task.vit == ViTConfig(32, 4, 3, 100, 16, 2, 2, 2.5, 1e-6)
    assert task.checkpoint.resized == ("pos_embed 4x4 -> 8x8 (bicubic)",)
    assert task.checkpoint.keys_loaded == len(hf.state_dict()) - 2
    assert "sha256" in task.note and task.checkpoint.as_dict()["sha256"] == task.checkpoint.sha256
    model = build_model(task, exp)
    torch.testing.assert_close(model.norm.weight, hf.vit.layernorm.weight)
