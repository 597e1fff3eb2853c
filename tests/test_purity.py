"""Pure-math modules import neither torch nor matplotlib (STYLE.md practice 8)."""

import importlib.util
import subprocess
import sys

import pytest

PURE = ["tsfa.units", "tsfa.wireless", "tsfa.bound", "tsfa.covariance", "tsfa.spec", "tsfa.system",
        "tsfa.symbolic", "tsfa.rng"]
OPTIONAL = ["tsfa.optim", "tsfa.control", "tsfa.rank"]


def _present(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("heavy", ["torch", "matplotlib"])
def test_pure_modules_do_not_import(heavy):
    modules = PURE + [m for m in OPTIONAL if _present(m)]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            f"print(sorted(k for k in sys.modules if k == {heavy!r} or k.startswith({heavy!r} + '.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{heavy} imported by one of {modules}: {out.stdout}"


def test_purity_check_detects_a_torch_import():
    """The same check flags a module that does import torch (tsfa.fl.lora), so it can fail."""
    pytest.importorskip("torch")
    if not _present("tsfa.fl.lora"):
        pytest.skip("tsfa.fl.lora not present")
    code = "import sys, tsfa.fl.lora; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr
