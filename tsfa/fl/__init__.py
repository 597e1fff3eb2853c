"""The torch side of tsfa: ViT with LoRA, data, compressors (SOFT and baselines), aggregation
and the federated loop (docs/model.md §1, §5, §6, §7).

Nothing is imported eagerly, so importing a torch-free submodule (e.g. ``tsfa.config.experiment``)
does not pull in torch. The curated public API below is resolved lazily (PEP 562):
``from tsfa.fl import make_compressor`` imports ``tsfa.fl.compress`` on first use.
"""

from __future__ import annotations

from tsfa._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(__name__, globals(), {
    ".aggregate": ("aggregate", "aggregate_factors", "aggregate_products", "fedavg",
                   "refactorise", "uploaded_deltas"),
    ".compress": ("SOFT", "TLoRA", "RLoRA", "SLoRA", "SVD", "ILoRA", "FFA",
                  "CompressOptions", "ErrorFeedback", "ModuleUpload", "Upload", "compressor_for",
                  "decode", "encode_head", "decode_head", "head_bits", "make_compressor",
                  "n_keep", "payload_bits", "reconstruct", "soft_importance", "soft_select",
                  "strategy_class", "with_error_feedback"),
    ".correction": ("fedex_residual", "row_space_correction"),
    ".data": ("ArrayDataset", "load_cifar100", "load_fashion_mnist", "read_idx", "select_classes"),
    ".lora": ("LoRALinear", "apply_lora", "get_factors", "set_factors", "get_head_state",
              "set_head_state", "lora_modules", "orthogonality_defect", "soft_regulariser"),
    ".partition": ("class_histograms", "client_weights", "dirichlet_partition"),
    ".synthetic": ("SyntheticConfig", "SyntheticTask", "make_synthetic_task", "pretrain_backbone",
                   "rank_floor", "oracle_accuracy"),
    ".vit": ("ViT",),
    ".vit_config": ("ViTConfig", "flops_per_sample"),
    ".checkpoints": ("load_pretrained", "hf_to_tsfa_key"),
})
