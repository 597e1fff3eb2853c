"""The server and the client of one run (tsfa.fl.server, tsfa.fl.client): typed states, what a
client is told, deferral through the error-feedback memory, and the covariance identity on the
real uploaded factors (docs/model.md §2, §5)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tsfa.config.experiment import RunConfig
from tsfa.engines.local import LocalEngine
from tsfa.fl.client import Client, ClientState, ClientTask
from tsfa.fl.compress import decode
from tsfa.fl.metrics import uploaded_covariance
from tsfa.fl.server import RoundPlan, ServerState

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def engine(method="soft", clients="sequential", **extra) -> LocalEngine:
    cfg = RunConfig().replace(**{
        "experiment.method": method, "experiment.num_train": 300, "experiment.num_test": 100,
        "clients.num_clients": 3, "training.local_steps": 2, "training.batch_size": 16,
        "training.rounds": 3, **extra})
    return LocalEngine(cfg, clients)


def test_states_are_frozen_dataclasses_and_a_task_carries_only_what_clients_read():
    e = engine()
    server, clients = e.initial_states()
    for obj in (server, clients[0]):
        assert dataclasses.is_dataclass(obj)
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.round = 5
    plan = e.server.plan(server)
    assert isinstance(plan, RoundPlan) and isinstance(server, ServerState)
    assert {f.name for f in dataclasses.fields(plan.task(0))} == {"round", "rho", "send"}


@pytest.mark.parametrize("method", ["soft", "tlora", "rlora", "ilora"])
def test_covariance_identity_on_real_uploaded_factors(method):
    """sum p B_k A_k = B_bar A_bar + Cov on the uploads of round 1 (float64, 1e-6)."""
    e = engine(method)
    server, clients = e.initial_states()
    server, clients, _ = e.round(server, clients)  # move B away from zero
    plan = e.server.plan(server)
    results = e.pool.run(server.model, clients, [plan.task(k) for k in range(3)])
    uploads = [u.upload for u, _ in results]
    covs, residual = uploaded_covariance(server.model.factors, uploads, e.server.weights)
    assert residual < 1e-6
    assert sum(float(np.abs(c).sum()) for c in covs) > 0


def _deferring(e, sent):
    """Make the policy's decisions carry a per-client ``sent`` mask."""
    decide = e.server.policy.decide

    def with_mask(queues, gains):
        d = decide(queues, gains)
        mask = np.asarray(sent)
        return dataclasses.replace(d, sent=mask, planned_bits=np.where(mask, d.planned_bits, 0.0))
    e.server.policy = SimpleNamespace(decide=with_mask,
                                      update_queues=e.server.policy.update_queues)


def test_a_deferred_client_sends_nothing_and_keeps_its_update_in_memory():
    e = engine(**{"experiment.controller": "fixed", "experiment.rho": 1.0})
    _deferring(e, [True, False, True])
    server, clients = e.initial_states()
    plan = e.server.plan(server)
    assert plan.task(1) == ClientTask(0, 0.0, False)  # a deferred client is told rho = 0
    local = e.clients[1].train(server.model, 0)
    update, state = e.clients[1].respond(server.model, local, clients[1], plan.task(1))
    assert not update.sent and update.bits == 0 and update.head is None
    for (b1, a1), (b0, a0), (mb, ma) in zip(local.factors, server.model.factors, state.memory,
                                           strict=True):
        assert torch.equal(mb, b1 - b0) and torch.equal(ma, a1 - a0)
    new, _, record = e.round(server, clients)
    assert record.round["senders"] == 2
    rows = {r["client"]: r for r in record.clients}
    assert rows[1]["bits"] == 0 and rows[1]["latency_s"] == rows[1]["compute_s"]
    assert not rows[1]["sent"] and rows[0]["sent"]
    assert not torch.equal(new.model.factors[0][1], server.model.factors[0][1])


def test_the_deferred_update_arrives_with_the_next_upload():
    """rho = 1 SOFT: the next upload carries the deferred and the new change, memory 0 after."""
    e = engine(**{"experiment.controller": "fixed", "experiment.rho": 1.0})
    client = e.clients[0]
    server, clients = e.initial_states()
    glob = server.model
    first = client.train(glob, 0)
    _, state = client.respond(glob, first, clients[0], ClientTask(0, 1.0, False))
    second = client.train(glob, 1)
    update, state = client.respond(glob, second, state, ClientTask(1, 1.0, True))
    sent = decode(update.upload)
    for m, base in enumerate(glob.factors):
        for j in (0, 1):
            want = (first.factors[m][j] - base[j]) + (second.factors[m][j] - base[j])
            torch.testing.assert_close(sent[m][j], want)
            assert float(state.memory[m][j].abs().max()) < 1e-6


def test_a_client_state_holds_only_its_memory():
    assert [f.name for f in dataclasses.fields(ClientState)] == ["memory"]


@pytest.mark.parametrize("clients", ["sequential", "batched"])
def test_ffa_trains_b_and_the_head_only(clients, monkeypatch):
    """FFA-LoRA freezes A in local training (not only on the uplink): every client's locally
    trained A equals the global A exactly, in both pools, while B and the head move."""
    seen = []
    respond = Client.respond

    def record(self, glob, local, state, task):
        seen.append((glob, local))
        return respond(self, glob, local, state, task)

    monkeypatch.setattr(Client, "respond", record)
    e = engine("ffa", clients, **{"experiment.rho": 1.0, "experiment.controller": "fixed"})
    server, clients_ = e.initial_states()
    for _ in range(2):
        server, clients_, _ = e.round(server, clients_)
    assert len(seen) == 2 * 3
    for glob, local in seen:
        for (b1, a1), (b0, a0) in zip(local.factors, glob.factors, strict=True):
            assert torch.equal(a1, a0) and not torch.equal(b1, b0)
        assert any(not torch.equal(local.head[k], glob.head[k]) for k in glob.head)


def test_a_lost_upload_is_not_received_but_its_slot_counts_in_the_queue():
    """A client asked to send whose reply never arrives (a device that dropped out, as Flower's
    deployment engine sees it): nothing is aggregated from it, ``lost`` marks it, and its queue
    counts the planned bits on its bandwidth (the slot elapsed)."""
    from tsfa.fl.client import ClientUpdate
    from tsfa.maths.wireless import upload_time_s

    e = engine(**{"experiment.controller": "fixed", "experiment.rho": 1.0})
    server, clients = e.initial_states()
    plan = e.server.plan(server)
    results = e.pool.run(server.model, clients, [plan.task(k) for k in range(3)])
    updates = [u for u, _ in results]
    updates[2] = ClientUpdate.lost_upload(2)
    new, record = e.server.finish(server, plan, updates, 0.0)
    rows = {r["client"]: r for r in record.clients}
    assert rows[2]["lost"] and rows[2]["bits"] == 0 and not rows[0]["lost"]
    planned = rows[2]["compute_s"] + upload_time_s(plan.planned_bits[2], plan.bandwidth_hz[2],
                                                   plan.gains_hz[2])
    assert rows[2]["latency_s"] == pytest.approx(planned, rel=1e-12)
    assert record.round["lost"] == 1 and np.isfinite(record.round["train_loss"])
    # the aggregate is that of the two uploads received
    ref, _ = e.server.finish(server, plan, updates[:2] + [dataclasses.replace(
        results[2][0], upload=None, head=None, bits=0.0)], 0.0)
    for (b1, a1), (b2, a2) in zip(new.model.factors, ref.model.factors, strict=True):
        assert torch.equal(b1, b2) and torch.equal(a1, a2)
