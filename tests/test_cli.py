"""The installed ``tsfa`` entry point, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tsfa.cli import app

runner = CliRunner()


def test_spec_then_bound_json_via_installed_entry_point(tmp_path):
    """Acceptance (issue 2): `tsfa spec > s.toml && tsfa bound s.toml --json` works."""
    exe = shutil.which("tsfa")
    if exe is None:
        pytest.fail("the `tsfa` console script is not installed (pip install -e .)")
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(subprocess.run([exe, "spec"], check=True, capture_output=True,
                                        text=True).stdout)
    out = subprocess.run([exe, "bound", str(spec_file), "--json"], check=True,
                         capture_output=True, text=True).stdout
    report = json.loads(out)
    terms = {t["term"]: t["value"] for t in report["terms"]}
    assert set(terms) == {"init", "noise", "drift", "cov", "sparse", "rank"}
    assert report["total"] == pytest.approx(sum(terms.values()))


def test_bound_respects_rank_and_rho():
    res = runner.invoke(app, ["bound", "--rank", "16", "--rho", "0.25", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["rank"] == 16
    assert all(r == 0.25 for r in report["rho"])


@pytest.mark.parametrize("args, key", [
    (["bound", "--rank", "0"], "--rank"),
    (["bound", "--rank", "8", "--rho", "0.01"], "--rho"),
    (["bound", "missing.toml"], "missing.toml"),
    (["rank", "missing.toml"], "missing.toml"),
])
def test_bad_arguments_exit_2_with_message(args, key):
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert key in res.output
    assert "Traceback" not in res.output


def test_bad_spec_value_names_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[wireless]\nbandwidth_total_hz = -5.0\n")
    res = runner.invoke(app, ["rank", str(f)])
    assert res.exit_code == 2
    assert "wireless.bandwidth_total_hz" in res.output and "> 0" in res.output


def test_rank_json_reports_optimum_and_sensitivity():
    res = runner.invoke(app, ["rank", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["status"] == "optimal"
    js = [row["J"] for row in report["table"]]
    assert report["objective"] == pytest.approx(min(js))
    assert report["sensitivity"]


def test_module_invocation_prints_help():
    out = subprocess.run([sys.executable, "-m", "tsfa", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "rank" in out.stdout


# --------------------------------------------------------------------------- train and run
TINY_RUN = """
[experiment]
num_train = 300
num_test = 100

[clients]
num_clients = 3

[training]
local_steps = 2
batch_size = 16
rounds = 2
"""


def _r_star(output: str) -> int:
    import re

    return int(re.search(r"r\* = (\d+)", output).group(1))


def _trained_rank(folder) -> int:
    import tomllib

    return tomllib.loads((folder / "config.toml").read_text())["experiment"]["rank"]


@pytest.mark.slow
def test_run_trains_at_the_r_star_it_printed(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(TINY_RUN)
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out"), "--rounds", "2",
                              "--control-rounds", "20", "--threads", "1"])
    assert res.exit_code == 0, res.output
    r_star, train = _r_star(res.output), tmp_path / "out" / "train"
    assert _trained_rank(train) == r_star
    assert json.loads((train / "metadata.json").read_text())["r_star"] == r_star
    table = (train / "rank_table.csv").read_text()
    assert table.startswith("rank,") and ",J," in table.splitlines()[0]
    assert (tmp_path / "out" / "rank" / "rank_table.csv").is_file()
    again = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out"), "--rounds", "2",
                                "--control-rounds", "20", "--threads", "1", "--resume"])
    assert again.exit_code == 0, again.output  # a finished run resumes to itself
    assert len((train / "rounds.csv").read_text().splitlines()) == 1 + 2


@pytest.mark.slow
def test_train_rank_auto_trains_at_r_star_and_resume_refuses_another_config(tmp_path):
    cfg, out = tmp_path / "run.toml", tmp_path / "auto"
    cfg.write_text(TINY_RUN)
    args = ["train", str(cfg), "--rank", "auto", "--out", str(out), "--threads", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert _trained_rank(out) == _r_star(res.output)
    assert (out / "rank_table.csv").is_file() and (out / "rounds.csv").is_file()
    res = runner.invoke(app, [*args, "--resume", "--seed", "3"])
    assert res.exit_code == 2 and "experiment.seed" in res.output


@pytest.mark.parametrize("args, key", [
    (["train", "--rank", "two"], "--rank"),
    (["train", "--device", "tpu"], "--device"),
    (["train", "--precision", "fp8"], "--precision"),
    (["train", "--clients", "parallel"], "--clients"),
])
def test_bad_training_options_exit_2_naming_the_option(args, key):
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and key in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_run_solves_r_star_once_and_freezes_the_budget_once(tmp_path, monkeypatch):
    """Issue 20: per `tsfa run` the offline stage of the run's system is solved once (the plan)
    and the relative budget rule is evaluated once; the result folders agree on r*."""
    import tsfa.control.offline as offline
    import tsfa.control.sensitivity as sensitivity
    import tsfa.maths.instance as instance

    solves, budgets = [], []
    solve, automatic = offline.optimal_rank, instance.automatic_budget_s

    def counting_solve(spec, *args, **kwargs):
        solves.append(spec.to_toml())
        return solve(spec, *args, **kwargs)

    def counting_budget(*args, **kwargs):
        budgets.append(1)
        return automatic(*args, **kwargs)

    monkeypatch.setattr(offline, "optimal_rank", counting_solve)
    monkeypatch.setattr(sensitivity, "optimal_rank", counting_solve)
    monkeypatch.setattr(instance, "automatic_budget_s", counting_budget)
    cfg = tmp_path / "run.toml"
    cfg.write_text(TINY_RUN)
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "out"), "--rounds", "1",
                              "--control-rounds", "5", "--threads", "1"])
    assert res.exit_code == 0, res.output
    run_system = (tmp_path / "out" / "rank" / "config.toml").read_text()
    assert solves.count(run_system) == 1, f"{solves.count(run_system)} solves of the run's system"
    assert len(budgets) == 1
    meta = json.loads((tmp_path / "out" / "train" / "metadata.json").read_text())
    assert meta["r_star"] == _r_star(res.output) == _trained_rank(tmp_path / "out" / "train")
