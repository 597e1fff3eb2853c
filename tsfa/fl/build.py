"""Build what a run trains from its config: the task, the LoRA model and the clients' data.

The server and every client call the same functions with the same seed, so each process (the
in-process engine, a Flower SuperNode, a resumed run) builds bit-identical data, partition,
backbone and initial LoRA factors. Nothing here holds a policy or a system realisation.
"""

from __future__ import annotations

import torch

from tsfa.config.experiment import RunConfig
from tsfa.fl.lora import apply_lora
from tsfa.fl.tasks import Task, build_model, build_task
from tsfa.fl.vit import ViT
from tsfa.maths.rng import substream

Data = tuple[torch.Tensor, torch.Tensor]  # (x (N, C, H, W), y (N,))


def run_task(cfg: RunConfig) -> Task:
    """The run's data, label-Dirichlet partition and backbone (deterministic in the seed)."""
    exp, clients = cfg.experiment, cfg.system.clients
    torch.manual_seed(exp.seed)  # any init that takes no generator
    return build_task(exp, clients.num_clients, clients.dirichlet_alpha)


def lora_model(cfg: RunConfig, task: Task, device: torch.device | str = "cpu") -> ViT:
    """The backbone with LoRA (rank ``experiment.rank``) on ``device``; the initial factors
    (B = 0, A Kaiming) come from the seed's ``("training", 1)`` substream."""
    exp = cfg.experiment
    torch.manual_seed(exp.seed)
    model = build_model(task, exp)
    gen = torch.Generator().manual_seed(int(substream(exp.seed, "training", 1).integers(2**62)))
    apply_lora(model, exp.rank, exp.lora_alpha, generator=gen)
    return model.to(device)


def client_data(task: Task, k: int, device: torch.device | str = "cpu") -> Data:
    """Client k's training samples (its part of the partition) on ``device``."""
    xs, ys = task.train.tensors()
    idx = torch.from_numpy(task.parts[k])
    return xs[idx].to(device), ys[idx].to(device)


def test_data(task: Task, device: torch.device | str = "cpu") -> Data:
    """The server's test set on ``device``."""
    x, y = task.test.tensors()
    return x.to(device), y.to(device)


__all__ = ["Data", "run_task", "lora_model", "client_data", "test_data"]
