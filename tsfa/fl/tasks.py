"""Build the data, partition and backbone of a run from its ``[experiment]`` config.

Three built-in tasks, each a loader registered in :data:`tsfa.config.registry.TASKS`
(docs/model.md §7; the real data sets load from local files only, never downloaded):

* ``synthetic`` (default, embedded): the teacher task of :mod:`tsfa.fl.synthetic`, whose ideal
  update has a known spectrum, so eps(r) is exact;
* ``fashion_mnist``: "pretrained backbone, then federated LoRA": a tiny ViT pre-trained centrally
  on classes 0-4 (cached under ~/.cache/tsfa, or loaded from ``experiment.pretrained`` if that
  file exists), fine-tuned federated on classes 5-9;
* ``cifar100``: the ``cifar-100-python`` files; a backbone from ``experiment.pretrained`` if given
  (any checkpoint :mod:`tsfa.fl.checkpoints` reads; with a transformers config.json the ViT is
  built from it, e.g. ViT-B/16 with its position embeddings resized to 32 px).

Your own data: :func:`task_from_arrays` / :func:`task_from_datasets` build the same :class:`Task`
(Dirichlet partition, per-client class histograms) from arrays or torch Datasets
(docs/interop.md). Every backbone read from a file is recorded in ``Task.checkpoint``
(:class:`~tsfa.fl.checkpoints.LoadReport`: file, sha256, keys loaded) for the result metadata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tsfa.config.experiment import ExperimentSpec
from tsfa.config.registry import TASKS, resolve
from tsfa.fl.checkpoints import LoadReport, convert_checkpoint, read_config, vit_config_from_hf
from tsfa.fl.data import FASHION_MNIST_DIR, ArrayDataset, load_cifar100, load_fashion_mnist, select_classes
from tsfa.fl.partition import class_histograms, dirichlet_partition
from tsfa.fl.synthetic import SyntheticConfig, make_synthetic_task, pretrain_backbone
from tsfa.fl.vit import ViT
from tsfa.fl.vit_config import ViTConfig, task_vit
from tsfa.maths.rng import substream


@dataclass(frozen=True, eq=False)
class Task:
    """Everything data-side a run needs. ``parts``: each client's sample indices into ``train``;
    ``spectrum``: singular values of the ideal update (synthetic task only, else None);
    ``backbone``: state dict in tsfa's names to start from (None = random); ``checkpoint``: the
    record of the file it was read from (None when not read from a file)."""

    vit: ViTConfig
    train: ArrayDataset
    test: ArrayDataset
    parts: list[np.ndarray]
    backbone: dict[str, torch.Tensor] | None
    spectrum: np.ndarray | None
    note: str = ""
    checkpoint: LoadReport | None = None

    def class_histograms(self) -> pd.DataFrame:
        """Training samples per client (rows) and class (columns), plus ``total``."""
        return class_histograms(self.train.labels, self.parts, self.train.num_classes)


def _subsample(ds: ArrayDataset, n: int, rng: np.random.Generator) -> ArrayDataset:
    if n >= len(ds):
        return ds
    return ds.subset(np.sort(rng.choice(len(ds), size=n, replace=False)))


def _describe(report: LoadReport) -> str:
    return (f"backbone from {report.source} (sha256 {report.sha256[:12]}, "
            f"{report.keys_loaded} keys{'; ' + '; '.join(report.resized) if report.resized else ''})")


@dataclass(frozen=True, eq=False)
class TaskData:
    """What a task's loader returns (:class:`tsfa.config.registry.TaskEntry`): the model config
    it trains, the training and test sets, the backbone (None = random), the spectrum of the
    ideal update (None unless known), a note for the results and the backbone file's record."""

    vit: ViTConfig
    train: ArrayDataset
    test: ArrayDataset
    backbone: dict[str, torch.Tensor] | None = None
    spectrum: np.ndarray | None = None
    note: str = ""
    record: LoadReport | None = None


def load_synthetic(exp: ExperimentSpec, vit: ViTConfig, rng: np.random.Generator) -> TaskData:
    """The embedded teacher task (:mod:`tsfa.fl.synthetic`): exact spectrum, no files."""
    cfg = SyntheticConfig(num_train=exp.num_train, num_test=exp.num_test)
    st = make_synthetic_task(cfg, substream(exp.seed, "geometry", 1))
    return TaskData(vit, st.train, st.test, st.backbone, st.spectrum,
                    f"synthetic teacher; labels changed by the update: {st.label_flip:.2f}")


def load_fashion_mnist_task(exp: ExperimentSpec, vit: ViTConfig,
                            rng: np.random.Generator) -> TaskData:
    """Fashion-MNIST: backbone pre-trained on classes 0-4, federated on classes 5-9."""
    root = Path(exp.data_dir) if exp.data_dir else FASHION_MNIST_DIR
    full_train, full_test = load_fashion_mnist(root)
    cache = Path(exp.pretrained) if exp.pretrained else (
        Path.home() / ".cache" / "tsfa" / "fmnist_tiny_vit_classes0-4.pt")
    # a given weights file is used as is (never re-trained nor overwritten), so every run
    # and seed can share one backbone; else pre-trained with this seed and cached
    if not (exp.pretrained and cache.exists()):
        pretrain_backbone(vit, full_train, range(5), cache, seed=exp.seed)
    backbone, record = convert_checkpoint(cache, vit)
    train = _subsample(select_classes(full_train, range(5, 10)), exp.num_train, rng)
    test = _subsample(select_classes(full_test, range(5, 10)), exp.num_test, rng)
    return TaskData(vit, train, test, backbone, None,
                    f"backbone pre-trained on classes 0-4: {_describe(record)}", record)


