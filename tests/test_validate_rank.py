"""The out-of-sample table of analysis/validate_rank.py: measured best rank, its interval,
regret and the within-one-candidate verdict from per-run accuracies (no training)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"


@pytest.fixture(scope="module")
def vr():
    sys.path.insert(0, str(ANALYSIS))
    spec = importlib.util.spec_from_file_location("validate_rank", ANALYSIS / "validate_rank.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def accuracies(spec, means, noise):
    """Per-run rows: rank r at seed s has accuracy means[r] + noise[s]."""
    return pd.DataFrame([{"spec": spec, "rank": r, "seed": s, "final_accuracy": m + e}
                         for r, m in means.items() for s, e in enumerate(noise)])


def test_resolved_best_and_regret(vr):
    acc = accuracies("a", {2: 0.50, 4: 0.60, 8: 0.55}, [0.0, 0.01, -0.01])
    specs = pd.DataFrame([{"spec": "a", "predicted_r_star": 8}])
    t = vr.build_table(specs, acc, 0.95)
    row = t.iloc[0]
    assert row["measured_best"] == 4 and row["best_interval"] == "4" and row["ranks_resolved"]
    assert row["regret"] == pytest.approx(0.05)  # same seed noise cancels in paired differences
    assert row["regret_lo"] == pytest.approx(0.05) and row["within_one"]
    assert row["steps_off"] == 1 and not row["r_star_in_interval"]


def test_unresolved_ranks_give_an_interval(vr):
    acc = pd.DataFrame([{"spec": "b", "rank": r, "seed": s, "final_accuracy": a}
                        for r, vals in {1: [0.2, 0.3, 0.1], 2: [0.25, 0.2, 0.22],
                                        8: [0.3, 0.1, 0.15]}.items()
                        for s, a in enumerate(vals)])
    t = vr.build_table(pd.DataFrame([{"spec": "b", "predicted_r_star": 1}]), acc, 0.95)
    row = t.iloc[0]
    assert not row["ranks_resolved"] and ".." in row["best_interval"]
    assert row["r_star_in_interval"] and row["steps_off"] == 1
    assert row["regret_lo"] < 0 < row["regret_hi"]


def test_missing_spec_is_skipped_and_prediction_outside_grid_is_nan(vr):
    acc = accuracies("c", {2: 0.4, 4: 0.5}, [0.0, 0.02])
    specs = pd.DataFrame([{"spec": "c", "predicted_r_star": 16},
                          {"spec": "not run", "predicted_r_star": 2}])
    t = vr.build_table(specs, acc, 0.9)
    assert list(t["spec"]) == ["c"]
    assert math.isnan(t.iloc[0]["regret"]) and not t.iloc[0]["within_one"]


def test_verdicts_count_hits_and_regret(vr):
    import validation_report as report

    acc = pd.concat([accuracies(f"s{i}", {2: 0.5, 4: 0.6, 8: 0.58}, [0.0, 0.01, -0.01])
                     for i in range(6)], ignore_index=True)
    specs = pd.DataFrame([{"spec": f"s{i}", "predicted_r_star": 4 if i < 5 else 2}
                          for i in range(6)])
    text = "\n".join(report.rank_verdicts(vr.build_table(specs, acc, 0.95), 6))
    assert "on 6 of 6" in text and "met" in text
    assert "Mean regret 1.67 accuracy points (target < 1): missed" in text
