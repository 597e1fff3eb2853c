"""The in-process engine: one :class:`~tsfa.fl.server.Server` and K
:class:`~tsfa.fl.client.Client` s in this process, driven round by round.

Each round: the server plans (fading, rho_k, w_k, who sends), the client pool runs every client
(``clients="batched"``: all local training in one batched computation, the default;
``"sequential"``: one after another, the reference), the server aggregates, updates its queues
and evaluates. After every round the driver appends the round's rows to ``rounds.csv`` and
``clients.csv`` and writes a checkpoint (server state and every client's error-feedback memory),
so ``resume`` continues a stopped run to exactly the result of an uninterrupted one (randomness
is stateless per (seed, stream, round, client)).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from tsfa.config.experiment import RunConfig
from tsfa.engines.output import RunOutput, RunResult
from tsfa.experiments.plan import RunPlan, plan_run
from tsfa.experiments.results import check_same_config
from tsfa.fl.build import client_data
from tsfa.fl.client import Client, ClientState, GlobalModel
from tsfa.fl.device import resolve_device
from tsfa.fl.pool import make_pool
from tsfa.fl.server import ServerState, build_server
from tsfa.fl.tasks import Task

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: str | Path, server: ServerState, clients: list[ClientState]) -> None:
    """Write the server state and the clients' memories (tensors, lists, ints only) atomically."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save({"round": server.round, "factors": server.model.factors,
                "head": server.model.head,
                "queues": torch.as_tensor(server.queues, dtype=torch.float64),
                "memories": [c.memory for c in clients]}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu"
                    ) -> tuple[ServerState, list[ClientState]]:
    """Inverse of :func:`save_checkpoint`; tensors moved to ``device`` (a checkpoint written on
    any device loads on any other)."""
    state = torch.load(path, map_location="cpu", weights_only=True)

    def move(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, list | tuple):
            return type(x)(move(v) for v in x)
        return {k: move(v) for k, v in x.items()} if isinstance(x, dict) else x

    glob = GlobalModel(move(state["factors"]), move(state["head"]))
    server = ServerState(int(state["round"]), glob, state["queues"].numpy())
    return server, [ClientState(move(m)) for m in state["memories"]]


class LocalEngine:
    """Server and clients of ``cfg`` in this process, on ``device`` ("auto", "cpu", "cuda",
    "mps" or a torch.device), with local training at ``precision`` ("fp32" or "bf16")."""

    def __init__(self, cfg: RunConfig | RunPlan, clients: str = "batched",
                 device: torch.device | str = "cpu", precision: str = "fp32",
                 task: Task | None = None):
        if isinstance(cfg, RunPlan) and task is not None:
            raise ValueError("task: a RunPlan carries its task; pass task only with a RunConfig")
        self.plan = cfg if isinstance(cfg, RunPlan) else plan_run(cfg, task)
        cfg = self.cfg = self.plan.cfg
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.server = build_server(self.plan, self.device)
        task, model = self.plan.task, self.server.model
        self.clients = [Client.from_config(cfg, k, client_data(task, k, self.device), model,
                                           precision)
                        for k in range(self.server.num_clients)]
        self.pool = make_pool(clients, self.clients)
        self.options = {"clients": clients, "device": str(self.device), "precision": precision}

    def initial_states(self) -> tuple[ServerState, list[ClientState]]:
        server = self.server.initial_state()
        return server, [c.init_state(server.model.factors) for c in self.clients]

    def round(self, server: ServerState, clients: list[ClientState]):
        """One round: plan, every client, aggregate. Returns (server state, client states,
        round record)."""
        started = time.perf_counter()
        plan = self.server.plan(server)
        results = self.pool.run(server.model, clients, [plan.task(k) for k in
                                                        range(len(self.clients))])
        new, record = self.server.finish(server, plan, [u for u, _ in results], started)
        return new, [s for _, s in results], record

    def run(self, out: str | Path | None = None, resume: bool = False,
            stop_after: int | None = None,
            on_round: Callable[[int, dict], None] | None = None) -> RunResult:
        """All ``training.rounds`` rounds (or until ``stop_after`` rounds in total).

        ``out``: result folder (tables appended and a checkpoint written after every round);
        ``resume``: continue from ``out/checkpoint.pt`` (the saved config must equal this one:
        ValueError naming the differing keys); ``on_round(rounds_done, round_row)`` after each.
        """
        output = RunOutput(out)
        server, clients = self.initial_states()
        ckpt = output.out / CHECKPOINT if output.out is not None else None
        if resume and ckpt is not None and ckpt.is_file():
            check_same_config(output.out, self.cfg.to_toml())
            server, clients = load_checkpoint(ckpt, self.device)
        output.start(self.plan, resume_round=server.round, **self.options)
        total = self.cfg.system.training.rounds
        total = total if stop_after is None else min(stop_after, total)
        while server.round < total:
            server, clients, record = self.round(server, clients)
            output.append(record)
            if ckpt is not None:
                save_checkpoint(ckpt, server, clients)
            if on_round is not None:
                on_round(server.round, record.round)
        return output.result(self.server.system)


def train(cfg: RunConfig | RunPlan, out: str | Path | None = None, resume: bool = False,
          stop_after: int | None = None, *, clients: str = "batched",
          device: torch.device | str = "cpu", precision: str = "fp32", task: Task | None = None,
          on_round: Callable[[int, dict], None] | None = None) -> RunResult:
    """Build and run one federated fine-tuning experiment in this process (see
    :class:`LocalEngine`): ``cfg`` a run config (planned here, :func:`plan_run`) or an already
    made :class:`RunPlan`; ``task``: an already built task of ``cfg`` (saves rebuilding it)."""
    engine = LocalEngine(cfg, clients, device, precision, task)
    return engine.run(out, resume=resume, stop_after=stop_after, on_round=on_round)


__all__ = ["CHECKPOINT", "LocalEngine", "train", "save_checkpoint", "load_checkpoint"]