def load_cifar100_task(exp: ExperimentSpec, vit: ViTConfig, rng: np.random.Generator) -> TaskData:
    """CIFAR-100 from ``experiment.data_dir``; backbone from ``experiment.pretrained`` if given."""
    if not exp.data_dir:
        raise ValueError("experiment.data_dir: the cifar100 task needs the directory of the "
                         "local cifar-100-python files")
    full_train, full_test = load_cifar100(exp.data_dir)
    backbone, record, note = None, None, "random backbone"
    if exp.pretrained:
        vit = pretrained_config(exp.pretrained, vit)
        backbone, record = convert_checkpoint(exp.pretrained, vit)
        note = _describe(record)
    return TaskData(vit, _subsample(full_train, exp.num_train, rng),
                    _subsample(full_test, exp.num_test, rng), backbone, None, note, record)


def build_task(exp: ExperimentSpec, num_clients: int, dirichlet_alpha: float) -> Task:
    """Data, partition (label-Dirichlet, explicit streams) and backbone for ``exp.task``, loaded
    by the task's registered loader (:data:`tsfa.config.registry.TASKS`)."""
    rng = substream(exp.seed, "partition")
    loader = resolve(TASKS.entry(exp.task).loader)
    d = loader(exp, task_vit(exp), rng)
    if not isinstance(d, TaskData):
        raise TypeError(f"experiment.task = {exp.task!r}: its loader must return a TaskData, "
                        f"got {type(d).__name__}")
    parts = dirichlet_partition(d.train.labels, num_clients, dirichlet_alpha, rng)
    return Task(d.vit, d.train, d.test, parts, d.backbone, d.spectrum, d.note, d.record)


def pretrained_config(path: str | Path, default: ViTConfig) -> ViTConfig:
    """The ViT for a checkpoint: from its transformers config.json (number of classes and image
    size from ``default``, i.e. the data), else ``default``."""
    hf = read_config(path) or {}
    if "hidden_size" not in hf:
        return default
    return vit_config_from_hf(hf, num_classes=default.num_classes, image_size=default.image_size)


def task_from_arrays(x_train, y_train, x_test, y_test, num_clients: int, alpha: float,
                     seed: int = 0, *, num_classes: int | None = None, vit: ViTConfig | None = None,
                     pretrained: str | Path | None = None) -> Task:
    """A federated task from your own data (numpy arrays or torch tensors).

    x_*: images (N, C, H, W) (or (N, H, W)); uint8 scaled to [-1, 1], floats kept. y_*: integer
    labels (N,) in [0, num_classes) (default: the largest label + 1). The training set is split
    over ``num_clients`` clients by the label-Dirichlet partition Dir(``alpha``) (math.inf: IID)
    drawn from ``seed``'s "partition" stream, as for the built-in tasks
    (``Task.class_histograms()`` shows it). ``vit``: the model (default: ``ViTConfig.tiny`` at the
    images' size, or the checkpoint's architecture); ``pretrained``: a checkpoint to start from
    (folder or file, see :mod:`tsfa.fl.checkpoints`; recorded in ``Task.checkpoint``).
    """
    labels = [np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y) for y in (y_train, y_test)]
    k = int(num_classes) if num_classes is not None else int(max(y.max() for y in labels)) + 1
    train = ArrayDataset.from_arrays(x_train, labels[0], k)
    test = ArrayDataset.from_arrays(x_test, labels[1], k)
    c, h, w = train.images.shape[1:]
    if test.images.shape[1:] != (c, h, w):
        raise ValueError(f"x_test: images {test.images.shape[1:]}, x_train: {(c, h, w)}; "
                         "expected the same (C, H, W)")
    if h != w:
        raise ValueError(f"images are {h} x {w} px: tsfa's ViT takes square images")
    if vit is None:
        if h % 4:
            raise ValueError(f"images are {h} px: the default ViT (patch 4) needs a side "
                             "divisible by 4; pass vit=ViTConfig(...)")
        vit = ViTConfig.tiny(k, image_size=h, in_chans=c)
        vit = pretrained_config(pretrained, vit) if pretrained else vit
    for field, want in (("in_chans", c), ("image_size", h), ("num_classes", k)):
        if getattr(vit, field) != want:
            raise ValueError(f"vit.{field} = {getattr(vit, field)}: the data need {want} "
                             f"(images {c} x {h} x {w}, {k} classes)")
    backbone, record, note = None, None, "random backbone"
    if pretrained:
        backbone, record = convert_checkpoint(pretrained, vit)
        note = _describe(record)
    parts = dirichlet_partition(train.labels, num_clients, alpha, substream(seed, "partition"))
    note = f"own data: {len(train)} train / {len(test)} test samples, {k} classes; {note}"
    return Task(vit, train, test, parts, backbone, None, note, record)


def task_from_datasets(train, test, num_clients: int, alpha: float, seed: int = 0,
                       **kwargs) -> Task:
    """:func:`task_from_arrays` for map-style torch Datasets of (image (C, H, W), label) items
    (read once into memory; ``kwargs``: num_classes, vit, pretrained)."""
    a, b = ArrayDataset.from_torch(train), ArrayDataset.from_torch(test)
    return task_from_arrays(a.images, a.labels, b.images, b.labels, num_clients, alpha, seed,
                            **kwargs)


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
    return model


def dirichlet_label(alpha: float) -> str:
    return "IID" if math.isinf(alpha) else f"Dir({alpha:g})"
