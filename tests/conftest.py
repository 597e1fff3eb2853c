"""Shared test settings: a deterministic, deadline-free hypothesis profile (fast by default)."""

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("tsfa", deadline=None, derandomize=True, max_examples=50,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tsfa")


@pytest.fixture
def one_thread():
    """Torch on one intra-op thread for the test (bit-reproducible reductions, no
    oversubscription of a shared machine); the previous setting is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
