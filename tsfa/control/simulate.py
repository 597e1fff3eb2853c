"""Simulating a policy over block Rayleigh fading (docs/model.md §1, §4), one round at a time.

:func:`run_rounds` yields one :class:`RoundRecord` per round and holds nothing else, so a caller
can stream any number of rounds to a file; :class:`RunningSummary` keeps the per-client
time averages in O(K) memory; :func:`simulate` collects everything into tables (small runs).
The fading of round t is :func:`tsfa.maths.wireless.fading_gains` ``(seed, t, K)``: stateless,
so a shorter run is a prefix of a longer one and the federated trainer sees the same channels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tsfa.maths.penalty import penalty_scale_s2
from tsfa.maths.units import dbm_to_w
from tsfa.maths.wireless import (
    draw_distances_m,
    ergodic_rate_bps,
    fading_gains,
    path_gain,
    snr_bandwidth_hz,
)


@dataclass(frozen=True)
class RoundRecord:
    """Round ``t``: its inputs (``gamma_hz`` (K,), ``queue_before_s`` (K,) or (1,) under ``max``),
    the policy's ``decision`` and the queues after the update ``queue_s``."""

    round: int
    gamma_hz: np.ndarray
    queue_before_s: np.ndarray
    decision: object
    queue_s: np.ndarray


def _seed_of(seed) -> int:
    """An int seed; a ``numpy.random.Generator`` (older callers) gives one draw from it."""
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63 - 1))
    return int(seed)


def run_rounds(policy, mean_gamma_hz, n_rounds: int, seed, queues0=None,
               start: int = 0) -> Iterator[RoundRecord]:
    """Rounds ``start .. start + n_rounds - 1`` of ``policy`` under i.i.d. block Rayleigh fading,
    ``gamma_k^t = mean_gamma_k |g_k^t|^2`` with ``|g^t|^2 = fading_gains(seed, t, K)``; latency
    is the decision's predicted ``T_k`` (relaxed payload; compute time only if deferred)."""
    seed = _seed_of(seed)
    mean_gamma = np.asarray(mean_gamma_hz, float)
    k = policy.n_clients
    q = policy.initial_queues() if queues0 is None else np.asarray(queues0, float)
    for t in range(start, start + n_rounds):
        gains = mean_gamma * fading_gains(seed, t, k)
        d = policy.decide(q, gains)
        q_new = policy.update_queues(q, d.latency_s)
        yield RoundRecord(t, gains, q, d, q_new)
        q = q_new


#: First round of a warm-start simulation: its fading draws are disjoint from a run's rounds.
WARM_START_OFFSET = 10**9
#: Quantile of the stationary queue used as the warm start (docs/model.md §4, finite horizon).
WARM_START_QUANTILE = 0.9
#: At most this many queue values are kept for the quantile (every round's below it).
WARM_START_MAX_VALUES = 500_000


