"""The extension points (issue 20): one registry entry per compressor, controller and task holds
its implementation, payload plan and config constraints; a new compressor added through the
public API alone trains with bits planned == bits sent (docs/architecture.md "Adding a
compressor")."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from tsfa.config.experiment import RunConfig
from tsfa.config.registry import (
    COMPRESSORS,
    CONTROLLERS,
    TASKS,
    CompressorEntry,
    ControllerEntry,
    docs_tables,
    resolve,
    write_docs_tables,
)
from tsfa.config.spec import SpecError
from tsfa.fl.compress import ModuleUpload, Strategy
from tsfa.maths.payload import ModulePlan, PayloadForm, PayloadModel, component_index_bits

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the worked example
@dataclass(frozen=True)
class FirstN(Strategy):
    """Toy: the first n columns of each module's B, with their indices (A's change stays in
    the error-feedback memory)."""

    name: ClassVar[str] = "first_n"

    def _module(self, m, p, rho, rng):
        MB, MA = m
        idx = torch.arange(self.plan(rho, MB.shape, MA.shape).n)
        return ModuleUpload(tuple(MB.shape), tuple(MA.shape), self.wire(MB[:, idx]),
                            MA.new_empty(0, dtype=self.options.dtype), rank_index=idx)


FIRST_N = PayloadForm(lambda n, r, d_out, d_in: ModulePlan(
    n, n * d_out, 0, component_index_bits(n, r)))
TOY = CompressorEntry("first_n", "the first n columns of B", FirstN, FIRST_N)


def tiny(**extra) -> RunConfig:
    return RunConfig().replace(**{
        "experiment.num_train": 300, "experiment.num_test": 100, "clients.num_clients": 3,
        "training.local_steps": 2, "training.batch_size": 16, "training.rounds": 2, **extra})


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_toy_compressor_trains_through_the_public_api_with_plan_equal_wire():
    from tsfa.engines.local import train

    with COMPRESSORS.registered(TOY):
        res = train(tiny(**{"experiment.method": "first_n", "experiment.controller": "fixed",
                            "experiment.rho": 0.5}))
        c = res.clients
        np.testing.assert_array_equal(c["bits"], c["planned_bits"])  # planned == sent
        # the toy's own plan (B only), not SOFT's, was planned and sent
        toy = PayloadModel.from_spec(res.system, "first_n", 8).bits(0.5)
        soft = PayloadModel.from_spec(res.system, "soft", 8).bits(0.5)
        assert (c["bits"] == toy).all() and toy < soft
        assert np.isfinite(res.rounds["accuracy"]).all()
        # the controller plans with the toy's own payload
        res2 = train(tiny(**{"experiment.method": "first_n"}))
        np.testing.assert_array_equal(res2.clients["bits"], res2.clients["planned_bits"])
    with pytest.raises(SpecError, match="experiment.method = 'first_n': must be one of"):
        tiny(**{"experiment.method": "first_n"})


def test_a_registered_compressor_is_a_config_choice_only_while_registered():
    with COMPRESSORS.registered(TOY):
        assert "first_n" in RunConfig().replace(**{"experiment.method": "first_n"}).to_toml()
        assert PayloadModel("first_n", 4, ((8, 6),), 0).bits(0.5) == 32 * 2 * 8 + 2 * 2
    assert "first_n" not in COMPRESSORS


def test_registration_refuses_a_taken_or_malformed_name():
    with pytest.raises(ValueError, match="'soft' is already registered"):
        COMPRESSORS.register(CompressorEntry("soft", "again", FirstN, FIRST_N))
    with pytest.raises(ValueError, match="lower-case identifier"):
        COMPRESSORS.register(CompressorEntry("First N", "bad", FirstN, FIRST_N))
    with pytest.raises(ValueError, match="options"):
        ControllerEntry("x", "bad", "tsfa.control.reference:MyopicPolicy", ("V",))
    with pytest.raises(ValueError, match="experiment.task = 'nope' is invalid; allowed: synthetic"):
        TASKS.entry("nope")


def test_a_methods_config_constraints_come_from_its_entry():
    with pytest.raises(SpecError, match="experiment.cov_correction = 'row_space': "
                                        "experiment.method = 'slora' allows only 'none'"):
        RunConfig().replace(**{"experiment.method": "slora",
                               "experiment.cov_correction": "row_space"})
    entry = CompressorEntry("strict", "x", FirstN, FIRST_N,
                            allowed={"experiment.upload": ("update",)})
    with COMPRESSORS.registered(entry):
        with pytest.raises(SpecError, match="experiment.upload = 'factor'"):
            RunConfig().replace(**{"experiment.method": "strict", "experiment.upload": "factor"})


# ------------------------------------------------------------------ every piece registered
def _classes(modules: tuple[str, ...], base_ref: str):
    base = resolve(base_ref)
    return [(f"{obj.__name__} ({m})", obj) for m in modules
            for _, obj in inspect.getmembers(importlib.import_module(m), inspect.isclass)
            if issubclass(obj, base) and obj is not base and obj.__module__ == m]


def _loaders():
    from tsfa.fl import tasks

    return [(f"tsfa.fl.tasks.{name}", fn) for name, fn in inspect.getmembers(tasks, inspect.isfunction)
            if fn.__module__ == tasks.__name__
            and inspect.signature(fn).return_annotation == "TaskData"]


@pytest.mark.parametrize(("registry", "attr", "found"), [
    ("COMPRESSORS", "strategy", lambda: _classes(
        ("tsfa.fl.compress.strategies", "tsfa.fl.compress.lowrank"), "tsfa.fl.compress:Strategy")),
    ("CONTROLLERS", "policy", lambda: _classes(
        ("tsfa.control.lyapunov", "tsfa.control.reference"), "tsfa.control.base:BasePolicy")),
    ("TASKS", "loader", _loaders),
])
def test_every_built_in_piece_is_registered(registry, attr, found):
    """Removing a registration line fails here, naming the piece left out."""
    reg = {"COMPRESSORS": COMPRESSORS, "CONTROLLERS": CONTROLLERS, "TASKS": TASKS}[registry]
    registered = {resolve(getattr(reg.entry(n), attr)) for n in reg}
    pieces = found()
    assert pieces
    for where, obj in pieces:
        assert obj in registered, f"{where} is not registered in tsfa.config.registry.{registry}"


def test_every_compressor_entry_resolves_to_its_own_strategy_and_form():
    from tsfa.fl.compress import strategy_class
    from tsfa.maths.payload import payload_form

    for name in COMPRESSORS:
        assert strategy_class(name).name == name and isinstance(payload_form(name), PayloadForm)
    wrong = CompressorEntry("wrong", "x", FirstN, FIRST_N)
    with COMPRESSORS.registered(wrong), pytest.raises(ValueError, match="FirstN.name = 'first_n'"):
        strategy_class("wrong")
    bad = CompressorEntry("bad", "x", FirstN, "tsfa.maths.payload:ModulePlan")
    with COMPRESSORS.registered(bad), pytest.raises(TypeError, match="instance of PayloadForm"):
        payload_form("bad")


def test_docs_tables_are_generated_from_the_registries():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert write_docs_tables(text) == text, (
        "docs/architecture.md's registry tables are stale: python -m tsfa.config.registry "
        "docs/architecture.md")
    for name, table in docs_tables().items():
        assert table in text, name


def test_the_cli_lists_every_registered_name():
    from typer.testing import CliRunner

    from tsfa.cli import app

    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).output
    for reg in (COMPRESSORS, CONTROLLERS, TASKS):
        for name in reg:
            assert name in out, name
