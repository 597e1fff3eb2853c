"""The layer rule of docs/architecture.md as a contract (issue 20): import-linter, configured in
pyproject.toml, checks that each floor imports only from the floors below it and that no two
sibling modules import each other (no cycles)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ["tsfa.cli", "tsfa.engines", "tsfa.reporting", "tsfa.experiments", "tsfa.fl",
          "tsfa.control", "tsfa.optim", "tsfa.maths", "tsfa.config"]


#: import-linter's ``lint-imports`` command, run by this interpreter (no reliance on PATH).
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]


def _lint(cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    pytest.importorskip("importlinter", reason="install the test extra: pip install -e '.[test]'")
    return subprocess.run(LINT, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_contract_states_the_documented_floors():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    kinds = {c["type"]: c for c in conf["contracts"]}
    assert kinds["layers"]["layers"] == FLOORS
    assert kinds["acyclic_siblings"]["ancestors"] == ["tsfa"]
    text = (ROOT / "docs" / "architecture.md").read_text()
    order = " < ".join(f.split(".")[1] for f in reversed(FLOORS))
    assert order in text, f"docs/architecture.md must state the floors as {order!r}"
    # every subpackage of tsfa is on a floor
    subpackages = {p.parent.name for p in (ROOT / "tsfa").glob("*/__init__.py")}
    assert subpackages == {f.split(".")[1] for f in FLOORS}


def test_import_contracts_are_kept():
    out = _lint()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout


def test_contract_catches_an_upward_import(tmp_path):
    """The check can fail: a copy of the package in which the maths floor imports the engines
    breaks the layers contract."""
    pkg = tmp_path / "tsfa"
    shutil.copytree(ROOT / "tsfa", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "maths" / "_upward.py").write_text("import tsfa.engines.local  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    out = _lint(tmp_path, {"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)})
    assert out.returncode != 0
    assert "tsfa.maths is not allowed to import tsfa.engines" in out.stdout
