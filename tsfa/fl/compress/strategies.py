"""Factor-space compressors: SOFT and the baselines TLoRA, RLoRA, ILoRA, FFA-LoRA
(docs/model.md §5, §6).

One interface, optax style. Each strategy is a frozen dataclass with

    state = c.init(params)
    upload, state = c.update(deltas, state, params, rho, rng)

``params`` are the global factors [(B^t, A^t)] of the round, ``deltas`` the client's
[(dB, dA)] = local - global, ``rho`` in (0, 1] the sparsification ratio and ``rng`` a
``numpy.random.Generator`` (only RLoRA draws from it). How many entries a strategy keeps comes
from :func:`tsfa.maths.payload.module_plan`, the function the controller's payload model calls.
Plain strategies keep no state; ``with_error_feedback`` adds the memory (tsfa.fl.compress.feedback).

The *message* a strategy compresses depends on the upload protocol (``CompressOptions.protocol``):
"update" sends entries of the change (dB, dA); "factor" sends entries of the client's local
factors (B^t + dB, A^t + dA), FedIT style. Selections that rank components look at the
compensated local factors in both cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from tsfa.fl.compress import upload as wire
from tsfa.fl.compress.upload import (
    Factors,
    Message,
    ModuleUpload,
    Upload,
    element_indices,
    reconstruct,
    wire_dtype,
)
from tsfa.maths.payload import ModulePlan, kept_components, module_plan

Tensor = torch.Tensor


def n_keep(rho: float, r: int) -> int:
    """Rank components sent per module: n = max(1, ceil(rho r)), rho in (0, 1] (docs/model.md §1)."""
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho = {rho!r} is invalid; allowed: 0 < rho <= 1")
    return int(kept_components(r, rho))


@dataclass(frozen=True)
class CompressOptions:
    """How values travel and what is sent: ``value_bits`` (16, 32 or 64; ``lora.bits_per_param``),
    ``value_dtype`` (bf16 or fp16 for 16-bit values; ``lora.value_dtype``), ``equal_bits`` (fit
    SOFT's bits, ``experiment.equal_bits``), ``protocol`` ("update" or "factor",
    ``experiment.upload``) and ``fill`` ("global" or "zero", ``experiment.factor_fill``)."""

    value_bits: int = 32
    value_dtype: str = "bf16"
    equal_bits: bool = False
    protocol: str = "update"
    fill: str = "global"

    def __post_init__(self):
        wire_dtype(self.value_bits, self.value_dtype)
        if self.protocol not in wire.PROTOCOLS:
            raise ValueError(f"upload = {self.protocol!r} is invalid; allowed: {wire.PROTOCOLS}")
        if self.fill not in wire.FILLS:
            raise ValueError(f"factor_fill = {self.fill!r} is invalid; allowed: {wire.FILLS}")

    @property
    def dtype(self) -> torch.dtype:
        return wire_dtype(self.value_bits, self.value_dtype)


def soft_importance(B: Tensor, A: Tensor) -> Tensor:
    """s_i = ||b_i|| ||a_i|| for i = 1..r, shape (r,) (docs/model.md §5). O(r (d_in + d_out))."""
    return torch.linalg.vector_norm(B, dim=0) * torch.linalg.vector_norm(A, dim=1)


def soft_select(B: Tensor, A: Tensor, n: int) -> Tensor:
    """Sorted indices (n,) of the n most important rank components; no SVD, no B @ A."""
    return torch.sort(torch.topk(soft_importance(B, A), n).indices).values


def _topk_flat(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    idx = torch.sort(torch.topk(x.abs().reshape(-1), k).indices).values
    return idx, x.reshape(-1)[idx]


@dataclass(frozen=True)
class Strategy:
    """Shared plumbing of every compressor: options, message, plan, memory algebra."""

    name: ClassVar[str] = ""
    space: ClassVar[str] = "factors"
    frozen: ClassVar[tuple[str, ...]] = ()  # factors the method does not train ("A": FFA)
    options: CompressOptions = field(default_factory=CompressOptions)

    # ---------------------------------------------------------------- message and memory
    def message(self, deltas: Factors, params: Factors) -> Message:
        """The change (dB, dA) ("update") or the local factors (B + dB, A + dA) ("factor")."""
        if self.options.protocol == "update":
            return [(dB, dA) for dB, dA in deltas]
        return [(B + dB, A + dA) for (dB, dA), (B, A) in zip(deltas, params, strict=True)]

    def zeros(self, params: Factors) -> Message:
        """An empty error-feedback memory in message space."""
        return [(torch.zeros_like(B), torch.zeros_like(A)) for B, A in params]

    def add(self, msg: Message, memory: Message) -> Message:
        """Compensated message M = message + memory."""
        return [tuple(x + e for x, e in zip(xs, es, strict=True))
                for xs, es in zip(msg, memory, strict=True)]

    def compact(self, memory: Message, params: Factors) -> Message:
        """A memory in its stored form (dense memories are already)."""
        return memory

    def residual(self, comp: Message, upload: Upload, params: Factors) -> Message:
        """What the server did not receive: M - reconstruct(upload) (the new memory)."""
        got = reconstruct(upload, params, self.options.protocol, self.options.fill,
                          comp[0][0].dtype)
        return [tuple(c - s for c, s in zip(cs, ss, strict=True))
                for cs, ss in zip(comp, got, strict=True)]

    # ---------------------------------------------------------------- compression
    def init(self, params: Factors) -> tuple:
        return ()

    def update(self, deltas: Factors, state: Any, params: Factors, rho: float,
               rng: np.random.Generator) -> tuple[Upload, Any]:
        return self.compress(self.message(deltas, params), params, rho, rng), state

    def compress(self, msg: Message, params: Factors, rho: float,
                 rng: np.random.Generator) -> Upload:
        """The upload for message ``msg`` at ratio rho (values cast to the wire dtype)."""
        n_keep(rho, params[0][0].shape[1])  # validates rho
        mods = tuple(self._module(m, p, rho, rng) for m, p in zip(msg, params, strict=True))
        return Upload(self.name, self.space, mods)

    def plan(self, rho: float, shape_B, shape_A) -> ModulePlan:
        """Entries to keep in one module: :func:`tsfa.maths.payload.module_plan`."""
        o = self.options
        return module_plan(self.name, rho, shape_B[1], shape_B[0], shape_A[1], o.value_bits,
                           o.equal_bits)

    def local(self, m: tuple[Tensor, ...], p: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The compensated local factors behind message m."""
        if self.options.protocol == "update":
            return p[0] + m[0], p[1] + m[1]
        return m[0], m[1]

    def wire(self, x: Tensor) -> Tensor:
        """x as sent: a copy in the wire dtype."""
        return x.detach().to(self.options.dtype, copy=True)

    def _module(self, m, p, rho, rng) -> ModuleUpload:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class SOFT(Strategy):
    """Top-n rank components by s_i = ||b_i|| ||a_i|| of the compensated local factors (§5)."""

    name: ClassVar[str] = "soft"

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        MB, MA = m
        idx = soft_select(*self.local(m, p), self.plan(rho, MB.shape, MA.shape).n)
        return ModuleUpload(tuple(MB.shape), tuple(MA.shape), self.wire(MB[:, idx]),
                            self.wire(MA[idx, :]), rank_index=idx)


