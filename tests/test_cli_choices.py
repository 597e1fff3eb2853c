"""Fixed choices, one list each (tsfa.config.choices): listed by ``--help``, refused before any
work in one line naming the option, and tied to what implements them (issue 20, item 5)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tsfa.cli import app
from tsfa.config import choices

runner = CliRunner()


@pytest.mark.parametrize("values", [choices.METHODS, choices.CONTROLLERS, choices.TASKS,
                                    choices.DEVICES, choices.POOLS, choices.PRECISIONS,
                                    choices.ENGINES])
def test_train_help_lists_every_choice(values):
    out = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "[" + "|".join(values) + "]" in out


@pytest.mark.parametrize("args, option, values", [
    (["train", "--method", "nope"], "--method", choices.METHODS),
    (["train", "--controller", "nope"], "--controller", choices.CONTROLLERS),
    (["train", "--task", "nope"], "--task", choices.TASKS),
    (["train", "--device", "nope"], "--device", choices.DEVICES),
    (["train", "--clients", "nope"], "--clients", choices.POOLS),
    (["run", "--precision", "nope"], "--precision", choices.PRECISIONS),
    (["control", "--solver", "nope"], "--solver", choices.SOLVERS),
    (["figures", "--size", "nope"], "--size", choices.SIZES),
])
def test_bad_choice_is_one_line_naming_the_option(args, option, values):
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == [f"error: {option} = 'nope': must be one of {', '.join(values)}"]


def test_rank_beyond_the_model_is_refused_before_torch_loads():
    """``tsfa train --rank 128`` on the default config: one line naming --rank / experiment.rank
    and its range, from the config alone (torch and pandas never imported, no progress bar:
    the refusal costs the interpreter's start and the command line's imports only)."""
    code = ("import sys\n"
            "from tsfa.cli import app\n"
            "code = app(['train', '--rank', '128'], standalone_mode=False)\n"
            "print(code, 'torch' in sys.modules, 'pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stderr.strip() == ("error: --rank (experiment.rank) = 128: must be in 1..64, the "
                                  "width of the LoRA modules of the synthetic task's model "
                                  "(dim = 64)")
    assert out.stdout.split() == ["2", "False", "False"]


def test_each_list_is_what_its_layer_implements():
    """A name added to a list without its implementation (or the reverse) fails here."""
    from tsfa.config.experiment import RunConfig
    from tsfa.control.from_spec import make_policy
    from tsfa.fl.compress import strategy_class
    from tsfa.fl.device import resolve_device
    from tsfa.fl.pool import make_pool
    from tsfa.fl.vit_config import task_vit
    from tsfa.maths.instance import realize
    from tsfa.maths.payload import PayloadModel

    assert all(strategy_class(m).name == m for m in choices.METHODS)
    system = RunConfig().system
    for method in choices.METHODS:
        assert PayloadModel.from_spec(system, method, 8).bits(0.5) > 0
    inst = realize(system)
    for kind in choices.CONTROLLERS:
        assert make_policy(system, inst, 8, kind).n_clients == system.clients.num_clients
    for kind in choices.POOLS:
        make_pool(kind, [])
    for task in choices.TASKS:
        assert task_vit(RunConfig().replace(**{"experiment.task": task}).experiment).dim >= 1
    assert str(resolve_device("cpu")) == "cpu"
    with pytest.raises(ValueError):
        make_policy(system, inst, 8, "nope")
