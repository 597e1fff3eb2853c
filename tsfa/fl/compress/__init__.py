"""Uplink compressors for LoRA factors: SOFT and the baselines (docs/model.md §5, §6).

* :mod:`~tsfa.fl.compress.upload`: the wire format (``Upload``), its bits (``payload_bits``,
  ``head_bits``) and how the server reads it (``decode``, ``reconstruct``);
* :mod:`~tsfa.fl.compress.strategies`: SOFT, TLoRA, RLoRA, ILoRA, FFA-LoRA (factor entries);
* :mod:`~tsfa.fl.compress.lowrank`: the exact factored SVD compressor and SLoRA (triplets);
* :mod:`~tsfa.fl.compress.feedback`: error feedback as a wrapper.

How many entries each method keeps, and the bits of an upload, come from
:mod:`tsfa.maths.payload`, which the controller plans with: planned bits equal counted bits.
"""

from __future__ import annotations

from tsfa.config.registry import COMPRESSORS as _REGISTRY
from tsfa.fl.compress.feedback import ErrorFeedback, with_error_feedback
from tsfa.fl.compress.lowrank import SVD, SLoRA, factored_svd, lowrank_top, split_triplets
from tsfa.fl.compress.strategies import (
    FFA,
    SOFT,
    CompressOptions,
    ILoRA,
    RLoRA,
    Strategy,
    TLoRA,
    n_keep,
    soft_importance,
    soft_select,
)
from tsfa.fl.compress.upload import (
    FILLS,
    PROTOCOLS,
    Factors,
    Message,
    ModuleUpload,
    Upload,
    decode,
    decode_head,
    element_indices,
    encode_head,
    head_bits,
    payload_bits,
    random_indices,
    reconstruct,
    sent_masks,
    wire_dtype,
)

Compressor = Strategy | ErrorFeedback


def strategy_class(name: str) -> type[Strategy]:
    """The :class:`Strategy` subclass registered as ``name``
    (:data:`tsfa.config.registry.COMPRESSORS`)."""
    cls = _REGISTRY.load(name, "strategy", Strategy)
    if cls.name != name:
        raise ValueError(f"experiment.method = {name!r}: {cls.__name__}.name = {cls.name!r} must "
                         "equal its registered name (uploads carry it)")
    return cls


def make_compressor(name: str, error_feedback: bool | str = True, **options) -> Compressor:
    """Strategy by its registered name, wrapped with error feedback by default.

    ``error_feedback``: a bool, or the policy of ``experiment.error_feedback`` ("all", "none",
    "proposed": the registered proposed methods only). ``options``: the fields of
    :class:`CompressOptions` (value_bits, value_dtype, equal_bits, protocol, fill).
    """
    cls = strategy_class(name)
    if isinstance(error_feedback, str):
        error_feedback = error_feedback == "all" or (error_feedback == "proposed"
                                                     and _REGISTRY.entry(name).proposed)
    c = cls(options=CompressOptions(**options))
    return with_error_feedback(c) if error_feedback else c


def compressor_for(experiment, lora) -> Compressor:
    """The compressor of a run: ``experiment`` an ExperimentSpec (method, error_feedback, upload,
    factor_fill, equal_bits), ``lora`` the LoraSpec of the trained model (bits_per_param,
    value_dtype)."""
    return make_compressor(experiment.method, experiment.uses_error_feedback,
                           value_bits=lora.bits_per_param,
                           value_dtype=getattr(lora, "value_dtype", "bf16"),
                           equal_bits=experiment.equal_bits, protocol=experiment.upload,
                           fill=experiment.factor_fill)


__all__ = ["Compressor", "CompressOptions", "ErrorFeedback", "FFA", "FILLS",
           "Factors", "ILoRA", "Message", "ModuleUpload", "PROTOCOLS", "RLoRA", "SLoRA", "SOFT",
           "SVD", "Strategy", "TLoRA", "Upload", "compressor_for", "decode", "decode_head",
           "element_indices", "encode_head", "factored_svd", "head_bits", "lowrank_top",
           "make_compressor", "n_keep", "payload_bits", "random_indices", "reconstruct",
           "sent_masks", "soft_importance", "soft_select", "split_triplets", "strategy_class",
           "wire_dtype",
           "with_error_feedback"]
