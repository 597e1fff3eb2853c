"""The OpenMP wait policy set by the tsfa command (tsfa/_omp.py)."""

import os
import subprocess
import sys

import pytest

from tsfa._omp import passive_omp_wait

_SHOW = "import os, sys, tsfa.cli; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"


def _run(env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", _SHOW], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_the_command_sets_passive_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    policy, torch_loaded = _run(env)
    assert policy == "PASSIVE" and torch_loaded == "False"  # set, and torch not yet loaded


@pytest.mark.parametrize("mine", ["ACTIVE", "passive"])
def test_a_policy_the_user_set_is_kept(mine):
    assert _run({**os.environ, "OMP_WAIT_POLICY": mine})[0] == mine


def test_too_late_once_torch_is_imported(monkeypatch):
    import torch  # noqa: F401

    env = {}
    assert passive_omp_wait(env) is False and env == {}
    monkeypatch.delitem(sys.modules, "torch")
    assert passive_omp_wait(env) is True and env == {"OMP_WAIT_POLICY": "PASSIVE"}
