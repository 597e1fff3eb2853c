"""A non-editable install works on its own: ``pip install .`` into a fresh virtual environment
(reusing the installed dependencies), then ``tsfa figures --size tiny`` from a folder outside
the checkout. The package reads no file of the checkout (configs ship with it). pip builds a
copy of what the build reads (pyproject.toml, README.md, tsfa/) in the test's folder, so its
build/ and tsfa.egg-info never appear in the checkout while other tests (pytest-xdist) run.

Two figures stand for all eight here (one analytic, one trained from the packaged base run and
its figure config): every figure reads its config the same way, and all eight are drawn at the
tiny size in-process by tests/test_figures.py; drawing them again here would double CI time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_pip_install_dot_then_tsfa_figures_tiny(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    py, exe = venv / "bin" / "python", venv / "bin" / "tsfa"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MPLBACKEND"] = "Agg"
    src = tmp_path / "src"
    shutil.copytree(ROOT / "tsfa", src / "tsfa", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", str(src)], check=True,
                   env=env, cwd=tmp_path)
    where = subprocess.run([py, "-c", "import tsfa; print(tsfa.__file__)"], check=True, env=env,
                           cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the installed copy, not the checkout
    out = tmp_path / "figures"
    res = subprocess.run([exe, "figures", "--size", "tiny", "--out", str(out), "--threads", "1",
                          "--only", "fig5_control_v", "--only", "fig8_zeta"],
                         env=env, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert sorted(p.stem for p in out.glob("fig*.png")) == ["fig5_control_v", "fig8_zeta"]
    assert (out / "timing.json").is_file()
