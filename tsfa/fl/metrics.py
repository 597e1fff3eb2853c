"""Per-round diagnostics of a federated LoRA run (docs/model.md §2, §5): covariance of the uploaded
factors (and how much of it the row-space correction removes), orthogonality defect, and SOFT's
importance order against the true singular values.

Pure functions of tensors; float64 throughout so the covariance identity can be checked to 1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import kendalltau

from tsfa.fl.aggregate import uploaded_deltas
from tsfa.fl.compress import Factors, Upload, soft_importance
from tsfa.fl.correction import covariance_norms, local_factors
from tsfa.fl.lora import orthogonality_defect
from tsfa.maths.covariance import factor_covariance, product_average, separate_average


def uploaded_covariance(params: Factors, uploads: Sequence[Upload], p: Sequence[float],
                        protocol: str = "update", fill: str = "global"):
    """Per-module Cov of the factors the clients actually uploaded (docs/model.md §2).

    Client k's factors are (B + dB_k, A + dA_k) with dB_k, dA_k the delivered changes
    (:func:`tsfa.fl.aggregate.uploaded_deltas` under ``protocol`` and ``fill``). Returns
    ``(cov, residual)``: a list of (d_out, d_in) float64 arrays, and the relative residual of the
    identity sum p_k B_k A_k = B_bar A_bar + Cov (max over modules). ``None, nan`` for product
    uploads (SLoRA, SVD), where factors are not aggregated.
    """
    if not uploads or any(u.space != "factors" for u in uploads):
        return None, math.nan
    w = np.asarray(p, dtype=float)
    w = w / w.sum()
    dense = [uploaded_deltas(u, params, protocol, fill) for u in uploads]
    covs, residual = [], 0.0
    for m, (B, A) in enumerate(params):
        db = np.stack([d[m][0].double().numpy() for d in dense])
        da = np.stack([d[m][1].double().numpy() for d in dense])
        b0, a0 = B.double().numpy(), A.double().numpy()
        cov = factor_covariance(db, da, w)
        ideal = product_average(b0 + db, a0 + da, w)
        sep = separate_average(b0 + db, a0 + da, w)
        scale = max(np.linalg.norm(ideal), 1e-300)
        residual = max(residual, float(np.linalg.norm(ideal - sep - cov) / scale))
        covs.append(cov)
    return covs, residual


def covariance_norm(covs) -> float:
    """||Cov||_F over all modules: sqrt(sum_m ||Cov_m||_F^2); nan when undefined."""
    if covs is None:
        return math.nan
    return float(math.sqrt(sum(float(np.sum(c * c)) for c in covs)))


def covariance_split(params: Factors, uploads: Sequence[Upload], p: Sequence[float],
                     ridge: float = 0.0, protocol: str = "update",
                     fill: str = "global") -> dict[str, float]:
    """||Cov||_F over all modules and its split by the row-space correction (docs/model.md §2):
    ``cov_fro``, ``cov_removed_fro`` (||dB A_bar||_F) and ``cov_remaining_fro``
    (||Cov - dB A_bar||_F), each sqrt(sum_m ...^2); computed from factors, no d x d matrix.
    NaN for product uploads (SLoRA, SVD), which are not aggregated separately."""
    keys = ("cov_fro", "cov_removed_fro", "cov_remaining_fro")
    if not uploads or any(u.space != "factors" for u in uploads):
        return dict.fromkeys(keys, math.nan)
    sq = np.zeros(3)
    for Bk, Ak in local_factors(params, uploads, protocol, fill):
        sq += np.square(covariance_norms(Bk.double(), Ak.double(), p, ridge))
    return dict(zip(keys, np.sqrt(sq).tolist(), strict=True))


def total_orthogonality_defect(params: Factors) -> float:
    """sum_m R(B_m, A_m) of the global factors (docs/model.md §5)."""
    return float(sum(orthogonality_defect(B.double(), A.double()) for B, A in params))


def importance_agreement(B: torch.Tensor, A: torch.Tensor) -> float:
    """Kendall tau between SOFT importance s_i = ||b_i|| ||a_i|| and the true singular values.

    Each rank component i is matched to the singular triplet j of B A maximising
    |u_j^T b_i| |v_j^T a_i| / (||b_i|| ||a_i||); tau compares s_i with sigma_{j(i)}. It is 1 for
    exactly orthogonal factors (each component is a triplet), lower as orthogonality is lost;
    nan when undefined (r = 1, or zero factors as at initialisation).
    """
    B, A = B.double(), A.double()
    r = B.shape[1]
    s = soft_importance(B, A)
    if r < 2 or not torch.all(s > 0):
        return math.nan
    U, S, Vh = torch.linalg.svd(B @ A, full_matrices=False)
    U, S, Vh = U[:, :r], S[:r], Vh[:r]
    bn = B / torch.linalg.vector_norm(B, dim=0)
    an = A / torch.linalg.vector_norm(A, dim=1, keepdim=True)
    align = (U.T @ bn).abs() * (Vh @ an.T).abs()  # (j, i)
    match = align.argmax(dim=0)
    tau = kendalltau(s.numpy(), S[match].numpy()).statistic
    return float(tau) if np.isfinite(tau) else math.nan


def mean_importance_agreement(params: Factors) -> float:
    """Mean over modules of :func:`importance_agreement` (nan if undefined everywhere)."""
    vals = [importance_agreement(B, A) for B, A in params]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan
