"""Your own data as a federated task (tsfa.fl.tasks.task_from_arrays / task_from_datasets,
ArrayDataset.from_arrays / from_torch): partition, histograms, validation, a pretrained start
and a run of the federated loop on it."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

from tsfa.fl.data import ArrayDataset
from tsfa.fl.partition import dirichlet_partition
from tsfa.fl.tasks import build_model, task_from_arrays, task_from_datasets
from tsfa.fl.vit import ViT
from tsfa.fl.vit_config import ViTConfig
from tsfa.maths.rng import substream

torch.set_num_threads(1)


def arrays(n_train=120, n_test=30, classes=4, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
            rng.integers(0, classes, n_train),
            rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
            rng.integers(0, classes, n_test))


def test_task_from_arrays_partition_and_histograms():
    x_tr, y_tr, x_te, y_te = arrays()
    task = task_from_arrays(x_tr, y_tr, x_te, y_te, num_clients=5, alpha=0.3, seed=7)
    assert task.vit == ViTConfig.tiny(4, image_size=8, in_chans=1)
    assert task.train.images.shape == (120, 1, 8, 8) and task.train.images.dtype == np.float32
    np.testing.assert_allclose(task.train.images[:, 0], x_tr / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(task.test.labels, y_te)
    np.testing.assert_array_equal(np.sort(np.concatenate(task.parts)), np.arange(120))
    expected = dirichlet_partition(y_tr, 5, 0.3, substream(7, "partition"))
    assert all(np.array_equal(a, b) for a, b in zip(task.parts, expected, strict=True))
    hist = task.class_histograms()
    assert list(hist.columns) == [0, 1, 2, 3, "total"] and len(hist) == 5
    for k, part in enumerate(task.parts):
        np.testing.assert_array_equal(hist.loc[k, [0, 1, 2, 3]], np.bincount(y_tr[part], minlength=4))
    assert hist["total"].sum() == 120 and task.backbone is None and task.checkpoint is None
    assert "own data: 120 train / 30 test samples, 4 classes" in task.note
    again = task_from_arrays(x_tr, y_tr, x_te, y_te, num_clients=5, alpha=0.3, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(task.parts, again.parts, strict=True))
    iid = task_from_arrays(x_tr, y_tr, x_te, y_te, num_clients=5, alpha=math.inf, seed=7)
    assert {len(p) for p in iid.parts} == {24}


def test_tensors_and_torch_datasets_give_the_same_task():
    x_tr, y_tr, x_te, y_te = arrays(seed=1)
    xf_tr = torch.from_numpy(x_tr[:, None] / 127.5 - 1).float()  # already float: kept
    xf_te = torch.from_numpy(x_te[:, None] / 127.5 - 1).float()
    a = task_from_arrays(xf_tr, torch.from_numpy(y_tr), xf_te, torch.from_numpy(y_te), 3, 1.0)
    b = task_from_datasets(TensorDataset(xf_tr, torch.from_numpy(y_tr)),
                           TensorDataset(xf_te, torch.from_numpy(y_te)), 3, 1.0)
    c = task_from_arrays(x_tr, y_tr, x_te, y_te, 3, 1.0)
    for t in (b, c):
        np.testing.assert_allclose(t.train.images, a.train.images, atol=1e-6)
        np.testing.assert_array_equal(t.train.labels, a.train.labels)
        assert all(np.array_equal(p, q) for p, q in zip(t.parts, a.parts, strict=True))
    pd.testing.assert_frame_equal(a.class_histograms(), b.class_histograms())


def test_own_data_is_validated_with_the_field_named():
    x_tr, y_tr, x_te, y_te = arrays()
    with pytest.raises(ValueError, match=r"labels: values in \[0, 3\]; allowed: \[0, 2\]"):
        task_from_arrays(x_tr, y_tr, x_te, y_te, 3, 1.0, num_classes=3)
    with pytest.raises(ValueError, match="labels: dtype float"):
        ArrayDataset.from_arrays(x_tr, y_tr.astype(float))
    with pytest.raises(ValueError, match="expected the same"):
        task_from_arrays(x_tr, y_tr, x_te[:, :4], y_te, 3, 1.0)
    with pytest.raises(ValueError, match="square"):
        task_from_arrays(x_tr[:, :, :4], y_tr, x_te[:, :, :4], y_te, 3, 1.0)
    with pytest.raises(ValueError, match="vit.in_chans = 3"):
        task_from_arrays(x_tr, y_tr, x_te, y_te, 3, 1.0, vit=ViTConfig.tiny(4, 8, in_chans=3))
    with pytest.raises(ValueError, match="num_clients"):
        task_from_arrays(x_tr, y_tr, x_te, y_te, 500, 1.0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ArrayDataset.from_arrays(x_tr[0], y_tr[:8])


def test_own_data_with_a_pretrained_backbone(tmp_path):
    x_tr, y_tr, x_te, y_te = arrays(seed=2)
    vit = ViTConfig(image_size=8, patch_size=4, in_chans=1, num_classes=9, dim=16, depth=2, heads=2)
    source = ViT(vit, torch.Generator().manual_seed(3))
    torch.save(source.state_dict(), tmp_path / "backbone.pt")
    mine = ViTConfig(image_size=8, patch_size=4, in_chans=1, num_classes=4, dim=16, depth=2, heads=2)
    task = task_from_arrays(x_tr, y_tr, x_te, y_te, 3, 0.5, vit=mine,
                            pretrained=tmp_path / "backbone.pt")
    assert task.checkpoint.keys_loaded == len(source.state_dict()) - 2  # all but the 9-class head
    assert task.checkpoint.source == str(tmp_path / "backbone.pt")
    assert f"sha256 {task.checkpoint.sha256[:12]}" in task.note
    from tsfa.config.experiment import ExperimentSpec

    model = build_model(task, ExperimentSpec())
    torch.testing.assert_close(model.blocks[1].attn.value.weight, source.blocks[1].attn.value.weight)
    assert model.head.weight.shape == (4, 16)


@pytest.mark.slow
def test_the_federated_loop_runs_on_own_data(tmp_path):
    """The in-process engine takes the task: one SOFT round under the TSFA controller."""
    from tsfa.config.experiment import RunConfig
    from tsfa.engines.local import train

    x_tr, y_tr, x_te, y_te = arrays(n_train=90, n_test=20, seed=4)
    task = task_from_arrays(x_tr, y_tr, x_te, y_te, num_clients=3, alpha=0.5, seed=0)
    cfg = RunConfig().replace(**{"clients.num_clients": 3, "training.rounds": 1,
                                 "training.local_steps": 2, "training.batch_size": 8,
                                 "experiment.rank": 2})
    result = train(cfg, tmp_path / "run", task=task, clients="sequential")
    assert len(result.rounds) == 1 and 0.0 <= result.rounds["accuracy"].iloc[0] <= 1.0
    assert list(result.system.clients.data_sizes) == [len(p) for p in task.parts]
    written = pd.read_csv(tmp_path / "run" / "partition.csv").set_index("client")
    np.testing.assert_array_equal(written.to_numpy(), task.class_histograms().to_numpy())
