"""Loaders on tiny files written here, partition, synthetic task (tsfa.fl.data, partition,
synthetic; docs/model.md §1, §2)."""

import gzip
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tsfa.fl.checkpoints import load_pretrained
from tsfa.fl.data import load_cifar100, load_fashion_mnist, read_idx, select_classes
from tsfa.fl.partition import class_histograms, client_weights, dirichlet_partition
from tsfa.fl.synthetic import (
    SyntheticConfig,
    make_synthetic_task,
    oracle_accuracy,
    power_law_spectrum,
    pretrain_backbone,
    rank_floor,
)
from tsfa.fl.vit import ViT
from tsfa.fl.vit_config import ViTConfig


def write_cifar(root, n_train=5, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    d.mkdir()
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = rng.integers(0, 100, size=n).tolist()
        with (d / split).open("wb") as f:
            pickle.dump({b"data": x, b"fine_labels": y, b"coarse_labels": [0] * n}, f)
        data[split] = (x, y)
    return data


def test_cifar100_loader(tmp_path):
    raw = write_cifar(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-100-python"):
        train, test = load_cifar100(root)
        assert train.images.shape == (5, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
        assert train.images.dtype == np.float32 and train.num_classes == 100
        np.testing.assert_array_equal(train.labels, raw["train"][1])
        x = raw["train"][0]  # CHW order: pixel (c=1, h=2, w=5) of sample 4
        assert train.images[4, 1, 2, 5] == pytest.approx(x[4, 1024 + 2 * 32 + 5] / 127.5 - 1)
    with pytest.raises(FileNotFoundError):
        load_cifar100(tmp_path / "nowhere")


def idx_bytes(arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, dtype=">i4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_fashion_mnist_loader(tmp_path, compressed):
    rng = np.random.default_rng(1)
    files = {}
    for stem, n in (("train", 6), ("t10k", 4)):
        files[stem] = (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n))
        for kind, arr in (("images-idx3", files[stem][0]), ("labels-idx1", files[stem][1])):
            blob = idx_bytes(arr)
            name = f"{stem}-{kind}-ubyte"
            if compressed:
                (tmp_path / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (tmp_path / name).write_bytes(blob)
    train, test = load_fashion_mnist(tmp_path)
    assert train.images.shape == (6, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(test.labels, files["t10k"][1])
    np.testing.assert_allclose(train.images[:, 0], files["train"][0] / 127.5 - 1, atol=1e-6)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + np.array([5], ">i4").tobytes() + b"ab")
    with pytest.raises(ValueError, match="header"):
        read_idx(tmp_path / "short")


def test_select_classes_relabels(tmp_path):
    write_cifar(tmp_path, n_train=40)
    train, _ = load_cifar100(tmp_path)
    classes = [int(train.labels[3]), int(train.labels[0])]
    sub = select_classes(train, classes)
    assert sub.num_classes == 2 and set(sub.labels.tolist()) <= {0, 1}
    assert len(sub) == int(np.isin(train.labels, classes).sum())
    assert (sub.labels == 1).sum() == (train.labels == classes[1]).sum()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.integers(1, 12), st.sampled_from([0.01, 0.1, 0.5, 1.0, math.inf]),
       st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_dirichlet_partition_covers_once_and_is_reproducible(n, k, alpha, classes, seed):
    k = min(k, n)
    labels = np.random.default_rng(seed).integers(0, classes, size=n)
    parts = dirichlet_partition(labels, k, alpha, np.random.default_rng(seed))
    assert len(parts) == k and all(len(p) > 0 for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    again = dirichlet_partition(labels, k, alpha, np.random.default_rng(seed))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    if math.isinf(alpha):
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
    hist = class_histograms(labels, parts, classes)
    assert hist["total"].sum() == n and hist.drop(columns="total").to_numpy().sum() == n
    np.testing.assert_allclose(client_weights(parts), hist["total"].to_numpy() / n)


def test_small_alpha_is_more_skewed_than_iid():
    labels = np.repeat(np.arange(10), 200)
    def mean_classes_per_client(alpha):
        parts = dirichlet_partition(labels, 10, alpha, np.random.default_rng(0))
        return (class_histograms(labels, parts).drop(columns="total") > 0).sum(axis=1).mean()
    assert mean_classes_per_client(0.1) < mean_classes_per_client(math.inf) == 10


def test_partition_validation():
    with pytest.raises(ValueError, match="num_clients"):
        dirichlet_partition(np.zeros(3), 4, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(np.zeros(3), 2, 0.0, np.random.default_rng(0))


def test_rank_floor_exact():
    s = power_law_spectrum(4, 1.0)  # 1, 1/2, 1/3, 1/4
    energy = 1 + 1 / 4 + 1 / 9 + 1 / 16
    np.testing.assert_allclose(rank_floor(s, np.array([0, 1, 3, 4, 9])),
                               [1.0, (energy - 1) / energy, (1 / 16) / energy, 0.0, 0.0])


SMALL = SyntheticConfig(vit=ViTConfig(image_size=8, patch_size=4, in_chans=3, num_classes=4,
                                      dim=16, depth=2, heads=2), num_train=200, num_test=50,
                        true_rank=4)


def test_synthetic_task_matches_its_spectrum_and_teacher():
    task = make_synthetic_task(SMALL, np.random.default_rng(0))
    assert len(task.updates) == 4 and len(task.train) == 200 and len(task.test) == 50
    for name, dw in task.updates.items():
        sv = torch.linalg.svdvals(dw.double()).numpy()
        np.testing.assert_allclose(sv[:4] / sv[0], task.spectrum / task.spectrum[0], rtol=1e-4)
        assert sv[4:].max() < 1e-4 * sv[0]
        w0, wt = task.backbone[f"{name}.weight"], task.teacher[f"{name}.weight"]
        torch.testing.assert_close(wt - w0, dw, rtol=1e-5, atol=1e-5)
    teacher = ViT(SMALL.vit)
    teacher.load_state_dict(task.teacher)
    with torch.no_grad():
        pred = teacher(torch.from_numpy(task.test.images)).argmax(1).numpy()
    np.testing.assert_array_equal(pred, task.test.labels)
    assert len(np.unique(task.train.labels)) >= 3 and 0.0 < task.label_flip < 1.0
    again = make_synthetic_task(SMALL, np.random.default_rng(0))
    np.testing.assert_array_equal(again.train.labels, task.train.labels)
    with pytest.raises(ValueError, match="true_rank"):
        SyntheticConfig(true_rank=1000)
    assert oracle_accuracy(task, 4) == 1.0 and oracle_accuracy(task, 4, "train") == 1.0
    assert oracle_accuracy(task, 0) == pytest.approx(1 - task.label_flip, abs=0.15)
    assert oracle_accuracy(task, 0) < 1.0


def test_pretrain_backbone_caches_and_loads(tmp_path):
    task = make_synthetic_task(SMALL, np.random.default_rng(1))
    path = tmp_path / "cache" / "backbone.pt"
    sd = pretrain_backbone(SMALL.vit, task.train, [0, 1], path, steps=3, batch_size=8)
    assert path.exists() and path.with_suffix(".json").exists()
    assert sd["head.weight"].shape == (2, SMALL.vit.dim)
    mtime = path.stat().st_mtime_ns
    again = pretrain_backbone(SMALL.vit, task.train, [0, 1], path, steps=3, batch_size=8)
    assert path.stat().st_mtime_ns == mtime
    torch.testing.assert_close(again["blocks.0.attn.query.weight"], sd["blocks.0.attn.query.weight"])
    pretrain_backbone(SMALL.vit, task.train, [0, 1], path, steps=4, batch_size=8)
    assert path.stat().st_mtime_ns != mtime  # different settings: retrained
    fed = ViT(SMALL.vit)  # federated model on the other classes: all but the head loaded
    report = load_pretrained(fed, path)
    assert set(report.missing) == {"head.weight", "head.bias"}
    assert set(report.skipped) == {"head.weight", "head.bias"}  # the 2-class head of the file


def test_fashion_task_uses_given_backbone_as_is(tmp_path):
    """experiment.pretrained, if the file exists, is the backbone of every seed: loaded, never
    re-trained nor overwritten (so runs of several seeds share one pre-trained backbone)."""
    from tsfa.config.experiment import ExperimentSpec
    from tsfa.fl.tasks import build_model, build_task

    rng = np.random.default_rng(2)
    for stem, n in (("train", 40), ("t10k", 20)):
        (tmp_path / f"{stem}-images-idx3-ubyte").write_bytes(idx_bytes(rng.integers(0, 256, (n, 28, 28))))
        (tmp_path / f"{stem}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(n) % 10))
    state = ViT(ViTConfig.tiny(num_classes=5, image_size=28, in_chans=1)).state_dict()
    path = tmp_path / "backbone.pt"
    torch.save(state, path)
    mtime = path.stat().st_mtime_ns
    for seed in (0, 1):
        exp = ExperimentSpec(task="fashion_mnist", data_dir=str(tmp_path), pretrained=str(path),
                             seed=seed, num_train=20, num_test=10)
        task = build_task(exp, num_clients=2, dirichlet_alpha=1.0)
        assert task.train.num_classes == 5 and len(task.train.labels) == 20
        model = build_model(task, exp)
        torch.testing.assert_close(model.state_dict()["blocks.0.attn.query.weight"],
                                   state["blocks.0.attn.query.weight"])
        assert task.checkpoint.source == str(path) and task.checkpoint.keys_loaded == len(state) - 2
        assert task.checkpoint.sha256[:12] in task.note
    assert path.stat().st_mtime_ns == mtime and not path.with_suffix(".json").exists()
