"""Uplink compressors for LoRA factor updates: SOFT and the baselines (docs/model.md §5, §6).

One interface, optax style. Each strategy is a frozen dataclass with

    state = c.init(params)
    upload, state = c.update(deltas, state, params, rho, rng)

``params`` are the global factors [(B^t, A^t)] of the round, ``deltas`` the client's
[(dB, dA)] = local - global, ``rho`` in (0, 1] the sparsification ratio (n = max(1, ceil(rho r))
rank components per module, docs/model.md §1) and ``rng`` a ``numpy.random.Generator`` (only RLoRA
draws from it). Plain strategies keep no state (the unsent part is lost);
``with_error_feedback(c)`` keeps the memory e of docs/model.md §5: M = message + e is compressed and
e <- M - decode(upload). Each strategy works in a *message space*: the factor pair (dB, dA)
("factors") or, for SLoRA, the product change (B^t + dB)(A^t + dA) - B^t A^t ("product").

``Upload`` holds exactly what goes on the air; ``payload_bits`` counts it (pure function).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from tsfa.maths.wireless import index_bits_per_component, kept_components

Tensor = torch.Tensor
Factors = list[tuple[Tensor, Tensor]]  # per module: (B (d_out, r), A (r, d_in))
Message = list[tuple[Tensor, ...]]  # per module: (dB, dA) or (dW,)
VALUE_BITS = 32  # q_b, bits per transmitted real value (docs/model.md §1)


def n_keep(rho: float, r: int) -> int:
    """Rank components sent per module: n = max(1, ceil(rho r)), rho in (0, 1] (docs/model.md §1)."""
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho = {rho!r} is invalid; allowed: 0 < rho <= 1")
    return int(kept_components(r, rho))


def index_bits(n: int) -> int:
    """Bits of one index into n items: ceil(log2 n) (0 for n = 1); see tsfa.maths.wireless."""
    return index_bits_per_component(n)


@dataclass(frozen=True, eq=False)
class ModuleUpload:
    """What one client sends for one LoRA module (B: shape_B = (d_out, r), A: (r, d_in)).

    SOFT: ``rank_index`` (n,), ``B_values`` (d_out, n) columns, ``A_values`` (n, d_in) rows.
    TLoRA: ``B_index``/``A_index`` flat element indices (k,) with values (k,).
    RLoRA: values (k,) only; the indices follow from ``seed``, shared with the server (not sent).
    SLoRA: ``B_values`` (d_out, n) = U_n sqrt(S_n), ``A_values`` (n, d_in) = sqrt(S_n) V_n^T.
    ILoRA: the full (dB, dA).
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
    """One client's uplink message: ``method`` name, message ``space``, one entry per module."""

    method: str
    space: str  # "factors" or "product"
    modules: tuple[ModuleUpload, ...]


def payload_bits(upload: Upload) -> int:
    """Bits on the air for the LoRA part of an upload (docs/model.md §1; head excluded: ``head_bits``).

    32 bits per value; ceil(log2 r) per rank index (SOFT); ceil(log2 numel) per element index
    (TLoRA); none for RLoRA (shared seed), SLoRA (triplets sent as factors) and ILoRA.
    """
    bits = 0
    for mu in upload.modules:
        bits += VALUE_BITS * (mu.B_values.numel() + mu.A_values.numel())
        if mu.rank_index is not None:
            bits += mu.rank_index.numel() * index_bits(mu.shape_B[1])
        if mu.B_index is not None:
            bits += mu.B_index.numel() * index_bits(math.prod(mu.shape_B))
        if mu.A_index is not None:
            bits += mu.A_index.numel() * index_bits(math.prod(mu.shape_A))
    return bits


def head_bits(head_state: dict[str, Tensor]) -> int:
    """S_head: 32 bits per head parameter, sent in full (docs/model.md §1)."""
    return VALUE_BITS * sum(v.numel() for v in head_state.values())


def full_bits(params: Factors) -> int:
    """S_full(r) = q_b r sum_m (d_in^m + d_out^m) (docs/model.md §1)."""
    return VALUE_BITS * sum(b.numel() + a.numel() for b, a in params)


