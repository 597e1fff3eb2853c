"""A synthetic teacher task with a known rank floor, and central backbone pre-training.

Teacher task (tsfa's own design, docs/model.md §2 "rank floor"): a frozen random tiny ViT plays the
pre-trained backbone W0. The teacher is the same network with every query and value projection
moved by a known low-rank update

    dW_m = c_m U_m diag(s) V_m^T,   s_i = i^(-spectrum_power), i = 1..true_rank,

with random orthonormal U_m, V_m (dim x true_rank) and c_m set so that
||dW_m||_F = update_scale ||W0_m||_F; plus a random teacher head whose logits are standardised per
class on the data (so classes are roughly balanced). Labels are the teacher's argmax on random
Gaussian images. A LoRA student of rank r on q and v (plus a new head) can represent the teacher
exactly when r >= true_rank; the energy of the ideal update outside its best rank-r subspace is
eps(r) = sum_{i>r} s_i^2 / sum_i s_i^2 exactly, the same in every module (``rank_floor``).

Defaults (update_scale 1, spectrum_power 1, true_rank 16) were chosen by criteria fixed before
any method comparison: the adapter must matter (label_flip >= 0.5), LoRA must learn well above
a head-only model within the default run, and accuracy must depend on the rank. Gaussian images
are free, so num_train = 20,000: with 4,000 samples a central rank-8 LoRA overfits (train 0.76,
test 0.48 after 1,000 AdamW steps), with 20,000 it reaches test 0.57 at the same step count.

``pretrain_backbone`` trains a ViT centrally on a subset of classes of a real data set and caches
the weights (a torch state dict plus a JSON sidecar with the metadata) for reuse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from tsfa.fl.data import ArrayDataset, select_classes
from tsfa.fl.vit import ViT
from tsfa.fl.vit_config import ViTConfig, synthetic_vit
from tsfa.maths.bound import eps_from_spectrum, power_law_spectrum


@dataclass(frozen=True)
class SyntheticConfig:
    """Teacher task sizes. true_rank <= vit.dim; spectrum_power >= 0; update_scale > 0."""

    vit: ViTConfig = field(default_factory=synthetic_vit)
    num_train: int = 20000
    num_test: int = 1000
    true_rank: int = 16
    spectrum_power: float = 1.0
    update_scale: float = 1.0

    def __post_init__(self) -> None:
        checks = {"num_train": self.num_train >= 1, "num_test": self.num_test >= 1,
                  "true_rank": 1 <= self.true_rank <= self.vit.dim,
                  "spectrum_power": self.spectrum_power >= 0,
                  "update_scale": self.update_scale > 0}
        allowed = {"num_train": ">= 1", "num_test": ">= 1",
                   "true_rank": f"1 <= true_rank <= vit.dim = {self.vit.dim}",
                   "spectrum_power": ">= 0", "update_scale": "> 0"}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"SyntheticConfig.{name} = {getattr(self, name)!r} is invalid; "
                                 f"allowed: {allowed[name]}")


@dataclass(frozen=True, eq=False)
class SyntheticTask:
    """backbone: the frozen W0 state dict (tsfa names, head = random init);
    teacher: the teacher's state dict; updates: {module name: dW (dim, dim)};
    spectrum: s (true_rank,); label_flip: fraction of labels that change when the q,v
    updates are removed from the teacher (how much the task needs LoRA)."""

    config: SyntheticConfig
    backbone: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    updates: dict[str, torch.Tensor]
    spectrum: np.ndarray
    train: ArrayDataset
    test: ArrayDataset
    label_flip: float

    def rank_floor(self, r: int | np.ndarray) -> np.ndarray:
        return rank_floor(self.spectrum, r)


rank_floor = eps_from_spectrum  # eps(r) of the task's spectrum (docs/model.md §2), from tsfa.maths.bound


def _orthonormal(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=gen))
    return q


@torch.no_grad()
def _logits(model: ViT, images: np.ndarray, batch: int = 1000) -> torch.Tensor:
    x = torch.from_numpy(images)
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def make_synthetic_task(cfg: SyntheticConfig, rng: np.random.Generator) -> SyntheticTask:
    """Build the teacher task; all randomness from ``rng`` (a few hundred ms on a CPU)."""
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    model = ViT(cfg.vit, gen)
    for name, p in model.named_parameters():  # O(1) signal per block, unlike the 0.02 init
        if p.dim() >= 2 and "norm" not in name:
            fan_in = p[0].numel() if name != "pos_embed" and name != "cls_token" else 1
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
    backbone = {k: v.clone() for k, v in model.state_dict().items()}
    s = power_law_spectrum(cfg.true_rank, cfg.spectrum_power)
    s_t = torch.as_tensor(s, dtype=torch.float32)
    updates = {}
    for i, block in enumerate(model.blocks):
        for proj in ("query", "value"):
            lin = getattr(block.attn, proj)
            d = lin.weight.shape[0]
            dw = _orthonormal(d, cfg.true_rank, gen) * s_t @ _orthonormal(d, cfg.true_rank, gen).T
            dw *= cfg.update_scale * lin.weight.norm() / dw.norm()
            updates[f"blocks.{i}.attn.{proj}"] = dw
    n = cfg.num_train + cfg.num_test
    c, hw = cfg.vit.in_chans, cfg.vit.image_size
    images = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
    head = model.head
    head.weight.copy_(torch.randn(head.weight.shape, generator=gen))
    head.bias.zero_()
    plain = _logits(model, images)
    for name, dw in updates.items():
        model.get_submodule(name).weight.add_(dw)
    z = _logits(model, images)
    mu, sd = z.mean(0), z.std(0)
    head.weight.div_(sd[:, None])
    head.bias.copy_(-mu / sd)
    labels = _logits(model, images).argmax(1)
    plain_labels = ((plain - mu) / sd).argmax(1)
    label_flip = float((labels != plain_labels).float().mean())
    y = labels.numpy().astype(np.int64)
    k = cfg.vit.num_classes
    train = ArrayDataset(images[:cfg.num_train], y[:cfg.num_train], k)
    test = ArrayDataset(images[cfg.num_train:], y[cfg.num_train:], k)
    teacher = {k2: v.clone() for k2, v in model.state_dict().items()}
    return SyntheticTask(cfg, backbone, teacher, updates, s, train, test, label_flip)


@torch.no_grad()
def oracle_accuracy(task: SyntheticTask, r: int, split: str = "test") -> float:
    """Accuracy of the teacher whose q,v updates are cut to their best rank-r part (a LoRA of
    rank r with perfect training): the ceiling eps(r) imposes. 1.0 for r >= true_rank.
    Default task (seed 0): r = 0, 1, 2, 4, 8, 16 gives about 0.24, 0.42, 0.56, 0.63, 0.76, 1.0."""
    model = ViT(task.config.vit)
    model.load_state_dict(task.teacher)
    for name, dw in task.updates.items():
        U, S, Vh = torch.linalg.svd(dw)
        model.get_submodule(name).weight.copy_(task.backbone[f"{name}.weight"]
                                               + (U[:, :r] * S[:r]) @ Vh[:r])
    data = getattr(task, split)
    pred = _logits(model, data.images).argmax(1).numpy()
    return float((pred == data.labels).mean())


def pretrain_backbone(cfg: ViTConfig, train: ArrayDataset, classes: Sequence[int],
                      cache_path: str | Path, steps: int = 500, batch_size: int = 64,
                      lr: float = 1e-3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Central pre-training on ``classes`` of ``train`` (relabelled 0..len-1), cached.

    Returns the state dict (its head has len(classes) outputs; load the rest into the federated
    model with ``load_pretrained(model, cache_path)``). If ``cache_path`` exists and its JSON
    sidecar records the same config, classes, steps, batch size, lr and seed, it is reused.
    """
    cache_path = Path(cache_path)
    meta = {"config": asdict(cfg), "classes": [int(c) for c in classes], "steps": steps,
            "batch_size": batch_size, "lr": lr, "seed": seed, "num_samples": len(train)}
    sidecar = cache_path.with_suffix(".json")
    if cache_path.exists() and sidecar.exists() and json.loads(sidecar.read_text()) == meta:
        return torch.load(cache_path, map_location="cpu", weights_only=True)
    data = select_classes(train, classes)
    rng = np.random.default_rng(seed)
    model = ViT(ViTConfig(**{**asdict(cfg), "num_classes": len(classes)}),
                torch.Generator().manual_seed(int(rng.integers(2**62))))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    x_all, y_all = data.tensors()
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(len(data), size=batch_size))
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, cache_path)
    sidecar.write_text(json.dumps(meta, indent=1))
    return state


__all__ = ["SyntheticConfig", "SyntheticTask", "make_synthetic_task", "power_law_spectrum",
           "rank_floor", "oracle_accuracy", "pretrain_backbone"]
