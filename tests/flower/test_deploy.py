"""tsfa on Flower's deployment engine (issue 21): real flower-superlink / flower-supernode
processes on this machine, TLS, registered SuperNodes only, drop-outs, resume (docs/flower.md).

One SuperLink with K = 2 registered SuperNodes serves the module; its tests are slow (a run of
2 rounds spawns a ClientApp process per message: about a minute on 2 shared cores). Every
process a test starts is ended by PID, and the last test checks that none is left.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("flwr")
pytest.importorskip("cryptography")
if shutil.which("flower-superlink") is None:  # pragma: no cover - the flower extra installs it
    pytest.skip("flower-superlink not on PATH", allow_module_level=True)

from tsfa.config.experiment import RunConfig  # noqa: E402
from tsfa.engines.flower.credentials import make_node_key  # noqa: E402
from tsfa.engines.flower.deploy import Deployment  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.usefixtures("one_thread")]
slow = pytest.mark.slow

ROUND_TIMEOUT_S = 45.0  # a lost reply ends its round after this long


def tiny(rounds: int = 2) -> RunConfig:
    return RunConfig().replace(**{
        "experiment.num_train": 200, "experiment.num_test": 50, "clients.num_clients": 2,
        "training.local_steps": 2, "training.batch_size": 16, "training.rounds": rounds})


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    d = Deployment(tiny(), tmp_path_factory.mktemp("deploy"), join_timeout_s=180,
                   round_timeout_s=ROUND_TIMEOUT_S)
    with d:
        d.start_supernodes()
        yield d
    assert d.running() == [], "a process of the deployment is still running"


@pytest.fixture(scope="module")
def in_process():
    import torch

    from tsfa.engines.local import train

    torch.set_num_threads(1)
    return train(tiny(), clients="sequential")


def _log(d: Deployment, name: str) -> str:
    return (d.logs / f"{name}.log").read_text(errors="replace")


def _wait_exit(p, timeout_s: float = 30.0) -> int | None:
    try:
        return p.wait(timeout=timeout_s)
    except Exception:  # still running
        return None


@slow
def test_deployment_equals_the_in_process_engine_and_refuses_strangers(deployment, in_process,
                                                                       tmp_path):
    """Same seed, same config: every logged metric of the real deployment equals the in-process
    engine's bit for bit. Meanwhile a SuperNode with an unregistered key, one without the CA
    and two plain-text ones try to join as client 1: all are refused, the run goes on."""
    d = deployment
    out = tmp_path / "run"
    d.launch(out)
    stranger, _ = make_node_key(tmp_path, "stranger")
    tries = {"unregistered": d.supernode(1, "unregistered", key=stranger, state=False),
             # the system's CAs do not know the local CA
             "no_ca": d.supernode(1, "no_ca", tls="system", state=False),
             # plain text with an auth key: Flower refuses to send a key unencrypted
             "plain_key": d.supernode(1, "plain_key", tls="insecure", state=False)}
    expect = {"unregistered": "Failed to activate SuperNode", "no_ca": "CERTIFICATE_VERIFY_FAILED",
              "plain_key": "TLS is not enabled"}
    for name, p in tries.items():
        assert _wait_exit(p) not in (None, 0), name
        assert expect[name] in _log(d, name), _log(d, name)[-1500:]
    d.finish()
    for name in tries:
        d.stop(name)
    rounds, clients = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")
    for col in in_process.rounds.columns.drop("wall_s"):
        np.testing.assert_array_equal(rounds[col].to_numpy(), in_process.rounds[col].to_numpy(),
                                      err_msg=col)
    for col in in_process.clients.columns:
        np.testing.assert_array_equal(clients[col].to_numpy(), in_process.clients[col].to_numpy(),
                                      err_msg=col)
    nodes = pd.read_csv(out / "nodes.csv")
    assert sorted(nodes["client"]) == [0, 1] and nodes["node_id"].nunique() == 2
    # the serialised reply carries at least the payload's bits
    sent = clients[clients["bits"] > 0]
    assert (sent["message_bytes"] * 8 >= sent["bits"]).all()


@slow
def test_a_plain_text_supernode_without_a_key_never_joins(deployment):
    """A plain-text connection (``--insecure``, no key) to the TLS SuperLink keeps retrying and
    is never online; stopping it ends it."""
    d = deployment
    before = d.online()
    d.supernode(0, "plain", tls="insecure", auth=False, state=False)
    time.sleep(8)
    assert d.procs["plain"].poll() is None and d.online() == before
    assert "SuperNode ID" not in _log(d, "plain")
    d.stop("plain")


@slow
def test_a_supernode_killed_mid_round_is_lost_then_rejoins(deployment, tmp_path):
    """SIGKILL client 1's SuperNode during round 0: the round completes with client 0 after the
    round timeout, client 1's upload is lost (clients.csv) and its queue counts the planned
    upload; restarted with its key, it rejoins (the SuperLink admits it only once its
    heartbeats have lapsed, about a minute after the crash; until then its rounds are lost
    too) and trains again in the last round, from the current global model; the run
    completes."""
    d = deployment
    out = tmp_path / "run"
    d.launch(out, cfg=tiny(rounds=4))
    t0 = time.monotonic()
    nodes = out / "nodes.csv"  # written once every client answered the server's query
    while not nodes.is_file() or len(pd.read_csv(nodes)) < 2:
        assert time.monotonic() - t0 < 180, _log(d, "run")[-2000:]
        time.sleep(0.1)
    query = set(d.clientapps("supernode1"))  # a ClientApp that answered the query may linger
    while not set(d.clientapps("supernode1")) - query:  # client 1 is training in round 0
        assert time.monotonic() - t0 < 180, _log(d, "run")[-2000:]
        time.sleep(0.1)
    d.kill("supernode1")
    d.rejoin(1)  # the same key, partition and state dir: it comes back
    d.finish()
    clients = pd.read_csv(out / "clients.csv").set_index(["round", "client"])
    assert bool(clients.loc[(0, 1), "lost"]) and clients.loc[(0, 1), "bits"] == 0
    assert not clients.loc[(0, 0), "lost"] and not clients.xs(0, level="client")["lost"].any()
    assert not clients.loc[(3, 1), "lost"] and clients.loc[(3, 1), "message_bytes"] > 0
    lost = clients.loc[(0, 1)]
    assert lost["latency_s"] > lost["compute_s"]  # the planned upload's slot is counted
    rounds = pd.read_csv(out / "rounds.csv")
    assert rounds["lost"].iloc[0] == 1 and rounds["lost"].iloc[-1] == 0
    assert np.isfinite(rounds["accuracy"]).all()
    d.wait_online(d.K)


@slow
def test_a_server_killed_mid_run_resumes_to_the_uninterrupted_result(deployment, in_process,
                                                                     tmp_path):
    """Kill the ServerApp after round 0; ``resume`` continues from its checkpoint (the clients
    from the memories in their state dirs) to the in-process engine's result, bit for bit."""
    d = deployment
    out = tmp_path / "run"
    d.launch(out)
    t0 = time.monotonic()
    while not (out / "checkpoint.pt").is_file():
        assert time.monotonic() - t0 < 180, _log(d, "run")[-2000:]
        time.sleep(0.2)
    d.kill_serverapp()
    d.stop("run")
    d.run(out, resume=True)
    rounds = pd.read_csv(out / "rounds.csv")
    assert list(rounds["round"]) == [0, 1]
    for col in ("accuracy", "test_loss", "train_loss", "total_bits", "mean_queue_s"):
        np.testing.assert_array_equal(rounds[col].to_numpy(), in_process.rounds[col].to_numpy(),
                                      err_msg=col)


