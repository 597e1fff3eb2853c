"""A compact plain-torch Vision Transformer (docs/model.md §1, §5, §7).

The model is the ViT of Dosovitskiy et al. in nanoGPT style: conv patch embedding, a cls token,
learned position embeddings, pre-norm blocks, final LayerNorm and a linear ``head``. Attention
keeps *separate* ``query``, ``key``, ``value`` and ``out`` ``nn.Linear`` projections so that LoRA
can target the query and value projections by name (docs/model.md §1: M = 2 * depth modules).
It computes what ``transformers``' ``ViTForImageClassification`` and timm's ``VisionTransformer``
(class-token pooling) compute; only ``layer_norm_eps`` differs between them (1e-12 and 1e-6).

Pre-trained weights (Hugging Face, timm or tsfa names): :mod:`tsfa.fl.checkpoints`
(``load_pretrained``, ``load_vit``; re-exported here). Nothing is ever downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

LAYER_NORM_EPS = 1e-12  # default: as in the Hugging Face ViT checkpoints (timm: 1e-6)


def _check(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"ViTConfig.{name} = {value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a ViT. All sizes in pixels / features, validated at creation.

    image_size: side of the square input image (px); patch_size divides it.
    in_chans: input channels; num_classes: outputs of ``head``; dim: token width;
    depth: number of blocks; heads: attention heads (divides dim); mlp_ratio: MLP width / dim;
    layer_norm_eps: epsilon of every LayerNorm (1e-12 in Hugging Face checkpoints, 1e-6 in timm's;
    :meth:`from_hf` reads it from a checkpoint's config.json).
    """

    image_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 10
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    layer_norm_eps: float = LAYER_NORM_EPS

    def __post_init__(self) -> None:
        ints = ("image_size", "patch_size", "in_chans", "num_classes", "dim", "depth", "heads")
        for name in ints:
            v = getattr(self, name)
            _check(name, v, isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                   "an integer >= 1")
        _check("patch_size", self.patch_size, self.image_size % self.patch_size == 0,
               f"a divisor of image_size = {self.image_size}")
        _check("heads", self.heads, self.dim % self.heads == 0,
               f"a divisor of dim = {self.dim}")
        _check("mlp_ratio", self.mlp_ratio,
               isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0
               and self.mlp_dim >= 1, "a number > 0 with dim * mlp_ratio >= 1")
        eps = self.layer_norm_eps
        _check("layer_norm_eps", eps, isinstance(eps, (int, float)) and not isinstance(eps, bool)
               and 0.0 < eps < 1.0, "a number in (0, 1), e.g. 1e-12 (Hugging Face) or 1e-6 (timm)")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def mlp_dim(self) -> int:
        """MLP width: floor(dim * mlp_ratio), robust to round-off (3072 / 768 * 768 gives 3072)."""
        return math.floor(self.dim * self.mlp_ratio + 1e-6)

    @classmethod
    def base(cls, num_classes: int = 100) -> ViTConfig:
        """ViT-B/16: 224 px, patch 16, dim 768, depth 12, heads 12, MLP 3072 (docs/model.md §7)."""
        return cls(224, 16, 3, num_classes, 768, 12, 12, 4.0)

    @classmethod
    def from_hf(cls, config: Mapping, **overrides) -> ViTConfig:
        """From a transformers ViT ``config.json`` dict (hidden_size, num_hidden_layers,
        num_attention_heads, intermediate_size, image_size, patch_size, num_channels, id2label,
        layer_norm_eps); ``overrides`` (e.g. num_classes, image_size) replace fields, None is
        ignored. Settings tsfa's ViT does not implement raise ValueError naming them."""
        unsupported = unsupported_settings(config)
        if unsupported:
            raise ValueError("; ".join(unsupported))
        size, patch = (v[0] if isinstance(v, (list, tuple)) else v
                       for v in (config.get("image_size", 224), config.get("patch_size", 16)))
        dim = int(config["hidden_size"])
        fields = {"image_size": int(size), "patch_size": int(patch),
                  "in_chans": int(config.get("num_channels", 3)),
                  "num_classes": len(config.get("id2label") or {}) or int(config.get("num_labels", 2)),
                  "dim": dim, "depth": int(config["num_hidden_layers"]),
                  "heads": int(config["num_attention_heads"]),
                  "mlp_ratio": int(config["intermediate_size"]) / dim,
                  "layer_norm_eps": float(config.get("layer_norm_eps", LAYER_NORM_EPS))}
        return cls(**{**fields, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def tiny(cls, num_classes: int = 10, image_size: int = 32, in_chans: int = 3) -> ViTConfig:
        """A CPU-sized ViT: patch 4, dim 64, depth 4, heads 4 (28 or 32 px inputs)."""
        return cls(image_size, 4, in_chans, num_classes, 64, 4, 4, 2.0)


def unsupported_settings(config: Mapping | None) -> list[str]:
    """Settings of a transformers ViT config.json that tsfa's ViT does not implement."""
    if not config or "hidden_size" not in config:  # not a transformers ViT config (e.g. timm's)
        return []
    out = []
    if config.get("hidden_act", "gelu") != "gelu":
        out.append(f"hidden_act = {config['hidden_act']!r} in config.json; tsfa's ViT uses 'gelu'")
    if config.get("qkv_bias", True) is not True:
        out.append("qkv_bias = false in config.json; tsfa's ViT has query/key/value biases")
    if config.get("model_type", "vit") != "vit":
        out.append(f"model_type = {config['model_type']!r} in config.json; tsfa maps 'vit' only")
    return out


class Attention(nn.Module):
    """Multi-head self-attention with separate ``query``/``key``/``value``/``out`` projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape  # batch, tokens, dim

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(n, t, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)),
                                           split(self.value(x)))
        return self.out(y.transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.dim, cfg.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer. Input (N, in_chans, image_size, image_size) -> logits (N, num_classes).

    ``generator`` makes the initialisation reproducible without global seeding.
    """

    def __init__(self, cfg: ViTConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch_size, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Truncated-normal(0.02) weights, zero biases, unit LayerNorm (as HF ViT)."""
        for name, p in self.named_parameters():
            if p.dim() == 1 and ("norm" in name):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04, generator=generator)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Final-norm cls-token features, shape (N, dim)."""
        z = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, num_patches, dim)
        z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1), z], dim=1) + self.pos_embed
        for block in self.blocks:
            z = block(z)
        return self.norm(z)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def flops_per_sample(cfg: ViTConfig) -> float:
    """Training FLOPs per sample, C_s in docs/model.md §1 (forward + backward), in FLOP.

    One multiply-add = 2 FLOP. With T = num_patches + 1 tokens, d = dim, h = mlp_dim:
      forward = 2 P (C p^2) d                       patch embedding, P = num_patches
              + depth * (8 T d^2 + 4 T^2 d + 4 T d h)  q,k,v,out; scores and attn@V; MLP
              + 2 d num_classes                      head
      C_s = 3 * forward   (backward ~ 2x forward; LayerNorm, softmax, GELU ignored).
    ViT-B/16 at 224 px: forward ~ 35 GFLOP, C_s ~ 1.05e11 FLOP.
    """
    t, d, h = cfg.num_patches + 1, cfg.dim, cfg.mlp_dim
    embed = 2 * cfg.num_patches * cfg.in_chans * cfg.patch_size**2 * d
    block = 8 * t * d * d + 4 * t * t * d + 4 * t * d * h
    forward = embed + cfg.depth * block + 2 * d * cfg.num_classes
    return 3.0 * float(forward)


def num_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (optionally only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ViTConfig", "ViT", "flops_per_sample", "num_parameters", "unsupported_settings",
           "LAYER_NORM_EPS"]
