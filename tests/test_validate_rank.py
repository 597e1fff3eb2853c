"""The scoring of analysis/validate_rank.py: the measured best set, hits, regret, confounded and
unresolved specs, and the verdict lines, from per-run accuracies (no training)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
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


def runs(spec, means, noise, deferral=0.0):
    """Per-run rows: rank r at seed s has accuracy means[r] + noise[s]."""
    return pd.DataFrame([{"spec": spec, "rank": r, "seed": s, "final_accuracy": m + e,
                          "deferral_share": deferral, "max_latency_over_budget": 1.0}
                         for r, m in means.items() for s, e in enumerate(noise)])


CH = {"wireless.bandwidth_total_hz": 2e4, "clients.num_clients": 10,
      "clients.dirichlet_alpha": 0.5, "training.rounds": 100, "control.latency_budget_s": [8.0]}


def pred(r):
    return {"tsfa": r, "default_weights": 2, "largest_fit_rho1": 2, "always_8": 8}


def test_best_set_paired(vr):
    acc = runs("a", {2: 0.50, 4: 0.60, 8: 0.59}, [0.0, 0.02, -0.02, 0.01, -0.01])
    top, members, means, _ = vr.best_set(acc)
    assert top == 4 and members == [4]  # 8 is 1 point below on every seed: resolved
    acc.loc[(acc["rank"] == 8) & (acc["seed"] == 1), "final_accuracy"] += 0.05  # now noisy
    assert vr.best_set(acc)[1] == [4, 8]


def test_score_hit_and_regret(vr):
    acc = runs("a", {2: 0.50, 4: 0.60, 8: 0.55}, [0.0, 0.01, -0.01])
    sc = vr.score(8, acc)
    assert not sc["hit"] and sc["regret"] == pytest.approx(0.05)  # seed noise cancels
    assert sc["regret_lo"] == pytest.approx(0.05)
    assert vr.score(4, acc)["hit"] and vr.score(4, acc)["regret"] == 0


def test_unresolved_is_a_miss_and_confounded_is_not_scored(vr):
    flat = pd.DataFrame([{"spec": "b", "rank": r, "seed": s, "final_accuracy": a,
                          "deferral_share": 0.0, "max_latency_over_budget": 1.0}
                         for r, vals in {1: [0.2, 0.3, 0.1], 2: [0.25, 0.2, 0.22],
                                         4: [0.3, 0.1, 0.15]}.items()
                         for s, a in enumerate(vals)])
    row = vr.spec_row("b", CH, pred(2), flat)
    assert row["status"] == "unresolved" and not row["hit_tsfa"]
    assert vr.score(2, flat)["in_best_set"]
    conf = runs("c", {2: 0.5, 4: 0.6}, [0.0, 0.01], deferral=0.2)
    row = vr.spec_row("c", CH, pred(4), conf)
    assert row["status"] == "confounded" and not row["hit_tsfa"]


def test_verdicts_count_hits_rules_and_never_moved(vr):
    import validation_report as report

    rows = [vr.spec_row("main job", CH, pred(8), runs("main job", {2: 0.5, 8: 0.6, 16: 0.6},
                                                         [0.0, 0.01, -0.01]))]
    for i in range(6):
        acc = runs(f"s{i}", {2: 0.5, 8: 0.59, 16: 0.6}, [0.0, 0.01, -0.01, 0.02, -0.02])
        rows.append(vr.spec_row(f"s{i}", CH, pred(16 if i < 5 else 2), acc))
    text = "\n".join(report.horizon_verdicts(pd.DataFrame(rows), 6))
    assert "r* in the measured best set on 5 of 6 held-out specs" in text and "met" in text
    assert "the measured best never moved" in text
    assert "always r = 8: 0 hits of 6" in text
    assert "Main job's own system: r* = 8, measured best set {8, 16}" in text
    assert "r* is in it" in text


@pytest.mark.slow
def test_script_runs_at_tiny_size(tmp_path):
    """The whole command at the test suite's size: trains, scores, writes the report and fig. 1."""
    import subprocess

    out = tmp_path / "docs" / "validation_rank.md"
    res = subprocess.run([sys.executable, str(ANALYSIS / "validate_rank.py"), "--size", "tiny",
                          "--jobs", "1", "--specs", "1", "--store", str(tmp_path / "runs"),
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    text = out.read_text()
    assert "## Validation table" in text and "Main job's own system: r* =" in text
    assert (tmp_path / "docs" / "validation" / "rank_main.png").stat().st_size > 10_000
    runs = pd.read_csv(tmp_path / "runs" / "validation_rank_runs.csv")
    assert sorted(runs["rank"].unique()) == [1, 2, 4] and sorted(runs["seed"].unique()) == [0, 1]


def test_an_unfinished_design_is_incomplete_not_scored(vr):
    """A spec still being trained (a candidate without one of the first seeds, or a contender
    without a later seed) is 'incomplete', never scored on its partial runs."""
    rows = [{"rank": r, "seed": s, "final_accuracy": 0.5 + 0.01 * r + 0.001 * s,
             "deferral_share": 0.0, "max_latency_over_budget": 1.0}
            for r in (1, 2, 4) for s in (0, 1, 2)]
    acc = pd.DataFrame(rows)
    assert not vr.incomplete(acc, [1, 2, 4], [0, 1, 2], None)
    assert vr.incomplete(acc[acc["seed"] < 2], [1, 2, 4], [0, 1, 2], None)
    assert vr.incomplete(acc, [1, 2, 4, 8], [0, 1, 2], None)  # rank 8 not trained yet
    assert vr.incomplete(acc, [1, 2, 4], [0, 1, 2, 3], 3)  # the contender 4 lacks seed 3
    ch = {"wireless.bandwidth_total_hz": 1.0, "clients.num_clients": 2,
          "clients.dirichlet_alpha": 1.0, "training.rounds": 2, "control.latency_budget_s": [1.0]}
    pred = {"tsfa": 4, "default_weights": 1, "largest_fit_rho1": 2, "always_8": 8}
    row = vr.spec_row("x", ch, pred, acc, ([1, 2, 4, 8], [0, 1, 2], None))
    assert row["status"] == "incomplete" and "hit_tsfa" not in row


def test_sequential_design_gives_seeds_to_every_member(vr, monkeypatch):
    """A candidate that joins the best set once more seeds move the top gets the seeds too."""
    truth = {1: [0.10, 0.12, 0.08, 0.10, 0.10], 2: [0.50, 0.52, 0.48, 0.50, 0.51],
             4: [0.60, 0.40, 0.55, 0.35, 0.45]}
    asked = []

    def fake(name, cfg, pairs, store, jobs, report_only):
        asked.extend(pairs)
        return pd.DataFrame([{"rank": r, "seed": s, "final_accuracy": truth[r][s],
                              "deferral_share": 0.0, "max_latency_over_budget": 1.0}
                             for r, s in pairs])

    monkeypatch.setattr(vr, "_measure", fake)
    rows = vr.run_rows("x", None, [1, 2, 4], [0, 1, 2, 3, 4], None, 1, False, 3)
    assert not vr.incomplete(rows, [1, 2, 4], [0, 1, 2, 3, 4], 3)
    members = vr.best_set(rows)[1]
    have = rows.groupby("rank")["seed"].apply(set)
    assert all(have[r] == {0, 1, 2, 3, 4} for r in members)
    assert (1, 3) not in asked and len(asked) == len(set(asked))  # no loser, no run twice


def test_more_seeds_only_where_the_projection_says_they_resolve(vr, monkeypatch):
    """The seed ladder extends the best set when its observed gap exceeds the projected paired
    half-width at the next count, never before the base seeds are in, and never for a gap of 0."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.01, 20)

    def rows(gap, n):
        return pd.DataFrame([{"rank": r, "seed": s, "final_accuracy": 0.5 + noise[s]
                              + (gap if r == 16 else 0.0) + (0.004 * (-1) ** s if r == 8 else 0.0),
                              "deferral_share": 0.0, "max_latency_over_budget": 1.0}
                             for r in (8, 16) for s in range(n)])

    base = [0, 1, 2, 3, 4]
    # a gap of 0.4 points, paired sd 0.4: unresolved at 5 seeds, projected to resolve at 10
    assert len(vr.best_set(rows(0.004, 5))[1]) == 2
    assert vr.target_seeds(rows(0.004, 5), base, (10, 20)) == list(range(10))
    assert vr.target_seeds(rows(0.004, 3), base, (10, 20)) == base  # base design first
    assert vr.target_seeds(rows(0.0, 5), base, (10, 20)) == base  # no gap: no seeds spent
    assert vr.target_seeds(rows(0.004, 5), base, ()) == base  # no ladder: the old design
    asked = []

    def fake(name, cfg, pairs, store, jobs, report_only):
        asked.extend(pairs)
        return rows(0.004, 20).merge(pd.DataFrame(pairs, columns=["rank", "seed"]))

    monkeypatch.setattr(vr, "_measure", fake)
    got = vr.run_rows("x", None, [8, 16], base, None, 1, False, 3, (10, 20))
    assert not vr.incomplete(got, [8, 16], base, 3, (10, 20))
    assert vr.incomplete(got[got["seed"] < 7], [8, 16], base, 3, (10, 20))
    assert got.groupby("rank")["seed"].nunique().min() >= 10
    assert len(asked) == len(set(asked))