@slow
def test_no_process_is_left_after_a_deployment(tmp_path):
    d = Deployment(tiny(), tmp_path / "d", join_timeout_s=5)
    with d:
        d.supernode(0)
        pids = [p.pid for p in d.procs.values()]
    assert d.running() == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


@pytest.mark.parametrize("resume", [False, True])
def test_the_cli_runs_a_deployment_with_its_out_and_resume(monkeypatch, tmp_path, resume):
    """``tsfa train --engine deployment`` hands the config, OUT and --resume to
    train_deployment (the deployment itself is tested above) and prints the run's rows."""
    from typer.testing import CliRunner

    from tsfa.cli import app
    from tsfa.engines.flower import deploy

    seen = {}

    def fake(cfg, out, resume=False):
        seen.update(out=out, resume=resume, rounds=cfg.system.training.rounds)
        raise RuntimeError("run 1 ended 'finished:failed'; see logs")

    monkeypatch.setattr(deploy, "train_deployment", fake)
    args = ["train", "--engine", "deployment", "--rounds", "2", "--out", str(tmp_path)]
    res = CliRunner().invoke(app, args + (["--resume"] if resume else []))
    assert res.exit_code == 2 and "finished:failed" in res.output
    assert seen == {"out": tmp_path, "resume": resume, "rounds": 2}
