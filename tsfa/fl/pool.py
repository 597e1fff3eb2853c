"""Client pools: how the in-process engine runs its K clients in one round.

* :class:`SequentialPool` (``--clients sequential``, the reference): one client after another,
  each on the shared model (:meth:`tsfa.fl.client.Client.step`);
* :class:`BatchedPool` (``--clients batched``, the default): every client's local training in one
  batched computation (:func:`tsfa.fl.batched.batched_local_train`: per-client LoRA factors and
  heads on a client axis, the backbone shared), then each client compresses its own change.

Both give the same updates up to floating-point rounding (tests/fl/test_server_client.py), since
every client draws from its own stateless substreams either way.
"""

from __future__ import annotations

from collections.abc import Sequence

from tsfa.config.choices import POOLS  # noqa: E402  (the one list, tsfa.config.choices)
from tsfa.fl.client import Client, ClientState, ClientTask, ClientUpdate, GlobalModel, LocalResult


class SequentialPool:
    """Clients one after another (the reference path)."""

    def __init__(self, clients: Sequence[Client]):
        self.clients = list(clients)

    def run(self, glob: GlobalModel, states: Sequence[ClientState],
            tasks: Sequence[ClientTask]) -> list[tuple[ClientUpdate, ClientState]]:
        """Every client's round: (update, new state) per client, in client order."""
        return [c.step(glob, s, task) for c, s, task in zip(self.clients, states, tasks,
                                                            strict=True)]


class BatchedPool(SequentialPool):
    """Every client's local training at once on the clients' shared model."""

    def run(self, glob: GlobalModel, states: Sequence[ClientState],
            tasks: Sequence[ClientTask]) -> list[tuple[ClientUpdate, ClientState]]:
        from tsfa.fl.batched import batched_local_train

        c0, k = self.clients[0], len(self.clients)
        s = c0.settings
        factors, heads, losses = batched_local_train(
            c0.model, [glob.factors] * k, [glob.head] * k, [c.data for c in self.clients],
            [c.sampling_rng(task.round) for c, task in zip(self.clients, tasks, strict=True)],
            s.local_steps, s.batch_size, s.learning_rate, s.optimizer, s.zeta, s.precision,
            s.frozen)
        return [c.respond(glob, LocalResult(f, h, loss), st, task) for c, f, h, loss, st, task
                in zip(self.clients, factors, heads, losses, states, tasks, strict=True)]


def make_pool(kind: str, clients: Sequence[Client]) -> SequentialPool:
    """The pool ``kind`` ("batched" or "sequential") over ``clients`` (which share one model)."""
    if kind not in POOLS:
        raise ValueError(f"clients = {kind!r} is invalid; allowed: {', '.join(POOLS)}")
    return BatchedPool(clients) if kind == "batched" else SequentialPool(clients)


__all__ = ["POOLS", "SequentialPool", "BatchedPool", "make_pool"]
