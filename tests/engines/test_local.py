"""The in-process engine end to end at a tiny size (docs/model.md §4-§6): identity, resume,
tables appended every round, and what every result folder records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tsfa.config.experiment import RunConfig
from tsfa.engines.local import load_checkpoint, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def tiny(method="soft", controller="tsfa", rounds=2, seed=0, **extra) -> RunConfig:
    return RunConfig().replace(**{
        "experiment.method": method, "experiment.controller": controller,
        "experiment.num_train": 300, "experiment.num_test": 100, "experiment.seed": seed,
        "clients.num_clients": 3, "training.local_steps": 2, "training.batch_size": 16,
        "training.rounds": rounds, **extra})


def test_same_seed_twice_gives_identical_results():
    a = train(tiny()).rounds.drop(columns="wall_s")
    b = train(tiny()).rounds.drop(columns="wall_s")
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_different_seed_changes_the_run():
    a = train(tiny(seed=0)).clients
    b = train(tiny(seed=1)).clients
    assert not np.allclose(a["gamma_hz"], b["gamma_hz"])


def test_resume_equals_uninterrupted_and_a_stopped_run_leaves_its_tables(tmp_path):
    full = train(tiny(rounds=3), out=tmp_path / "full")
    train(tiny(rounds=3), out=tmp_path / "cut", stop_after=1)
    assert len(pd.read_csv(tmp_path / "cut" / "rounds.csv")) == 1  # written before the end
    assert len(pd.read_csv(tmp_path / "cut" / "clients.csv")) == 3
    resumed = train(tiny(rounds=3), out=tmp_path / "cut", resume=True)
    pd.testing.assert_frame_equal(full.rounds.drop(columns="wall_s"),
                                  resumed.rounds.drop(columns="wall_s"))
    pd.testing.assert_frame_equal(full.clients, resumed.clients)
    on_disk = pd.read_csv(tmp_path / "cut" / "rounds.csv")
    assert on_disk["round"].tolist() == [0, 1, 2]
    for name in ("config.toml", "metadata.json", "rounds.csv", "clients.csv", "partition.csv",
                 "rank_table.csv"):
        assert (tmp_path / "cut" / name).exists()


def test_resume_refuses_a_different_config_naming_the_keys(tmp_path):
    train(tiny(rounds=2), out=tmp_path, stop_after=1)
    with pytest.raises(ValueError, match=r"experiment\.method.*training\.local_steps"):
        train(tiny(method="tlora", rounds=2, **{"training.local_steps": 3}), out=tmp_path,
              resume=True)


def test_checkpoint_loads_on_another_device(tmp_path):
    train(tiny(rounds=1), out=tmp_path)
    server, clients = load_checkpoint(tmp_path / "checkpoint.pt", device="meta")
    assert server.round == 1 and len(clients) == 3
    assert all(b.device.type == "meta" for b, _ in server.model.factors)
    assert all(x.device.type == "meta" for m in clients[0].memory for x in m)


def test_fading_draws_do_not_depend_on_the_compressor():
    a = train(tiny(method="soft")).clients["gamma_hz"]
    b = train(tiny(method="tlora")).clients["gamma_hz"]
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


def test_latency_comes_from_the_real_payload_and_equals_the_plan():
    res = train(tiny(controller="fixed", **{"experiment.rho": 0.5}))
    c = res.clients
    from tsfa.maths.wireless import rate_bps

    expected = c["compute_s"] + c["bits"] / rate_bps(c["bandwidth_hz"], c["gamma_hz"])
    np.testing.assert_allclose(c["latency_s"], expected, rtol=1e-12)
    np.testing.assert_array_equal(c["bits"], c["planned_bits"])  # plan == wire
    assert c["bits"].nunique() == 1 and np.allclose(c["rho"], 0.5)


def test_ilora_sends_everything():
    res = train(tiny(method="ilora"))
    assert np.allclose(res.clients["rho"], 1.0)


@pytest.mark.parametrize("method", ["soft", "tlora", "slora"])
def test_batched_and_sequential_clients_agree(method):
    """The two client pools differ by float32 rounding only (2 rounds, 3 clients)."""
    a = train(tiny(method=method), clients="batched")
    b = train(tiny(method=method), clients="sequential")
    cols = ["accuracy", "test_loss", "train_loss", "mean_rho", "total_bits", "mean_queue_s"]
    np.testing.assert_allclose(a.rounds[cols].to_numpy(float), b.rounds[cols].to_numpy(float),
                               rtol=1e-4, atol=1e-5)
    pd.testing.assert_frame_equal(a.clients[["rho", "bits"]], b.clients[["rho", "bits"]])


def test_result_folder_records_the_j_table_and_r_star(tmp_path):
    res = train(tiny(), out=tmp_path)
    table = pd.read_csv(tmp_path / "rank_table.csv")
    assert {"rank", "J", "r_star", "trained_rank"} <= set(table.columns)
    feasible = table[table["feasible"]]
    r_star = int(feasible.loc[feasible["J"].idxmin(), "rank"])
    assert (table["r_star"] == r_star).all() and res.offline.rank == r_star
    assert (table["trained_rank"] == 8).all()