def soft_importance(B: Tensor, A: Tensor) -> Tensor:
    """s_i = ||b_i|| ||a_i|| for i = 1..r, shape (r,) (docs/model.md §5). O(r (d_in + d_out))."""
    return torch.linalg.vector_norm(B, dim=0) * torch.linalg.vector_norm(A, dim=1)


def soft_select(B: Tensor, A: Tensor, n: int) -> Tensor:
    """Sorted indices (n,) of the n most important rank components; no SVD, no B @ A."""
    return torch.sort(torch.topk(soft_importance(B, A), n).indices).values


def random_indices(seed: int, numel: int, k: int) -> np.ndarray:
    """RLoRA's k distinct flat indices out of numel, reproducible from the shared seed."""
    return np.sort(np.random.default_rng(seed).choice(numel, size=k, replace=False))


def decode(upload: Upload) -> Message:
    """The dense message the server reconstructs (zeros where nothing was sent)."""
    out: Message = []
    for mu in upload.modules:
        if upload.space == "product":
            out.append((mu.B_values @ mu.A_values,))
            continue
        dB = mu.B_values.new_zeros(mu.shape_B)
        dA = mu.A_values.new_zeros(mu.shape_A)
        if mu.rank_index is not None:
            dB[:, mu.rank_index] = mu.B_values
            dA[mu.rank_index, :] = mu.A_values
        elif mu.B_index is not None or mu.seed is not None:
            ib, ia = element_indices(mu)
            dB.view(-1)[ib] = mu.B_values
            dA.view(-1)[ia] = mu.A_values
        else:
            dB, dA = mu.B_values.clone(), mu.A_values.clone()
        out.append((dB, dA))
    return out


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


class Compressor(Protocol):
    name: str
    space: str

    def init(self, params: Factors) -> Any: ...

    def update(self, deltas: Factors, state: Any, params: Factors, rho: float,
               rng: np.random.Generator) -> tuple[Upload, Any]: ...


class _Stateless:
    """Shared plumbing: message in factor space, no memory."""

    space = "factors"

    def message(self, deltas: Factors, params: Factors) -> Message:
        return [(dB, dA) for dB, dA in deltas]

    def init(self, params: Factors) -> tuple:
        return ()

    def update(self, deltas: Factors, state: Any, params: Factors, rho: float,
               rng: np.random.Generator) -> tuple[Upload, Any]:
        return self.compress(self.message(deltas, params), params, rho, rng), state

    def compress(self, msg: Message, params: Factors, rho: float,
                 rng: np.random.Generator) -> Upload:
        mods = tuple(self._module(m, p, rho, rng) for m, p in zip(msg, params, strict=True))
        return Upload(self.name, self.space, mods)


@dataclass(frozen=True)
class SOFT(_Stateless):
    """Top-n rank components by s_i = ||b_i|| ||a_i|| on B^t + M^B, A^t + M^A (docs/model.md §5)."""

    name: str = "soft"

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        (MB, MA), (B, A) = m, p
        idx = soft_select(B + MB, A + MA, n_keep(rho, B.shape[1]))
        return ModuleUpload(tuple(MB.shape), tuple(MA.shape), MB[:, idx].clone(),
                            MA[idx, :].clone(), rank_index=idx)


