"""What every online policy shares (docs/model.md §4): the round's :class:`Decision`, the virtual
queues and the per-client system arrays.

Two long-term constraints (``constraint``):

* ``per_client``: ``lim sup (1/T) sum_t E[T_k^t] <= Tbar_k`` for every client, one virtual queue
  per client, ``Q_k^{t+1} = max(Q_k^t + T_k^t - Tbar_k, 0)``;
* ``max``: ``lim sup (1/T) sum_t E[max_k T_k^t] <= Tbar`` (the synchronous round's wall clock),
  one virtual queue ``Z^{t+1} = max(Z^t + max_k T_k^t - Tbar, 0)`` with ``Tbar = max_k Tbar_k``
  (the common budget when one is given).

``deadline_s`` (per-round deadlines ``D_k``) switches on deferral: a client whose upload would end
after ``D_k`` sends nothing that round (docs/model.md §4 "Deep fades"). Queues have shape (K,)
(``per_client``) or (1,) (``max``); :meth:`BasePolicy.initial_queues` gives the right zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tsfa.maths.bound import phi as phi_fn
from tsfa.maths.payload import kept_components
from tsfa.maths.wireless import upload_time_s
from tsfa.optim import P2Constants, P2Problem, SolveResult

CONSTRAINTS = ("per_client", "max")


@dataclass(frozen=True)
class Decision:
    """One round's decision, every array (K,):

    ``rho`` ratios (0 for a deferred client), ``bandwidth_hz`` [Hz] (0 if deferred), the P2
    ``objective``, ``latency_s`` [s] of the planned bits on the wire (:func:`wire_latency_s`;
    compute time only if deferred), ``status``
    (cvxpy's words), the solver's ``result``, ``sent`` (bool: False = the client defers, its update
    stays in its error-feedback memory) and ``planned_bits`` (bits the controller planned for the
    upload: ``payload.bits(rho)`` of the policy's payload model, or the relaxed ``a rho + h``
    without one; 0 if deferred).
    """

    rho: np.ndarray
    bandwidth_hz: np.ndarray
    objective: float
    latency_s: np.ndarray
    status: str
    result: SolveResult | None
    sent: np.ndarray
    planned_bits: np.ndarray


def wire_latency_s(prob: P2Problem, bits, bandwidth_hz) -> np.ndarray:
    """Round latency of the bits a decision puts on the wire, ``T_k = c_k + S_k / R(w_k,
    gamma_k)`` [s] (docs/model.md §4, "The latency the queues see"), (K,); ``c_k`` for a client
    that sends nothing. P2 plans with the affine relaxation ``S = a rho + h``; the wire carries
    ``n = max(1, ceil(rho r))`` whole components (:func:`tsfa.maths.payload.kept_components`),
    so this is the latency the federated server measures and feeds to the queues."""
    return prob.compute_s + upload_time_s(bits, bandwidth_hz, prob.gamma_hz)


def update_queues(queues, latency_s, budget_s) -> np.ndarray:
    """``Q^{t+1} = max(Q^t + T^t - Tbar, 0)`` [s], elementwise (docs/model.md §4)."""
    return np.maximum(np.asarray(queues, float) + np.asarray(latency_s, float)
                      - np.asarray(budget_s, float), 0.0)


@dataclass(frozen=True, kw_only=True)
class BasePolicy(P2Constants):
    """System arrays shared by every policy, built by keyword; shapes (K,) or scalars; units in
    the names. The constants of P2 (``slope_bits``, ``head_bits``, ``total_bandwidth_hz``,
    ``min_bandwidth_hz``, ``rho_min``, ``phi``) are those of :class:`~tsfa.optim.problem.P2Constants`
    (validated there); the per-round :meth:`problem` carries them.

    ``sparsity_weights`` are ``Gamma_k`` (docs/notation.md: the controller's normalised weight,
    in s^2 per unit of ``p_k phi``); the P2 weight is ``penalty_weights = V Gamma_k``, the name
    :class:`~tsfa.optim.P2Problem` uses for the same quantity. ``payload``: an optional
    :class:`~tsfa.maths.payload.PayloadModel` (``.bits(rho)``, ``.slope_bits``, ``.head_bits``)
    giving :attr:`Decision.planned_bits`.
    """

    weights: np.ndarray
    compute_s: np.ndarray
    budget_s: np.ndarray
    sparsity_weights: np.ndarray
    V: float = 1.0
    deadline_s: np.ndarray | None = None
    constraint: str = "per_client"
    payload: object | None = None

    def __post_init__(self):
        super().__post_init__()
        k = np.atleast_1d(np.asarray(self.weights, float)).size
        names = ["weights", "compute_s", "budget_s", "sparsity_weights"]
        if self.deadline_s is not None:
            names.append("deadline_s")
        for name in names:
            arr = np.broadcast_to(np.asarray(getattr(self, name), float), (k,)).copy()
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        if not (np.isfinite(self.V) and self.V >= 0):
            raise ValueError(f"V: must be a finite number >= 0, got {self.V!r}")
        if np.any(self.budget_s <= self.compute_s):
            raise ValueError("budget_s: every Tbar_k must exceed compute_s (T^cmp_k)")
        if self.deadline_s is not None and np.any(self.deadline_s < self.budget_s):
            raise ValueError("deadline_s: every per-round deadline D_k must be >= its budget Tbar_k")
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint: must be one of {CONSTRAINTS}, got {self.constraint!r}")

    @property
    def n_clients(self) -> int:
        return int(self.weights.size)

    @property
    def penalty_weights(self) -> np.ndarray:
        """``v_k = V Gamma_k``: the weight of ``p_k phi(rho_k)`` in P2's objective."""
        return self.V * self.sparsity_weights

    @property
    def max_budget_s(self) -> float:
        """``Tbar`` of the ``max`` constraint: ``max_k Tbar_k`` [s]."""
        return float(np.max(self.budget_s))

    def initial_queues(self) -> np.ndarray:
        """Zero virtual queues: (K,) for ``per_client``, (1,) for ``max``."""
        return np.zeros(self.n_clients if self.constraint == "per_client" else 1)

    def problem(self, queues, gamma_hz) -> P2Problem:
        """P2 for this round (validated; raises ValueError naming a bad argument). Under ``max``
        the per-client queues are 0 (the single queue enters through the max-latency term)."""
        q = queues if self.constraint == "per_client" else np.zeros(self.n_clients)
        return P2Problem(self.weights, gamma_hz, q, self.penalty_weights, self.compute_s,
                         deadline_s=self.deadline_s, **self.p2_constants())

    def update_queues(self, queues, latency_s) -> np.ndarray:
        """Virtual-queue update with this policy's budgets (module docstring)."""
        if self.constraint == "max":
            return update_queues(queues, np.max(latency_s), self.max_budget_s)
        return update_queues(queues, latency_s, self.budget_s)

    def penalty(self, rho, sent) -> np.ndarray:
        """Per-client ``p_k Gamma_k phi(rho_k)`` without V, ``phi(defer_rho)`` if deferred."""
        f = np.where(sent, phi_fn(np.where(sent, rho, 1.0), self.phi), self.defer_phi)
        return self.weights * self.sparsity_weights * f

    def planned_bits(self, rho, sent) -> np.ndarray:
        """Bits planned per client: ``payload.bits(rho)`` (or ``a rho + h``), 0 if deferred."""
        rho = np.asarray(rho, float)
        out = np.zeros(rho.shape)
        if not np.any(sent):
            return out
        r = rho[sent]
        if self.payload is None:
            out[sent] = self.slope_bits * r + self.head_bits
        elif hasattr(self.payload, "rank") and hasattr(self.payload, "ratios"):
            # a PayloadModel counts n = max(1, ceil(rho r)) components: price the r levels once
            # and index them (K distinct ratios would be K exact counts per round)
            rank = int(self.payload.rank)
            levels = np.asarray(self.payload.bits(np.arange(1, rank + 1) / rank), float)
            out[sent] = levels[kept_components(rank, r) - 1]
        else:
            out[sent] = np.asarray(self.payload.bits(r), float)
        return out

    def on_the_wire(self, prob: P2Problem, rho, w, sent):
        """``(rho, bits, latency_s)`` as sent: the planned bits of ``rho`` and their
        :func:`wire_latency_s`. A component payload rounds ``rho r`` up to whole components; where
        that would miss a sender's deadline ``D_k`` the ratio becomes one component less,
        ``(n - 1) / r`` (at least ``1 / r``), whose bits ``h + (n - 1) a / r`` never exceed the
        relaxed ``a rho + h`` that P2 fitted within ``D_k`` (docs/model.md §4)."""
        rho = np.asarray(rho, float)
        bits = self.planned_bits(rho, sent)
        lat = wire_latency_s(prob, bits, w)
        rank = getattr(self.payload, "rank", None)
        if prob.deadline_s is None or rank is None:
            return rho, bits, lat
        late = sent & (lat > prob.deadline_s * (1 + 1e-9))
        if not np.any(late):
            return rho, bits, lat
        rank = int(rank)
        rho = rho.copy()
        rho[late] = np.maximum(kept_components(rank, rho[late]) - 1, 1) / rank
        bits = self.planned_bits(rho, sent)
        return rho, bits, wire_latency_s(prob, bits, w)

    def decision(self, prob: P2Problem, rho, w, status, result=None, queues=None) -> Decision:
        """The :class:`Decision` for P2's solution ``(rho, w)``: P2's objective there (``+ Z
        max_k T_k`` under ``max``, with ``Z = queues[0]``), and the ratios, planned bits and
        latency as sent (:meth:`on_the_wire`)."""
        sent = prob.sent(w)
        obj = prob.objective(rho, w)
        if self.constraint == "max" and queues is not None:
            obj += float(queues[0]) * float(np.max(prob.latency_s(rho, w)))
        rho, bits, lat = self.on_the_wire(prob, rho, w, sent)
        return Decision(rho, w, obj, lat, status, result, sent, bits)

    def failed(self, status: str, result=None) -> Decision:
        """A decision with no solution (``nan`` arrays), e.g. an infeasible round."""
        nan = np.full(self.n_clients, np.nan)
        return Decision(nan, nan, np.nan, nan, status, result, np.zeros(self.n_clients, bool),
                        np.zeros(self.n_clients))
