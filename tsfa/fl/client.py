"""A federated client (docs/model.md §5): local training, compression, error-feedback memory.

Between rounds a client keeps only its error-feedback memory (:class:`ClientState`). Each round
the server sends it the global factors and head (:class:`GlobalModel`) and what it needs to
know of the round's decision (:class:`ClientTask`: the round, its ratio rho_k and whether it
sends); the client replies with a :class:`ClientUpdate` (what goes on the air and its bits).
A client holds no policy, no system realisation and no test set.

Randomness is stateless per (seed, stream, round, client) (:func:`tsfa.maths.rng.substream`:
``("sampling", t, k)`` for minibatches, ``("compression", t, k)`` for RLoRA's seed), so any
process that runs client k in round t draws exactly the same numbers: the in-process and the
Flower engine, a resumed run, the sequential and the batched client pool.

**Deferral.** A client told not to send (``ClientTask.send`` false: the controller's deadline or
deferral decision) still trains, sends nothing (0 bits, no head) and adds its whole message to
its error-feedback memory, so the update reaches the server, compressed, the next time it sends.
Without error feedback the deferred update is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from tsfa.config.experiment import RunConfig
from tsfa.fl.build import Data
from tsfa.fl.compress import Compressor, Upload, compressor_for, encode_head, head_bits, payload_bits
from tsfa.fl.device import autocast
from tsfa.fl.lora import (
    Factors,
    frozen_names,
    get_factors,
    get_head_state,
    set_factors,
    set_head_state,
    soft_regulariser,
    trainable_parameters,
)
from tsfa.fl.vit import ViT
from tsfa.maths.rng import substream

Head = dict[str, torch.Tensor]  # the classifier head's state dict (sent in full)


@dataclass(frozen=True)
class ClientSettings:
    """What a client reads of the run config: the seed and its local training (tau steps of
    ``batch_size`` samples, ``learning_rate``, ``optimizer``, SOFT weight ``zeta``), and the
    local-training ``precision`` ("fp32" or "bf16" autocast)."""

    seed: int
    local_steps: int
    batch_size: int
    learning_rate: float
    optimizer: str
    zeta: float
    precision: str = "fp32"
    frozen: tuple[str, ...] = ()  # factors not trained locally: ("A",) for FFA-LoRA

    @classmethod
    def of(cls, cfg: RunConfig, precision: str = "fp32") -> ClientSettings:
        from tsfa.config.registry import COMPRESSORS
        from tsfa.fl.compress import strategy_class

        exp, sys_ = cfg.experiment, cfg.system
        tr = sys_.training
        zeta = sys_.soft.zeta if COMPRESSORS.entry(exp.method).orthogonality else 0.0
        return cls(exp.seed, tr.local_steps, tr.batch_size, tr.learning_rate, exp.optimizer,
                   zeta, precision, strategy_class(exp.method).frozen)


@dataclass(frozen=True, eq=False)
class GlobalModel:
    """The global LoRA factors [(B (d_out, r), A (r, d_in))] and head the server broadcasts."""

    factors: Factors
    head: Head


@dataclass(frozen=True)
class ClientTask:
    """What client k learns of the round's decision: round ``round``, ratio ``rho`` in
    [1/r, 1] and whether it ``send``s this round."""

    round: int
    rho: float
    send: bool = True


@dataclass(frozen=True, eq=False)
class ClientState:
    """A client's state between rounds: its compressor's state (the error-feedback memory, in
    the compressor's message space; ``()`` without error feedback)."""

    memory: Any


@dataclass(frozen=True, eq=False)
class LocalResult:
    """Local training's output: the client's factors and head, and its last task loss."""

    factors: Factors
    head: Head
    train_loss: float


@dataclass(frozen=True, eq=False)
class ClientUpdate:
    """Client ``client``'s reply: its ``upload`` and ``head`` as sent (None when deferred),
    ``bits`` on the air (LoRA payload + head; 0 when deferred), last task loss and data size.
    ``lost``: the server received nothing although the client was asked to send (a device that
    dropped out mid-round; :meth:`lost_upload`); the in-process engine never loses one.
    ``message_bytes``: the reply's size as an engine serialised it (Flower: its records), None
    where nothing is serialised (in-process)."""

    client: int
    upload: Upload | None
    head: Head | None
    bits: float
    train_loss: float
    num_examples: int
    lost: bool = False
    message_bytes: int | None = None

    @classmethod
    def lost_upload(cls, client: int) -> ClientUpdate:
        """What the server has of a client whose reply never arrived: nothing (0 bytes)."""
        return cls(client, None, None, 0.0, float("nan"), 0, lost=True, message_bytes=0)

    @property
    def sent(self) -> bool:
        return self.upload is not None


def local_train(model: ViT, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float,
                optimizer: str, zeta: float, rng: np.random.Generator,
                precision: str = "fp32", frozen: tuple[str, ...] = ()) -> float:
    """tau local steps on one client's data; loss = CE + zeta sum_m R(B_m, A_m) (docs/model.md §5).
    Returns the last task loss. A fresh optimizer each round (no optimizer state on the air).
    ``frozen``: LoRA factors left at their value ("A": FFA-LoRA trains B and the head only)."""
    skip = frozen_names(frozen)
    params = [p for name, p in trainable_parameters(model) if name.rsplit(".", 1)[-1] not in skip]
    opt = (torch.optim.AdamW(params, lr=lr, weight_decay=0.0) if optimizer == "adamw"
           else torch.optim.SGD(params, lr=lr))
    model.train()
    loss_val = math.nan
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(len(y), size=min(batch, len(y)))).to(y.device)
        with autocast(precision, y.device):
            logits = model(x[idx])
        task_loss = F.cross_entropy(logits.to(model.head.weight.dtype), y[idx])  # loss in fp32
        loss = task_loss + zeta * soft_regulariser(model) if zeta > 0 else task_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_val = task_loss.item()
    return loss_val