def steady_queues(policy, mean_gamma_hz, horizon: int, seed,
                  quantile: float = WARM_START_QUANTILE) -> np.ndarray:
    """Warm-start virtual queues Q^0 [s] (docs/model.md §4, "Finite horizon"): ``policy``
    simulated from zero queues for ``2 clip(5 horizon, 100, 1000)`` rounds on fading draws disjoint from
    a run's (rounds from :data:`WARM_START_OFFSET`, same ``seed``), each queue's ``quantile``
    over the second half (its stationary level; every round's queues while the second half holds
    at most :data:`WARM_START_MAX_VALUES` values, else every ``stride``-th round's). It costs
    ``n`` P2 solves: at very large K set ``control.queue_start = "zero"``. Since
    ``sum_t (T_k^t - Tbar_k) <= Q_k^T - Q_k^0``, a run started there exceeds its budget on
    average over its T rounds only where its end queue exceeds this quantile, and then by
    ``(Q_k^T - Q_k^0) / T``."""
    n = 2 * min(max(5 * int(horizon), 100), 1000)
    k = policy.n_clients
    stride = max(1, -(-(n // 2) * k // WARM_START_MAX_VALUES))  # memory O(min(n K, cap))
    kept = [rec.queue_s for rec in run_rounds(policy, mean_gamma_hz, n, seed,
                                              start=WARM_START_OFFSET)
            if rec.round - WARM_START_OFFSET >= n // 2
            and (rec.round - WARM_START_OFFSET - n // 2) % stride == 0]
    return np.quantile(np.asarray(kept), quantile, axis=0)


class RunningSummary:
    """Per-client time averages of a stream of :class:`RoundRecord` in O(K) memory, plus running
    traces (time-averaged latency over budget and queue) of up to ``trace_clients`` clients."""

    def __init__(self, policy, trace_clients: int = 20):
        k = policy.n_clients
        self.policy, self.rounds = policy, 0
        self.sums = {n: np.zeros(k) for n in ("latency_s", "rho_sent", "sent", "bandwidth_hz",
                                               "queue_s", "planned_bits")}
        self.max_latency = np.zeros(k)
        self.penalty = 0.0
        self.late = 0  # rounds in which a sender ended after its deadline
        self.trace_ids = np.arange(min(k, trace_clients))
        self.traces: list[dict] = []

    def add(self, rec: RoundRecord) -> None:
        d, pol = rec.decision, self.policy
        sent = np.asarray(d.sent, bool)
        q = np.broadcast_to(rec.queue_s, (pol.n_clients,))
        lat = np.asarray(d.latency_s, float)
        for name, v in (("latency_s", lat), ("rho_sent", np.where(sent, d.rho, 0.0)),
                        ("sent", sent), ("bandwidth_hz", d.bandwidth_hz), ("queue_s", q),
                        ("planned_bits", d.planned_bits)):
            self.sums[name] += v
        self.max_latency = np.maximum(self.max_latency, lat)
        self.penalty += float(np.sum(pol.penalty(d.rho, sent)))
        if pol.deadline_s is not None:
            self.late += int(np.any(lat[sent] > pol.deadline_s[sent] * (1 + 1e-9)))
        self.rounds += 1
        ids = self.trace_ids
        avg = self.sums["latency_s"][ids] / self.rounds / pol.budget_s[ids]
        self.traces.append({"round": rec.round, "avg_latency_over_budget": avg.copy(),
                            "queue_s": q[ids].copy(), "max_latency_s": float(np.max(lat))})

    def summary(self):
        """Per-client DataFrame: mean latency vs budget, mean rho when sent, participation, mean
        bandwidth share, mean queue, worst latency and the deadline."""
        import pandas as pd

        pol, n, s = self.policy, max(self.rounds, 1), self.sums
        sent = np.maximum(s["sent"], 1)
        out = pd.DataFrame({
            "client": np.arange(pol.n_clients),
            "mean_latency_s": s["latency_s"] / n,
            "budget_s": pol.budget_s,
            "mean_rho": np.where(s["sent"] > 0, s["rho_sent"] / sent, np.nan),
            "participation": s["sent"] / n,
            "mean_bandwidth_share": s["bandwidth_hz"] / n / pol.total_bandwidth_hz,
            "mean_queue_s": s["queue_s"] / n,
            "max_latency_s": self.max_latency,
            "deadline_s": pol.deadline_s if pol.deadline_s is not None else np.inf,
        })
        out["latency_ratio"] = out["mean_latency_s"] / out["budget_s"]
        return out

    @property
    def average_penalty(self) -> float:
        """``(1/T) sum_t sum_k p_k Gamma_k phi(rho_k^t)`` (deferred: ``phi(defer_rho)``)."""
        return self.penalty / max(self.rounds, 1)


@dataclass(frozen=True)
class SimulationResult:
    """``rounds``: one row per (round, client): rho, bandwidth_hz, latency_s, sent, planned_bits,
    queue_before_s (the queue the decision saw; under ``max`` the single queue on every row),
    queue_s (after the update), gamma_hz (the round's gain), objective (of the round's decision,
    repeated on its K rows), status. ``summary``: :meth:`RunningSummary.summary`.
    ``average_penalty``: (1/T) sum_t sum_k p_k Gamma_k phi(rho)."""

    rounds: object
    summary: object
    average_penalty: float


class RoundsTable:
    """Collects records into the per-(round, client) table of :class:`SimulationResult` (holds
    the whole run: for small runs only; stream larger ones)."""

    ARRAYS = ("rho", "bandwidth_hz", "latency_s", "sent", "planned_bits", "queue_before_s",
              "queue_s", "gamma_hz")

    def __init__(self, n_clients: int):
        self.k, self.rounds = n_clients, []
        self.cols = {n: [] for n in self.ARRAYS}
        self.objective, self.status = [], []

    def __call__(self, rec: RoundRecord) -> None:
        d, k = rec.decision, self.k
        values = (d.rho, d.bandwidth_hz, d.latency_s, d.sent, d.planned_bits,
                  np.broadcast_to(rec.queue_before_s, (k,)), np.broadcast_to(rec.queue_s, (k,)),
                  rec.gamma_hz)
        for name, v in zip(self.ARRAYS, values, strict=True):
            self.cols[name].append(np.asarray(v))
        self.rounds.append(rec.round)
        self.objective.append(d.objective)
        self.status.append(d.status)

    def frame(self):
        import pandas as pd

        k = self.k
        return pd.DataFrame({"round": np.repeat(self.rounds, k).astype(int),
                             "client": np.tile(np.arange(k), len(self.rounds)),
                             **{n: np.concatenate(v) if v else np.array([])
                                for n, v in self.cols.items()},
                             "objective": np.repeat(self.objective, k),
                             "status": np.repeat(self.status, k)})


def simulate(policy, mean_gamma_hz, n_rounds: int, seed, queues0=None) -> SimulationResult:
    """Collect :func:`run_rounds` into tables (for runs small enough to hold; see module doc)."""
    acc, table = RunningSummary(policy), RoundsTable(policy.n_clients)
    for rec in run_rounds(policy, mean_gamma_hz, n_rounds, seed, queues0):
        acc.add(rec)
        table(rec)
    return SimulationResult(table.frame(), acc.summary(), acc.average_penalty)


def example_system(rng: np.random.Generator, n_clients: int = 10, rank: int = 16) -> dict:
    """Representative system of docs/model.md §7 as plain arrays for the policy constructors.

    W_tot = 2 MHz, P = 23 dBm, N0 = -174 dBm/Hz, d ~ U[50, 500] m, ViT-Base q,v payload
    (slope 32 * 36,864 * r bits, head 32 * 76,900 bits), T^cmp ~ U[5, 30] s,
    ``Tbar_k = T^cmp_k + 0.5 S(1) / Rbar_k(W_tot / K)`` (ergodic rate on equal bandwidth),
    p_k = 1/K, w_min = 0.1 W_tot / K, rho_min = 1/r, and the normalised ``Gamma_k`` of
    :func:`tsfa.maths.penalty.penalty_scale_s2` (phi = inv; docs/notation.md, "Gamma_k"). No
    deadline (the original P2). Returns ``{"policy_kwargs": {...}, "mean_gamma_hz": (K,)}``.
    """
    wt = 2e6
    d = draw_distances_m(rng, n_clients, 50.0, 500.0)
    mean_gamma = snr_bandwidth_hz(dbm_to_w(23.0), path_gain(d), dbm_to_w(-174.0))
    slope, head = 32.0 * 36864 * rank, 32.0 * 76900
    compute = rng.uniform(5.0, 30.0, n_clients)
    rate = ergodic_rate_bps(wt / n_clients, mean_gamma)
    slack = 0.5 * (slope + head) / rate
    p = np.full(n_clients, 1.0 / n_clients)
    gamma = penalty_scale_s2(p, slack, rate, slope, head, 1.0 / rank, "inv")
    kwargs = dict(weights=p, compute_s=compute,
                  budget_s=compute + slack, sparsity_weights=gamma,
                  slope_bits=slope, head_bits=head, total_bandwidth_hz=wt,
                  min_bandwidth_hz=0.1 * wt / n_clients, rho_min=1.0 / rank)
    return {"policy_kwargs": kwargs, "mean_gamma_hz": mean_gamma}
