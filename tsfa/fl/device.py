"""Where and how training runs: device, torch threads and local-training precision.

One place for the three settings every command and analysis script needs:

* ``resolve_device("auto" | "cpu" | "cuda" | "mps")``: ``auto`` picks a GPU when one is present
  (CUDA, then Apple MPS), else the CPU; asking for an absent accelerator is an error naming it.
* ``set_threads(n)``: torch intra-op threads. The default is ``OMP_NUM_THREADS`` when set, else
  the cores this process may use divided by the number of runs sharing them (``concurrent_runs``),
  at least 1; a request for more threads than cores is capped, so a run never oversubscribes the
  machine by itself. Other processes' load is not taken into account (the thread count changes
  float32 results in the last bits, so it must not depend on the moment): on a machine shared
  with other CPU-bound work, say so with ``concurrent_runs`` or ``n`` (benchmarks/README.md:
  two threads on two busy cores ran the sequential trainer 10-20x slower than one).
* ``autocast(precision, device)``: ``"fp32"`` (nothing) or ``"bf16"`` (``torch.autocast``), for
  the local-training forward pass only; parameters and optimiser state stay in their dtype.

``to_numpy`` converts through ``.cpu()``, so no code calls ``.numpy()`` on a device tensor.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from tsfa.config.choices import DEVICES, PRECISIONS  # noqa: E402  (tsfa.config.choices)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for ``name`` in :data:`DEVICES` (``auto``: CUDA, else MPS, else CPU).

    Raises ValueError for an unknown name or an accelerator that this machine does not have.
    """
    if name not in DEVICES:
        raise ValueError(f"device = {name!r} is invalid; allowed: {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device = 'cuda' is invalid here: torch sees no CUDA GPU (is the "
                         "installed torch a CPU build?); allowed: auto, cpu")
    elif name == "mps" and not _mps_available():
        raise ValueError("device = 'mps' is invalid here: MPS is not available; allowed: auto, cpu")
    return torch.device(name)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(concurrent_runs: int = 1, cores: int | None = None) -> int:
    """floor(cores / concurrent_runs), at least 1: the threads one of ``concurrent_runs``
    CPU-bound runs sharing the machine may use without oversubscribing it."""
    if isinstance(concurrent_runs, bool) or not isinstance(concurrent_runs, int) or concurrent_runs < 1:
        raise ValueError(f"concurrent_runs = {concurrent_runs!r} is invalid; allowed: an integer >= 1")
    cores = available_cores() if cores is None else cores
    return max(1, cores // concurrent_runs)


def _omp_num_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def set_threads(n: int | None = None, concurrent_runs: int = 1) -> int:
    """Set torch's intra-op threads (process-wide) and return the number set.

    ``n = None``: ``OMP_NUM_THREADS`` if set, else :func:`default_threads` (``concurrent_runs``
    runs share the cores). An ``n`` above the available cores is capped to them. Call this once
    at the start of a command or script instead of ``torch.set_num_threads``.
    """
    if n is None:
        n = _omp_num_threads() or default_threads(concurrent_runs)
    elif isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads = {n!r} is invalid; allowed: an integer >= 1 (or None: default)")
    n = min(n, available_cores())
    torch.set_num_threads(n)
    return n


def autocast(precision: str = "fp32", device: torch.device | str = "cpu"):
    """Context for the local-training forward pass: ``fp32`` runs as is (a null context),
    ``bf16`` under ``torch.autocast(device.type, torch.bfloat16)``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision = {precision!r} is invalid; allowed: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"precision = 'bf16' is not available on device {kind!r}; allowed: fp32")
    return torch.autocast(device_type=kind, dtype=torch.bfloat16)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy copy of ``t`` wherever it lives (detached, moved to the CPU first)."""
    return t.detach().cpu().numpy()


__all__ = ["DEVICES", "PRECISIONS", "resolve_device", "available_cores", "default_threads",
           "set_threads", "autocast", "to_numpy"]
