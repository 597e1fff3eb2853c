"""Covariance of separate aggregation: a row-space correction and FedEx-LoRA's exact residual
(docs/model.md §2, "Removing the covariance"; tsfa's own derivation, beyond the paper).

With client factors (B_k, A_k) as the server reconstructs them, weights w_k = p_k / sum p,
B_bar = sum w_k B_k, A_bar = sum w_k A_k, separate aggregation misses the ideal average by

    Cov = sum_k w_k B_k A_k - B_bar A_bar          (d_out x d_in).

The server already holds every B_k and A_k, so it can remove, at no extra uplink, the part of
Cov that a change of B alone can express: the least-squares problem
min_dB ||Cov - dB A_bar||_F^2 + lambda ||dB||_F^2 has the solution

    dB = Cov A_bar^T (A_bar A_bar^T + lambda I)^-1,
    Cov A_bar^T = sum_k w_k B_k (A_k A_bar^T) - B_bar (A_bar A_bar^T),

O(K d r^2) with r x r Gram matrices only, never a d x d matrix. With lambda = 0 the remaining
Cov - dB A_bar is orthogonal to A_bar's row space (what is left lives outside the span of the
global A's rows, where no B can reach). FedEx-LoRA instead sends the whole residual Cov on the
downlink (folded into the frozen weights): exact, at d_out d_in values per module.
Norms are computed from factors: ||L R||_F = ||R_L R_R^T||_F with L = Q_L R_L, R^T = Q_R R_R.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tsfa.fl.compress import Factors, Upload, reconstruct

Tensor = torch.Tensor


def local_factors(params: Factors, uploads: Sequence[Upload], protocol: str = "update",
                  fill: str = "global") -> list[tuple[Tensor, Tensor]]:
    """Per module, the clients' factors as the server sees them, stacked: B_k (K, d_out, r) and
    A_k (K, r, d_in) (global + sent change under "update", the reconstruction under "factor")."""
    recon = [reconstruct(u, params, protocol, fill) for u in uploads]
    out = []
    for m, (B, A) in enumerate(params):
        bk = torch.stack([x[m][0] for x in recon])
        ak = torch.stack([x[m][1] for x in recon])
        out.append((B + bk, A + ak) if protocol == "update" else (bk, ak))
    return out


def _weights(p: Sequence[float], like: Tensor) -> Tensor:
    w = torch.as_tensor([float(x) for x in p], dtype=like.dtype)
    return w / w.sum()


def _means(Bk: Tensor, Ak: Tensor, p) -> tuple[Tensor, Tensor, Tensor]:
    w = _weights(p, Bk)
    return w, torch.einsum("k,kor->or", w, Bk), torch.einsum("k,kri->ri", w, Ak)


def cov_times_abar_t(Bk: Tensor, Ak: Tensor, p: Sequence[float]) -> Tensor:
    """Cov A_bar^T = sum_k w_k B_k (A_k A_bar^T) - B_bar (A_bar A_bar^T), (d_out, r)."""
    w, b_bar, a_bar = _means(Bk, Ak, p)
    cross = torch.einsum("kri,si->krs", Ak, a_bar)  # A_k A_bar^T, (K, r, r)
    return torch.einsum("k,kor,krs->os", w, Bk, cross) - b_bar @ (a_bar @ a_bar.T)


def row_space_correction(Bk: Tensor, Ak: Tensor, p: Sequence[float],
                         ridge: float = 0.0) -> tuple[Tensor, Tensor]:
    """dB = Cov A_bar^T (A_bar A_bar^T + lambda I)^-1 (d_out, r), and A_bar (r, d_in).

    ``ridge``: lambda relative to trace(A_bar A_bar^T) / r (0: the least-squares projection,
    minimum-norm when A_bar is rank deficient). The corrected global factors are
    (B_bar + dB, A_bar).
    """
    _, _, a_bar = _means(Bk, Ak, p)
    gram = a_bar @ a_bar.T
    lam = float(ridge) * float(torch.trace(gram)) / gram.shape[0]
    lhs = gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype)
    rhs = cov_times_abar_t(Bk, Ak, p)
    # CPU: gelsd, bit-reproducible (the default gelsy is not, run to run, with MKL)
    driver = "gelsd" if lhs.device.type == "cpu" else None
    return torch.linalg.lstsq(lhs, rhs.T, driver=driver).solution.T, a_bar


def _fro(left: Tensor, right: Tensor) -> float:
    """||left @ right||_F = ||R_L R_R^T||_F from thin QRs of left and right^T (m x m cores),
    never forming the product and without the cancellation of a Gram-matrix formula."""
    core = torch.linalg.qr(left, mode="r")[1] @ torch.linalg.qr(right.T, mode="r")[1].T
    return float(torch.linalg.matrix_norm(core))


def cov_factors(Bk: Tensor, Ak: Tensor, p: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Cov = L R with L = [w_1 B_1, ..., w_K B_K, -B_bar], R = [A_1; ...; A_K; A_bar]."""
    w, b_bar, a_bar = _means(Bk, Ak, p)
    left = torch.cat([*(wk * b for wk, b in zip(w, Bk, strict=True)), -b_bar], 1)
    return left, torch.cat([*Ak, a_bar], 0)


def covariance_norms(Bk: Tensor, Ak: Tensor, p: Sequence[float],
                     ridge: float = 0.0) -> tuple[float, float, float]:
    """(||Cov||_F, ||dB A_bar||_F removed by the row-space correction, ||Cov - dB A_bar||_F
    remaining) for one module, O(d (K r)^2)."""
    left, right = cov_factors(Bk, Ak, p)
    dB, a_bar = row_space_correction(Bk, Ak, p, ridge)
    remaining = _fro(torch.cat([left, -dB], 1), torch.cat([right, a_bar], 0))
    return _fro(left, right), _fro(dB, a_bar), remaining


def fedex_residual(params: Factors, uploads: Sequence[Upload], p: Sequence[float], *,
                   protocol: str = "update", fill: str = "global",
                   value_bits: int = 32) -> tuple[list[Tensor], int]:
    """FedEx-LoRA's oracle: per module the residual Cov = sum_k w_k B_k A_k - B_bar A_bar
    (d_out, d_in), which added to B_bar A_bar gives the ideal average exactly, and its downlink
    cost value_bits * sum_m d_out d_in [bits] (one broadcast of the dense residuals)."""
    residuals = []
    for Bk, Ak in local_factors(params, uploads, protocol, fill):
        left, right = cov_factors(Bk, Ak, p)
        residuals.append(left @ right)
    return residuals, int(value_bits) * sum(r.numel() for r in residuals)


__all__ = ["local_factors", "cov_times_abar_t", "row_space_correction", "cov_factors",
           "covariance_norms", "fedex_residual"]
