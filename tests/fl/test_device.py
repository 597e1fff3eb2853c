"""Device, threads and precision settings (tsfa.fl.device)."""

import pytest
import torch

from tsfa.fl.device import (
    autocast,
    available_cores,
    default_threads,
    resolve_device,
    set_threads,
    to_numpy,
)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        assert auto.type in ("cpu", "mps")
        with pytest.raises(ValueError, match="device = 'cuda'"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="allowed: auto, cpu, cuda, mps"):
        resolve_device("tpu")


@pytest.mark.parametrize(("runs", "cores", "expected"), [(1, 2, 2), (2, 2, 1), (3, 2, 1),
                                                         (2, 16, 8), (3, 16, 5)])
def test_default_threads_share_the_cores(runs, cores, expected):
    assert default_threads(runs, cores) == expected


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_default_threads_rejects_bad_run_counts(bad):
    with pytest.raises(ValueError, match="concurrent_runs"):
        default_threads(bad, 4)


def test_set_threads(restore_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert set_threads(1) == 1 and torch.get_num_threads() == 1
    assert set_threads(10**6) == available_cores() == torch.get_num_threads()  # capped
    assert set_threads() == default_threads()
    assert set_threads(None, concurrent_runs=10**6) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's setting wins over the default
    assert set_threads() == 1 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert set_threads() == default_threads()
    with pytest.raises(ValueError, match="threads = 0"):
        set_threads(0)


def test_autocast():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast("fp32", "cpu"):
        assert (a @ b).dtype == torch.float32
    with autocast("bf16", torch.device("cpu")):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision = 'fp16'"):
        autocast("fp16", "cpu")
    with pytest.raises(ValueError, match="not available on device 'meta'"):
        autocast("bf16", "meta")


def test_to_numpy_detaches_and_copies_to_host():
    t = torch.ones(3, requires_grad=True)
    arr = to_numpy(2 * t)
    assert arr.tolist() == [2.0, 2.0, 2.0]
