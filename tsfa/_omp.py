"""OpenMP wait policy for processes that share their cores (a torch-free module).

torch's CPU kernels run on an OpenMP thread pool whose idle threads spin (busy-wait) before
sleeping. When another CPU-bound process shares the cores, the spinning threads take the CPU
from the ones with work, and a run slows by several times (measured, benchmarks/README.md:
one round of the default run 1.9 s alone, 6.0 s beside one busy process with 2 torch threads;
3.2 s with ``OMP_WAIT_POLICY=PASSIVE``, which costs about 5% alone). The policy is read once,
when the OpenMP runtime loads with torch, so it must be in the environment before ``import
torch``: the ``tsfa`` command and ``benchmarks/bench_trainer.py`` call :func:`passive_omp_wait` first.
"""

from __future__ import annotations

import os
import sys


def passive_omp_wait(environ: dict | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy (theirs is kept) or torch is
    already imported (too late to matter). Returns whether the policy in force is PASSIVE or will
    be when torch loads. ``environ``: the mapping to edit (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" not in env and "torch" not in sys.modules:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


__all__ = ["passive_omp_wait"]
