"""A non-editable install works on its own: ``pip install .`` into a fresh virtual environment
(reusing the installed dependencies), then ``tsfa figures --size tiny`` from a folder outside
the checkout. The package reads no file of the checkout (configs ship with it)."""

from __future__ import annotations

import os
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
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", str(ROOT)], check=True,
                   env=env, cwd=tmp_path)
    where = subprocess.run([py, "-c", "import tsfa; print(tsfa.__file__)"], check=True, env=env,
                           cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the installed copy, not the checkout
    out = tmp_path / "figures"
    res = subprocess.run([exe, "figures", "--size", "tiny", "--out", str(out), "--threads", "1"],
                         env=env, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert len(list(out.glob("fig*.png"))) == 8 and (out / "timing.json").is_file()
