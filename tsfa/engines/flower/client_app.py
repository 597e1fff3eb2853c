"""The tsfa ClientApp (flwr Message API): one federated client of docs/model.md §5-§6.

``train``: receive the global factors and head (ArrayRecord ``arrays``) and this client's
``rho`` and ``bandwidth_hz`` from the TSFA controller (ConfigRecord ``config``), run
:func:`tsfa.fl.loop.client_update` (local training, SOFT or a baseline compressor with
error feedback) and reply with the upload and head (ArrayRecord ``upload``), the method
(ConfigRecord ``upload_meta``) and ``bits`` / ``train_loss`` (MetricRecord ``metrics``).
The error-feedback memory stays on the client, in ``context.state["tsfa.memory"]``.

``query``: reply with the node's ``partition-id`` (the client index k of the controller).

The client rebuilds the run's task from the seed (data, partition and backbone are deterministic),
so client k trains on exactly the data and random draws of client k in the in-process engine.
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
from tsfa.fl.loop import Trainer

MEMORY_KEY = "tsfa.memory"
_TRAINERS: dict[str, Trainer] = {}  # one per run config and process (Ray actors are reused)


def trainer_for(cfg: RunConfig) -> Trainer:
    """The (cached) trainer of ``cfg`` in this process: model, data partition, compressor."""
    key = cfg.to_toml()
    if key not in _TRAINERS:
        _TRAINERS.clear()
        _TRAINERS[key] = Trainer(cfg)
    return _TRAINERS[key]


def partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError("node_config has no 'partition-id': start each SuperNode with "
                         "--node-config 'partition-id=k num-partitions=K'")
    return int(context.node_config["partition-id"])


def handle_train(cfg: RunConfig, msg: Message, context: Context) -> Message:
    """One round of client work for the ``train`` message ``msg``."""
    trainer = trainer_for(cfg)
    k = partition_id(context)
    conf = msg.content["config"]
    params, head = record_to_model(msg.content["arrays"])
    memory = (record_to_memory(context.state[MEMORY_KEY]) if MEMORY_KEY in context.state
              else trainer.compressor.init(params))
    update = trainer.client_update(int(conf["round"]), k, params, head, memory, float(conf["rho"]))
    context.state[MEMORY_KEY] = memory_to_record(update.memory)
    content = RecordDict({
        "upload": upload_to_record(update.upload, update.head),
        "upload_meta": upload_meta(update.upload),
        "client": ConfigRecord({"partition-id": k, "round": int(conf["round"])}),
        "metrics": MetricRecord({"bits": update.bits, "train_loss": update.train_loss,
                                 "num-examples": int(len(trainer.client_data[k][1]))}),
    })
    return Message(content=content, reply_to=msg)


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

__all__ = ["make_client_app", "handle_train", "trainer_for", "app"]
