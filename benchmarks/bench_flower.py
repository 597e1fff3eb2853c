"""Wall time of the Flower engine (simulation engine, Ray backend) over the in-process engine.

`python benchmarks/bench_flower.py [--rounds 5] [--clients 10] [--num-cpus 2] [--threads 1]` runs
the same experiment (embedded task, SOFT + TSFA controller, seed 0) once on each engine, in this order,
checks that the per-round metrics agree, and prints both wall times and their ratio, end to end
(Ray start-up, actor start-up and per-actor task build included) and per round (median of the
rounds after the first, from the engines' own `wall_s`). Needs `pip install "tsfa[flower]"`.
`--out DIR` keeps the Flower run's folder. `--smoke` (the test suite's check: the tables of both
engines equal to the bit) shrinks the run: 2 clients, 2 rounds, 300 training and 100
test samples, 2 local steps of b = 16 (``SMOKE``); Ray's start-up still takes its ~20 s.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from tsfa.config.experiment import RunConfig
from tsfa.engines.flower import train_flower
from tsfa.engines.local import LocalEngine, train

SMOKE = {"clients.num_clients": 2, "training.rounds": 2, "experiment.num_train": 300,
         "experiment.num_test": 100, "training.local_steps": 2, "training.batch_size": 16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs given to Ray (1 per actor)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in the driver (the Ray actors run 1 each)")
    ap.add_argument("--out", default=None,
                    help="folder for the Flower run's tables (config.toml, rounds.csv, ...)")
    ap.add_argument("--smoke", action="store_true",
                    help="a small run for the test suite: " + ", ".join(
                        f"{k} = {v}" for k, v in SMOKE.items()) + " (overrides --rounds, --clients)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = RunConfig().replace(**{"clients.num_clients": args.clients,
                                 "training.rounds": args.rounds})
    if args.smoke:
        cfg = cfg.replace(**SMOKE)
        args.clients, args.rounds = SMOKE["clients.num_clients"], SMOKE["training.rounds"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    LocalEngine(cfg, clients="sequential")  # warm imports and caches (neither engine pays them)
    t = time.perf_counter()
    local = train(cfg, clients="sequential")  # the pool the Flower clients match
    local_s = time.perf_counter() - t
    t = time.perf_counter()
    flower = train_flower(cfg, out=args.out, num_cpus=args.num_cpus, client_cpus=1)
    flower_s = time.perf_counter() - t
    cols = ["accuracy", "test_loss", "mean_rho", "total_bits", "mean_queue_s"]
    diff = float(np.max(np.abs(local.rounds[cols].to_numpy() - flower.rounds[cols].to_numpy())))
    per_round_local = float(local.rounds["wall_s"].iloc[1:].median())
    per_round_flower = float(flower.rounds["wall_s"].iloc[1:].median())
    print(f"run: embedded task, {args.clients} clients, {args.rounds} rounds, SOFT + TSFA; "
          f"Ray num_cpus = {args.num_cpus}, 1 CPU per ClientApp actor; torch threads in the "
          f"driver = {torch.get_num_threads()}; load average before: {load}")
    print(f"max |metric difference| (accuracy, loss, rho, bits, queue): {diff:.3g}")
    # every column of both tables, to the bit (Flower alone logs each reply's serialised size)
    exact = local.rounds.drop(columns="wall_s").equals(flower.rounds.drop(columns="wall_s")) and \
        local.clients.equals(flower.clients.drop(columns="message_bytes"))
    print(f"rounds and clients tables equal to the bit: {exact}")
    print("| engine | end to end s | median round s (rounds 2..T) |")
    print("|---|---:|---:|")
    print(f"| in-process | {local_s:.2f} | {per_round_local:.3f} |")
    print(f"| Flower (Ray) | {flower_s:.2f} | {per_round_flower:.3f} |")
    print(f"| **Flower / in-process** | **{flower_s / local_s:.2f}** | "
          f"**{per_round_flower / per_round_local:.2f}** |")


if __name__ == "__main__":
    main()
