"""A compact plain-torch Vision Transformer (docs/model.md §1, §5, §7).

The model is the ViT of Dosovitskiy et al. in nanoGPT style: conv patch embedding, a cls token,
learned position embeddings, pre-norm blocks, final LayerNorm and a linear ``head``. Attention
keeps *separate* ``query``, ``key``, ``value`` and ``out`` ``nn.Linear`` projections so that LoRA
can target the query and value projections by name (docs/model.md §1: M = 2 * depth modules).

``load_pretrained`` maps the Hugging Face ``google/vit-base-patch16-224`` parameter names onto
ours (``HF_KEY_MAP``); it only reads a local file and never downloads anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

LAYER_NORM_EPS = 1e-12  # as in the Hugging Face ViT checkpoints


def _check(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"ViTConfig.{name} = {value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a ViT. All sizes in pixels / features, validated at creation.

    image_size: side of the square input image (px); patch_size divides it.
    in_chans: input channels; num_classes: outputs of ``head``; dim: token width;
    depth: number of blocks; heads: attention heads (divides dim); mlp_ratio: MLP width / dim.
    """

    image_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 10
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0

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
               and int(self.dim * self.mlp_ratio) >= 1, "a number > 0 with dim * mlp_ratio >= 1")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @classmethod
    def base(cls, num_classes: int = 100) -> ViTConfig:
        """ViT-B/16: 224 px, patch 16, dim 768, depth 12, heads 12, MLP 3072 (docs/model.md §7)."""
        return cls(224, 16, 3, num_classes, 768, 12, 12, 4.0)

    @classmethod
    def tiny(cls, num_classes: int = 10, image_size: int = 32, in_chans: int = 3) -> ViTConfig:
        """A CPU-sized ViT: patch 4, dim 64, depth 4, heads 4 (28 or 32 px inputs)."""
        return cls(image_size, 4, in_chans, num_classes, 64, 4, 4, 2.0)


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
        self.norm1 = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
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
        self.norm = nn.LayerNorm(cfg.dim, eps=LAYER_NORM_EPS)
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


# Hugging Face google/vit-base-patch16-224 (ViTForImageClassification) -> ours.
# The "vit." prefix is optional (ViTModel checkpoints omit it); "vit.pooler.*" is ignored.
HF_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.\1"),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)",
     r"blocks.\1.attn.\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.out.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
)


def hf_to_tsfa_key(key: str) -> str | None:
    """Our parameter name for a Hugging Face ViT name, or None if it has no counterpart."""
    key = key.removeprefix("vit.")
    for pattern, repl in HF_KEY_MAP:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local torch state dict (``torch.load``, weights only) or ``.safetensors`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # optional; tsfa does not depend on safetensors
            raise ImportError(f"reading {path} needs the optional 'safetensors' package") from err
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass(frozen=True)
class LoadReport:
    """Outcome of ``load_pretrained``: our keys loaded, ours left as initialised, theirs unused."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


@torch.no_grad()
def load_pretrained(model: ViT, path: str | Path, include_head: bool = False) -> LoadReport:
    """Copy weights from a local HF-named (or already tsfa-named) file into ``model``.

    The head is skipped unless ``include_head`` (docs/model.md §1: a new head is trained). Shapes must
    match exactly (a different image size changes ``pos_embed``: ValueError). Never downloads.
    """
    ours = model.state_dict()
    loaded, unexpected = [], []
    for key, value in read_state_dict(path).items():
        name = key if key in ours else hf_to_tsfa_key(key)
        if name is None or name not in ours:
            unexpected.append(key)
            continue
        if name.startswith("head.") and not include_head:
            continue
        if ours[name].shape != value.shape:
            raise ValueError(f"{key} -> {name}: shape {tuple(value.shape)} in file, "
                             f"{tuple(ours[name].shape)} in model")
        ours[name].copy_(value)
        loaded.append(name)
    missing = tuple(k for k in ours if k not in set(loaded))
    return LoadReport(tuple(loaded), missing, tuple(unexpected))


def num_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (optionally only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["ViTConfig", "ViT", "flops_per_sample", "load_pretrained", "hf_to_tsfa_key",
           "read_state_dict", "LoadReport", "HF_KEY_MAP", "num_parameters"]
