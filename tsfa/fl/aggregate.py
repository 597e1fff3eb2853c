"""Server-side aggregation, pure functions (docs/model.md §1, §2, §5, §6).

Factor uploads (SOFT, TLoRA, RLoRA, ILoRA, FFA) are aggregated separately, entry by entry. With
``x_k`` client k's message as the server reconstructs it (:func:`tsfa.fl.compress.reconstruct`):

* protocol "update":  B <- B + sum_k p_k x_k^B   (x_k: the sent change, zeros elsewhere);
* protocol "factor":  B <- sum_k p_k x_k^B       (x_k: the sent local factor, the global value
  (fill "global") or zero (fill "zero") elsewhere; FedIT averaging when everything is sent);

A likewise. With ``normalise=True`` an entry sent by some client is averaged over the weight
mass of the clients that sent it (entries nobody sent: unchanged under "update", the fill value
under "factor"). Weights p_k are used as given (they sum to one in a run). Product uploads
(SLoRA, SVD) give W = B A + sum_k p_k U_k V_k ("update") or sum_k p_k U_k V_k ("factor"),
re-factorised to rank r from factors (QR + small SVD, no d x d matrix). The head is averaged by
``fedavg``. ``correction="row_space"`` adds the covariance correction of
:mod:`tsfa.fl.correction` (no extra uplink).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tsfa.fl.compress import (
    Factors,
    Upload,
    decode,
    lowrank_top,
    reconstruct,
    sent_masks,
    split_triplets,
)
from tsfa.fl.correction import local_factors, row_space_correction

Tensor = torch.Tensor
CORRECTIONS = ("none", "row_space")


def _check_weights(uploads: Sequence[Upload], p: Sequence[float]) -> None:
    if len(uploads) != len(p) or len(p) == 0:
        raise ValueError(f"{len(uploads)} uploads for {len(p)} weights p (need equal, >= 1)")
    if any(float(w) < 0 for w in p):
        raise ValueError(f"p = {list(p)} is invalid; allowed: non-negative weights")


def _weighted(p: Sequence[float], xs: Sequence[Tensor]) -> Tensor:
    return sum(float(w) * x for w, x in zip(p, xs, strict=True))


def _mass_average(p, xs, masks) -> Tensor:
    """Per entry: the average over the clients that sent it; the plain weighted sum (of the
    reconstructions' fill values) where nobody did."""
    plain = _weighted(p, xs)
    masks = [mk.to(plain.dtype) for mk in masks]
    mass = _weighted(p, masks)
    total = _weighted(p, [x * mk for x, mk in zip(xs, masks, strict=True)])
    return torch.where(mass > 0, total / torch.where(mass > 0, mass, 1.0), plain)


def aggregate_factors(params: Factors, uploads: Sequence[Upload], p: Sequence[float],
                      normalise: bool = False, *, protocol: str = "update",
                      fill: str = "global") -> Factors:
    """New global factors [(B^{t+1}, A^{t+1})] by separate aggregation (module docstring).

    params: [(B (d_out, r), A (r, d_in))]; uploads: one per client, factor space;
    p: client weights (K,). Returns new tensors; inputs are not modified.
    """
    _check_weights(uploads, p)
    if any(u.space != "factors" for u in uploads):
        raise ValueError("aggregate_factors needs factor-space uploads; use aggregate_products")
    recon = [reconstruct(u, params, protocol, fill) for u in uploads]
    masks = [sent_masks(u) for u in uploads] if normalise else None
    out: Factors = []
    for m, (B, A) in enumerate(params):
        new = []
        for j, base in enumerate((B, A)):
            xs = [x[m][j] for x in recon]
            avg = _mass_average(p, xs, [mk[m][j] for mk in masks]) if normalise else \
                _weighted(p, xs)
            new.append(base + avg if protocol == "update" else avg)
        out.append((new[0], new[1]))
    return out


def refactorise(W: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Best rank-r factors of a dense W (d_out, d_in): B = U_r sqrt(S_r), A = sqrt(S_r) V_r^T."""
    return split_triplets(*torch.linalg.svd(W, full_matrices=False), r)


def aggregate_products(params: Factors, uploads: Sequence[Upload], p: Sequence[float], *,
                       protocol: str = "update") -> Factors:
    """SLoRA / SVD server (docs/model.md §6): W = [B^t A^t +] sum_k p_k U_k V_k, re-factorised to
    rank r as [B, p_1 U_1, ...] [A; V_1; ...] by QR and a small SVD (O(d (r + K n)^2))."""
    _check_weights(uploads, p)
    out: Factors = []
    for m, (B, A) in enumerate(params):
        left = [float(w) * u.modules[m].B_values.to(B.dtype) for w, u in zip(p, uploads,
                                                                            strict=True)]
        right = [u.modules[m].A_values.to(A.dtype) for u in uploads]
        if protocol == "update":
            left, right = [B, *left], [A, *right]
        out.append(lowrank_top(torch.cat(left, 1), torch.cat(right, 0), B.shape[1]))
    return out


def aggregate(params: Factors, uploads: Sequence[Upload], p: Sequence[float],
              normalise: bool = False, *, protocol: str = "update", fill: str = "global",
              correction: str = "none", ridge: float = 0.0) -> Factors:
    """The server's new global factors for any uploads (the one entry point of the round loop).

    ``protocol``: "update" or "factor" (``experiment.upload``); ``fill``: "global" or "zero"
    (``experiment.factor_fill``); ``normalise``: ``soft.aggregation == "normalised"``;
    ``correction``: "none" or "row_space" (``experiment.cov_correction``, factor uploads,
    without ``normalise``) with relative ridge ``ridge`` (``experiment.cov_ridge``).
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction = {correction!r} is invalid; allowed: {CORRECTIONS}")
    if uploads and all(u.space == "product" for u in uploads):
        return aggregate_products(params, uploads, p, protocol=protocol)
    new = aggregate_factors(params, uploads, p, normalise, protocol=protocol, fill=fill)
    if correction == "none":
        return new
    if normalise:
        raise ValueError("correction = 'row_space' corrects the plain separate average; it "
                         "cannot be combined with normalised aggregation")
    local = local_factors(params, uploads, protocol, fill)
    return [(B + row_space_correction(Bk, Ak, p, ridge)[0], A)
            for (B, A), (Bk, Ak) in zip(new, local, strict=True)]


def fedavg(states: Sequence[dict[str, Tensor]], p: Sequence[float]) -> dict[str, Tensor]:
    """Weighted average sum_k p_k w_k / sum_k p_k of state dicts (the head, docs/model.md §1)."""
    if len(states) != len(p) or not states:
        raise ValueError(f"{len(states)} states for {len(p)} weights p (need equal, >= 1)")
    total = float(sum(p))
    if total <= 0:
        raise ValueError(f"p = {list(p)} is invalid; allowed: non-negative with a positive sum")
    return {k: sum(float(w) * s[k] for w, s in zip(p, states, strict=True)) / total
            for k in states[0]}


def uploaded_deltas(upload: Upload, params: Factors | None = None, protocol: str = "update",
                    fill: str = "global") -> Factors:
    """The dense factor changes a client delivered, x_k - (B, A) (zeros where nothing was sent
    under "update"), e.g. for the covariance term of docs/model.md §2 (``.numpy()`` them for
    tsfa.maths.covariance). ``params`` is needed for the "factor" protocol."""
    if upload.space != "factors":
        raise ValueError(f"{upload.method} uploads products, not factors")
    if protocol == "update":
        return [(b, a) for b, a in decode(upload)]
    return [(b - B, a - A) for (b, a), (B, A) in
            zip(reconstruct(upload, params, protocol, fill), params, strict=True)]


__all__ = ["CORRECTIONS", "aggregate_factors", "aggregate_products", "aggregate", "refactorise",
           "fedavg", "uploaded_deltas"]
