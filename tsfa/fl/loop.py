"""The federated round loop (docs/model.md §4-§6): channel -> policy -> local training -> compression
-> upload latency from the real payloads -> separate aggregation -> queues -> metrics.

Randomness is stateless per (seed, stream, round, client) (:func:`tsfa.maths.rng.substream`), so a run
resumed from its per-round checkpoint continues to exactly the result of an uninterrupted run, and
changing the compressor never changes the fading draws.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from tsfa.config.experiment import RunConfig
from tsfa.config.spec import SystemSpec
from tsfa.control.from_spec import make_policy
from tsfa.fl import metrics as mx
from tsfa.fl.aggregate import aggregate, fedavg
from tsfa.fl.compress import Upload, head_bits, make_compressor, payload_bits
from tsfa.fl.lora import (
    apply_lora,
    get_factors,
    get_head_state,
    set_factors,
    set_head_state,
    soft_regulariser,
    trainable_parameters,
)
from tsfa.fl.partition import class_histograms, client_weights
from tsfa.fl.tasks import Task, build_model, build_task
from tsfa.fl.vit import ViT, flops_per_sample
from tsfa.maths import wireless as wl
from tsfa.maths.instance import SystemInstance, realize
from tsfa.maths.rng import substream
from tsfa.reporting.results import prepare_dir, write_table


@dataclass(frozen=True)
class RunResult:
    """``rounds``: one row per round; ``clients``: one row per (round, client)."""

    rounds: pd.DataFrame
    clients: pd.DataFrame
    system: SystemSpec
    out: Path | None


def resolve_system(cfg: RunConfig, model: ViT, data_sizes) -> SystemSpec:
    """The system spec of the model actually trained: LoRA modules, head size, FLOPs per sample
    and data sizes come from the model and the partition (see :mod:`tsfa.config.experiment`)."""
    vit, r = model.cfg, cfg.experiment.rank
    head = vit.dim * vit.num_classes + vit.num_classes
    ranks = [c for c in cfg.system.lora.rank_candidates if c <= vit.dim] or [r]
    return cfg.system.replace(**{
        "lora.n_modules": 2 * vit.depth, "lora.d_in": vit.dim, "lora.d_out": vit.dim,
        "lora.head_params": head, "lora.rank_candidates": ranks,
        "lora.lora_alpha": cfg.experiment.lora_alpha,
        "compute.flops_per_sample": flops_per_sample(vit),
        "clients.data_sizes": [int(s) for s in data_sizes],
        "control.budget_reference_rank": r,
        "bound.spectrum_dim": max(vit.dim, max(ranks)),
    })


def local_train(model: ViT, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float,
                optimizer: str, zeta: float, rng: np.random.Generator) -> float:
    """tau local steps on one client's data; loss = CE + zeta sum_m R(B_m, A_m) (docs/model.md §5).
    Returns the last task loss. A fresh optimizer each round (no optimizer state on the air)."""
    params = [p for _, p in trainable_parameters(model)]
    opt = (torch.optim.AdamW(params, lr=lr, weight_decay=0.0) if optimizer == "adamw"
           else torch.optim.SGD(params, lr=lr))
    model.train()
    loss_val = math.nan
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(len(y), size=min(batch, len(y))))
        task_loss = F.cross_entropy(model(x[idx]), y[idx])
        loss = task_loss + zeta * soft_regulariser(model) if zeta > 0 else task_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_val = task_loss.item()
    return loss_val


@dataclass(frozen=True, eq=False)
class RoundPlan:
    """The server's per-round decision: fading power gains ``gains`` (K,) [Hz, gamma_k], ratios
    ``rho`` (K,) in [1/r, 1], ``bandwidth_hz`` (K,) and the solver status."""

    gains: np.ndarray
    rho: np.ndarray
    bandwidth_hz: np.ndarray
    status: str


@dataclass(frozen=True, eq=False)
class ClientUpdate:
    """What one client returns after a round: its ``upload`` (what goes on the air), its trained
    ``head`` state, its new error-feedback ``memory`` (kept on the client), ``bits`` on the air
    (LoRA payload + head) and the last task loss."""

    upload: Upload
    head: dict[str, torch.Tensor]
    memory: Any
    bits: float
    train_loss: float


def client_update(model: ViT, params, head, x: torch.Tensor, y: torch.Tensor, memory,
                  compressor, rho: float, steps: int, batch: int, lr: float, optimizer: str,
                  zeta: float, seed: int, t: int, k: int) -> ClientUpdate:
    """Client k in round t (docs/model.md §5): load the global factors and head, train locally,
    compress dB, dA with error feedback, count the bits. Randomness comes from the stateless
    substreams ("sampling", t, k) and ("compression", t, k), so any process that runs this for
    (t, k) draws exactly the same numbers (the in-process and the Flower engine agree)."""
    set_factors(model, params)
    set_head_state(model, head)
    loss = local_train(model, x, y, steps, batch, lr, optimizer, zeta,
                       substream(seed, "sampling", t, k))
    local = get_factors(model)
    deltas = [(b1 - b0, a1 - a0) for (b1, a1), (b0, a0) in zip(local, params, strict=True)]
    upload, mem = compressor.update(deltas, memory, params, float(rho),
                                    substream(seed, "compression", t, k))
    h = get_head_state(model)
    return ClientUpdate(upload, h, mem, float(payload_bits(upload) + head_bits(h)), loss)


@torch.no_grad()
def evaluate(model: ViT, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of the global model."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch):
        logits = model(x[i:i + batch])
        loss += float(F.cross_entropy(logits, y[i:i + batch], reduction="sum"))
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return correct / len(y), loss / len(y)


class Trainer:
    """One federated run; :meth:`run` executes rounds, checkpointing after each."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        exp, sys_ = cfg.experiment, cfg.system
        torch.manual_seed(exp.seed)  # parameter inits that take no generator
        self.task: Task = build_task(exp, sys_.clients.num_clients, sys_.clients.dirichlet_alpha)
        self.model = build_model(self.task, exp)
        gen = torch.Generator().manual_seed(int(substream(exp.seed, "training", 1).integers(2**62)))
        apply_lora(self.model, exp.rank, exp.lora_alpha, generator=gen)
        self.weights = client_weights(self.task.parts)
        self.system = resolve_system(cfg, self.model, [len(p) for p in self.task.parts])
        self.inst: SystemInstance = realize(self.system)
        ideal = exp.method == "ilora"  # docs/model.md §6: rho = 1, no latency constraint
        self.policy = make_policy(self.system, self.inst, exp.rank,
                                  "fixed" if ideal else exp.controller, exp.solver,
                                  1.0 if ideal else exp.rho)
        self.compressor = make_compressor(exp.method, exp.error_feedback)
        self.zeta = sys_.soft.zeta if exp.method == "soft" else 0.0
        xs, ys = self.task.train.tensors()
        self.client_data = [(xs[torch.from_numpy(p)], ys[torch.from_numpy(p)])
                            for p in self.task.parts]
        self.test = self.task.test.tensors()

    def initial_state(self) -> dict:
        params = get_factors(self.model)
        return {"round": 0, "factors": params, "head": get_head_state(self.model),
                "memories": [self.compressor.init(params) for _ in self.task.parts],
                "queues": np.zeros(len(self.task.parts)), "rounds": [], "clients": []}

    def decide(self, t: int, queues: np.ndarray) -> RoundPlan:
        """Server, start of round t: fading draw and the policy's (rho, bandwidth) per client."""
        exp = self.cfg.experiment
        gains = self.inst.mean_gamma_hz * wl.draw_rayleigh_power(substream(exp.seed, "fading", t),
                                                                 len(self.weights))
        decision = self.policy.decide(queues, gains)
        rho = np.clip(np.nan_to_num(decision.rho, nan=1.0), 1.0 / exp.rank, 1.0)
        return RoundPlan(gains, rho, np.asarray(decision.bandwidth_hz, dtype=float),
                         decision.status)

    def client_update(self, t: int, k: int, params, head, memory, rho: float) -> ClientUpdate:
        """Client k's work in round t (see :func:`client_update`) on this trainer's model."""
        exp, tr = self.cfg.experiment, self.system.training
        x, y = self.client_data[k]
        return client_update(self.model, params, head, x, y, memory, self.compressor, rho,
                             tr.local_steps, tr.batch_size, tr.learning_rate, exp.optimizer,
                             self.zeta, exp.seed, t, k)

    def finish_round(self, t: int, params, queues: np.ndarray, plan: RoundPlan,
                     updates: list[ClientUpdate], t0: float) -> tuple:
        """Server, end of round t: latency from the real payloads, queues, separate aggregation,
        FedAvg head, evaluation. ``updates`` in client order. Returns (factors, head, queues,
        round row, client rows)."""
        rho = plan.rho
        bits = np.asarray([u.bits for u in updates], dtype=float)
        uploads = [u.upload for u in updates]
        latency = self.inst.compute_s + bits / wl.rate_bps(plan.bandwidth_hz, plan.gains)
        queues = self.policy.update_queues(queues, latency)
        covs, _ = mx.uploaded_covariance(params, uploads, self.weights)
        new_params = aggregate(params, uploads, self.weights,
                               normalise=self.system.soft.aggregation == "normalised")
        new_head = fedavg([u.head for u in updates], self.weights)
        set_factors(self.model, new_params)
        set_head_state(self.model, new_head)
        acc, loss = evaluate(self.model, *self.test)
        row = {"round": t, "accuracy": acc, "test_loss": loss,
               "train_loss": float(np.mean([u.train_loss for u in updates])),
               "cov_fro": mx.covariance_norm(covs),
               "orth_defect": mx.total_orthogonality_defect(new_params),
               "kendall_tau": mx.mean_importance_agreement(new_params),
               "mean_rho": float(rho @ self.weights), "total_bits": float(bits.sum()),
               "mean_latency_s": float(latency.mean()), "max_latency_s": float(latency.max()),
               "mean_queue_s": float(queues.mean()), "decision_status": plan.status,
               "wall_s": time.perf_counter() - t0}
        clients = [{"round": t, "client": k, "rho": float(rho[k]),
                    "bandwidth_hz": float(plan.bandwidth_hz[k]), "gamma_hz": float(plan.gains[k]),
                    "bits": float(bits[k]), "latency_s": float(latency[k]),
                    "compute_s": float(self.inst.compute_s[k]),
                    "budget_s": float(self.inst.budget_s[k]), "queue_s": float(queues[k])}
                   for k in range(len(self.weights))]
        return new_params, new_head, queues, row, clients

    def round(self, t: int, state: dict) -> dict:
        """Round t: decide, train every client, compress, aggregate, update queues, log."""
        t0 = time.perf_counter()
        params, head = state["factors"], state["head"]
        plan = self.decide(t, state["queues"])
        updates = [self.client_update(t, k, params, head, state["memories"][k], float(plan.rho[k]))
                   for k in range(len(self.client_data))]
        new_params, new_head, queues, row, clients = self.finish_round(
            t, params, state["queues"], plan, updates, t0)
        return {"round": t + 1, "factors": new_params, "head": new_head,
                "memories": [u.memory for u in updates], "queues": queues,
                "rounds": state["rounds"] + [row], "clients": state["clients"] + clients}

    def run(self, out: str | Path | None = None, resume: bool = False, progress: bool = False,
            stop_after: int | None = None) -> RunResult:
        """All rounds (``training.rounds``); checkpoint after each when ``out`` is given.

        ``resume`` continues from ``out/checkpoint.pt``; ``stop_after`` ends early after that
        many rounds in total (for tests of resumption).
        """
        out_path = Path(out) if out is not None else None
        state = self.initial_state()
        if out_path is not None:
            ckpt = out_path / "checkpoint.pt"
            if resume and ckpt.exists():
                state = load_checkpoint(ckpt)
            else:
                self.prepare_output(out_path)
        total = self.system.training.rounds if stop_after is None else min(
            stop_after, self.system.training.rounds)
        bar = _progress(progress, total, state["round"])
        while state["round"] < total:
            state = self.round(state["round"], state)
            if out_path is not None:
                save_checkpoint(out_path / "checkpoint.pt", state)
            bar(state)
        return self.result(state["rounds"], state["clients"], out_path)

    def prepare_output(self, out: Path) -> None:
        """Start a result folder: config, metadata and the partition's class histograms."""
        prepare_dir(out, self.cfg.to_toml(), self.cfg.experiment.seed,
                    resolved_system=self.system.to_dict(), task_note=self.task.note)
        write_table(class_histograms(self.task.train.labels, self.task.parts,
                                     self.task.train.num_classes).reset_index(),
                    out / "partition.csv")

    def result(self, rounds: list[dict], clients: list[dict], out: Path | None) -> RunResult:
        """The run's tables (written to ``out/rounds.csv`` and ``out/clients.csv`` if given)."""
        result = RunResult(pd.DataFrame(rounds), pd.DataFrame(clients), self.system, out)
        if out is not None:
            write_table(result.rounds, out / "rounds.csv")
            write_table(result.clients, out / "clients.csv")
        return result


