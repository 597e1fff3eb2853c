"""The README's two set-up commands stay true: CI runs the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from tsfa.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    test_cmd = next(b for b in _bash_blocks(readme) if "pytest" in b)
    assert any(test_cmd.replace("pip install", "python -m pip install") == ln
               or test_cmd == ln for ln in ci_lines), (test_cmd, ci_lines)


def test_readme_main_job_command_exists():
    readme = (ROOT / "README.md").read_text()
    main = _bash_blocks(readme)[0]
    assert main.startswith("pip install -e .") and "tsfa run" in main
    res = CliRunner().invoke(app, ["run", "--help"])
    assert res.exit_code == 0 and "--out" in res.output
