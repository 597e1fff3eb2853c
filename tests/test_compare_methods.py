"""analysis/compare_methods.py: the grid's shared runs and the table builder, without training."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "analysis"))

import compare_grid as grid  # noqa: E402
import compare_report as rep  # noqa: E402


def test_equivalent_cells_share_one_run(tmp_path):
    rows = grid.plan("smoke", tmp_path)
    paths = {(c.reading, c.budget, c.method): grid.run_path(cfg, tmp_path) for c, _, cfg in rows}
    # SOFT is the equal-bits reference; "EF SOFT only" keeps SOFT's memories
    assert paths[("update+EF", "values", "soft")] == paths[("update+EF", "bits", "soft")]
    assert paths[("EF SOFT only", "values", "soft")] == paths[("update+EF", "values", "soft")]
    # a baseline under "EF SOFT only" is the baseline without error feedback
    assert paths[("EF SOFT only", "values", "tlora")] != paths[("update+EF", "values", "tlora")]
    cfg = next(cfg for c, _, cfg in rows if (c.reading, c.method) == ("EF SOFT only", "tlora"))
    assert cfg.experiment.error_feedback == "none" and cfg.experiment.upload == "update"
    cfg = next(cfg for c, _, cfg in rows if (c.reading, c.method) == ("factor", "soft"))
    assert (cfg.experiment.upload, cfg.experiment.error_feedback) == ("factor", "none")
    assert len(set(paths.values())) == 8  # tier 1 per (task, seed): 2 SOFT + 6 TLoRA runs


def _runs(diffs):
    rows = []
    for seed, d in enumerate(diffs):
        for method, acc in (("soft", 0.5 + d), ("tlora", 0.5)):
            rows.append({"task": "synthetic", "rank": 8, "policy": "rho=1/8",
                         "reading": "factor", "budget": "values", "method": method,
                         "seed": seed, "accuracy": acc, "final_accuracy": acc, "mean_rho": 0.125,
                         "kbit_per_client_round": 40.0, "mean_latency_s": 5.0,
                         "mean_budget_s": 7.0, "final_cov_fro": 0.1, "wall_s": 10.0})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("diffs, verdict", [([0.05, 0.06, 0.04], "SOFT above"),
                                            ([-0.05, -0.06, -0.04], "SOFT below"),
                                            ([0.05, -0.06, 0.01], "not separated")])
def test_paired_t_interval_and_verdict(diffs, verdict):
    p = rep.paired(_runs(diffs))
    assert len(p) == 1 and p.verdict[0] == verdict and p.seeds[0] == 3
    d = np.asarray(diffs)
    h = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert p["diff"][0] == pytest.approx(d.mean())
    assert (p.lo[0], p.hi[0]) == pytest.approx((d.mean() - h, d.mean() + h))
    tab = rep.cell_table(_runs(diffs))
    assert list(tab.method) == ["soft", "tlora"] and (tab.seeds == 3).all()
    md = "\n".join(rep.grid_markdown(tab, "synthetic", ["soft", "tlora"]))
    assert "| rho=1/8 | 8 | factor | values |" in md


def test_separation_windows():
    runs = _runs([0.05, 0.06, 0.04])
    curves = pd.concat([runs.assign(round=r, accuracy=runs.accuracy + 0.01 * r)
                        for r in range(9)])
    sep = rep.separation(curves)
    assert sep["last third"][0] == pytest.approx(0.05) and sep.rounds[0] == 9
    assert "| synthetic" not in "\n".join(rep.separation_markdown(sep))
    assert sep.ref_gain_last_third[0] == pytest.approx(0.03)
