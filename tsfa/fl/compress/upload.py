"""What a client puts on the air, how its bits are counted and how the server reads it
(docs/model.md §1, §6).

``Upload`` holds one client's message: per module the values (in the wire dtype: 16-bit values
as bf16 or fp16, 32 as float32, 64 as float64) and the positions they belong to. ``payload_bits``
counts it from the tensors themselves (``element_size() * 8`` bits per value) and the index
counts of :mod:`tsfa.maths.payload`, so it equals the planned :class:`~tsfa.maths.payload.PayloadModel`
bits by construction. The server reads an upload with ``decode`` (dense, zeros where nothing was
sent) or ``reconstruct`` (the client's message as the server takes it under the upload protocol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tsfa.maths.payload import component_index_bits, element_index_bits

Tensor = torch.Tensor
Factors = list[tuple[Tensor, Tensor]]  # per module: (B (d_out, r), A (r, d_in))
Message = list[tuple[Tensor, ...]]  # per module: (dB, dA), (B_k, A_k), (dW,) or (L, R)

PROTOCOLS = ("update", "factor")
FILLS = ("global", "zero")
_WIRE = {(16, "bf16"): torch.bfloat16, (16, "fp16"): torch.float16, (32, None): torch.float32,
         (64, None): torch.float64}


def wire_dtype(value_bits: int, value_dtype: str = "bf16") -> torch.dtype:
    """The float type of values on the air: 16 bits -> bf16 or fp16 (``value_dtype``), 32 ->
    float32, 64 -> float64."""
    key = (int(value_bits), value_dtype if int(value_bits) == 16 else None)
    if key not in _WIRE:
        raise ValueError(f"lora.bits_per_param = {value_bits!r} (value_dtype {value_dtype!r}) is "
                         "invalid for training; allowed: 16 (bf16 or fp16), 32, 64")
    return _WIRE[key]


@dataclass(frozen=True, eq=False)
class ModuleUpload:
    """What one client sends for one LoRA module (B: shape_B = (d_out, r), A: (r, d_in)).

    SOFT: ``rank_index`` (n,), ``B_values`` (d_out, n) columns, ``A_values`` (n, d_in) rows.
    FFA: as SOFT with ``A_values`` empty (A is frozen: not sent, kept by the server).
    TLoRA: ``B_index``/``A_index`` flat element indices (k,) with values (k,).
    RLoRA: values (k,) only; the indices follow from ``seed``, shared with the server (not sent).
    SLoRA, SVD: ``B_values`` (d_out, n) = U_n sqrt(S_n), ``A_values`` (n, d_in) = sqrt(S_n) V_n^T.
    ILoRA: the full factors. Indices that name every entry (n = r, k = numel) are implied by rho
    and cost no bits.
    """

    shape_B: tuple[int, int]
    shape_A: tuple[int, int]
    B_values: Tensor
    A_values: Tensor
    rank_index: Tensor | None = None
    B_index: Tensor | None = None
    A_index: Tensor | None = None
    seed: int | None = None


@dataclass(frozen=True, eq=False)
class Upload:
    """One client's uplink message: ``method`` name, ``space`` ("factors": entries of the two
    factors; "product": triplets of a product) and one entry per module."""

    method: str
    space: str
    modules: tuple[ModuleUpload, ...]


def value_bits_of(x: Tensor) -> int:
    """Bits of the values in x as they travel: numel * element_size * 8."""
    return x.numel() * x.element_size() * 8


def payload_bits(upload: Upload) -> int:
    """Bits on the air for the LoRA part of an upload (head excluded: :func:`head_bits`).

    Values at their wire precision; rank indices ``component_index_bits`` (SOFT, FFA); element
    positions ``element_index_bits``, the cheaper of indices and a bitmap (TLoRA); none for
    RLoRA (shared seed), SLoRA, SVD and ILoRA.
    """
    bits = 0
    for mu in upload.modules:
        bits += value_bits_of(mu.B_values) + value_bits_of(mu.A_values)
        if mu.rank_index is not None:
            bits += component_index_bits(mu.rank_index.numel(), mu.shape_B[1])
        if mu.B_index is not None:
            bits += element_index_bits(mu.B_index.numel(), math.prod(mu.shape_B))
        if mu.A_index is not None:
            bits += element_index_bits(mu.A_index.numel(), math.prod(mu.shape_A))
    return bits


def encode_head(head: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """The head as sent: every tensor cast to the wire dtype."""
    return {k: v.detach().to(dtype).clone() for k, v in head.items()}


def decode_head(head: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The head as the server uses it: back to the model's dtype."""
    return {k: v.to(dtype) for k, v in head.items()}


