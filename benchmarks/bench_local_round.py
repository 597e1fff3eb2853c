"""Share of the SOFT regulariser and of the uplink compression in one local round (docs/model.md §5).

One client's round at the default run's sizes (tiny ViT of the embedded task, LoRA rank r on q, v,
tau local AdamW steps of batch b): ``local_train`` with zeta = 0 (task loss only) and with
zeta > 0 (task loss + zeta sum_m R(B_m, A_m)), then error-feedback compression of the factor
deltas by SOFT, TLoRA, RLoRA and SLoRA. All parts are timed in the same run, interleaved over the
repeats (so machine load hits them alike), and reported as medians and as ratios of the SOFT
round = regularised training + SOFT compression. Run as a script:

    python benchmarks/bench_local_round.py [--rank 8] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pandas as pd
import torch

from tsfa.config.experiment import RunConfig
from tsfa.fl.client import local_train
from tsfa.fl.compress import make_compressor
from tsfa.fl.lora import apply_lora, get_factors, set_factors
from tsfa.fl.synthetic import SyntheticConfig
from tsfa.fl.vit import ViT

METHODS = ("soft", "tlora", "rlora", "slora")


def setup(rank: int, samples: int, seed: int = 0):
    """The default task's tiny ViT with LoRA, one client's worth of Gaussian images."""
    vit = SyntheticConfig().vit
    gen = torch.Generator().manual_seed(seed)
    model = ViT(vit, gen)
    apply_lora(model, rank, RunConfig().experiment.lora_alpha, generator=gen)
    x = torch.randn(samples, vit.in_chans, vit.image_size, vit.image_size, generator=gen)
    y = torch.randint(vit.num_classes, (samples,), generator=gen)
    return model, x, y


def run(rank: int = 8, rho: float = 0.25, repeats: int = 7, seed: int = 0) -> dict:
    cfg = RunConfig()
    tr, zeta = cfg.system.training, cfg.system.soft.zeta
    samples = cfg.experiment.num_train // cfg.system.clients.num_clients
    model, x, y = setup(rank, samples, seed)
    start = get_factors(model)
    compressors = {m: make_compressor(m) for m in METHODS}
    times: dict[str, list[float]] = {k: [] for k in ("train_task", "train_reg", *METHODS)}

    def train(z: float, rep: int) -> list:
        set_factors(model, start)
        t0 = time.perf_counter()
        local_train(model, x, y, tr.local_steps, tr.batch_size, tr.learning_rate,
                    cfg.experiment.optimizer, z, np.random.default_rng(rep))
        times["train_reg" if z > 0 else "train_task"].append(time.perf_counter() - t0)
        return get_factors(model)

    for rep in range(repeats + 1):  # the first pass warms up and is dropped
        train(0.0, rep)
        local = train(zeta, rep)
        deltas = [(b1 - b0, a1 - a0) for (b1, a1), (b0, a0) in zip(local, start, strict=True)]
        for m, c in compressors.items():
            state = c.init(start)
            t0 = time.perf_counter()
            c.update(deltas, state, start, rho, np.random.default_rng(rep))
            times[m].append(time.perf_counter() - t0)
        if rep == 0:
            times = {k: [] for k in times}
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"rank": rank, "rho": rho, "local_steps": tr.local_steps, "batch": tr.batch_size,
            "repeats": repeats, "median_s": med}


def report(res: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    med = res["median_s"]
    reg = med["train_reg"] - med["train_task"]
    soft_round = med["train_reg"] + med["soft"]
    parts = pd.DataFrame({"median_ms": {k: 1e3 * v for k, v in med.items()}})
    ratios = {"regulariser / SOFT round": reg / soft_round,
              "SOFT compression / SOFT round": med["soft"] / soft_round,
              "regulariser + compression / SOFT round": (reg + med["soft"]) / soft_round}
    for m in ("tlora", "rlora", "slora"):
        ratios[f"{m} compression / its round"] = med[m] / (med["train_task"] + med[m])
        ratios[f"{m} compression / SOFT compression"] = med[m] / med["soft"]
    return parts, pd.DataFrame({"ratio": ratios})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rho", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.rank, args.rho, args.repeats)
    parts, ratios = report(res)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"tiny ViT (embedded task), r = {res['rank']}, rho = {res['rho']}, tau = "
          f"{res['local_steps']}, b = {res['batch']}, torch threads = {torch.get_num_threads()}, "
          f"medians of {res['repeats']} interleaved repeats, load average {load:.1f}")
    print(parts.to_string(float_format=lambda v: f"{v:.3g}"))
    print(ratios.to_string(float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
