"""The tsfa ClientApp (flwr Message API): one federated client of docs/model.md §5-§6.

``train``: receive the global factors and head (ArrayRecord ``arrays``) and this client's
``round``, ``rho`` and ``send`` (ConfigRecord ``config``: nothing else of the controller's
decision), run :meth:`tsfa.fl.client.Client.step` (local training, SOFT or a baseline compressor
with error feedback) and reply with the upload and head (ArrayRecord ``upload``, absent when the
client defers), the method (ConfigRecord ``upload_meta``) and ``bits`` / ``train_loss`` /
``sent`` (MetricRecord ``metrics``). The error-feedback memory stays on the client, in
``context.state["tsfa.memory"]``.

``query``: reply with the node's ``partition-id`` (the client index k of the controller).

A client process builds only clients: the run's training data and partition (rebuilt from the
seed, so client k trains on exactly the data and random draws of client k in the in-process
engine), the model and the compressor; no policy, no system realisation, no test set.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from tsfa.config.experiment import RunConfig
from tsfa.engines.flower.records import (
    memory_to_record,
    record_to_memory,
    record_to_model,
    upload_meta,
    upload_to_record,
)
from tsfa.engines.flower.settings import run_config_from_flower
from tsfa.fl.build import client_data, lora_model, run_task
from tsfa.fl.client import Client, ClientState, ClientTask

MEMORY_KEY = "tsfa.memory"
_CLIENTS: dict[str, list[Client]] = {}  # per run config and process (Ray actors are reused)


def client_for(cfg: RunConfig, k: int) -> Client:
    """Client k of ``cfg`` in this process. The first call builds every client of the run (one
    shared model, each client's slice of the training data; the task itself, with its test set,
    is dropped) and caches them, since a Ray actor may serve any partition."""
    key = cfg.to_toml()
    if key not in _CLIENTS:
        _CLIENTS.clear()
        task = run_task(cfg)
        model = lora_model(cfg, task)
        _CLIENTS[key] = [Client.from_config(cfg, j, client_data(task, j), model)
                         for j in range(len(task.parts))]
    return _CLIENTS[key][k]


def partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError("node_config has no 'partition-id': start each SuperNode with "
                         "--node-config 'partition-id=k num-partitions=K'")
    return int(context.node_config["partition-id"])


def client_round(cfg: RunConfig, content: RecordDict, context: Context) -> RecordDict:
    """One round of client work: the reply content for the ``train`` content ``content``."""
    client = client_for(cfg, partition_id(context))
    conf = content["config"]
    glob = record_to_model(content["arrays"])
    state = (ClientState(record_to_memory(context.state[MEMORY_KEY]))
             if MEMORY_KEY in context.state else client.init_state(glob.factors))
    task = ClientTask(int(conf["round"]), float(conf["rho"]), bool(conf["send"]))
    update, state = client.step(glob, state, task)
    context.state[MEMORY_KEY] = memory_to_record(state.memory)
    reply = RecordDict({
        "client": ConfigRecord({"partition-id": client.index, "round": task.round}),
        "metrics": MetricRecord({"bits": update.bits, "train_loss": update.train_loss,
                                 "num-examples": update.num_examples, "sent": int(update.sent)}),
    })
    if update.sent:
        reply["upload"] = upload_to_record(update.upload, update.head)
        reply["upload_meta"] = upload_meta(update.upload)
    return reply


def handle_train(cfg: RunConfig, msg: Message, context: Context) -> Message:
    """Reply to the ``train`` message ``msg`` (:func:`client_round`)."""
    return Message(content=client_round(cfg, msg.content, context), reply_to=msg)


def make_client_app(cfg: RunConfig | None = None) -> ClientApp:
    """A ClientApp for ``cfg``; None reads the tsfa settings from ``context.run_config``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(cfg or run_config_from_flower(context.run_config), msg, context)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        content = RecordDict({"client": ConfigRecord({"partition-id": partition_id(context)})})
        return Message(content=content, reply_to=msg)

    return app


app = make_client_app()  # `flwr run`: settings from [tool.flwr.app.config]

__all__ = ["make_client_app", "client_round", "handle_train", "client_for", "app"]
