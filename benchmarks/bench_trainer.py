"""Sequential vs batched local training of K clients: client-steps per second and peak memory.

For each device (the CPU, and a CUDA GPU when torch sees one), ViT width (tiny: the default
embedded task's ViT; small: ViT-S/16; base: ViT-B/16, both at 224 px) and client count K, one
round of local training of K clients (tau AdamW steps of batch b, SOFT regulariser on, LoRA
r = 8 on q, v) is timed both ways, interleaved over the repeats so that machine load hits both
alike:

* sequential: ``tsfa.fl.batched.sequential_local_train`` (``local_train`` per client, the
  reference path);
* batched: ``tsfa.fl.batched.batched_local_train`` (every client in one computation).

It prints client-steps per second (K tau / wall time of the call, median of the repeats), the
speed-up batched / sequential, the peak memory of one call above what was allocated before it,
counted two ways on the CPU: *tensor* bytes (the running sum of torch's allocations and frees
recorded by ``torch.profiler`` with ``profile_memory=True``: what the tensors need, independent
of the allocator) and *RSS* (the peak RSS, VmHWM, of a fresh subprocess per measurement, reset
just before the call, minus its RSS then: what the process costs the machine, allocator caching
and page rounding included); on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation
before (tensor bytes). It prints ``os.getloadavg()`` before and after each timing. Per width it
also prints the memory model of the batched trainer, in tensor bytes,

    peak(K) - peak(K1) ~= (K - K1) (S_state + S_merged + b a),
    S_state  = (1 + m) e (P_lora + P_head)  parameters and the optimiser's m moments (AdamW 2,
                                            SGD 0), e bytes each
    S_merged = e sum_m d_out d_in           per-client merged weights W0 + s B A (only where that
                                            form is used, see tsfa.fl.batched)
    a        = peak bytes per sample        the minibatch and the activations kept for the
                                            backward pass; measured at K1 from batch b to 2 b,

and the slope it predicts against the measured one (tensor bytes; the RSS slope beside it). The
peak falls at the start of a backward pass: every activation is saved and no gradient exists yet
(``zero_grad(set_to_none=True)`` before it; the gradients of the parameters and of the merged
weights appear while the activations are freed), so gradients are not in the slope. The small
and base widths use few samples and steps on the CPU (seconds per step). Run as a script (a GPU
user runs it as is):

    python benchmarks/bench_trainer.py [--widths tiny small base] [--devices cpu cuda]
                                       [--clients 10 50] [--threads 2] [--repeats 3]

``--smoke`` (the test suite's check, seconds): the tiny width only, K = 2 and 4, 2 local steps
of b = 8 on 32 samples per client, 1 repeat, sequential path on 2 clients (``SMOKE``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from tsfa._omp import passive_omp_wait

passive_omp_wait()  # as the tsfa command does, before torch loads (tsfa/_omp.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tsfa.config.experiment import RunConfig  # noqa: E402
from tsfa.fl.batched import (  # noqa: E402
    batched_local_train,
    sequential_local_train,
    uses_merged_weight,
)
from tsfa.fl.device import set_threads  # noqa: E402
from tsfa.fl.lora import apply_lora, get_factors, get_head_state, lora_modules  # noqa: E402
from tsfa.fl.synthetic import SyntheticConfig  # noqa: E402
from tsfa.fl.vit import ViT  # noqa: E402
from tsfa.fl.vit_config import ViTConfig  # noqa: E402

WIDTHS = {"tiny": lambda: SyntheticConfig().vit,
          "small": lambda: ViTConfig(224, 16, 3, 10, 384, 12, 6, 4.0),
          "base": lambda: ViTConfig.base(num_classes=10)}
MODES = {"sequential": sequential_local_train, "batched": batched_local_train}


@dataclass(frozen=True)
class Plan:
    """What to run for one width on one kind of device: client counts, local steps, batch and
    samples per client (None: the default task's num_train / K)."""

    clients: tuple[int, ...]
    steps: int
    batch: int
    samples: int | None


PLANS = {("tiny", "cpu"): Plan((1, 10, 50), 20, 32, None),
         ("small", "cpu"): Plan((1, 4), 2, 4, 16),
         ("base", "cpu"): Plan((1, 2), 1, 2, 8),
         ("tiny", "cuda"): Plan((10, 50, 200), 20, 32, None),
         ("small", "cuda"): Plan((10, 50), 5, 32, 256),
         ("base", "cuda"): Plan((4, 10), 3, 16, 128)}
SMOKE = Plan((2, 4), steps=2, batch=8, samples=32)  # --smoke, for every device


def setup(width: str, k_clients: int, plan: Plan, device: str, seed: int = 0):
    """A LoRA ViT of ``width`` on ``device``, K clients' Gaussian images and the round's arguments
    at the default run's settings (rank, alpha, lr, optimizer, zeta)."""
    cfg = RunConfig()
    exp, tr = cfg.experiment, cfg.system.training
    vit = WIDTHS[width]()
    gen = torch.Generator().manual_seed(seed)
    model = ViT(vit, gen)
    apply_lora(model, exp.rank, exp.lora_alpha, generator=gen)
    model.to(device)
    n = plan.samples or exp.num_train // k_clients
    data = [(torch.randn(n, vit.in_chans, vit.image_size, vit.image_size, generator=gen).to(device),
             torch.randint(vit.num_classes, (n,), generator=gen).to(device))
            for _ in range(k_clients)]
    factors, head = get_factors(model), get_head_state(model)
    args = dict(model=model, factors=[factors] * k_clients, heads=[head] * k_clients, data=data,
                steps=plan.steps, batch=plan.batch, lr=tr.learning_rate, optimizer=exp.optimizer,
                zeta=cfg.system.soft.zeta)
    return model, args


def call(mode: str, args: dict, steps: int | None = None, clients: int | None = None) -> float:
    """Wall seconds of one round of local training of every client, or of the first ``clients``
    (fresh generators)."""
    a = dict(args)
    for key in ("factors", "heads", "data"):
        a[key] = a[key][:clients]
    a["rngs"] = [np.random.default_rng(k) for k in range(len(a["data"]))]
    if steps is not None:
        a["steps"] = steps
    sync = torch.cuda.synchronize if a["model"].head.weight.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    MODES[mode](**a)
    sync()
    return time.perf_counter() - t0


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def time_modes(width: str, k_clients: int, plan: Plan, device: str, repeats: int,
               seq_clients: int | None) -> dict:
    """Median client-steps/s of both modes, interleaved over ``repeats`` after a warm-up; the
    sequential mode on the first ``seq_clients`` clients only if given (its client-steps/s does
    not depend on K: one client at a time)."""
    _, args = setup(width, k_clients, plan, device)
    counts = {"sequential": min(k_clients, seq_clients or k_clients), "batched": k_clients}
    for mode in MODES:
        call(mode, args, steps=1, clients=counts[mode])
    before = load()
    times = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            times[mode].append(call(mode, args, clients=counts[mode]))
    rate = {m: counts[m] * plan.steps / statistics.median(t) for m, t in times.items()}
    return {"rate": rate, "load_before": before, "load_after": load()}


def _status_bytes(field: str) -> int | None:
    """A memory line of /proc/self/status (Linux: VmRSS now, VmHWM the peak), in bytes."""
    try:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith(field + ":"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return None


def _reset_peak_rss() -> None:
    """Hand memory freed by torch back to the OS (glibc keeps it otherwise) and reset the peak
    RSS (Linux: ``echo 5 > /proc/self/clear_refs``), so that the next peak is this call's."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except (OSError, AttributeError):
        pass


def _rss_and_peak() -> tuple[int, int]:
    """(RSS now, peak RSS) in bytes. Elsewhere than Linux: ru_maxrss for both (a lower bound of
    the growth; macOS reports bytes, Linux KiB)."""
    now, peak = _status_bytes("VmRSS"), _status_bytes("VmHWM")
    if now is None or peak is None:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        now = peak = maxrss * (1 if sys.platform == "darwin" else 1024)
    return now, peak


def peak_bytes(width: str, k_clients: int, plan: Plan, device: str, mode: str,
               clients: int | None = None) -> float:
    """Peak memory of one call above the memory in use before it (bytes), after a one-step
    warm-up call (which maps the code and the thread pools that any call needs)."""
    _, args = setup(width, k_clients, plan, device)
    call(mode, args, steps=1, clients=clients)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call(mode, args, clients=clients)
        return float(torch.cuda.max_memory_allocated() - before)
    _reset_peak_rss()
    before, _ = _rss_and_peak()
    call(mode, args, clients=clients)
    return float(_rss_and_peak()[1] - before)


def tensor_peak_bytes(width: str, k_clients: int, plan: Plan, device: str, mode: str,
                      clients: int | None = None) -> float:
    """Peak tensor bytes of one call above those allocated before it, after a one-step warm-up:
    CUDA ``max_memory_allocated``; CPU the running sum of the allocations and frees that
    ``torch.profiler`` records (``profile_memory=True``), its maximum over the call."""
    if device == "cuda":
        return peak_bytes(width, k_clients, plan, device, mode, clients)
    from torch.profiler import ProfilerActivity, profile

    _, args = setup(width, k_clients, plan, device)
    call(mode, args, steps=1, clients=clients)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call(mode, args, clients=clients)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    now = peak = 0
    for _, nbytes in events:
        now += nbytes
        peak = max(peak, now)
    return float(peak)


def peak_bytes_fresh(width: str, k_clients: int, plan: Plan, device: str, mode: str,
                     threads: int, clients: int | None = None) -> float:
    """:func:`peak_bytes` in a fresh interpreter (CPU: the peak RSS is per process)."""
    if device == "cuda":
        return peak_bytes(width, k_clients, plan, device, mode, clients)
    job = json.dumps([width, k_clients, plan.__dict__, device, mode, threads, clients])
    out = subprocess.run([sys.executable, __file__, "--memory-worker", job], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def memory_model(width: str, plan: Plan, device: str, threads: int) -> dict:
    """The per-client terms of the memory model (module docstring), in bytes: S_state, S_merged,
    and a, the peak tensor bytes per sample, measured at K = min(plan.clients) from batch b to
    2 b."""
    model, _ = setup(width, 1, plan, device)
    e = model.head.weight.element_size()
    lora = [m for _, m in lora_modules(model)]
    p_client = sum(m.lora_A.numel() + m.lora_B.numel() for m in lora)
    p_client += sum(p.numel() for p in model.head.parameters())
    merged = e * sum(m.base.weight.numel() for m in lora if uses_merged_weight(m))
    moments = {"adamw": 2, "sgd": 0}[RunConfig().experiment.optimizer]
    state = (1 + moments) * e * p_client
    k1, b = min(plan.clients), plan.batch
    double = Plan(plan.clients, plan.steps, 2 * b, plan.samples)
    per_sample = (tensor_peak_bytes(width, k1, double, device, "batched")
                  - tensor_peak_bytes(width, k1, plan, device, "batched")) / (k1 * b)
    return {"params": p_client, "moments": moments, "state": state, "merged": merged,
            "a": per_sample, "slope": state + merged + b * per_sample}


def run_width(width: str, device: str, clients, threads: int, repeats: int,
              seq_clients: int | None, plan: Plan | None = None) -> None:
    plan = plan or PLANS[(width, "cuda" if device == "cuda" else "cpu")]
    if clients:
        plan = Plan(tuple(clients), plan.steps, plan.batch, plan.samples)
    print(f"\n## {width} ViT on {device}: tau = {plan.steps}, b = {plan.batch}, samples per client "
          f"= {plan.samples or 'num_train / K'}, torch threads = {torch.get_num_threads()}, "
          f"sequential timed on {seq_clients or 'all K'} clients")
    print("|  K | sequential cs/s | batched cs/s | batched / sequential | tensor MB seq | "
          "tensor MB batched | RSS MB seq | RSS MB batched | load before | load after |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    tensor, rss = {}, {}
    for k in plan.clients:
        t = time_modes(width, k, plan, device, repeats, seq_clients)
        sub = {"sequential": seq_clients, "batched": None}
        tpeak = {m: tensor_peak_bytes(width, k, plan, device, m, sub[m]) for m in MODES}
        peak = {m: peak_bytes_fresh(width, k, plan, device, m, threads, sub[m]) for m in MODES}
        tensor[k], rss[k] = tpeak["batched"], peak["batched"]
        r = t["rate"]
        print(f"| {k} | {r['sequential']:.3g} | {r['batched']:.3g} | "
              f"**{r['batched'] / r['sequential']:.2f}** | {tpeak['sequential'] / 2**20:.1f} | "
              f"{tpeak['batched'] / 2**20:.1f} | {peak['sequential'] / 2**20:.1f} | "
              f"{peak['batched'] / 2**20:.1f} | {t['load_before']} | {t['load_after']} |",
              flush=True)
    if len(tensor) >= 2:
        mm = memory_model(width, plan, device, threads)
        k1, k2 = min(tensor), max(tensor)

        def slope(peaks: dict) -> float:
            return (peaks[k2] - peaks[k1]) / (k2 - k1) / 2**20

        print(f"memory model, batched, tensor bytes: peak(K) - peak(K1) = (K - K1) (S_state + "
              f"S_merged + b a); S_state = {1 + mm['moments']} e (P_lora + P_head) = "
              f"{mm['state'] / 2**10:.1f} KiB "
              f"({mm['params']} parameters), S_merged = {mm['merged'] / 2**10:.1f} KiB, a = "
              f"{mm['a'] / 2**10:.1f} KiB per sample (measured at K = {k1}, b -> 2 b): predicted "
              f"{mm['slope'] / 2**20:.2f} MiB per client; measured (K = {k1} -> {k2}) "
              f"{slope(tensor):.2f} MiB per client in tensor bytes, {slope(rss):.2f} in RSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", default=list(WIDTHS), choices=list(WIDTHS))
    parser.add_argument("--devices", nargs="+", default=None, choices=["cpu", "cuda"],
                        help="default: cpu, and cuda when torch sees a GPU")
    parser.add_argument("--clients", nargs="+", type=int, default=None,
                        help="client counts K (default: per width and device, see PLANS)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: tsfa.fl.device.set_threads: all cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequential-clients", type=int, default=None,
                        help="time the sequential path on this many clients only (its "
                             "client-steps/s does not depend on K); default: all K")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a few seconds' check: width tiny, K = {SMOKE.clients}, "
                             f"{SMOKE.steps} steps of b = {SMOKE.batch} on {SMOKE.samples} "
                             "samples per client, 1 repeat, sequential on 2 clients (overrides "
                             "--widths, --clients, --repeats, --sequential-clients)")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    smoke_plan = None
    if args.smoke:
        args.widths, args.clients, args.repeats = ["tiny"], None, 1
        args.sequential_clients, smoke_plan = min(SMOKE.clients), SMOKE
    if args.memory_worker:
        width, k, plan, device, mode, threads, clients = json.loads(args.memory_worker)
        set_threads(threads)
        print(peak_bytes(width, k, Plan(**dict(plan, clients=tuple(plan["clients"]))), device, mode,
                         clients))
        return
    threads = set_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {threads} torch threads, GPU: {gpu}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average {load()}")
    for device in devices:
        for width in args.widths:
            run_width(width, device, args.clients, threads, args.repeats,
                      args.sequential_clients, smoke_plan)
    print(f"\nload average at the end: {load()}")


if __name__ == "__main__":
    main()
