"""Label-Dirichlet non-IID partition of a data set over K clients (docs/model.md §1).

For each class c, q_c ~ Dir(alpha 1_K) and the samples of class c are split among the clients in
proportions q_c; alpha = inf gives an IID split. No client is left empty. Randomness only through
the explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """Indices (sorted int64 arrays) of each client's samples; every index exactly once.

    labels: (N,) integer classes; num_clients: K in [1, N]; alpha > 0 (math.inf: IID).
    Empty clients are repaired by moving one sample from the currently largest client.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 1 <= num_clients <= n:
        raise ValueError(f"num_clients = {num_clients} is invalid; allowed: 1 <= K <= N = {n}")
    if not alpha > 0:
        raise ValueError(f"alpha = {alpha!r} is invalid; allowed: alpha > 0 (inf for IID)")
    if math.isinf(alpha):
        parts = np.array_split(rng.permutation(n), num_clients)
    else:
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            q = rng.dirichlet(np.full(num_clients, alpha))
            cuts = np.round(np.cumsum(q)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                buckets[k].append(chunk)
        parts = [np.concatenate(b) for b in buckets]
    parts = [np.asarray(p, dtype=np.int64) for p in parts]
    for k in range(num_clients):
        if len(parts[k]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            parts[k], parts[donor] = parts[donor][-1:], parts[donor][:-1]
    return [np.sort(p) for p in parts]


def class_histograms(labels: np.ndarray, parts: list[np.ndarray],
                     num_classes: int | None = None) -> pd.DataFrame:
    """Sample counts per client (rows ``client``) and class (columns), plus a ``total`` column."""
    labels = np.asarray(labels)
    num_classes = int(num_classes if num_classes is not None else labels.max() + 1)
    counts = np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
    df = pd.DataFrame(counts, columns=list(range(num_classes)))
    df.index.name = "client"
    df["total"] = counts.sum(axis=1)
    return df


def client_weights(parts: list[np.ndarray]) -> np.ndarray:
    """p_k = D_k / sum_j D_j, shape (K,) (docs/model.md §1)."""
    sizes = np.array([len(p) for p in parts], dtype=float)
    return sizes / sizes.sum()


__all__ = ["dirichlet_partition", "class_histograms", "client_weights"]
