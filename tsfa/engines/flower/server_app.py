"""The tsfa ServerApp and TSFA strategy (flwr Message API, docs/model.md §4-§6).

:class:`TSFAStrategy` drives a :class:`tsfa.fl.server.Server` over a Flower Grid:

* ``configure_train``: fading draw and the policy's decision (:meth:`Server.plan`); one message
  per client with the global factors and head (ArrayRecord) and only what the client reads of
  the decision: its ``round``, ``rho`` and ``send`` (ConfigRecord);
* ``aggregate_train``: latency from the real payload bits, virtual-queue update, separate
  aggregation of the senders, FedAvg head and the round's metrics (:meth:`Server.finish`); the
  round's rows are appended to the result folder (:class:`tsfa.engines.output.RunOutput`).

Client k of the controller is the SuperNode whose ``node_config["partition-id"]`` is k, found
once with a ``query`` message. Every client takes part in every round (a deferred client still
replies, without an upload); a missing or failed reply stops the run with the node's error.
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
from tsfa.engines.output import RunOutput, RunResult
from tsfa.experiments.plan import plan_run
from tsfa.fl.client import ClientUpdate
from tsfa.fl.compress import head_bits, payload_bits
from tsfa.fl.server import Server, build_server


class TSFAStrategy(Strategy):
    """The TSFA controller and SOFT (or a baseline) aggregation over a Flower Grid: holds the
    :class:`~tsfa.fl.server.ServerState` and appends each round's rows to ``output``."""

    def __init__(self, server: Server, output: RunOutput, node_timeout_s: float = 600.0):
        self.server, self.output = server, output
        self.state = server.initial_state()
        self.nodes: dict[int, int] = {}  # client index k -> node id
        self.node_timeout_s = node_timeout_s
        self._plan = None
        self._t0 = 0.0

    @property
    def num_clients(self) -> int:
        return self.server.num_clients

    def initial_arrays(self) -> ArrayRecord:
        return model_to_record(self.state.model)

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
        """Decide round t = server_round - 1 and address each client with its own part."""
        self._t0 = time.perf_counter()
        if not self.nodes:
            self.nodes = self.discover(grid)
        self._plan = self.server.plan(self.state)
        messages = []
        for k in range(self.num_clients):
            task = self._plan.task(k)
            conf = ConfigRecord({**dict(config), "round": task.round, "rho": task.rho,
                                 "send": task.send})
            messages.append(Message(RecordDict({"arrays": arrays, "config": conf}),
                                    message_type=MessageType.TRAIN, dst_node_id=self.nodes[k]))
        return messages

    def _update(self, t: int, reply: Message) -> ClientUpdate:
        if reply.has_error():
            raise RuntimeError(f"round {t}: node {reply.metadata.src_node_id} failed: "
                               f"{reply.error.reason}")
        c = reply.content
        k, metrics = int(c["client"]["partition-id"]), c["metrics"]
        upload, head, bits = None, None, 0.0
        if "upload" in c:
            upload, head = record_to_upload(c["upload"], c["upload_meta"])
            bits = float(payload_bits(upload) + head_bits(head))
        if bits != float(metrics["bits"]):
            raise RuntimeError(f"round {t}: client {k} counted {metrics['bits']} bits, the "
                               f"server received {bits}")
        return ClientUpdate(k, upload, head, bits, float(metrics["train_loss"]),
                            int(metrics["num-examples"]))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Latency, queues, aggregation of the senders, FedAvg head and the round's metrics."""
        t = server_round - 1
        by_client = {u.client: u for u in (self._update(t, r) for r in replies)}
        if sorted(by_client) != list(range(self.num_clients)):
            raise RuntimeError(f"round {t}: replies from clients {sorted(by_client)}, expected "
                               f"0..{self.num_clients - 1}")
        updates = [by_client[k] for k in range(self.num_clients)]
        self.state, record = self.server.finish(self.state, self._plan, updates, self._t0)
        self.output.append(record)
        metrics = MetricRecord({k: float(v) for k, v in record.round.items()
                                if isinstance(v, int | float) and math.isfinite(v)})
        return model_to_record(self.state.model), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # the global model is evaluated on the server, in aggregate_train

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        exp = self.server.cfg.experiment
        log(INFO, "\t├── tsfa: method %s, controller %s (%s), rank %d, %d clients, seed %d",
            exp.method, exp.controller, exp.solver, exp.rank, self.num_clients, exp.seed)
        log(INFO, "\t└── queues Q_k: %s", np.array2string(self.state.queues, precision=3))


def run_server(grid: Grid, cfg: RunConfig, out: str | Path | None = None,
               timeout_s: float = 3600.0) -> RunResult:
    """All ``training.rounds`` rounds of ``cfg`` over ``grid``; results written to ``out``."""
    plan = plan_run(cfg)
    server = build_server(plan)
    output = RunOutput(Path(out).resolve() if out else None)
    output.start(plan, engine="flower")
    strategy = TSFAStrategy(server, output)
    strategy.start(grid, strategy.initial_arrays(), num_rounds=cfg.system.training.rounds,
                   timeout=timeout_s)
    if output.out is not None:
        log(INFO, "tsfa results in %s", output.out)
    return output.result(server.system)


def make_server_app(cfg: RunConfig | None = None, out: str | Path | None = None,
                    sink: list | None = None) -> ServerApp:
    """A ServerApp for ``cfg`` (None: from ``context.run_config``, ``out`` likewise); the
    :class:`~tsfa.engines.output.RunResult` is appended to ``sink`` when given."""
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
