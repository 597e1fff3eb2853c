"""The tsfa ClientApp (flwr Message API): one federated client of docs/model.md §5-§6.

``train``: receive the global factors and head (ArrayRecord ``arrays``) and this client's
``round``, ``rho`` and ``send`` (ConfigRecord ``config``: nothing else of the controller's
decision), run :meth:`tsfa.fl.client.Client.step` (local training, SOFT or a baseline compressor
with error feedback) and reply with the upload and head (ArrayRecord ``upload``, absent when the
client defers), the method (ConfigRecord ``upload_meta``) and ``bits`` / ``train_loss`` /
``sent`` (MetricRecord ``metrics``). The error-feedback memory stays on the client, in
``context.state["tsfa.memory"]`` tagged with the round after which it was saved, and, when the
SuperNode's ``--node-config`` has ``state-dir="..."``, also in a file per round there (the two
newest kept), so that a resumed run (a new Flower run, with an empty context) continues each
client from its memory after the last completed round. Round t uses the newest memory saved
after a round before t; a client that has none (t = 0, or a device restarted without a state
dir) starts from an empty memory, and says so in its reply (``fresh_memory``).

``query``: reply with the node's ``partition-id`` (the client index k of the controller).

A client process builds only clients: the run's training data and partition (rebuilt from the
seed, so client k trains on exactly the data and random draws of client k in the in-process
engine), the model and the compressor; no policy, no system realisation, no test set.
"""

from __future__ import annotations

from logging import WARNING
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore import log

from tsfa.config.experiment import RunConfig
from tsfa.engines.flower.records import (
    memory_to_record,
    record_to_memory,
    record_to_model,
    upload_meta,
    upload_to_record,
)
from tsfa.engines.flower.settings import run_config_from_flower
from tsfa.experiments.cache import config_hash
from tsfa.fl.build import client_data, lora_model, run_task
from tsfa.fl.client import Client, ClientState, ClientTask, GlobalModel

MEMORY_KEY = "tsfa.memory"
MEMORY_ROUND_KEY = "tsfa.memory_round"
KEEP_ROUNDS = 2  # memory files kept per client in the state dir
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


def state_dir(cfg: RunConfig, context: Context, lineage: str) -> Path | None:
    """This client's memory folder under the node's ``state-dir`` (None without one), one per
    run config and run lineage (a fresh run's id, kept by its resumed runs), so no run reads
    the memories of another."""
    root = context.node_config.get("state-dir", "")
    if not root or not lineage:
        return None
    return (Path(str(root)) / config_hash(cfg) / str(lineage)
            / f"client{partition_id(context)}")


def _round_of(path: Path) -> int:
    return int(path.stem.removeprefix("round"))


def _saved(folder: Path) -> list[Path]:
    """The memory files ``round{t}.pt`` in ``folder``, oldest round first."""
    return sorted(folder.glob("round*.pt"), key=_round_of)


def load_memory(cfg: RunConfig, context: Context, client: Client, glob: GlobalModel,
                t: int, lineage: str = "") -> tuple[ClientState, bool]:
    """The newest memory saved after a round before ``t`` (context state, else the state dir),
    and whether none was found (a fresh, empty memory; expected at t = 0 only)."""
    st = context.state
    if MEMORY_KEY in st and int(st[MEMORY_ROUND_KEY]["round"]) < t:
        return ClientState(record_to_memory(st[MEMORY_KEY])), False
    folder = state_dir(cfg, context, lineage)
    if folder is not None and folder.is_dir():
        saved = [f for f in _saved(folder) if _round_of(f) < t]
        if saved:
            memory = torch.load(saved[-1], map_location="cpu", weights_only=True)
            return ClientState(memory), False
    return client.init_state(glob.factors), t > 0


def save_memory(cfg: RunConfig, context: Context, state: ClientState, t: int,
                lineage: str = "") -> None:
    """The memory after round ``t``: in the context state and, with a state dir, on disk
    (atomically; the :data:`KEEP_ROUNDS` newest files kept)."""
    context.state[MEMORY_KEY] = memory_to_record(state.memory)
    context.state[MEMORY_ROUND_KEY] = ConfigRecord({"round": t})
    folder = state_dir(cfg, context, lineage)
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"round{t}.tmp"
    torch.save(state.memory, tmp)
    tmp.replace(folder / f"round{t}.pt")
    for old in _saved(folder)[:-KEEP_ROUNDS]:
        old.unlink()


def client_round(cfg: RunConfig, content: RecordDict, context: Context) -> RecordDict:
    """One round of client work: the reply content for the ``train`` content ``content``."""
    client = client_for(cfg, partition_id(context))
    conf = content["config"]
    glob = record_to_model(content["arrays"])
    task = ClientTask(int(conf["round"]), float(conf["rho"]), bool(conf["send"]))
    lineage = str(conf.get("lineage", ""))
    state, fresh = load_memory(cfg, context, client, glob, task.round, lineage)
    if fresh:
        log(WARNING, "client %d, round %d: no saved memory; starting from an empty one",
            client.index, task.round)
    update, state = client.step(glob, state, task)
    save_memory(cfg, context, state, task.round, lineage)
    reply = RecordDict({
        "client": ConfigRecord({"partition-id": client.index, "round": task.round}),
        "metrics": MetricRecord({"bits": update.bits, "train_loss": update.train_loss,
                                 "num-examples": update.num_examples, "sent": int(update.sent),
                                 "fresh_memory": int(fresh)}),
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