def _progress(enabled: bool, total: int, start: int):
    if not enabled:
        return lambda state: None
    from rich.console import Console

    console = Console(stderr=True)

    def show(state):
        row = state["rounds"][-1]
        console.print(f"round {state['round']:>4}/{total}  acc {row['accuracy']:.3f}  "
                      f"mean rho {row['mean_rho']:.3f}  mean latency {row['mean_latency_s']:.2f} s"
                      f"  queue {row['mean_queue_s']:.2f} s  ({row['wall_s']:.1f} s)")
    return show


def save_checkpoint(path: Path, state: dict) -> None:
    """Write the full loop state (tensors, lists and floats only) atomically."""
    tmp = path.with_suffix(".tmp")
    payload = dict(state, queues=torch.as_tensor(state["queues"], dtype=torch.float64))
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["queues"] = state["queues"].numpy()
    return state


def train(cfg: RunConfig, out: str | Path | None = None, resume: bool = False,
          progress: bool = False, stop_after: int | None = None) -> RunResult:
    """Build and run one federated fine-tuning experiment (see :class:`Trainer`)."""
    return Trainer(cfg).run(out, resume=resume, progress=progress, stop_after=stop_after)


__all__ = ["RunResult", "RoundPlan", "ClientUpdate", "Trainer", "train", "evaluate",
           "local_train", "client_update", "resolve_system", "save_checkpoint", "load_checkpoint"]
