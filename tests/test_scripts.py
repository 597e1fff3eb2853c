"""Every script in benchmarks/ and analysis/ runs end to end at a tiny size (issue 20: scripts
that rot). Each is run as a subprocess, as its docstring or README documents it, with its own
small-size options (``--smoke``, ``--size tiny`` / ``smoke``, few repeats), writing only into
pytest's temporary folder; the test checks the exit code and one property of what it printed or
wrote. ``test_every_script_has_a_smoke_run`` fails naming any script added without an entry in
``SMOKE``. The smokes that read the shared run cache (``{store}``: the figure scripts and
validate_bound.py) run in tests/test_figures.py, after its figures have filled that cache."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("benchmarks", "analysis")
TIMEOUT_S = 600

# Modules of analysis/ that are imported libraries, not scripts: they have no __main__ block and
# nothing to run; the scripts that import them exercise them here (checked below: a library that
# grows a __main__ block is a script and needs a smoke entry).
LIBRARIES = {
    "analysis/compare_grid.py": "the grid of compare_methods.py and ablate_row_space.py",
    "analysis/compare_report.py": "the tables of compare_methods.py and ablate_row_space.py",
    "analysis/validation_report.py": "the report of validate_bound.py and validate_rank.py",
}
# Scripts whose smoke run lives in another test file (named, and checked to exist).
ELSEWHERE = {
    "analysis/validate_rank.py": "tests/test_validate_rank.py::test_script_runs_at_tiny_size",
}
FIGURES = ("fig1_rank", "fig2_covariance", "fig3_methods", "fig4_fixed_rho", "fig5_control_v",
           "fig6_budget", "fig7_client_compute", "fig8_zeta")


@dataclass
class Run:
    """What a check sees: the finished process and the temporary folder it wrote into."""

    proc: subprocess.CompletedProcess
    tmp: Path

    @property
    def out(self) -> str:
        return self.proc.stdout


@dataclass(frozen=True)
class Smoke:
    args: tuple[str, ...]  # "{tmp}": the test's folder; "{store}": the session's tiny run cache
    check: object  # callable(Run)
    slow: bool = False  # over ~20 s on 2 shared cores
    needs: tuple[str, ...] = field(default=())  # optional packages (importorskip)


# ------------------------------------------------------------------------------------ checks
def check_p2(r: Run) -> None:
    from tsfa.optim.p2_cvxpy import MAX_CLIENTS

    rows = {int(ln.split()[0]): ln for ln in r.out.splitlines() if re.match(r"\s*\d+\s+\d", ln)}
    assert "timed" in rows[10] and f"refused above K = {MAX_CLIENTS}" in rows[MAX_CLIENTS + 1]
    assert "ratio min / median / max:" in r.out


def check_local_round(r: Run) -> None:
    for part in ("train_task", "train_reg", "soft", "tlora", "rlora", "slora",
                 "regulariser / SOFT round", "slora compression / SOFT compression"):
        assert re.search(rf"^{re.escape(part)}\s+[\d.e+-]+$", r.out, re.M), part


def check_soft_selection(r: Run) -> None:
    assert re.search(r"soft_ms\s+factored_svd_ms\s+dense_svd_ms\s+factored_over_soft", r.out)
    assert re.search(r"^4\s+1\s+[\d.]+", r.out, re.M)  # r = 4, n = 1 at rho = 1/4


def check_trainer(r: Run) -> None:
    for k in (2, 4):
        assert re.search(rf"^\| {k} \| [\d.]+ \| [\d.]+ \| \*\*[\d.]+\*\* \|", r.out, re.M), k
    m = re.search(r"predicted ([\d.]+) MiB per client; measured \(K = 2 -> 4\) ([\d.]+) MiB", r.out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0


def check_flower(r: Run) -> None:
    """The Flower engine against the in-process one (this smoke is the suite's equality test of
    the simulation engine): SOFT + TSFA, same substreams, 1 torch thread, every column of the
    rounds and clients tables equal to the bit; the run's folder written; every reply at least
    as large as its payload."""
    m = re.search(r"max \|metric difference\| \(.*\): (\S+)", r.out)
    assert m and float(m.group(1)) == 0.0
    assert "rounds and clients tables equal to the bit: True" in r.out
    assert "| Flower (Ray) |" in r.out and "| in-process |" in r.out
    out = r.tmp / "flower"
    for name in ("config.toml", "metadata.json", "rounds.csv", "clients.csv", "partition.csv",
                 "rank_table.csv"):
        assert (out / name).exists(), name
    cl = pd.read_csv(out / "clients.csv")
    sent = cl[cl["bits"] > 0]
    assert len(sent) and (8 * sent["message_bytes"] >= sent["bits"]).all()
    assert len(pd.read_csv(out / "rounds.csv")) == 2


def check_deployment(r: Run) -> None:
    line = next(ln for ln in r.out.splitlines() if ln.split()[:1] == ["soft"] and len(ln.split()) > 5)
    ratio = float(line.split()[3])  # bytes_per_bit: a serialised upload carries its payload
    assert ratio >= 1.0 and "load average before" in r.out


def check_ablate(r: Run) -> None:
    paired = pd.read_csv(r.tmp / "out" / "paired.csv")
    assert list(paired["error_feedback"]) == ["none", "all"] and (paired["seeds"] == 2).all()
    assert {"plain", "row_space", "diff", "lo", "hi", "effect"} <= set(paired.columns)
    assert len(pd.read_csv(r.tmp / "out" / "runs.csv")) == 8  # 2 x 2 settings x 2 seeds


def check_compare_methods(r: Run) -> None:
    table = pd.read_csv(r.tmp / "out" / "table.csv")
    assert {"task", "rank", "policy", "reading", "budget", "method", "acc_mean"} <= set(table)
    assert set(table["method"]) == {"soft", "tlora"} and set(table["task"]) == {"synthetic"}
    assert table["acc_mean"].between(0, 1).all()
    assert (r.tmp / "methods.md").read_text().startswith("# Methods compared")


def check_capture(r: Run) -> None:
    summary = pd.read_csv(r.tmp / "summary.csv")
    assert list(summary["method"]) == ["soft", "tlora", "rlora"]
    assert summary["factor_capture"].between(0, 1).all()
    cap = pd.read_csv(r.tmp / "capture.csv")
    assert sorted(cap["round"].unique()) == [0, 1]  # --smoke: 2 rounds
    assert (r.tmp / "summary.md").read_text().startswith("# Compression capture")


def check_figure(name: str):
    def check(r: Run) -> None:
        for ext in ("png", "pdf", "csv"):
            path = r.tmp / f"{name}.{ext}"
            assert str(path) in r.out and path.stat().st_size > 0, path
        assert len(pd.read_csv(r.tmp / f"{name}.csv")) > 0
    return check


def check_notebooks(r: Run) -> None:
    written = sorted(p.name for p in r.tmp.glob("*.ipynb"))
    assert written == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    for name in written:  # the committed notebooks are what the generator writes
        assert (r.tmp / name).read_bytes() == (ROOT / "notebooks" / name).read_bytes(), (
            f"notebooks/{name} is stale: run python analysis/make_notebooks.py")


def check_validate_bound(r: Run) -> None:
    text = (r.tmp / "docs" / "validation.md").read_text()
    for head in ("# Bound validation", "## 1. Covariance", "## 2. Optimal rank",
                 "## 3. Sparsification", "## 4. The V trade-off"):
        assert head in text, head
    for png in ("covariance.png", "rank.png"):
        assert (r.tmp / "docs" / "validation" / png).stat().st_size > 0, png


# ------------------------------------------------------------------------------- smoke runs
SMOKE: dict[str, Smoke] = {
    "benchmarks/bench_p2.py": Smoke(("--smoke",), check_p2),
    "benchmarks/bench_local_round.py": Smoke(("--repeats", "1", "--threads", "1"),
                                             check_local_round),
    "benchmarks/bench_soft_selection.py": Smoke(("--ranks", "4", "--repeats", "1",
                                                 "--threads", "1"), check_soft_selection),
    "benchmarks/bench_trainer.py": Smoke(("--smoke", "--devices", "cpu", "--threads", "1"),
                                         check_trainer, slow=True),
    "benchmarks/bench_flower.py": Smoke(("--smoke", "--num-cpus", "1", "--out", "{tmp}/flower"),
                                        check_flower, slow=True,
                                        needs=("flwr", "ray")),
    "benchmarks/bench_deployment.py": Smoke(("--smoke", "--workdir", "{tmp}/deploy"),
                                            check_deployment, slow=True,
                                            needs=("flwr", "cryptography")),
    "analysis/ablate_row_space.py": Smoke(("--size", "smoke", "--seeds", "0", "1", "--jobs", "1",
                                           "--store", "{tmp}/runs", "--out", "{tmp}/out"),
                                          check_ablate),
    "analysis/compare_methods.py": Smoke(("--size", "smoke", "--jobs", "1", "--store",
                                          "{tmp}/runs", "--out", "{tmp}/out", "--doc",
                                          "{tmp}/methods.md"), check_compare_methods),
    "analysis/compression_capture.py": Smoke(("--smoke", "--out", "{tmp}", "--threads", "1"),
                                             check_capture),
    **{f"analysis/{name}.py": Smoke(("--size", "tiny", "--out", "{tmp}", "--store", "{store}",
                                     "--threads", "1"), check_figure(name),
                                    slow=name in ("fig1_rank", "fig3_methods", "fig6_budget"))
       for name in FIGURES},
    "analysis/make_notebooks.py": Smoke(("--out", "{tmp}"), check_notebooks, needs=("nbformat",)),
    # after the figures: reuses their cached runs (same store, as the script documents)
    "analysis/validate_bound.py": Smoke(("--size", "tiny", "--store", "{store}", "--out",
                                         "{tmp}/docs/validation.md", "--threads", "1",
                                         "--no-real-data"), check_validate_bound, slow=True),
}


def run_script(script: str, args, tmp: Path, store: Path | None = None) -> Run:
    """Run ``script`` with ``args`` (``{tmp}``, ``{store}`` filled in) as a subprocess on one
    thread; assert it exited 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    argv = [a.format(tmp=tmp, store=store) for a in args]
    proc = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (f"{script} {' '.join(argv)} exited {proc.returncode}:\n"
                                  f"{proc.stderr[-3000:]}")
    return Run(proc, tmp)


