"""tsfa figures at the tiny size: every file is written, and each CSV shows the trends the maths
guarantees (not empirical hopes: accuracy differences at this size are noise)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import pytest
from test_scripts import run_smoke, smoke_params  # tests/ is on pythonpath (pyproject)

from tsfa.config.experiment import load_run_config
from tsfa.engines.local import train
from tsfa.experiments.cache import canonical, config_hash, training_key
from tsfa.experiments.runs import analysis_config
from tsfa.reporting.figures import FIGURES, make_all, make_figure

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def figdir(tmp_path_factory, tiny_store):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("figures")
    make_all(out, "tiny", store=tiny_store, log=lambda *a: None, train=train)
    torch.set_num_threads(before)
    return out


def csv(figdir, name) -> pd.DataFrame:
    return pd.read_csv(figdir / f"{name}.csv")


def test_every_figure_written(figdir):
    for name in FIGURES:
        for ext in ("png", "pdf", "csv"):
            path = figdir / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
        assert len(csv(figdir, name)) > 0
    assert (figdir / "timing.json").is_file()


def test_fig1_bound_is_u_shaped_with_minimum_at_r_star(figdir):
    t = csv(figdir, "fig1_rank").sort_values("rank")
    assert np.all(np.diff(t["rank_term"]) <= 1e-12)  # eps(r) non-increasing
    assert np.all(np.diff(t["cov_term"]) > 0)  # linear in r
    assert np.all(np.diff(t["sparse_term"]) >= -1e-12)  # rho_bar(r) non-increasing in r
    r_star = int(t["r_star"].iloc[0])
    assert int(t.loc[t["J"].idxmin(), "rank"]) == r_star
    j = t.set_index("rank")["J"]
    assert j[r_star] < j.iloc[0] and j[r_star] < j.iloc[-1]  # interior minimum: U shape
    assert t["final_accuracy"].notna().sum() == len(analysis_config("fig1_rank", "tiny")
                                                    ["sweep"]["ranks"])


def test_training_figures_carry_every_seed(figdir):
    seeds = analysis_config("base", "tiny")["seeds"]["seeds"]
    assert len(seeds) >= 2  # the band / error-bar code path runs in the test suite
    for name in ("fig2_covariance", "fig3_methods", "fig8_zeta"):
        assert sorted(csv(figdir, name)["seed"].unique()) == sorted(seeds), name
    for name in ("fig1_rank", "fig4_fixed_rho", "fig6_budget"):
        d = csv(figdir, name).dropna(subset=["final_accuracy"])
        assert (d["seeds"] == len(seeds)).all(), name
        assert (d["final_accuracy_se"] >= 0).all(), name
        per_seed = d[[f"acc_seed{s}" for s in seeds]].mean(axis=1)
        assert np.allclose(per_seed, d["final_accuracy"]), name


def test_fig1_marks_measured_best_rank(figdir):
    t = csv(figdir, "fig1_rank").dropna(subset=["final_accuracy"])
    assert (t["measured_best"] == t.loc[t["final_accuracy"].idxmax(), "rank"]).all()


def test_fig6_reports_budget_overshoot(figdir):
    d = csv(figdir, "fig6_budget")
    assert np.all(np.isfinite(d["budget_overshoot"])) and np.all(d["budget_overshoot"] > -1)


def test_fig2_covariance_norms_are_finite_and_nonnegative(figdir):
    d = csv(figdir, "fig2_covariance")
    assert np.all(np.isfinite(d["cov_fro"])) and np.all(d["cov_fro"] >= 0)
    assert set(d["parameter"]) == {"training.local_steps", "clients.dirichlet_alpha",
                                   "experiment.rank"}


def test_fig3_ideal_sends_everything_and_ratios_in_range(figdir):
    d = csv(figdir, "fig3_methods")
    assert np.allclose(d.loc[d["method"] == "ilora", "mean_rho"], 1.0)
    assert np.all((d["mean_rho"] > 0) & (d["mean_rho"] <= 1.0 + 1e-12))
    assert set(d["method"]) == {"ilora", "soft", "slora", "tlora", "rlora"}
    assert d.groupby("method")["round"].count().nunique() == 1  # same number of rounds


def test_fig4_bits_grow_with_rho(figdir):
    d = csv(figdir, "fig4_fixed_rho")
    for _, g in d.groupby("method"):
        g = g.sort_values("rho")
        assert np.all(np.diff(g["mean_bits"]) > 0)  # more components / elements on the air


def test_fig5_penalty_falls_with_v(figdir):
    s = csv(figdir, "fig5_control_v").groupby("V")[["average_penalty", "mean_rho"]].first()
    # O(1/V) penalty gap: the largest V has a smaller average penalty than the smallest V
    assert s["average_penalty"].iloc[-1] <= s["average_penalty"].iloc[0]
    assert s["mean_rho"].iloc[-1] >= s["mean_rho"].iloc[0]


def test_fig6_affordable_ratio_grows_with_budget(figdir):
    d = csv(figdir, "fig6_budget")
    g = d[d["variant"] == "offline only"].sort_values("mean_budget_s")
    assert np.all(np.diff(g["rho_bar"]) >= 0) and np.all(np.diff(g["mean_budget_s"]) > 0)
    assert d["variant"].nunique() == 3


def test_fig7_times_measured(figdir):
    d = csv(figdir, "fig7_client_compute")
    assert set(d["method"]) == {"soft", "slora"} and np.all(d["seconds_median"] > 0)


def test_fig8_orthogonality_defect_nonnegative(figdir):
    d = csv(figdir, "fig8_zeta")
    assert np.all(d["orth_defect"] >= 0) and 0.0 in set(d["zeta"])


def test_runs_are_cached_and_keyed_by_config(figdir, tiny_store):
    logs = []
    make_figure("fig3_methods", figdir, "tiny", store=tiny_store, log=logs.append, train=train)
    assert not [m for m in logs if m.startswith("train")]  # nothing retrained
    runs = sorted(tiny_store.iterdir())
    assert runs and all(p.name == p.name.lower() and len(p.name) == 12 for p in runs)
    for p in runs:
        cfg = load_run_config(p / "config.toml")
        assert config_hash(cfg) == p.name  # keyed by its config (and the controller revision)
        text = training_key(cfg)
        assert "[bound]" not in text and "[clients]" in text
        if cfg.experiment.controller != "tsfa":
            assert hashlib.sha256(text.encode()).hexdigest()[:12] == p.name
        assert (p / "rounds.csv").is_file()
        assert not (p / "checkpoint.pt").exists()


def test_config_hash_ignores_the_offline_objectives_constants(tmp_path):
    """J's constants ([bound]) key no run: a run trained with other weights, eps model and phi
    weight is the same run, to the bit (the controller's penalty is normalised, docs/model.md
    §4), so a recalibration keeps every cached run."""
    from tsfa.config.experiment import RunConfig

    base = RunConfig().replace(**{"training.rounds": 2, "training.local_steps": 2,
                                  "experiment.num_train": 200, "experiment.num_test": 50,
                                  "clients.num_clients": 2, "experiment.rank": 4})
    other = base.replace(**{"bound.c4": 123.0, "bound.c5": 0.01, "bound.c3": 7.0,
                            "bound.smoothness": 3.0, "bound.eps_model": "power_law"})
    assert config_hash(base) == config_hash(other)
    assert config_hash(base) != config_hash(base.replace(**{"control.phi": "inv_sq"}))
    a = train(base, out=tmp_path / "a").rounds.drop(columns=["wall_s"])
    b = train(other, out=tmp_path / "b").rounds.drop(columns=["wall_s"])
    pd.testing.assert_frame_equal(a, b)


def test_config_hash_ignores_ilora_controller():
    from tsfa.config.experiment import RunConfig

    a = RunConfig().replace(**{"experiment.method": "ilora", "experiment.controller": "tsfa"})
    b = RunConfig().replace(**{"experiment.method": "ilora", "experiment.rho": 0.5})
    assert config_hash(a) == config_hash(b) == config_hash(canonical(a))
    assert config_hash(RunConfig()) != config_hash(a)


def test_config_hash_ignores_comments_and_rehash_moves_old_keys(tmp_path):
    """A key's help text is not part of the run's identity; a folder stored under an older key
    is renamed to the current one (its config.toml decides)."""
    from tsfa.config.experiment import RunConfig
    from tsfa.experiments.cache import rehash_store

    cfg = RunConfig().replace(**{"experiment.controller": "fixed"})
    text = cfg.to_toml()
    old = hashlib.sha256(text.encode()).hexdigest()[:12]  # the former key: with comments
    assert old != config_hash(cfg)
    (tmp_path / old).mkdir()
    (tmp_path / old / "config.toml").write_text(text)
    assert rehash_store(tmp_path) == [(old, config_hash(cfg))]
    assert load_run_config(tmp_path / config_hash(cfg) / "config.toml") == cfg
    assert config_hash(cfg) != config_hash(cfg.replace(**{"experiment.rho": 0.5}))



def test_a_cached_run_resumes_after_a_recalibration(tmp_path):
    """An unfinished cached run whose saved config differs from the request in J's constants
    alone resumes with its own config; a key added to tsfa since (absent from the saved file, at
    its default) is no difference; any other change is still refused, naming the key."""
    from tsfa.config.experiment import RunConfig
    from tsfa.experiments.cache import resume_config
    from tsfa.experiments.results import check_same_config

    cfg = RunConfig().replace(**{"bound.c5": 0.3})
    text = "\n".join(ln for ln in cfg.to_toml().splitlines()
                     if not ln.startswith("sparse_rank_exponent"))  # saved by an older tsfa
    (tmp_path / "config.toml").write_text(text + "\n")
    request = cfg.replace(**{"bound.c5": 0.5, "bound.c4": 2.0})
    own = resume_config(request, tmp_path)
    assert own.system.bound.c5 == 0.3
    check_same_config(tmp_path, own.to_toml())
    with pytest.raises(ValueError, match="bound.c5"):
        check_same_config(tmp_path, request.to_toml())
    other = cfg.replace(**{"experiment.rank": 3})
    assert resume_config(other, tmp_path) is other
    with pytest.raises(ValueError, match="experiment.rank"):
        check_same_config(tmp_path, other.to_toml())


def test_fig1_marks_r_star_and_the_measured_best_set(figdir):
    """The best set is recomputed here from the per-seed columns with the paired t-interval."""
    from tsfa.experiments.paired import best_set

    t = csv(figdir, "fig1_rank").dropna(subset=["final_accuracy"])
    seeds = analysis_config("base", "tiny")["seeds"]["seeds"]
    per_seed = t.melt(id_vars="rank", value_vars=[f"acc_seed{s}" for s in seeds],
                      var_name="seed", value_name="acc").rename(columns={"acc": "final_accuracy"})
    members = set(int(r) for r in best_set(per_seed)[1])
    assert set(t.loc[t["in_best_set"], "rank"].astype(int)) == members
    assert t["r_star"].nunique() == 1


def test_png_carries_its_csv_and_runs(figdir, tiny_store, tmp_path):
    """Each PNG holds the SHA-256 of the CSV written beside it and the digest of its runs;
    regenerating a figure from the cache (two jobs: nothing left to train) gives the same runs
    and the same CSV."""
    from tsfa.reporting.figures import png_provenance

    for name in FIGURES:
        meta = png_provenance(figdir / f"{name}.png")
        assert meta["tsfa-csv-sha256"] == hashlib.sha256(
            (figdir / f"{name}.csv").read_bytes()).hexdigest(), name
        assert (meta["tsfa-runs"] == "") == (name in ("fig5_control_v", "fig7_client_compute"))
    logs = []
    make_figure("fig4_fixed_rho", tmp_path, "tiny", store=tiny_store, log=logs.append,
                train=train, jobs=2)
    assert not [m for m in logs if "runs trained" in m or m.startswith("train")]
    again = png_provenance(tmp_path / "fig4_fixed_rho.png")
    assert again["tsfa-runs"] == png_provenance(figdir / "fig4_fixed_rho.png")["tsfa-runs"]
    assert (tmp_path / "fig4_fixed_rho.csv").read_bytes() == (
        figdir / "fig4_fixed_rho.csv").read_bytes()
    d = pd.read_csv(tmp_path / "fig4_fixed_rho.csv")
    seeds = analysis_config("base", "tiny")["seeds"]["seeds"]
    assert {"method", "rho", "components_sent", "final_accuracy", "final_accuracy_se", "seeds",
            "mean_bits", *(f"acc_seed{s}" for s in seeds)} <= set(d.columns)
    for _, g in d.groupby("method"):  # more of the update on the air as rho grows
        g = g.sort_values("rho")
        assert np.all(np.diff(g["components_sent"]) >= 0) and np.all(np.diff(g["mean_bits"]) > 0)


def test_shipped_figures_match_their_csvs():
    """docs/figures/: every shipped PNG's CSV digest is the CSV shipped beside it."""
    from pathlib import Path

    from tsfa.reporting.figures import png_provenance

    shipped = Path(__file__).resolve().parents[1] / "docs" / "figures"
    pngs = sorted(shipped.glob("fig*.png"))
    assert len(pngs) == len(FIGURES)
    for png in pngs:
        csv_path = png.with_suffix(".csv")
        assert png_provenance(png)["tsfa-csv-sha256"] == hashlib.sha256(
            csv_path.read_bytes()).hexdigest(), png.name


