"""Torch side of tsfa: ViT, LoRA, data, compressors and aggregation (paper.md §1, §5, §6, §7).

The federated loop (``tsfa.fl.loop``) builds on these pieces; pure maths lives outside ``fl``.
"""

from tsfa.fl.aggregate import aggregate, aggregate_factors, aggregate_products, fedavg, uploaded_deltas
from tsfa.fl.compress import (
    COMPRESSORS,
    SOFT,
    ErrorFeedback,
    ILoRA,
    RLoRA,
    SLoRA,
    TLoRA,
    Upload,
    decode,
    full_bits,
    head_bits,
    make_compressor,
    n_keep,
    payload_bits,
    soft_importance,
    with_error_feedback,
)
from tsfa.fl.data import ArrayDataset, load_cifar100, load_fashion_mnist, select_classes
from tsfa.fl.lora import (
    LoRALinear,
    apply_lora,
    get_factors,
    get_head_state,
    orthogonality_defect,
    set_factors,
    set_head_state,
    soft_regulariser,
)
from tsfa.fl.partition import class_histograms, client_weights, dirichlet_partition
from tsfa.fl.synthetic import SyntheticConfig, SyntheticTask, make_synthetic_task, pretrain_backbone
from tsfa.fl.vit import ViT, ViTConfig, flops_per_sample, load_pretrained

__all__ = [
    "COMPRESSORS", "SOFT", "ErrorFeedback", "ILoRA", "RLoRA", "SLoRA", "TLoRA", "Upload",
    "decode", "full_bits", "head_bits", "make_compressor", "n_keep", "payload_bits",
    "soft_importance", "with_error_feedback", "aggregate", "aggregate_factors",
    "aggregate_products", "fedavg", "uploaded_deltas", "ArrayDataset", "load_cifar100",
    "load_fashion_mnist", "select_classes", "LoRALinear", "apply_lora", "get_factors",
    "get_head_state", "orthogonality_defect", "set_factors", "set_head_state", "soft_regulariser",
    "class_histograms", "client_weights", "dirichlet_partition", "SyntheticConfig",
    "SyntheticTask", "make_synthetic_task", "pretrain_backbone", "ViT", "ViTConfig",
    "flops_per_sample", "load_pretrained",
]