@dataclass(frozen=True)
class FFA(Strategy):
    """FFA-LoRA (§6): A frozen at its initial value (Cov = 0), only B trained and sent: the top-n
    columns of B's message by s_i = ||b_i|| ||a_i||, with their rank indices."""

    name: ClassVar[str] = "ffa"
    frozen: ClassVar[tuple[str, ...]] = ("A",)

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        MB, MA = m
        idx = soft_select(*self.local(m, p), self.plan(rho, MB.shape, MA.shape).n)
        return ModuleUpload(tuple(MB.shape), tuple(MA.shape), self.wire(MB[:, idx]),
                            MA.new_empty(0, dtype=self.options.dtype), rank_index=idx)


@dataclass(frozen=True)
class TLoRA(Strategy):
    """Element-wise magnitude top-k of M^B and M^A separately (§6); k from the payload plan
    (n d_out and n d_in values, or SOFT's bits in equal-bits mode)."""

    name: ClassVar[str] = "tlora"

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        MB, MA = m
        plan = self.plan(rho, MB.shape, MA.shape)
        ib, vb = _topk_flat(MB, plan.values_B)
        ia, va = _topk_flat(MA, plan.values_A)
        return ModuleUpload(tuple(MB.shape), tuple(MA.shape), self.wire(vb), self.wire(va),
                            B_index=ib, A_index=ia)


@dataclass(frozen=True)
class RLoRA(Strategy):
    """Random-k elements of each factor (k as TLoRA); indices from a shared seed (§6)."""

    name: ClassVar[str] = "rlora"

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        MB, MA = m
        plan = self.plan(rho, MB.shape, MA.shape)
        seed = int(rng.integers(2**63 - 1))
        stub = ModuleUpload(tuple(MB.shape), tuple(MA.shape), MB.new_empty(plan.values_B),
                            MA.new_empty(plan.values_A), seed=seed)
        ib, ia = element_indices(stub)
        return ModuleUpload(stub.shape_B, stub.shape_A, self.wire(MB.reshape(-1)[ib]),
                            self.wire(MA.reshape(-1)[ia]), seed=seed)


@dataclass(frozen=True)
class ILoRA(Strategy):
    """Identity: the full message is sent whatever rho (the ideal reference, §6)."""

    name: ClassVar[str] = "ilora"

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        MB, MA = m
        return ModuleUpload(tuple(MB.shape), tuple(MA.shape), self.wire(MB), self.wire(MA))


__all__ = ["CompressOptions", "Strategy", "n_keep", "soft_importance", "soft_select", "SOFT",
           "FFA", "TLoRA", "RLoRA", "ILoRA"]