def test_verdicts_read_every_csv_and_can_reject(figdir):
    """Every figure gets a verdict from its CSV; fig. 1's is rejected when r* lies outside the
    best set, accepted when inside, unresolved with 3 members."""
    from tsfa.reporting.figures.verdicts import fig1, verdicts

    v = verdicts(figdir)
    assert list(v["figure"]) == list(FIGURES)
    assert set(v["verdict"]) <= {"accepted", "rejected", "unresolved", "partly rejected", "mixed"}
    assert (figdir / "verdicts.md").read_text().count("\n| fig") == len(FIGURES)
    t = pd.DataFrame({"rank": [2, 4, 8], "final_accuracy": [0.30, 0.50, 0.40],
                      "acc_seed0": [0.30, 0.50, 0.40], "acc_seed1": [0.31, 0.52, 0.41],
                      "acc_seed2": [0.29, 0.49, 0.40], "measured_best": 4,
                      "in_best_set": [False, True, False]})
    assert fig1(t.assign(r_star=8))[1] == "rejected"
    assert "regret of r*: +10.00" in fig1(t.assign(r_star=8))[0]  # (10 + 11 + 9) / 3
    assert fig1(t.assign(r_star=4))[1] == "accepted"
    assert fig1(t.assign(r_star=4, in_best_set=True))[1] == "unresolved"


def test_figures_doc_carries_the_shipped_verdicts():
    """docs/figures.md's checklist is the verdict table of the shipped CSVs, to the character."""
    from pathlib import Path

    from tsfa.reporting.figures.verdicts import verdict_table

    root = Path(__file__).resolve().parents[1] / "docs"
    text = (root / "figures.md").read_text()
    block = text.split("<!-- verdicts -->\n")[1].split("<!-- /verdicts -->")[0]
    assert block == verdict_table(root / "figures")
    assert "code path only" not in block


@pytest.mark.parametrize("script", smoke_params(stored=True))
def test_figure_script_smoke(script, figdir, tiny_store, tmp_path):
    """The scripts of analysis/ that read the run cache (the eight figure scripts and
    validate_bound.py; registered in tests/test_scripts.py ``SMOKE``) end to end at size tiny, as
    subprocesses, on the cache this module's figures filled."""
    run = run_smoke(script, tmp_path, tiny_store)
    if "/fig" in script:  # every run it draws is in the cache already: nothing trained
        assert not re.search(r"^train ", run.out, re.M), run.out[-2000:]
