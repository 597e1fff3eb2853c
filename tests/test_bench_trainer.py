"""The batched trainer's memory model (benchmarks/bench_trainer.py, issue 12): peak tensor bytes
grow with the number of clients K only through each client's LoRA factors, head, optimiser
moments, merged weights and minibatch activations, at the rate the model predicts."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_trainer as bt  # noqa: E402

PLAN = bt.Plan((2, 6), steps=2, batch=8, samples=32)


@pytest.fixture(scope="module")
def peaks():
    return {k: bt.tensor_peak_bytes("tiny", k, PLAN, "cpu", "batched") for k in (2, 4, 6)}


def test_peak_tensor_bytes_linear_in_clients(peaks):
    step1, step2 = peaks[4] - peaks[2], peaks[6] - peaks[4]
    assert step1 > 0
    assert step2 == pytest.approx(step1, rel=0.01)


def test_memory_model_predicts_the_slope(peaks):
    model = bt.memory_model("tiny", PLAN, "cpu", threads=1)
    measured = (peaks[6] - peaks[2]) / 4
    assert model["slope"] == pytest.approx(measured, rel=0.03)
    # the per-sample activations dominate: without them the model would be far off
    assert model["slope"] - PLAN.batch * model["a"] < 0.5 * measured
