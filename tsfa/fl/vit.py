"""A compact plain-torch Vision Transformer (docs/model.md §1, §5, §7).

The model is the ViT of Dosovitskiy et al. in nanoGPT style: conv patch embedding, a cls token,
learned position embeddings, pre-norm blocks, final LayerNorm and a linear ``head``. Attention
keeps *separate* ``query``, ``key``, ``value`` and ``out`` ``nn.Linear`` projections so that LoRA
can target the query and value projections by name (docs/model.md §1: M = 2 * depth modules).
It computes what ``transformers``' ``ViTForImageClassification`` and timm's ``VisionTransformer``
(class-token pooling) compute; only ``layer_norm_eps`` differs between them (1e-12 and 1e-6).

Sizes (:class:`~tsfa.fl.vit_config.ViTConfig`) and FLOPs live in :mod:`tsfa.fl.vit_config`
(no torch); pre-trained weights in :mod:`tsfa.fl.checkpoints`. Nothing is ever downloaded.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tsfa.fl.vit_config import ViTConfig


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


def num_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (optionally only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ViT", "num_parameters"]
