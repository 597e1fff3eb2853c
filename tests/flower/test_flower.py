"""tsfa on Flower's simulation engine (Ray) against the in-process engine (tsfa[flower] extra).

Both engines drive the same Server and Clients with the same stateless random substreams; with
torch's intra-op thread count the same in the driver and in the Ray actors (1 here; a Ray actor
with num_cpus = 1 runs torch single-threaded) every logged metric equals the in-process engine's
sequential client pool bit for bit. With a different thread count only the float32 reduction
order of local training changes (relative differences ~1e-6; see docs/flower.md).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, RecordDict  # noqa: E402

from tsfa.config.experiment import RunConfig  # noqa: E402
from tsfa.engines.flower import records  # noqa: E402
from tsfa.engines.flower.client_app import _CLIENTS, client_for, client_round  # noqa: E402
from tsfa.engines.flower.settings import out_from_flower, run_config_from_flower  # noqa: E402
from tsfa.engines.local import LocalEngine  # noqa: E402
from tsfa.fl.client import Client, ClientTask  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.usefixtures("one_thread")]


def tiny(method="soft", rounds=2, **extra) -> RunConfig:
    return RunConfig().replace(**{
        "experiment.method": method, "experiment.num_train": 300, "experiment.num_test": 100,
        "clients.num_clients": 3, "training.local_steps": 2, "training.batch_size": 16,
        "training.rounds": rounds, **extra})


FACTOR = {"experiment.upload": "factor", "experiment.error_feedback": "none"}


@pytest.mark.parametrize("method, bits, extra", [
    ("soft", 32, {}), ("tlora", 32, {}), ("rlora", 32, {}), ("slora", 32, {}), ("ilora", 32, {}),
    ("soft", 16, {}), ("svd", 32, {}), ("ffa", 32, {}), ("tlora", 32, {"experiment.equal_bits": True}),
    ("soft", 32, FACTOR), ("tlora", 32, FACTOR), ("ffa", 32, FACTOR)])
def test_upload_and_memory_records_round_trip_exactly(method, bits, extra):
    e = LocalEngine(tiny(method, **{"lora.bits_per_param": bits, **extra}), clients="sequential")
    server, clients = e.initial_states()
    u, state = e.clients[1].step(server.model, clients[1], ClientTask(0, 0.5))
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
    assert all(head[k].dtype == u.head[k].dtype and torch.equal(head[k], u.head[k])
               for k in u.head)
    memory = records.record_to_memory(records.memory_to_record(state.memory))
    assert [len(m) for m in memory] == [len(m) for m in state.memory]
    assert all(torch.equal(x, y) for m, n in zip(memory, state.memory, strict=True)
               for x, y in zip(m, n, strict=True))
    glob = records.record_to_model(records.model_to_record(server.model))
    assert all(torch.equal(b, b0) and torch.equal(a, a0)
               for (b, a), (b0, a0) in zip(glob.factors, server.model.factors, strict=True))
    assert all(torch.equal(glob.head[k], server.model.head[k]) for k in glob.head)


def test_a_client_process_builds_only_a_client(monkeypatch):
    """handle_train builds Clients (model, each client's data slice, compressor) and nothing of
    the server: no Server, policy, system realisation or test set."""
    import tsfa.control.from_spec
    import tsfa.fl.server
    import tsfa.maths.instance

    def forbidden(*args, **kwargs):
        raise AssertionError("a client process built a server object")

    for module, name in ((tsfa.fl.server.Server, "__init__"), (tsfa.fl.server, "test_data"),
                         (tsfa.maths.instance, "realize"), (tsfa.control.from_spec, "make_policy")):
        monkeypatch.setattr(module, name, forbidden)
    cfg, k = tiny(), 2
    _CLIENTS.clear()
    client = client_for(cfg, k)
    content = RecordDict({"arrays": records.model_to_record(_global(client)),
                          "config": ConfigRecord({"round": 0, "rho": 0.5, "send": True})})
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": k}, state=RecordDict(),
                  run_config={})
    reply = client_round(cfg, content, ctx)
    assert set(reply.keys()) == {"client", "metrics", "upload", "upload_meta"}
    assert "tsfa.memory" in ctx.state
    assert all(type(c) is Client for c in _CLIENTS[cfg.to_toml()])
    assert set(vars(client)) == {"index", "data", "model", "compressor", "settings"}
    assert client.num_examples == int(reply["metrics"]["num-examples"])
    _CLIENTS.clear()


def _global(client):
    from tsfa.fl.client import GlobalModel
    from tsfa.fl.lora import get_factors, get_head_state

    return GlobalModel(get_factors(client.model), get_head_state(client.model))


def test_run_config_from_flower_applies_dotted_keys():
    cfg = run_config_from_flower({"config": "", "out": "runs/x", "experiment.method": "tlora",
                                  "training.rounds": 3, "clients.num_clients": 4})
    assert (cfg.experiment.method, cfg.system.training.rounds) == ("tlora", 3)
    assert cfg.system.clients.num_clients == 4
    assert out_from_flower({"out": ""}) is None
    with pytest.raises(ValueError, match="dotted"):
        run_config_from_flower({"rounds": 3})


# The simulation engine against the in-process one, table for table to the bit, is the smoke run
# of benchmarks/bench_flower.py (tests/test_scripts.py, check_flower): one Ray start serves both.


def test_client_memories_survive_a_new_run_through_the_state_dir(tmp_path):
    """A resumed run (a new Flower run: empty context state) finds each client's memory after
    the last completed round in the SuperNode's state dir, under the run's lineage only; the
    two newest rounds are kept."""
    from tsfa.engines.flower.client_app import load_memory, save_memory

    cfg = tiny()
    client = client_for(cfg, 0)
    e = LocalEngine(cfg, clients="sequential")
    server, states = e.initial_states()

    def ctx():
        return Context(run_id=1, node_id=1, node_config={"partition-id": 0, "state-dir":
                                                         str(tmp_path)},
                       state=RecordDict(), run_config={})

    first, state = ctx(), states[0]
    memories = []
    for t in range(3):
        _, state = client.step(server.model, state, ClientTask(t, 0.5))
        save_memory(cfg, first, state, t, "L1")
        memories.append(state.memory)
    files = sorted(p.name for p in tmp_path.rglob("round*.pt"))
    assert files == ["round1.pt", "round2.pt"]
    resumed, fresh = load_memory(cfg, ctx(), client, server.model, 2, "L1")  # redo round 2
    assert not fresh
    for (b, a), (b1, a1) in zip(resumed.memory, memories[1], strict=True):
        assert torch.equal(b, b1) and torch.equal(a, a1)
    _, fresh = load_memory(cfg, ctx(), client, server.model, 2, "L2")  # another run's lineage
    assert fresh
    _, fresh = load_memory(cfg, ctx(), client, server.model, 0, "L2")
    assert not fresh  # round 0 starts from an empty memory by design
