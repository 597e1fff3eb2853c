"""The controller's record re-solves from the file alone (issue 11 item 5): every input of each
round's P2 is in the `tsfa control --json` output; CVXPY, given only those numbers, finds the
logged decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tsfa.cli import app
from tsfa.maths.payload import kept_components
from tsfa.optim import P2Problem
from tsfa.optim.p2_cvxpy import restricted_solver
from tsfa.optim.p2_deadline import solve_deadline


def _problem(record: dict, rnd: dict) -> P2Problem:
    """P2 of one logged round, from the record's numbers only."""
    p2, cl = record["inputs"]["p2"], record["inputs"]["clients"]
    return P2Problem(np.asarray(cl["weights"]), np.asarray(rnd["gamma_hz"]),
                     np.asarray(rnd["queue_before_s"]), np.asarray(cl["penalty_weights"]),
                     np.asarray(cl["compute_s"]), p2["slope_bits"], p2["head_bits"],
                     p2["total_bandwidth_hz"], p2["min_bandwidth_hz"], p2["rho_min"], p2["phi"],
                     p2["defer_rho"],
                     deadline_s=None if cl["deadline_s"] is None else np.asarray(cl["deadline_s"]))


@pytest.fixture(scope="module")
def record():
    res = CliRunner().invoke(app, ["control", "--rounds", "40", "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_record_holds_every_p2_input(record):
    inputs = record["inputs"]
    assert {"V", "slope_bits", "head_bits", "total_bandwidth_hz", "min_bandwidth_hz", "rho_min",
            "phi", "deadline", "deadline_factor", "constraint", "max_budget_s"} <= set(inputs["p2"])
    assert {"weights", "penalty_weights", "compute_s", "budget_s", "deadline_s",
            "mean_gamma_hz"} <= set(inputs["clients"])
    assert inputs["spec"]["control"]["deadline"] == "defer"  # the resolved spec
    rnd = record["rounds"][0]
    assert {"gamma_hz", "queue_before_s", "rho", "bandwidth_hz", "sent", "latency_s",
            "planned_bits", "queue_s", "objective", "status"} <= set(rnd)
    # the logged queue is the Lindley update of the previous round's logged latency
    for a, b in zip(record["rounds"], record["rounds"][1:], strict=False):
        np.testing.assert_array_equal(a["queue_s"], b["queue_before_s"])
        expect = np.maximum(np.asarray(a["queue_before_s"]) + np.asarray(a["latency_s"])
                            - np.asarray(inputs["clients"]["budget_s"]), 0.0)
        np.testing.assert_allclose(a["queue_s"], expect, rtol=1e-12, atol=1e-12)


def test_cvxpy_resolves_logged_rounds_from_the_file(record):
    """Rounds 0, 13, 27, 39 re-solved by CVXPY (same send-set rule, restricted problems in
    CVXPY): the logged decisions to 1e-4 and objectives to 1e-6 (the logged ones came from the
    joint solver; round 0 has every queue empty, where only rho and the objective are unique)."""
    models: dict = {}
    for t in (0, 13, 27, 39):
        rnd = record["rounds"][t]
        prob = _problem(record, rnd)
        res = solve_deadline(prob, restricted_solver(prob, models))
        np.testing.assert_array_equal(res.solution["sent"], rnd["sent"])
        np.testing.assert_allclose(res.rho, rnd["rho_p2"], rtol=1e-4, atol=1e-9)
        # on the wire: whole components, one fewer only where rounding up would miss D_k
        rank = record["inputs"]["rank"]
        up = kept_components(rank, np.asarray(rnd["rho_p2"]))
        wire = np.rint(np.asarray(rnd["rho"]) * rank).astype(int)
        sent = np.asarray(rnd["sent"], bool)
        assert np.all((wire[sent] == up[sent]) | (wire[sent] == np.maximum(up[sent] - 1, 1)))
        assert np.all(np.asarray(rnd["latency_s"])[sent]
                      <= np.asarray(prob.deadline_s)[sent] * (1 + 1e-9))
        if np.any(prob.queues > 0):  # with every queue empty the split is not unique
            np.testing.assert_allclose(res.bandwidth_hz, rnd["bandwidth_hz"], rtol=1e-4,
                                       atol=1e-6)
        scale = float(np.max(prob.weights * prob.penalty_weights))  # objective units
        assert res.objective == pytest.approx(rnd["objective"], rel=1e-6, abs=1e-8 * scale)
        assert prob.objective(np.asarray(rnd["rho_p2"]), np.asarray(rnd["bandwidth_hz"])) == \
            pytest.approx(rnd["objective"], rel=1e-12)
