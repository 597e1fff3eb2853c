"""ViT sizes and the model each task trains, without torch (docs/model.md §1, §7).

:class:`ViTConfig` (validated sizes), :func:`flops_per_sample` (C_s of docs/model.md §1),
:func:`task_vit` (the ViT a run's task trains, from its config alone) and :func:`check_rank`
(the rank a config asks for against that model's LoRA modules), so that a config can be
checked before any data or torch is loaded. The model itself is :class:`tsfa.fl.vit.ViT`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

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



def synthetic_vit() -> ViTConfig:
    """The ViT of the embedded synthetic teacher task (:mod:`tsfa.fl.synthetic`)."""
    return ViTConfig(image_size=16, patch_size=4, in_chans=3, num_classes=10, dim=64, depth=3,
                     heads=4, mlp_ratio=2.0)


def task_vit(exp) -> ViTConfig:
    """The ViT that ``exp.task`` trains (``exp``: a :class:`tsfa.config.experiment.ExperimentSpec`),
    without loading data. cifar100 with a ``pretrained`` checkpoint takes its sizes from the
    checkpoint's config.json instead (:func:`tsfa.fl.tasks.pretrained_config`, at build time)."""
    from tsfa.config.registry import TASKS, resolve

    vit = resolve(TASKS.entry(exp.task).vit)()
    if not isinstance(vit, ViTConfig):
        raise TypeError(f"experiment.task = {exp.task!r}: its vit must return a ViTConfig, got "
                        f"{type(vit).__name__}")
    return vit


def fashion_mnist_vit() -> ViTConfig:
    """The tiny ViT of the fashion_mnist task: 28 px, 1 channel, 5 classes (5-9)."""
    return ViTConfig.tiny(num_classes=5, image_size=28, in_chans=1)


def cifar100_vit() -> ViTConfig:
    """The tiny ViT of the cifar100 task without a checkpoint: 32 px, 3 channels, 100 classes."""
    return ViTConfig.tiny(num_classes=100, image_size=32, in_chans=3)


def check_rank(exp, option: str = "experiment.rank") -> None:
    """Raise ValueError naming ``option`` when ``exp.rank`` exceeds the width of the LoRA modules
    of the task's model (q and v are ``dim x dim``, so ``1 <= r <= dim``). A pretrained
    checkpoint's width is known only once it is read: the server checks it then."""
    from tsfa.config.registry import TASKS

    if exp.pretrained and TASKS.entry(exp.task).vit_from_checkpoint:
        return
    dim = task_vit(exp).dim
    if exp.rank > dim:
        raise ValueError(f"{option} = {exp.rank}: must be in 1..{dim}, the width of the LoRA "
                         f"modules of the {exp.task} task's model (dim = {dim})")


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



__all__ = ["ViTConfig", "LAYER_NORM_EPS", "unsupported_settings", "synthetic_vit", "fashion_mnist_vit",
           "cifar100_vit", "task_vit",
           "check_rank", "flops_per_sample"]