def _topk_flat(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    idx = torch.sort(torch.topk(x.abs().reshape(-1), k).indices).values
    return idx, x.reshape(-1)[idx].clone()


@dataclass(frozen=True)
class TLoRA(_Stateless):
    """Element-wise magnitude top-k of M^B and M^A separately, k = n d_out and n d_in (§6)."""

    name: str = "tlora"

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        MB, MA = m
        n = n_keep(rho, MB.shape[1])
        ib, vb = _topk_flat(MB, n * MB.shape[0])
        ia, va = _topk_flat(MA, n * MA.shape[1])
        return ModuleUpload(tuple(MB.shape), tuple(MA.shape), vb, va, B_index=ib, A_index=ia)


@dataclass(frozen=True)
class RLoRA(_Stateless):
    """Random-k elements of each factor (k as TLoRA); indices from a shared seed (§6)."""

    name: str = "rlora"

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        MB, MA = m
        n = n_keep(rho, MB.shape[1])
        seed = int(rng.integers(2**63 - 1))
        stub = ModuleUpload(tuple(MB.shape), tuple(MA.shape), MB.new_empty(n * MB.shape[0]),
                            MA.new_empty(n * MA.shape[1]), seed=seed)
        ib, ia = element_indices(stub)
        return ModuleUpload(stub.shape_B, stub.shape_A, MB.reshape(-1)[ib].clone(),
                            MA.reshape(-1)[ia].clone(), seed=seed)


@dataclass(frozen=True)
class SLoRA(_Stateless):
    """Client forms dW = (B^t + dB)(A^t + dA) - B^t A^t, sends its top-n SVD triplets as factors
    U_n sqrt(S_n), sqrt(S_n) V_n^T (§6). Costs O(r d_in d_out + d^3) per module on the client."""

    name: str = "slora"
    space: str = "product"

    def message(self, deltas: Factors, params: Factors) -> Message:
        return [((B + dB) @ (A + dA) - B @ A,) for (dB, dA), (B, A) in
                zip(deltas, params, strict=True)]

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        (dW,), (B, A) = m, p
        n = n_keep(rho, B.shape[1])
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        root = S[:n].sqrt()
        return ModuleUpload(tuple(B.shape), tuple(A.shape), U[:, :n] * root,
                            root[:, None] * Vh[:n])


@dataclass(frozen=True)
class ILoRA(_Stateless):
    """Identity: the full (dB, dA) is sent whatever rho (the ideal reference, §6)."""

    name: str = "ilora"

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        MB, MA = m
        return ModuleUpload(tuple(MB.shape), tuple(MA.shape), MB.clone(), MA.clone())


@dataclass(frozen=True)
class ErrorFeedback:
    """Error feedback around ``inner`` (docs/model.md §5): M = message + e; send compress(M);
    e <- M - decode(upload). State: the memory e, a Message (zeros at init)."""

    inner: Any

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def space(self) -> str:
        return self.inner.space

    def init(self, params: Factors) -> Message:
        if self.inner.space == "product":
            return [(B.new_zeros(B.shape[0], A.shape[1]),) for B, A in params]
        return [(torch.zeros_like(B), torch.zeros_like(A)) for B, A in params]

    def update(self, deltas: Factors, state: Message, params: Factors, rho: float,
               rng: np.random.Generator) -> tuple[Upload, Message]:
        msg = self.inner.message(deltas, params)
        comp = [tuple(x + e for x, e in zip(xs, es, strict=True))
                for xs, es in zip(msg, state, strict=True)]
        upload = self.inner.compress(comp, params, rho, rng)
        memory = [tuple(c - s for c, s in zip(cs, ss, strict=True))
                  for cs, ss in zip(comp, decode(upload), strict=True)]
        return upload, memory


def with_error_feedback(compressor: Any) -> ErrorFeedback:
    """Wrap a strategy with error-feedback memory (docs/model.md §5, §6: used by all methods)."""
    return ErrorFeedback(compressor)


COMPRESSORS = {"soft": SOFT, "tlora": TLoRA, "rlora": RLoRA, "slora": SLoRA, "ilora": ILoRA}


def make_compressor(name: str, error_feedback: bool = True) -> Compressor:
    """Strategy by name ("soft", "tlora", "rlora", "slora", "ilora"), wrapped with EF by default."""
    if name not in COMPRESSORS:
        raise ValueError(f"compressor = {name!r} is invalid; allowed: {sorted(COMPRESSORS)}")
    c = COMPRESSORS[name]()
    return with_error_feedback(c) if error_feedback else c


__all__ = ["n_keep", "index_bits", "ModuleUpload", "Upload", "payload_bits", "head_bits",
           "full_bits", "soft_importance", "soft_select", "random_indices", "decode",
           "element_indices", "Compressor", "SOFT", "TLoRA", "RLoRA", "SLoRA", "ILoRA",
           "ErrorFeedback",
           "with_error_feedback", "make_compressor", "COMPRESSORS", "VALUE_BITS"]
