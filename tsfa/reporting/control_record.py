"""The controller's record: every input of every round's P2, streamed to JSON or CSV.

A record re-solves without tsfa's state (tests/test_control_record.py does it with the CVXPY
solver): the header holds the resolved spec and every static input of P2 (per client ``p_k``,
penalty weight ``v_k = V Gamma_k``, compute time, budget, deadline; globally ``V``, payload
slope and head bits of the method, ``W_tot``, ``w_min``, ``rho_min``, the phi variant, the
deadline rule and the constraint), and each round its own inputs (``gamma_k``, the queues the
decision saw) and the decision. Writers take one round at a time, so ``tsfa control --json``
or ``--out`` at K = 100,000 holds one round in memory, not the run.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TextIO

import numpy as np

ROUND_ARRAYS = ("gamma_hz", "queue_before_s", "rho", "bandwidth_hz", "sent", "latency_s",
                "planned_bits", "queue_s")


def p2_inputs(spec, inst, pol, rank: int, solver: str, policy: str) -> dict:
    """The static inputs of every round's P2 (module docstring), JSON-ready lists."""
    ctl = spec.control
    return {
        "spec": spec.to_dict(),
        "rank": int(rank), "policy": policy, "solver": solver,
        "fading": {"seed": spec.clients.seed,
                   "draw": "tsfa.maths.wireless.fading_gains(seed, round, K) * mean_gamma_hz"},
        "p2": {"V": pol.V, "slope_bits": pol.slope_bits, "head_bits": pol.head_bits,
               "total_bandwidth_hz": pol.total_bandwidth_hz,
               "min_bandwidth_hz": pol.min_bandwidth_hz, "rho_min": pol.rho_min, "phi": pol.phi,
               "defer_rho": pol.defer_rho,
               "deadline": ctl.deadline if pol.deadline_s is not None else "none",
               "deadline_factor": ctl.deadline_factor, "constraint": pol.constraint,
               "max_budget_s": pol.max_budget_s},
        "clients": {"weights": pol.weights, "penalty_weights": pol.penalty_weights,
                    "sparsity_weights": pol.sparsity_weights, "compute_s": pol.compute_s,
                    "budget_s": pol.budget_s, "deadline_s": pol.deadline_s,
                    "mean_gamma_hz": inst.mean_gamma_hz},
    }


def round_fields(rec) -> dict:
    """One round's record: ``round``, the arrays of :data:`ROUND_ARRAYS`, objective, status."""
    d = rec.decision
    values = (rec.gamma_hz, rec.queue_before_s, d.rho, d.bandwidth_hz, d.sent, d.latency_s,
              d.planned_bits, rec.queue_s)
    out = {"round": int(rec.round)}
    out.update({name: np.asarray(v) for name, v in zip(ROUND_ARRAYS, values, strict=True)})
    # P2's own ratios (``rho`` is the ratio on the wire: whole components, one fewer where
    # rounding up would miss the deadline, tsfa.control.base.BasePolicy.on_the_wire)
    res = getattr(d, "result", None)
    out["rho_p2"] = np.asarray(res.rho) if res is not None and res.rho is not None else out["rho"]
    out["objective"], out["status"] = float(d.objective), str(d.status)
    return out


def jsonable(obj):
    """JSON-ready: arrays and frames to lists, numpy scalars to Python, non-finite floats as
    ``null`` (nan) or ``"inf"`` / ``"-inf"`` (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f" and np.all(np.isfinite(obj)):
            return obj.tolist()  # fast path: floats repr exactly, no per-item checks
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # a DataFrame
        return jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


_plain = jsonable


class JsonStream:
    """``{header..., "rounds": [round, round, ...], tail...}`` written as it goes."""

    def __init__(self, stream: TextIO, header: dict):
        self.stream, self.first = stream, True
        body = json.dumps(_plain(header), allow_nan=False)
        stream.write(body[:-1] + (", " if header else "") + '"rounds": [\n')

    def __call__(self, rec) -> None:
        self.stream.write(("" if self.first else ",\n")
                          + json.dumps(_plain(round_fields(rec)), allow_nan=False))
        self.first = False

    def close(self, tail: dict) -> None:
        body = json.dumps(_plain(tail), allow_nan=False)
        self.stream.write("\n]" + (", " + body[1:] if tail else "}") + "\n")
        self.stream.flush()


class CsvStream:
    """``rounds.csv``: one row per (round, client) with the round's inputs and decision; the
    static inputs go to ``clients.csv`` and ``p2_inputs.json`` (:func:`write_inputs`)."""

    COLUMNS = ("round", "client", *ROUND_ARRAYS, "objective", "status")

    def __init__(self, path: str | Path):
        self.file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.COLUMNS)

    def __call__(self, rec) -> None:
        f = round_fields(rec)
        k = f["rho"].size
        cols = [np.full(k, f["round"]), np.arange(k)]
        for name in ROUND_ARRAYS:
            v = np.broadcast_to(f[name], (k,))
            cols.append(v.astype(int) if name == "sent" else v)
        rows = zip(*(c.tolist() for c in cols), [f["objective"]] * k, [f["status"]] * k,
                   strict=True)
        self.writer.writerows(rows)

    def close(self) -> None:
        self.file.close()


def write_inputs(path: str | Path, inputs: dict) -> None:
    """``p2_inputs.json`` (everything but the per-client arrays) and ``clients.csv`` (them)."""
    import pandas as pd

    path = Path(path)
    clients = {k: np.asarray(v, float) for k, v in inputs["clients"].items() if v is not None}
    pd.DataFrame({"client": np.arange(len(clients["weights"])), **clients}).to_csv(
        path / "clients.csv", index=False)
    head = {k: v for k, v in inputs.items() if k != "clients"}
    (path / "p2_inputs.json").write_text(json.dumps(_plain(head), indent=2), encoding="utf-8")