def uses_store(entry: Smoke) -> bool:
    """Whether a smoke reads the shared run cache: those run in tests/test_figures.py
    (``test_figure_script_smoke``), after its figures have filled the cache, so that under
    pytest-xdist ``--dist loadfile`` they share one worker with it and retrain nothing."""
    return any("{store}" in a for a in entry.args)


def smoke_params(stored: bool) -> list:
    return [pytest.param(s, marks=[pytest.mark.slow] if e.slow else [], id=Path(s).stem)
            for s, e in SMOKE.items() if uses_store(e) == stored]


@pytest.mark.parametrize("script", smoke_params(stored=False))
def test_script_smoke(script, tmp_path):
    run_smoke(script, tmp_path)


def run_smoke(script: str, tmp: Path, store: Path | None = None) -> Run:
    """``SMOKE[script]``: skipped without its optional packages, run, checked; the run returned."""
    entry = SMOKE[script]
    for module in entry.needs:
        pytest.importorskip(module)
    run = run_script(script, entry.args, tmp, store)
    entry.check(run)
    return run


def _has_main(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
               for node in tree.body)


def test_every_script_has_a_smoke_run():
    found = {f"{folder}/{p.name}" for folder in FOLDERS for p in (ROOT / folder).glob("*.py")}
    missing = sorted(found - set(SMOKE) - set(LIBRARIES) - set(ELSEWHERE))
    assert not missing, f"scripts without a smoke run in tests/test_scripts.py SMOKE: {missing}"
    stale = sorted((set(SMOKE) | set(LIBRARIES) | set(ELSEWHERE)) - found)
    assert not stale, f"entries for scripts that no longer exist: {stale}"
    scripts = [lib for lib in LIBRARIES if _has_main(ROOT / lib)]
    assert not scripts, f"these have a __main__ block, so they are scripts: add a smoke run: {scripts}"
    for script, test in ELSEWHERE.items():
        file, name = test.split("::")
        assert f"def {name}(" in (ROOT / file).read_text(encoding="utf-8"), (script, test)

