"""The tsfa ServerApp and TSFA strategy (flwr Message API, docs/model.md §4-§6).

:class:`TSFAStrategy` runs the server half of :class:`tsfa.fl.loop.Trainer`'s round:

* ``configure_train``: fading draw and Lyapunov decision (:meth:`Trainer.decide`); one message
  per client with the global factors and head (ArrayRecord) and that client's own ``rho`` and
  ``bandwidth_hz`` (ConfigRecord);
* ``aggregate_train``: latency from the real payload bits, virtual-queue update, separate
  per-rank aggregation, FedAvg head and the round's metrics (:meth:`Trainer.finish_round`).

Client k of the controller is the SuperNode whose ``node_config["partition-id"]`` is k, found
once with a ``query`` message. Every client takes part in every round (as in the in-process
engine); a missing or failed reply stops the run with the node's error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from tsfa.config.experiment import RunConfig
from tsfa.engines.flower.records import model_to_record, record_to_upload
from tsfa.engines.flower.settings import out_from_flower, run_config_from_flower
from tsfa.fl.compress import head_bits, payload_bits
from tsfa.fl.loop import ClientUpdate, RunResult, Trainer


class TSFAStrategy(Strategy):
    """Lyapunov-controlled SOFT (or a baseline) over a Flower Grid; holds the server state
    (global factors and head, virtual queues Q_k [s]) and the logged rows."""

    def __init__(self, trainer: Trainer, node_timeout_s: float = 600.0):
        self.trainer = trainer
        state = trainer.initial_state()
        self.factors, self.head, self.queues = state["factors"], state["head"], state["queues"]
        self.rounds: list[dict] = []
        self.clients: list[dict] = []
        self.nodes: dict[int, int] = {}  # client index k -> node id
        self.node_timeout_s = node_timeout_s
        self._plan = None
        self._t0 = 0.0

    @property
    def num_clients(self) -> int:
        return len(self.trainer.weights)

    def initial_arrays(self) -> ArrayRecord:
        return model_to_record(self.factors, self.head)

    def discover(self, grid: Grid) -> dict[int, int]:
        """Map client index k to node id by asking every node for its partition-id."""
        deadline = time.monotonic() + self.node_timeout_s
        while len(ids := list(grid.get_node_ids())) < self.num_clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(ids)} nodes connected; the run has "
                                   f"{self.num_clients} clients (clients.num_clients)")
            log(INFO, "Waiting for nodes: %d of %d connected", len(ids), self.num_clients)
            time.sleep(1.0)
        msgs = [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n) for n in ids]
        nodes = {}
        for reply in grid.send_and_receive(msgs, timeout=self.node_timeout_s):
            if reply.has_error():
                raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
            nodes[int(reply.content["client"]["partition-id"])] = reply.metadata.src_node_id
        missing = sorted(set(range(self.num_clients)) - set(nodes))
        if missing:
            raise RuntimeError(f"no node has partition-id {missing[0]} (found {sorted(nodes)}; "
                               f"partition ids must be 0..{self.num_clients - 1})")
        return nodes

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Decide (rho_k, w_k) for round t = server_round - 1 and address each client."""
        self._t0 = time.perf_counter()
        if not self.nodes:
            self.nodes = self.discover(grid)
        t = server_round - 1
        self._plan = self.trainer.decide(t, self.queues)
        messages = []
        for k in range(self.num_clients):
            conf = ConfigRecord({**dict(config), "round": t, "rho": float(self._plan.rho[k]),
                                 "bandwidth_hz": float(self._plan.bandwidth_hz[k]),
                                 "gamma_hz": float(self._plan.gains[k])})
            messages.append(Message(RecordDict({"arrays": arrays, "config": conf}),
                                    message_type=MessageType.TRAIN, dst_node_id=self.nodes[k]))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Separate per-rank aggregation, FedAvg head, queues and metrics of the round."""
        t = server_round - 1
        by_client: dict[int, ClientUpdate] = {}
        for reply in replies:
            if reply.has_error():
                raise RuntimeError(f"round {t}: node {reply.metadata.src_node_id} failed: "
                                   f"{reply.error.reason}")
            c = reply.content
            upload, head = record_to_upload(c["upload"], c["upload_meta"])
            bits = float(payload_bits(upload) + head_bits(head))
            if bits != float(c["metrics"]["bits"]):
                raise RuntimeError(f"round {t}: client bits {c['metrics']['bits']} != {bits} "
                                   "received")
            by_client[int(c["client"]["partition-id"])] = ClientUpdate(
                upload, head, None, bits, float(c["metrics"]["train_loss"]))
        if sorted(by_client) != list(range(self.num_clients)):
            raise RuntimeError(f"round {t}: replies from clients {sorted(by_client)}, expected "
                               f"0..{self.num_clients - 1}")
        updates = [by_client[k] for k in range(self.num_clients)]
        self.factors, self.head, self.queues, row, clients = self.trainer.finish_round(
            t, self.factors, self.queues, self._plan, updates, self._t0)
        self.rounds.append(row)
        self.clients.extend(clients)
        metrics = MetricRecord({k: float(v) for k, v in row.items()
                                if isinstance(v, int | float) and math.isfinite(v)})
        return model_to_record(self.factors, self.head), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # the global model is evaluated on the server, in aggregate_train

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        exp = self.trainer.cfg.experiment
        log(INFO, "\t├── tsfa: method %s, controller %s (%s), rank %d, %d clients, seed %d",
            exp.method, exp.controller, exp.solver, exp.rank, self.num_clients, exp.seed)
        log(INFO, "\t└── queues Q_k: %s", np.array2string(self.queues, precision=3))


def run_server(grid: Grid, cfg: RunConfig, out: str | Path | None = None,
               timeout_s: float = 3600.0) -> RunResult:
    """All ``training.rounds`` rounds of ``cfg`` over ``grid``; results written to ``out``."""
    trainer = Trainer(cfg)
    out_path = Path(out).resolve() if out else None
    if out_path is not None:
        trainer.prepare_output(out_path)
    strategy = TSFAStrategy(trainer)
    strategy.start(grid, strategy.initial_arrays(), num_rounds=trainer.system.training.rounds,
                   timeout=timeout_s)
    result = trainer.result(strategy.rounds, strategy.clients, out_path)
    if out_path is not None:
        log(INFO, "tsfa results in %s", out_path)
    return result


def make_server_app(cfg: RunConfig | None = None, out: str | Path | None = None,
                    sink: list | None = None) -> ServerApp:
    """A ServerApp for ``cfg`` (None: from ``context.run_config``, ``out`` likewise); the
    :class:`~tsfa.fl.loop.RunResult` is appended to ``sink`` when given."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = cfg or run_config_from_flower(context.run_config)
        out_dir = out if cfg is not None else out_from_flower(context.run_config)
        result = run_server(grid, run_cfg, out_dir)
        if sink is not None:
            sink.append(result)

    return app


app = make_server_app()  # `flwr run`: settings from [tool.flwr.app.config]

__all__ = ["TSFAStrategy", "run_server", "make_server_app", "app"]
