"""The federated server (docs/model.md §4-§6): channel -> policy -> (clients) -> latency from the real
payloads -> virtual queues -> separate aggregation -> evaluation.

The server takes the run's plan (:class:`tsfa.experiments.plan.RunPlan`: config, task, resolved
system and its realisation, payload model), decided once before round 0; it resolves nothing.
The server's state between rounds is :class:`ServerState` (round, global factors and head,
virtual queues Q_k [s]); each round it plans (:meth:`Server.plan` -> :class:`RoundPlan`: fading
draw and the policy's rho_k, w_k and send decision per client), then folds the clients'
:class:`~tsfa.fl.client.ClientUpdate` s into the next state (:meth:`Server.finish`) and logs one
:class:`RoundRecord`. Engines (:mod:`tsfa.engines`) drive it; it writes nothing.

Fading is the stateless channel draw of :func:`tsfa.maths.wireless.fading_gains` per (seed,
round, client), so changing the compressor never changes the channels. Aggregation uses the
clients that sent: with the "update" protocol their weights p_k as given (a deferred client's
update arrives later through its error-feedback memory, so the sum over time keeps every
client's weight), with the "factor" protocol p_k renormalised over the senders (an average of
factors); the head is the FedAvg of the senders' heads. Nobody sent: the model is unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from tsfa.config.registry import COMPRESSORS
from tsfa.control.from_spec import make_policy
from tsfa.control.lyapunov import start_queues
from tsfa.fl import metrics as mx
from tsfa.fl.aggregate import aggregate, fedavg
from tsfa.fl.build import Data, lora_model, test_data
from tsfa.fl.client import ClientTask, ClientUpdate, GlobalModel
from tsfa.fl.compress import decode_head
from tsfa.fl.lora import get_factors, get_head_state, set_factors, set_head_state
from tsfa.fl.partition import client_weights
from tsfa.fl.vit import ViT
from tsfa.maths import wireless as wl


@torch.no_grad()
def evaluate(model: ViT, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of the global model (no autograd graph is built)."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch):
        logits = model(x[i:i + batch])
        loss += float(F.cross_entropy(logits, y[i:i + batch], reduction="sum"))
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return correct / len(y), loss / len(y)


@dataclass(frozen=True, eq=False)
class ServerState:
    """The server between rounds: the next ``round`` t, the global ``model`` and the virtual
    queues ``queues`` (K,) [s]."""

    round: int
    model: GlobalModel
    queues: np.ndarray


@dataclass(frozen=True, eq=False)
class RoundPlan:
    """The server's decision for round ``round``: fading ``gains_hz`` (K,) [Hz, gamma_k], ratios
    ``rho`` (K,) in [1/r, 1] (0 for a deferred client), ``bandwidth_hz`` (K,), ``sent`` (K,) bool
    (false: deferred), ``planned_bits`` (K,) the payload the policy planned, and the solver
    ``status``."""

    round: int
    gains_hz: np.ndarray
    rho: np.ndarray
    bandwidth_hz: np.ndarray
    sent: np.ndarray
    planned_bits: np.ndarray
    status: str

    def task(self, k: int) -> ClientTask:
        """What client k is told: the round, its rho_k and whether it sends."""
        return ClientTask(self.round, float(self.rho[k]), bool(self.sent[k]))


@dataclass(frozen=True)
class RoundRecord:
    """One round's log rows: ``round`` (one row of rounds.csv) and ``clients`` (K rows of
    clients.csv)."""

    round: dict
    clients: tuple[dict, ...]


class Server:
    """Policy, aggregation, evaluation and queues of one run, built from its ``plan``
    (:class:`tsfa.experiments.plan.RunPlan`), the model (evaluated in place) and the test set."""

    def __init__(self, plan, model: ViT, test: Data):
        self.run_plan, self.model, self.test = plan, model, test
        self.cfg, self.task, self.system, self.inst = plan.cfg, plan.task, plan.system, plan.inst
        self.payload = plan.payload
        exp = self.cfg.experiment
        self.weights = client_weights(self.task.parts)
        # docs/model.md §6: an ideal method (ILoRA) runs at rho = 1 outside the latency constraint
        ideal = COMPRESSORS.entry(exp.method).ideal
        self.policy = make_policy(self.system, self.inst, exp.rank,
                                  "fixed" if ideal else exp.controller, exp.solver,
                                  1.0 if ideal else exp.rho, payload=self.payload)

    @property
    def num_clients(self) -> int:
        return len(self.weights)

    def initial_state(self) -> ServerState:
        glob = GlobalModel(get_factors(self.model), get_head_state(self.model))
        q0 = start_queues(self.policy, self.system, self.inst.mean_gamma_hz,
                          self.system.training.rounds, self.cfg.experiment.seed)
        return ServerState(0, glob, np.zeros(self.num_clients) if q0 is None else q0)

    def plan(self, state: ServerState) -> RoundPlan:
        """Start of round t: fading draw and the policy's decision per client."""
        t, k = state.round, self.num_clients
        gains = self.inst.mean_gamma_hz * wl.fading_gains(self.cfg.experiment.seed, t, k)
        decision = self.policy.decide(state.queues, gains)
        sent = np.asarray(decision.sent, bool)  # a failed decision sends nothing
        rho = np.where(sent, decision.rho, 0.0)  # the policy's ratios, within [1/r, 1]
        return RoundPlan(t, gains, rho, np.asarray(decision.bandwidth_hz, dtype=float), sent,
                         np.asarray(decision.planned_bits, dtype=float), decision.status)

    def aggregate(self, glob: GlobalModel, updates: list[ClientUpdate]) -> GlobalModel:
        """New global factors (separate aggregation of the senders) and head (their FedAvg)."""
        exp = self.cfg.experiment
        senders = [u for u in updates if u.sent]
        if not senders:
            return glob
        p = self.weights[[u.client for u in senders]]
        if exp.upload == "factor":
            p = p / p.sum()
        factors = aggregate(glob.factors, [u.upload for u in senders], p,
                            normalise=self.system.soft.aggregation == "normalised",
                            protocol=exp.upload, fill=exp.factor_fill, correction=exp.cov_correction,
                            ridge=exp.cov_ridge)
        dtype = next(iter(glob.head.values())).dtype
        head = fedavg([decode_head(u.head, dtype) for u in senders], p)
        return GlobalModel(factors, head)

    def finish(self, state: ServerState, plan: RoundPlan, updates: list[ClientUpdate],
               started: float) -> tuple[ServerState, RoundRecord]:
        """End of round t: latency from the real payloads, queues, aggregation, evaluation.
        ``updates`` in client order; ``started``: ``time.perf_counter()`` at the round's start."""
        if [u.client for u in updates] != list(range(self.num_clients)):
            raise ValueError(f"round {plan.round}: updates from clients "
                             f"{[u.client for u in updates]}, expected 0..{self.num_clients - 1}")
        bits = np.asarray([u.bits for u in updates], dtype=float)
        lost = np.asarray([u.lost for u in updates], dtype=bool)
        # a lost upload (a client that dropped out mid-round) is not received, but its slot on
        # the uplink elapsed: the queue counts the planned bits on its bandwidth (docs/flower.md)
        air = np.where(lost, plan.planned_bits, bits)
        latency = self.inst.compute_s + wl.upload_time_s(air, plan.bandwidth_hz, plan.gains_hz)
        queues = self.policy.update_queues(state.queues, latency)
        cov = self.covariance(state.model, updates)
        glob = self.aggregate(state.model, updates)
        set_factors(self.model, glob.factors)
        set_head_state(self.model, glob.head)
        acc, loss = evaluate(self.model, *self.test)
        cpu = [(b.cpu(), a.cpu()) for b, a in glob.factors]  # metrics read numpy
        row = {"round": plan.round, "accuracy": acc, "test_loss": loss,
               "train_loss": _mean_loss(updates), **cov,
               "orth_defect": mx.total_orthogonality_defect(cpu),
               "kendall_tau": mx.mean_importance_agreement(cpu),
               "mean_rho": float(plan.rho @ self.weights),
               "senders": int(sum(u.sent for u in updates)), "lost": int(lost.sum()),
               "total_bits": float(bits.sum()),
               "mean_latency_s": float(latency.mean()), "max_latency_s": float(latency.max()),
               "mean_queue_s": float(queues.mean()), "decision_status": plan.status,
               "wall_s": time.perf_counter() - started}
        clients = tuple({"round": plan.round, "client": k, "rho": float(plan.rho[k]),
                         "sent": bool(plan.sent[k]), "lost": bool(lost[k]),
                         "bandwidth_hz": float(plan.bandwidth_hz[k]),
                         "gamma_hz": float(plan.gains_hz[k]),
                         "planned_bits": float(plan.planned_bits[k]), "bits": float(bits[k]),
                         "latency_s": float(latency[k]), "compute_s": float(self.inst.compute_s[k]),
                         "budget_s": float(self.inst.budget_s[k]), "queue_s": float(queues[k]),
                         # the reply's serialised size, where an engine serialises (Flower)
                         **({} if updates[k].message_bytes is None
                            else {"message_bytes": int(updates[k].message_bytes)})}
                        for k in range(self.num_clients))
        return ServerState(plan.round + 1, glob, queues), RoundRecord(row, clients)

    def covariance(self, glob: GlobalModel, updates: list[ClientUpdate]) -> dict[str, float]:
        """||Cov||_F of the senders' uploaded factors (and its row-space split), p_k
        renormalised over the senders (docs/model.md §2)."""
        senders = [u for u in updates if u.sent]
        p = self.weights[[u.client for u in senders]]
        exp = self.cfg.experiment
        return mx.covariance_split([(b.cpu(), a.cpu()) for b, a in glob.factors],
                                   [u.upload for u in senders], p / p.sum() if senders else p,
                                   exp.cov_ridge, protocol=exp.upload, fill=exp.factor_fill)


def _mean_loss(updates: list[ClientUpdate]) -> float:
    """Mean last local loss over the clients that replied (nan when none did)."""
    losses = [u.train_loss for u in updates if not u.lost]
    return float(np.mean(losses)) if losses else float("nan")


def build_server(plan, device: torch.device | str = "cpu") -> Server:
    """The server of ``plan`` (:class:`tsfa.experiments.plan.RunPlan`) on ``device``: its
    LoRA model and test set."""
    return Server(plan, lora_model(plan.cfg, plan.task, device), test_data(plan.task, device))


__all__ = ["evaluate", "ServerState", "RoundPlan", "RoundRecord", "Server",
           "build_server"]
