"""tsfa on Flower's simulation engine (Ray) against the in-process engine (tsfa[flower] extra).

Both engines run the same functions with the same stateless random substreams; with torch's
intra-op thread count the same in the driver and in the Ray actors (1 here; a Ray actor with
num_cpus = 1 runs torch single-threaded) every logged metric is bit-identical. With a different
thread count only the float32 reduction order of local training changes (relative differences
~1e-6 in train_loss, cov_fro, orth_defect; see docs/flower.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("flwr")

from tsfa.config.experiment import RunConfig  # noqa: E402
from tsfa.engines.flower import records  # noqa: E402
from tsfa.engines.flower.settings import out_from_flower, run_config_from_flower  # noqa: E402
from tsfa.fl.compress import make_compressor  # noqa: E402
from tsfa.fl.loop import Trainer, train  # noqa: E402

pytestmark = pytest.mark.flower


def tiny(method="soft", rounds=2, **extra) -> RunConfig:
    return RunConfig().replace(**{
        "experiment.method": method, "experiment.num_train": 300, "experiment.num_test": 100,
        "clients.num_clients": 3, "training.local_steps": 2, "training.batch_size": 16,
        "training.rounds": rounds, **extra})


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("method", ["soft", "tlora", "rlora", "slora", "ilora"])
def test_upload_and_memory_records_round_trip_exactly(method):
    trainer = Trainer(tiny(method))
    trainer.compressor = make_compressor(method, True)
    state = trainer.initial_state()
    u = trainer.client_update(0, 1, state["factors"], state["head"], state["memories"][1], 0.5)
    upload, head = records.record_to_upload(records.upload_to_record(u.upload, u.head),
                                            records.upload_meta(u.upload))
    assert (upload.method, upload.space) == (u.upload.method, u.upload.space)
    for a, b in zip(upload.modules, u.upload.modules, strict=True):
        assert (a.shape_B, a.shape_A, a.seed) == (b.shape_B, b.shape_A, b.seed)
        for name in ("B_values", "A_values", "rank_index", "B_index", "A_index"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None)
            if x is not None:
                assert x.dtype == y.dtype and torch.equal(x, y)
    assert all(torch.equal(head[k], u.head[k]) for k in u.head)
    memory = records.record_to_memory(records.memory_to_record(u.memory))
    assert [len(m) for m in memory] == [len(m) for m in u.memory]
    assert all(torch.equal(x, y) for m, n in zip(memory, u.memory, strict=True)
               for x, y in zip(m, n, strict=True))
    factors, head2 = records.record_to_model(records.model_to_record(state["factors"],
                                                                     state["head"]))
    assert all(torch.equal(b, b0) and torch.equal(a, a0)
               for (b, a), (b0, a0) in zip(factors, state["factors"], strict=True))
    assert all(torch.equal(head2[k], state["head"][k]) for k in head2)


def test_run_config_from_flower_applies_dotted_keys():
    cfg = run_config_from_flower({"config": "", "out": "runs/x", "experiment.method": "tlora",
                                  "training.rounds": 3, "clients.num_clients": 4})
    assert (cfg.experiment.method, cfg.system.training.rounds) == ("tlora", 3)
    assert cfg.system.clients.num_clients == 4
    assert out_from_flower({"out": ""}) is None
    with pytest.raises(ValueError, match="dotted"):
        run_config_from_flower({"rounds": 3})


@pytest.mark.slow
def test_flower_engine_matches_in_process_engine(tmp_path, one_thread):
    """3 simulated clients, 2 rounds, SOFT + TSFA controller: identical metrics per round and
    per client (decisions, bits, latencies, queues, accuracy, covariance, ...)."""
    from tsfa.engines.flower import train_flower

    cfg = tiny()
    local = train(cfg)
    flower = train_flower(cfg, out=tmp_path / "flower", num_cpus=2, client_cpus=1)
    pd.testing.assert_frame_equal(local.rounds.drop(columns="wall_s"),
                                  flower.rounds.drop(columns="wall_s"), check_exact=True)
    pd.testing.assert_frame_equal(local.clients, flower.clients, check_exact=True)
    assert len(flower.rounds) == 2 and np.all(flower.rounds["mean_queue_s"] >= 0)
    for name in ("config.toml", "metadata.json", "rounds.csv", "clients.csv", "partition.csv"):
        assert (tmp_path / "flower" / name).exists()
