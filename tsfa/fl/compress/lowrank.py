"""Product-space compressors: the exact factored SVD ("svd") and SLoRA (docs/model.md §6).

Both send the top-n singular triplets of the (compensated) product change as factors
U_n sqrt(S_n), sqrt(S_n) V_n^T; the server aggregates products and re-factorises to rank r.

* ``svd`` computes them from factors only. The change
  dW = (B + dB)(A + dA) - B A = [B, dB] [dA; A + dA] is a product L R of rank <= 2r; with
  L = Q_L R_L and R^T = Q_R R_R (thin QR), L R = Q_L (R_L R_R^T) Q_R^T, so the SVD of the small
  m x m core gives the triplets: O(d m^2) per module, no d x d matrix (:func:`factored_svd`).
  Its error-feedback memory is kept factored too, truncated to its top ``memory_rank`` triplets
  (default 2r; the dropped tail is lost, so EF is exact only while the residual's rank fits).
* ``slora`` is the expensive reference: the client forms dW (O(r d_in d_out)) and takes its dense
  SVD (O(d^3)); memory dense.

Under the "factor" protocol the message is the local product (B + dB)(A + dA) instead of the
change; the fill option does not apply (the server averages the sent products).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from tsfa.fl.compress.strategies import Strategy
from tsfa.fl.compress.upload import Factors, Message, ModuleUpload, Upload

Tensor = torch.Tensor


def factored_svd(L: Tensor, R: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD U S V^T of the product L R without forming it: L (d_out, m), R (m, d_in).

    Returns U (d_out, k), S (k,) descending, Vh (k, d_in), k = min(m, d_out, d_in).
    Cost O((d_out + d_in) m^2 + m^3).
    """
    ql, rl = torch.linalg.qr(L)
    qr, rr = torch.linalg.qr(R.T)
    u, s, vh = torch.linalg.svd(rl @ rr.T, full_matrices=False)
    return ql @ u, s, vh @ qr.T


def split_triplets(U: Tensor, S: Tensor, Vh: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Top-n triplets as balanced factors: U_n sqrt(S_n) (d_out, n), sqrt(S_n) V_n^T (n, d_in)."""
    root = S[:n].sqrt()
    return U[:, :n] * root, root[:, None] * Vh[:n]


def lowrank_top(L: Tensor, R: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Best rank-n factors of L R (:func:`factored_svd` then :func:`split_triplets`)."""
    return split_triplets(*factored_svd(L, R), n)


@dataclass(frozen=True)
class SVD(Strategy):
    """Exact top-n SVD of the compensated product change from factors only, O(d r^2) (§6)."""

    name: ClassVar[str] = "svd"
    space: ClassVar[str] = "product"
    memory_rank: int = 0  # EF memory triplets kept; 0 = 2r

    def message(self, deltas: Factors, params: Factors) -> Message:
        """(L, R) per module: ([B, dB], [dA; A + dA]) for "update", the local factors for "factor"."""
        if self.options.protocol == "factor":
            return [(B + dB, A + dA) for (dB, dA), (B, A) in zip(deltas, params, strict=True)]
        return [(torch.cat([B, dB], 1), torch.cat([dA, A + dA], 0))
                for (dB, dA), (B, A) in zip(deltas, params, strict=True)]

    def zeros(self, params: Factors) -> Message:
        return [(B.new_zeros(B.shape[0], 0), A.new_zeros(0, A.shape[1])) for B, A in params]

    def add(self, msg: Message, memory: Message) -> Message:
        """L R + L_e R_e = [L, L_e] [R; R_e]."""
        return [(torch.cat([L, Le], 1), torch.cat([R, Re], 0))
                for (L, R), (Le, Re) in zip(msg, memory, strict=True)]

    def compact(self, memory: Message, params: Factors) -> Message:
        """The memory's top ``memory_rank`` triplets (default 2r), as balanced factors."""
        return [lowrank_top(L, R, self.memory_rank or 2 * B.shape[1])
                for (L, R), (B, _) in zip(memory, params, strict=True)]

    def residual(self, comp: Message, upload: Upload, params: Factors) -> Message:
        """L R - U_n V_n, factored and truncated to its top ``memory_rank`` triplets."""
        rest = [(torch.cat([L, -mu.B_values.to(L.dtype)], 1),
                 torch.cat([R, mu.A_values.to(R.dtype)], 0))
                for (L, R), mu in zip(comp, upload.modules, strict=True)]
        return self.compact(rest, params)

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        (L, R), (B, A) = m, p
        n = self.plan(rho, B.shape, A.shape).n
        bv, av = lowrank_top(L, R, n)
        return ModuleUpload(tuple(B.shape), tuple(A.shape), self.wire(bv), self.wire(av))


@dataclass(frozen=True)
class SLoRA(Strategy):
    """Client forms dW = (B^t + dB)(A^t + dA) - B^t A^t, sends its top-n SVD triplets as factors
    (§6). Costs O(r d_in d_out + d^3) per module on the client."""

    name: ClassVar[str] = "slora"
    space: ClassVar[str] = "product"

    def message(self, deltas: Factors, params: Factors) -> Message:
        base = self.options.protocol == "update"
        return [((B + dB) @ (A + dA) - (B @ A if base else 0),) for (dB, dA), (B, A) in
                zip(deltas, params, strict=True)]

    def zeros(self, params: Factors) -> Message:
        return [(B.new_zeros(B.shape[0], A.shape[1]),) for B, A in params]

    def _module(self, m, p, rho, rng) -> ModuleUpload:
        (dW,), (B, A) = m, p
        n = self.plan(rho, B.shape, A.shape).n
        bv, av = split_triplets(*torch.linalg.svd(dW, full_matrices=False), n)
        return ModuleUpload(tuple(B.shape), tuple(A.shape), self.wire(bv), self.wire(av))


__all__ = ["factored_svd", "split_triplets", "lowrank_top", "SVD", "SLoRA"]