def deferred_memory(compressor: Compressor, deltas: Factors, memory: Any, params: Factors) -> Any:
    """The error-feedback memory of a client that does not send: memory + message (the whole
    update waits on the client); unchanged without error feedback (the update is dropped)."""
    inner = getattr(compressor, "inner", None)
    if inner is None:
        return memory
    return inner.add(inner.message(deltas, params), memory)


class Client:
    """Client ``index`` with its ``data``, a ``model`` to train on (the in-process engine shares
    one model between clients: each round starts by loading the global factors and head) and
    its ``compressor`` (with error feedback, or not)."""

    def __init__(self, index: int, data: Data, model: ViT, compressor: Compressor,
                 settings: ClientSettings):
        self.index, self.data, self.model = int(index), data, model
        self.compressor, self.settings = compressor, settings

    @classmethod
    def from_config(cls, cfg: RunConfig, index: int, data: Data, model: ViT,
                    precision: str = "fp32") -> Client:
        return cls(index, data, model, compressor_for(cfg.experiment, cfg.system.lora),
                   ClientSettings.of(cfg, precision))

    @property
    def num_examples(self) -> int:
        return int(len(self.data[1]))

    def init_state(self, factors: Factors) -> ClientState:
        return ClientState(self.compressor.init(factors))

    def sampling_rng(self, t: int) -> np.random.Generator:
        return substream(self.settings.seed, "sampling", t, self.index)

    def train(self, glob: GlobalModel, t: int) -> LocalResult:
        """Local training of round t from the global model (the sequential reference path)."""
        s = self.settings
        set_factors(self.model, glob.factors)
        set_head_state(self.model, glob.head)
        loss = local_train(self.model, *self.data, s.local_steps, s.batch_size, s.learning_rate,
                           s.optimizer, s.zeta, self.sampling_rng(t), s.precision, s.frozen)
        return LocalResult(get_factors(self.model), get_head_state(self.model), loss)

    def respond(self, glob: GlobalModel, local: LocalResult, state: ClientState,
                task: ClientTask) -> tuple[ClientUpdate, ClientState]:
        """Compress the local change with error feedback and count its bits (or defer it)."""
        deltas = [(b1 - b0, a1 - a0) for (b1, a1), (b0, a0)
                  in zip(local.factors, glob.factors, strict=True)]
        if not task.send:
            memory = deferred_memory(self.compressor, deltas, state.memory, glob.factors)
            return (ClientUpdate(self.index, None, None, 0.0, local.train_loss, self.num_examples),
                    ClientState(memory))
        rng = substream(self.settings.seed, "compression", task.round, self.index)
        upload, memory = self.compressor.update(deltas, state.memory, glob.factors,
                                                float(task.rho), rng)
        head = encode_head(local.head, self.compressor.options.dtype)
        bits = float(payload_bits(upload) + head_bits(head))
        return (ClientUpdate(self.index, upload, head, bits, local.train_loss, self.num_examples),
                ClientState(memory))

    def step(self, glob: GlobalModel, state: ClientState,
             task: ClientTask) -> tuple[ClientUpdate, ClientState]:
        """One round of client work: train, then compress (or defer)."""
        return self.respond(glob, self.train(glob, task.round), state, task)


__all__ = ["ClientSettings", "GlobalModel", "ClientTask", "ClientState", "LocalResult",
           "ClientUpdate", "Client", "local_train", "deferred_memory"]
