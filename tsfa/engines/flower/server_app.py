"""The tsfa ServerApp and TSFA strategy (flwr Message API, docs/model.md §4-§6).

:class:`TSFAStrategy` drives a :class:`tsfa.fl.server.Server` over a Flower Grid:

* ``configure_train``: fading draw and the policy's decision (:meth:`Server.plan`); one message
  per client with the global factors and head (ArrayRecord) and only what the client reads of
  the decision: its ``round``, ``rho`` and ``send`` (ConfigRecord);
* ``aggregate_train``: latency from the real payload bits, virtual-queue update, separate
  aggregation of the senders, FedAvg head and the round's metrics (:meth:`Server.finish`); the
  round's rows are appended to the result folder (:class:`tsfa.engines.output.RunOutput`).

Client k of the controller is the SuperNode whose ``node_config["partition-id"]`` is k, found
with a ``query`` message: the run waits up to ``join_timeout_s`` for all K, starts with those
present, and asks every node that appears later (a late or restarted device) for its partition
before each round; ``nodes.csv`` records who joined and when. Every client present is addressed
every round (a deferred client still replies, without an upload).

Drop-outs (docs/flower.md): a client whose reply does not arrive within ``round_timeout_s``, or
whose node the SuperLink reports unavailable (``NODE_UNAVAILABLE``), or that is absent, is
*lost*: nothing of it is aggregated, ``clients.csv`` marks it (``lost``) and its queue counts the
planned upload (:meth:`tsfa.fl.server.Server.finish`). Any other error reply (the ClientApp
raised) stops the run, naming the client. Each reply's serialised size (its records as Flower
sends them) is logged as ``message_bytes``.

Resume: after every round the server state (round, global factors and head, queues) is written
to ``out/checkpoint.pt``; ``resume`` continues from it with the saved config (the clients' error
feedback memories stay on the devices: docs/flower.md).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from tsfa.config.experiment import RunConfig
from tsfa.engines.flower.records import content_bytes, model_to_record, record_to_upload
from tsfa.engines.flower.settings import FlowerOptions, flower_options, run_config_from_flower
from tsfa.engines.local import CHECKPOINT, load_checkpoint, save_checkpoint
from tsfa.engines.output import RunOutput, RunResult
from tsfa.experiments.plan import plan_run
from tsfa.experiments.results import check_same_config
from tsfa.fl.client import ClientUpdate
from tsfa.fl.compress import head_bits, payload_bits
from tsfa.fl.server import Server, ServerState, build_server

LINEAGE = "lineage.txt"  # the id under which the clients keep this run's memories


class TSFAStrategy(Strategy):
    """The TSFA controller and SOFT (or a baseline) aggregation over a Flower Grid: holds the
    :class:`~tsfa.fl.server.ServerState` and appends each round's rows to ``output``."""

    def __init__(self, server: Server, output: RunOutput, options: FlowerOptions | None = None,
                 state: ServerState | None = None, lineage: str = ""):
        self.server, self.output, self.lineage = server, output, lineage
        self.options = options or FlowerOptions()
        self.state = server.initial_state() if state is None else state
        self.first_round = self.state.round  # rounds done before this run (resume)
        self.nodes: dict[int, int] = {}  # client index k -> node id
        self.joined: list[dict] = []  # who joined, and when (nodes.csv)
        self._asked: set[int] = set()  # node ids already asked for their partition
        self._plan = None
        self._t0 = 0.0

    @property
    def num_clients(self) -> int:
        return self.server.num_clients

    def initial_arrays(self) -> ArrayRecord:
        return model_to_record(self.state.model)

    def round_of(self, server_round: int) -> int:
        """Round t of the run for Flower's ``server_round`` (1-based, restarted on resume)."""
        return self.first_round + server_round - 1

    def wait_for_nodes(self, grid: Grid) -> None:
        """Ask the connected nodes for their partitions until all K clients are mapped or
        ``join_timeout_s`` has passed, then start with those mapped (a node still busy with an
        earlier run answers late: it is asked again)."""
        deadline = time.monotonic() + self.options.join_timeout_s
        while True:
            left = deadline - time.monotonic()
            self.discover(grid, timeout_s=max(1.0, min(30.0, left)))
            if len(self.nodes) == self.num_clients:
                return
            if time.monotonic() > deadline:
                break
            log(INFO, "Waiting for nodes: %d of %d clients mapped (%d connected)",
                len(self.nodes), self.num_clients, len(list(grid.get_node_ids())))
            time.sleep(1.0)
        if not self.nodes:
            raise RuntimeError(f"no node answered within {self.options.join_timeout_s:.0f} s "
                               f"(join-timeout-s); {len(list(grid.get_node_ids()))} connected")
        log(WARNING, "clients %s have no node after %.0f s: starting without them",
            sorted(set(range(self.num_clients)) - set(self.nodes)), self.options.join_timeout_s)

    def discover(self, grid: Grid, timeout_s: float = 30.0) -> None:
        """Ask every node not yet mapped for its partition-id (client index k)."""
        new = [n for n in grid.get_node_ids() if n not in self._asked]
        if not new:
            return
        msgs = [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n) for n in new]
        for reply in grid.send_and_receive(msgs, timeout=timeout_s):
            if reply.has_error():
                continue  # asked again later
            node, k = reply.metadata.src_node_id, int(reply.content["client"]["partition-id"])
            if not 0 <= k < self.num_clients:
                raise RuntimeError(f"node {node} has partition-id {k}: partition ids must be "
                                   f"0..{self.num_clients - 1} (clients.num_clients)")
            self._asked.add(node)
            if self.nodes.get(k) != node:
                self.nodes[k] = node
                self.joined.append({"round": self.state.round, "client": k, "node_id": node})
                self.output.write_table("nodes", self.joined)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Decide round t and address each client present with its own part."""
        self._t0 = time.perf_counter()
        if not self.nodes:
            self.wait_for_nodes(grid)
        else:
            self.discover(grid)
        self._plan = self.server.plan(self.state)
        messages = []
        for k in sorted(self.nodes):
            task = self._plan.task(k)
            conf = ConfigRecord({**dict(config), "round": task.round, "rho": task.rho,
                                 "send": task.send, "lineage": self.lineage})
            messages.append(Message(RecordDict({"arrays": arrays, "config": conf}),
                                    message_type=MessageType.TRAIN, dst_node_id=self.nodes[k]))
        return messages

    def _update(self, t: int, reply: Message) -> ClientUpdate | None:
        """The client's update, or None for an error reply of an unavailable node."""
        if reply.has_error():
            if reply.error.code in (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE):
                log(WARNING, "round %d: a node is unavailable (%s)", t, reply.error.reason)
                return None
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
                            int(metrics["num-examples"]), message_bytes=content_bytes(c))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Latency, queues, aggregation of the senders, FedAvg head and the round's metrics;
        a client without a reply is lost (module docstring)."""
        t = self.round_of(server_round)
        by_client = {u.client: u for u in (self._update(t, r) for r in replies) if u is not None}
        lost = [k for k in range(self.num_clients) if k not in by_client]
        if lost:
            log(WARNING, "round %d: no reply from clients %s: their uploads are lost", t, lost)
        updates = [by_client.get(k) or ClientUpdate.lost_upload(k)
                   for k in range(self.num_clients)]
        self.state, record = self.server.finish(self.state, self._plan, updates, self._t0)
        self.output.append(record)
        if self.output.out is not None:
            save_checkpoint(self.output.out / CHECKPOINT, self.state, [])
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
               options: FlowerOptions | None = None) -> RunResult:
    """The rounds of ``cfg`` over ``grid`` (from its checkpoint in ``out`` with
    ``options.resume``); results written to ``out``."""
    options = options or FlowerOptions()
    plan = plan_run(cfg)
    server = build_server(plan)
    output = RunOutput(Path(out).resolve() if out else None)
    state = None
    ckpt = output.out / CHECKPOINT if output.out is not None else None
    if options.resume:
        if ckpt is None or not ckpt.is_file():
            raise ValueError(f"resume: no {CHECKPOINT} in the result folder {output.out} "
                             "(flower run config key 'out')")
        check_same_config(output.out, cfg.to_toml())
        state, _ = load_checkpoint(ckpt)
        log(INFO, "tsfa: resuming after round %d", state.round - 1)
    # the run's lineage: new for a fresh run, kept by a resumed one; the clients keep their
    # memories per lineage, so a fresh run never reads an earlier run's memories
    lineage_file = output.out / LINEAGE if output.out is not None else None
    lineage = (lineage_file.read_text().strip() if options.resume and lineage_file.is_file()
               else uuid.uuid4().hex)
    strategy = TSFAStrategy(server, output, options, state, lineage)
    nodes_csv = output.out / "nodes.csv" if output.out is not None else None
    if options.resume and nodes_csv.is_file():  # who joined before, kept
        import pandas as pd

        strategy.joined = pd.read_csv(nodes_csv).to_dict("records")
    output.start(plan, resume_round=strategy.first_round, engine="flower-deployment"
                 if options.deployment else "flower")
    if lineage_file is not None:
        lineage_file.write_text(lineage)
    remaining = cfg.system.training.rounds - strategy.first_round
    if remaining > 0:
        strategy.start(grid, strategy.initial_arrays(), num_rounds=remaining,
                       timeout=options.round_timeout_s)
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
        options = flower_options(context.run_config)
        out_dir = out if cfg is not None else options.out
        result = run_server(grid, run_cfg, out_dir, options)
        if sink is not None:
            sink.append(result)

    return app


app = make_server_app()  # `flwr run`: settings from [tool.flwr.app.config]

__all__ = ["TSFAStrategy", "run_server", "make_server_app", "app"]
