"""Image data sets from standard local files, no downloads (docs/model.md §1, §7).

- CIFAR-100: the ``cifar-100-python`` directory (pickled dicts ``train`` / ``test`` with
  b"data" uint8 (N, 3072) in CHW order and b"fine_labels").
- Fashion-MNIST: the four idx files (optionally .gz) at a path, by default
  ``/usr/share/datasets/fashion-mnist`` (Debian package dataset-fashion-mnist).
- The synthetic teacher task needing no files: ``tsfa.fl.synthetic``.
- Your own data: ``ArrayDataset.from_arrays`` (numpy / torch arrays) and
  ``ArrayDataset.from_torch`` (a map-style torch ``Dataset`` of (image, label) pairs); a whole
  federated task from them: ``tsfa.fl.tasks.task_from_arrays`` (docs/interop.md).
- Dirichlet partition and class histograms: ``tsfa.fl.partition`` (re-exported here).

Images are returned as float32 (N, C, H, W) scaled to [-1, 1]; labels int64 (N,). Resizing
(e.g. to 224 px for ViT-Base) is the caller's business (``torch.nn.functional.interpolate``).
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tsfa.fl.partition import class_histograms, dirichlet_partition

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """images: float32 (N, C, H, W); labels: int64 (N,) in [0, num_classes)."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise ValueError(f"images {self.images.shape} and labels {self.labels.shape} "
                             "must be (N, C, H, W) and (N,)")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ArrayDataset:
        return ArrayDataset(self.images[index], self.labels[index], self.num_classes)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.images), torch.from_numpy(self.labels)

    @classmethod
    def from_arrays(cls, images, labels, num_classes: int | None = None) -> ArrayDataset:
        """From numpy arrays or torch tensors: images (N, C, H, W), or (N, H, W) for one channel;
        uint8 images are scaled to [-1, 1] as the loaders do, others kept (as float32); labels
        integers (N,) in [0, num_classes) (default: max label + 1)."""
        x = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images)
        y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise ValueError(f"images {x.shape} and labels {y.shape}: expected (N, C, H, W) or "
                             "(N, H, W) and (N,) with the same N >= 1")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels: dtype {y.dtype}; expected integer class indices")
        k = int(y.max()) + 1 if num_classes is None else int(num_classes)
        if y.min() < 0 or y.max() >= k:
            raise ValueError(f"labels: values in [{y.min()}, {y.max()}]; allowed: [0, {k - 1}]")
        x = _to_float(x) if x.dtype == np.uint8 else x.astype(np.float32)
        return cls(np.ascontiguousarray(x), y.astype(np.int64), k)

    @classmethod
    def from_torch(cls, dataset, num_classes: int | None = None) -> ArrayDataset:
        """From a map-style torch ``Dataset`` whose items are (image tensor (C, H, W), label);
        read once into memory (apply your transforms in the dataset)."""
        items = [dataset[i] for i in range(len(dataset))]
        if not items:
            raise ValueError("dataset: empty")
        images = torch.stack([torch.as_tensor(x) for x, _ in items])
        return cls.from_arrays(images, np.asarray([int(y) for _, y in items]), num_classes)


def _to_float(images_u8: np.ndarray) -> np.ndarray:
    return (images_u8.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def _read_cifar_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as f:
        d = pickle.load(f, encoding="bytes")  # the official format is a pickle
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return _to_float(data), np.asarray(d[b"fine_labels"], dtype=np.int64)


def load_cifar100(root: str | Path) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) from ``root`` = the ``cifar-100-python`` directory or its parent."""
    root = Path(root)
    if not (root / "train").exists() and (root / "cifar-100-python").is_dir():
        root = root / "cifar-100-python"
    if not (root / "train").exists():
        raise FileNotFoundError(f"no CIFAR-100 'train' file in {root}")
    return tuple(ArrayDataset(*_read_cifar_split(root / s), 100) for s in ("train", "test"))


def read_idx(path: str | Path) -> np.ndarray:
    """Array from an idx file (magic 0 0 dtype ndim, big-endian int32 dims), gzip or raw."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    dims = tuple(int(x) for x in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, file holds {data.size} values")
    return data.reshape(dims)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"neither {name} nor {name}.gz in {root}")


def load_fashion_mnist(root: str | Path = FASHION_MNIST_DIR) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) Fashion-MNIST, images (N, 1, 28, 28), 10 classes."""
    root = Path(root)
    out = []
    for split in ("train", "test"):
        img_name, lab_name = FASHION_MNIST_FILES[split]
        images = read_idx(_find(root, img_name))
        labels = read_idx(_find(root, lab_name)).astype(np.int64)
        out.append(ArrayDataset(_to_float(images[:, None]), labels, 10))
    return out[0], out[1]


def select_classes(ds: ArrayDataset, classes: Sequence[int], relabel: bool = True) -> ArrayDataset:
    """The samples of ``classes``; with ``relabel`` their labels become 0..len(classes)-1 in the
    given order (e.g. pre-train on some classes, fine-tune federatedly on the others)."""
    classes = np.asarray(classes, dtype=np.int64)
    keep = np.isin(ds.labels, classes)
    labels = ds.labels[keep]
    if relabel:
        lookup = np.full(ds.num_classes, -1, dtype=np.int64)
        lookup[classes] = np.arange(len(classes))
        labels = lookup[labels]
    return ArrayDataset(ds.images[keep], labels, len(classes) if relabel else ds.num_classes)


__all__ = ["ArrayDataset", "load_cifar100", "load_fashion_mnist", "read_idx", "select_classes",
           "dirichlet_partition", "class_histograms", "FASHION_MNIST_DIR"]
