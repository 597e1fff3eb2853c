"""Shared test settings: a deterministic, deadline-free hypothesis profile (fast by default), one
torch thread per pytest-xdist worker, and the session's cache of `tiny` figure runs."""

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("tsfa", deadline=None, derandomize=True, max_examples=50,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tsfa")


def pytest_configure(config):
    """Under pytest-xdist (the README's ``-n 2``) each worker runs torch, OpenMP and the scripts it
    starts on one thread, so two workers fill two cores instead of oversubscribing them (torch's
    default of one thread per core would give each worker every core). A value the user set wins."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        threads = os.environ["OMP_NUM_THREADS"].split(",")[0]
        if "torch" in sys.modules and threads.isdigit():  # pragma: no cover - a plugin imported it
            sys.modules["torch"].set_num_threads(max(1, int(threads)))


@pytest.fixture
def one_thread():
    """Torch on one intra-op thread for the test (bit-reproducible reductions, no
    oversubscription of a shared machine); the previous setting is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """One run cache for the `tiny` figure runs: tests/test_figures.py trains them once and the
    smokes of the scripts that read the cache (run from that file) reuse them. Under
    pytest-xdist it is one cache per worker (``--dist loadfile`` keeps that file on one); runs
    are keyed by their configuration, so a shared cache cannot hand one test another's run."""
    return tmp_path_factory.mktemp("tiny_runs")