def head_bits(head: dict[str, Tensor]) -> int:
    """S_head: the head's values at their wire precision (sent in full, docs/model.md §1)."""
    return sum(value_bits_of(v) for v in head.values())


def random_indices(seed: int, numel: int, k: int) -> np.ndarray:
    """RLoRA's k distinct flat indices out of numel, reproducible from the shared seed."""
    return np.sort(np.random.default_rng(seed).choice(numel, size=k, replace=False))


def element_indices(mu: ModuleUpload) -> tuple[Tensor, Tensor]:
    """Flat element indices of B and A in a TLoRA / RLoRA module upload (RLoRA: from the seed)."""
    if mu.seed is not None:  # RLoRA: regenerate from the shared seed, as the server does
        g = np.random.SeedSequence(mu.seed).spawn(2)
        kb, ka = mu.B_values.numel(), mu.A_values.numel()
        return (torch.from_numpy(random_indices(int(g[0].generate_state(1)[0]),
                                                math.prod(mu.shape_B), kb)),
                torch.from_numpy(random_indices(int(g[1].generate_state(1)[0]),
                                                math.prod(mu.shape_A), ka)))
    return mu.B_index, mu.A_index


def _scatter(mu: ModuleUpload, vb: Tensor, va: Tensor, dtype) -> tuple[Tensor, Tensor]:
    """Dense (d_out, r), (r, d_in) tensors holding vb, va at the positions of ``mu``."""
    dB = torch.zeros(mu.shape_B, dtype=dtype)
    dA = torch.zeros(mu.shape_A, dtype=dtype)
    if mu.rank_index is not None:
        dB[:, mu.rank_index] = vb.to(dtype)
        if va.numel():
            dA[mu.rank_index, :] = va.to(dtype)
    elif mu.B_index is not None or mu.seed is not None:
        ib, ia = element_indices(mu)
        dB.view(-1)[ib] = vb.to(dtype).reshape(-1)
        dA.view(-1)[ia] = va.to(dtype).reshape(-1)
    else:
        dB.copy_(vb.reshape(mu.shape_B))
        dA.copy_(va.reshape(mu.shape_A))
    return dB, dA


def _dtype(upload: Upload, dtype) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.promote_types(upload.modules[0].B_values.dtype, torch.float32)


def decode(upload: Upload, dtype: torch.dtype | None = None) -> Message:
    """The dense message the server reconstructs, zeros where nothing was sent: (dB, dA) per
    module for factor uploads, (U_n V_n,) for product uploads. ``dtype``: the server's (default:
    the wire dtype promoted to at least float32)."""
    dt = _dtype(upload, dtype)
    if upload.space == "product":
        return [(mu.B_values.to(dt) @ mu.A_values.to(dt),) for mu in upload.modules]
    return [_scatter(mu, mu.B_values, mu.A_values, dt) for mu in upload.modules]


def sent_masks(upload: Upload) -> list[tuple[Tensor, Tensor]]:
    """1 where a client sent an entry of B / A, else 0 (per rank index or per element)."""
    return [_scatter(mu, torch.ones(mu.B_values.shape), torch.ones(mu.A_values.shape),
                     torch.float64) for mu in upload.modules]


def reconstruct(upload: Upload, params: Factors, protocol: str = "update",
                fill: str = "global", dtype: torch.dtype | None = None) -> Message:
    """Client k's message as the server takes it (docs/model.md §5, upload protocols).

    "update": the decoded change (zeros where nothing was sent). "factor": the client's local
    factors, with the global value (``fill = "global"``) or zero (``"zero"``) where the client
    sent nothing; a factor the upload leaves out entirely (FFA's frozen A) keeps its global value.
    Product uploads (SLoRA, SVD) are their decoded product under either protocol.
    """
    if protocol not in PROTOCOLS or fill not in FILLS:
        raise ValueError(f"protocol = {protocol!r}, fill = {fill!r}: allowed {PROTOCOLS}, {FILLS}")
    dense = decode(upload, dtype or params[0][0].dtype)
    if protocol == "update" or upload.space == "product":
        return dense
    out: Message = []
    for (dB, dA), (mb, ma), (B, A), mu in zip(dense, sent_masks(upload), params, upload.modules,
                                              strict=True):
        keep_b = B if fill == "global" else torch.zeros_like(B)
        keep_a = A if fill == "global" or mu.A_values.numel() == 0 else torch.zeros_like(A)
        out.append((torch.where(mb > 0, dB, keep_b), torch.where(ma > 0, dA, keep_a)))
    return out


__all__ = ["PROTOCOLS", "FILLS", "Factors", "Message", "ModuleUpload", "Upload", "wire_dtype",
           "value_bits_of", "payload_bits", "encode_head", "decode_head", "head_bits",
           "random_indices", "element_indices", "decode", "sent_masks", "reconstruct"]
