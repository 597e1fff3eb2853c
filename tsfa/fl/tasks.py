"""Build the data, partition and backbone of a run from its ``[experiment]`` config.

Three tasks (docs/model.md §7; the real data sets load from local files only, never downloaded):

* ``synthetic`` (default, embedded): the teacher task of :mod:`tsfa.fl.synthetic`, whose ideal
  update has a known spectrum, so eps(r) is exact;
* ``fashion_mnist``: "pretrained backbone, then federated LoRA": a tiny ViT pre-trained centrally
  on classes 0-4 (cached under ~/.cache/tsfa, or loaded from ``experiment.pretrained`` if that
  file exists), fine-tuned federated on classes 5-9;
* ``cifar100``: the ``cifar-100-python`` files; a backbone from ``experiment.pretrained`` if given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tsfa.config.experiment import ExperimentSpec
from tsfa.fl.data import FASHION_MNIST_DIR, ArrayDataset, load_cifar100, load_fashion_mnist, select_classes
from tsfa.fl.partition import dirichlet_partition
from tsfa.fl.synthetic import SyntheticConfig, make_synthetic_task, pretrain_backbone
from tsfa.fl.vit import ViT, ViTConfig, load_pretrained, read_state_dict
from tsfa.maths.rng import substream


@dataclass(frozen=True, eq=False)
class Task:
    """Everything data-side a run needs. ``spectrum``: singular values of the ideal update
    (synthetic task only, else None). ``backbone``: state dict to start from (None = random)."""

    vit: ViTConfig
    train: ArrayDataset
    test: ArrayDataset
    parts: list[np.ndarray]
    backbone: dict[str, torch.Tensor] | None
    spectrum: np.ndarray | None
    note: str = ""


def _subsample(ds: ArrayDataset, n: int, rng: np.random.Generator) -> ArrayDataset:
    if n >= len(ds):
        return ds
    return ds.subset(np.sort(rng.choice(len(ds), size=n, replace=False)))


def build_task(exp: ExperimentSpec, num_clients: int, dirichlet_alpha: float) -> Task:
    """Data, partition (label-Dirichlet, explicit streams) and backbone for ``exp.task``."""
    rng = substream(exp.seed, "partition")
    if exp.task == "synthetic":
        cfg = SyntheticConfig(num_train=exp.num_train, num_test=exp.num_test)
        st = make_synthetic_task(cfg, substream(exp.seed, "geometry", 1))
        vit, train, test, backbone, spectrum = cfg.vit, st.train, st.test, st.backbone, st.spectrum
        note = f"synthetic teacher; labels changed by the update: {st.label_flip:.2f}"
    elif exp.task == "fashion_mnist":
        root = Path(exp.data_dir) if exp.data_dir else FASHION_MNIST_DIR
        full_train, full_test = load_fashion_mnist(root)
        vit = ViTConfig.tiny(num_classes=5, image_size=28, in_chans=1)
        cache = Path(exp.pretrained) if exp.pretrained else (
            Path.home() / ".cache" / "tsfa" / "fmnist_tiny_vit_classes0-4.pt")
        # a given weights file is used as is (never re-trained nor overwritten), so every run
        # and seed can share one backbone; else pre-trained with this seed and cached
        backbone = (read_state_dict(cache) if exp.pretrained and cache.exists()
                    else pretrain_backbone(vit, full_train, range(5), cache, seed=exp.seed))
        train = _subsample(select_classes(full_train, range(5, 10)), exp.num_train, rng)
        test = _subsample(select_classes(full_test, range(5, 10)), exp.num_test, rng)
        spectrum, note = None, f"backbone pre-trained on classes 0-4, cached at {cache}"
    else:
        if not exp.data_dir:
            raise ValueError("experiment.data_dir: the cifar100 task needs the directory of the "
                             "local cifar-100-python files")
        full_train, full_test = load_cifar100(exp.data_dir)
        vit = ViTConfig.tiny(num_classes=100, image_size=32, in_chans=3)
        train = _subsample(full_train, exp.num_train, rng)
        test = _subsample(full_test, exp.num_test, rng)
        backbone, spectrum = None, None
        note = "random backbone" if not exp.pretrained else f"backbone from {exp.pretrained}"
    parts = dirichlet_partition(train.labels, num_clients, dirichlet_alpha, rng)
    return Task(vit, train, test, parts, backbone, spectrum, note)


def build_model(task: Task, exp: ExperimentSpec) -> ViT:
    """The backbone with its weights (new random head), before LoRA is applied."""
    gen = torch.Generator().manual_seed(int(substream(exp.seed, "training", 0).integers(2**62)))
    model = ViT(task.vit, gen)
    if task.backbone is not None:
        state = {k: v for k, v in task.backbone.items() if not k.startswith("head.")}
        missing = model.load_state_dict(state, strict=False)
        bad = [k for k in missing.missing_keys if not k.startswith("head.")]
        if bad or missing.unexpected_keys:
            raise ValueError(f"backbone does not fit the model: missing {bad[:3]}, "
                             f"unexpected {missing.unexpected_keys[:3]}")
    if exp.pretrained and exp.task == "cifar100":
        load_pretrained(model, exp.pretrained)
    return model


def dirichlet_label(alpha: float) -> str:
    return "IID" if math.isinf(alpha) else f"Dir({alpha:g})"
