"""Server-side aggregation, pure functions (docs/model.md §1, §5, §6).

Separate aggregation of the LoRA factors (SOFT, TLoRA, RLoRA, ILoRA), per rank index for SOFT:
    B_{:,i} <- B_{:,i} + sum_k p_k 1[i in I_k] M^B_{k,:,i},   A_{i,:} likewise,
and per element for TLoRA / RLoRA. With ``normalise=True`` each entry is divided by the selected
weight mass sum_k p_k 1[i in I_k] (entries nobody sent stay unchanged). Identity uploads give
FedAvg of the factors. SLoRA aggregates products and re-factorises to rank r
(``aggregate_products``).
The head is averaged by ``fedavg``. Weights p_k = D_k / sum_j D_j are used as given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tsfa.fl.compress import Factors, Upload, decode, element_indices

Tensor = torch.Tensor


def _check_weights(uploads: Sequence[Upload], p: Sequence[float]) -> None:
    if len(uploads) != len(p) or len(p) == 0:
        raise ValueError(f"{len(uploads)} uploads for {len(p)} weights p (need equal, >= 1)")
    if any(float(w) < 0 for w in p):
        raise ValueError(f"p = {list(p)} is invalid; allowed: non-negative weights")


def _masks(upload: Upload) -> list[tuple[Tensor, Tensor]]:
    """1 where a client sent an entry of dB / dA, else 0 (per rank index or per element)."""
    out = []
    for mu in upload.modules:
        mb = mu.B_values.new_zeros(mu.shape_B)
        ma = mu.A_values.new_zeros(mu.shape_A)
        if mu.rank_index is not None:
            mb[:, mu.rank_index] = 1.0
            ma[mu.rank_index, :] = 1.0
        elif mu.B_index is not None or mu.seed is not None:
            ib, ia = element_indices(mu)
            mb.view(-1)[ib] = 1.0
            ma.view(-1)[ia] = 1.0
        else:
            mb.fill_(1.0)
            ma.fill_(1.0)
        out.append((mb, ma))
    return out


def aggregate_factors(params: Factors, uploads: Sequence[Upload], p: Sequence[float],
                      normalise: bool = False) -> Factors:
    """New global factors [(B^{t+1}, A^{t+1})] by separate aggregation (docs/model.md §5).

    params: [(B (d_out, r), A (r, d_in))]; uploads: one per client, factor space;
    p: client weights (K,). Returns new tensors; inputs are not modified.
    """
    _check_weights(uploads, p)
    if any(u.space != "factors" for u in uploads):
        raise ValueError("aggregate_factors needs factor-space uploads; use aggregate_products")
    dense = [decode(u) for u in uploads]
    masks = [_masks(u) for u in uploads] if normalise else None
    out: Factors = []
    for m, (B, A) in enumerate(params):
        sB = sum(float(w) * d[m][0] for w, d in zip(p, dense, strict=True))
        sA = sum(float(w) * d[m][1] for w, d in zip(p, dense, strict=True))
        if normalise:
            mass_b = sum(float(w) * mk[m][0] for w, mk in zip(p, masks, strict=True))
            mass_a = sum(float(w) * mk[m][1] for w, mk in zip(p, masks, strict=True))
            sB = torch.where(mass_b > 0, sB / torch.where(mass_b > 0, mass_b, 1.0), 0.0)
            sA = torch.where(mass_a > 0, sA / torch.where(mass_a > 0, mass_a, 1.0), 0.0)
        out.append((B + sB, A + sA))
    return out


def refactorise(W: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Best rank-r factors of W (d_out, d_in): B = U_r sqrt(S_r), A = sqrt(S_r) V_r^T."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    root = S[:r].sqrt()
    return U[:, :r] * root, root[:, None] * Vh[:r]


def aggregate_products(params: Factors, uploads: Sequence[Upload],
                       p: Sequence[float]) -> Factors:
    """SLoRA server (docs/model.md §6): W = B^t A^t + sum_k p_k U_k V_k^T, re-factorised to rank r."""
    _check_weights(uploads, p)
    dense = [decode(u) for u in uploads]
    out: Factors = []
    for m, (B, A) in enumerate(params):
        W = B @ A + sum(float(w) * d[m][0] for w, d in zip(p, dense, strict=True))
        out.append(refactorise(W, B.shape[1]))
    return out


def aggregate(params: Factors, uploads: Sequence[Upload], p: Sequence[float],
              normalise: bool = False) -> Factors:
    """Dispatch on the uploads' space: products (SLoRA) or separate factor aggregation."""
    if uploads and all(u.space == "product" for u in uploads):
        return aggregate_products(params, uploads, p)
    return aggregate_factors(params, uploads, p, normalise)


def fedavg(states: Sequence[dict[str, Tensor]], p: Sequence[float]) -> dict[str, Tensor]:
    """Weighted average sum_k p_k w_k / sum_k p_k of state dicts (the head, docs/model.md §1)."""
    if len(states) != len(p) or not states:
        raise ValueError(f"{len(states)} states for {len(p)} weights p (need equal, >= 1)")
    total = float(sum(p))
    if total <= 0:
        raise ValueError(f"p = {list(p)} is invalid; allowed: non-negative with a positive sum")
    return {k: sum(float(w) * s[k] for w, s in zip(p, states, strict=True)) / total
            for k in states[0]}


def uploaded_deltas(upload: Upload) -> Factors:
    """The dense factor deltas a client actually sent (zeros elsewhere), e.g. for the
    covariance term of docs/model.md §2 (tsfa.maths.covariance takes numpy: ``.numpy()`` them)."""
    if upload.space != "factors":
        raise ValueError(f"{upload.method} uploads products, not factors")
    return [(b, a) for b, a in decode(upload)]


__all__ = ["aggregate_factors", "aggregate_products", "aggregate", "refactorise", "fedavg",
           "uploaded_deltas"]
