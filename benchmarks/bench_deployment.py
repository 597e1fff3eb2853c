"""Flower's deployment engine on this machine: bytes on the wire per method, time per round.

`python benchmarks/bench_deployment.py [--methods soft tlora ...] [--rounds 3] [--clients 2]`
starts one deployment (:class:`tsfa.engines.flower.deploy.Deployment`: a TLS SuperLink and K
authenticated SuperNodes, real processes), runs the embedded task once per method on it (SOFT's
TSFA controller for every method, seed 0, a small size: ``SIZE``) and the same configs on the
in-process engine, and prints per method:

* ``bytes/bit``: each received upload's serialised size as Flower sends it (``message_bytes``:
  the reply's record tree, every object deflated; TLS and HTTP framing not included) x 8 over
  the payload model's bits of that upload (``bits``, values and indices: planned == sent);
  median over the uploads; above 1 by the records' keys, shapes, metadata and the reply's
  metrics;
* the SuperLink's own traffic count for the run (``flwr ls``: inbound + outbound bytes, the
  global model's broadcasts included) over the run's uplink payload bits / 8;
* median seconds per round after the first (``wall_s``), deployment and in-process, and their
  ratio; every metric of the two engines is checked equal.

`--smoke` (the test suite's check): one method, 2 rounds. Needs `pip install "tsfa[flower]"`.
The machine's load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tsfa.config.experiment import RunConfig
from tsfa.config.registry import COMPRESSORS
from tsfa.engines.flower.deploy import Deployment
from tsfa.engines.local import train

SIZE = {"experiment.num_train": 600, "experiment.num_test": 200, "training.local_steps": 5,
        "training.batch_size": 16}


def measure(d: Deployment, cfg: RunConfig, out: Path) -> dict:
    info = d.run(out)
    t0 = time.perf_counter()
    local = train(cfg, clients="sequential")
    local_s = time.perf_counter() - t0
    rounds, clients = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")
    for col in ("accuracy", "test_loss", "total_bits", "mean_queue_s"):
        if not np.array_equal(rounds[col].to_numpy(), local.rounds[col].to_numpy()):
            raise RuntimeError(f"{cfg.experiment.method}: {col} differs between the engines")
    sent = clients[clients["bits"] > 0]
    traffic = info.get("network-traffic", {}).get("total-bytes", float("nan"))
    later = slice(1, None) if len(rounds) > 1 else slice(None)
    dep_round = float(rounds["wall_s"].iloc[later].median())
    loc_round = float(local.rounds["wall_s"].iloc[later].median())
    return {"method": cfg.experiment.method, "uploads": len(sent),
            "median_bits": float(sent["bits"].median()),
            "bytes_per_bit": float((8 * sent["message_bytes"] / sent["bits"]).median()),
            "link_bytes_over_payload": float(traffic / (sent["bits"].sum() / 8)),
            "deploy_round_s": dep_round, "inprocess_round_s": loc_round,
            "deploy_over_inprocess": dep_round / loc_round, "deploy_run_s": info["elapsed"],
            "inprocess_run_s": local_s}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(COMPRESSORS), choices=list(COMPRESSORS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="deployment folder (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="soft only, 2 rounds (the test suite)")
    a = ap.parse_args(argv)
    if a.smoke:
        a.methods, a.rounds = ["soft"], 2
    torch.set_num_threads(1)
    before = os.getloadavg()
    base = RunConfig().replace(**{**SIZE, "clients.num_clients": a.clients,
                                  "training.rounds": a.rounds})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir or tmp)
        with Deployment(base, work / "deployment", join_timeout_s=120) as d:
            d.start_supernodes()
            for m in a.methods:
                cfg = base.replace(**{"experiment.method": m})
                d.cfg = cfg
                rows.append(measure(d, cfg, work / m))
                print(f"{m}: done (load {os.getloadavg()[0]:.1f})", flush=True)
    after = os.getloadavg()
    print(f"embedded task, {a.clients} clients, {a.rounds} rounds, SOFT's TSFA controller, seed 0, "
          f"{', '.join(f'{k} = {v}' for k, v in SIZE.items())}; torch 1 thread per process")
    print(f"load average before: {', '.join(f'{x:.1f}' for x in before)}; after: "
          f"{', '.join(f'{x:.1f}' for x in after)}")
    with pd.option_context("display.width", 200, "display.precision", 4):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
