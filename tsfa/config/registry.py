"""The extension points of tsfa: one registry each for compressors, controllers and tasks.

One entry holds everything tsfa knows about one name: its implementation, its payload plan (a
compressor), what it needs from the rest of the config, and the line the docs and ``--help`` show.
Config validation (``experiment.method``, ``.controller``, ``.task``), the command line's choices,
the payload model, the client pool, the server, the docs tables (docs/architecture.md) and the
parametrised tests all read these registries, so a new compressor is one new module plus one
:func:`register` call (the worked example is in docs/architecture.md "Adding a compressor").

Why here, on the config floor: validation must know every registered name, and the config layer
imports nothing else of tsfa. Entries therefore name their implementation the way Python entry
points do, ``"module:attribute"``, or hold the object itself (a user's own class); each floor
resolves only the attribute of its own floor (:func:`resolve`: the payload layer the plan, the
``fl`` layer the strategy class, ``control`` the policy class), so the layer contract holds.

The registries are the one piece of module-level mutable state in tsfa, on purpose: registration
is how a user extends it. :meth:`Registry.registered` registers for the length of a ``with``
block (tests use it, so no test leaves an entry behind).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar


def resolve(ref: Any) -> Any:
    """The object behind ``ref``: a ``"package.module:attribute"`` string is imported (entry-point
    style), anything else is returned as it is."""
    if isinstance(ref, str):
        module, sep, attr = ref.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"reference {ref!r}: expected 'package.module:attribute'")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    return ref


@dataclass(frozen=True)
class CompressorEntry:
    """A compressor (``experiment.method``; docs/model.md §5, §6).

    ``strategy``: the :class:`tsfa.fl.compress.Strategy` subclass (or its reference);
    ``payload``: its :class:`tsfa.maths.payload.PayloadForm`, how many values and index bits one
    module's upload carries at a ratio (or its reference): the controller plans with it and the
    strategy keeps exactly that, so planned bits equal sent bits; ``label``: the name in figures;
    ``proposed``: error feedback kept under ``experiment.error_feedback = "proposed"``;
    ``orthogonality``: the client adds SOFT's penalty ``zeta`` to its local loss; ``ideal``: sends
    everything every round, outside the latency constraint (rho = 1, equal bandwidth);
    ``allowed``: config keys this method restricts, with the values it allows.
    """

    name: str
    summary: str
    strategy: Any
    payload: Any
    label: str = ""
    proposed: bool = False
    orthogonality: bool = False
    ideal: bool = False
    allowed: Mapping[str, tuple] = field(default_factory=dict)


@dataclass(frozen=True)
class ControllerEntry:
    """A per-round policy (``experiment.controller``; docs/model.md §4).

    ``policy``: a :class:`tsfa.control.base.BasePolicy` subclass (or its reference), built from
    :func:`tsfa.control.from_spec.policy_arrays` plus ``V`` and the ``options`` it names among
    ``solver`` (``experiment.solver``) and ``fixed_rho`` (``experiment.rho``).
    """

    name: str
    summary: str
    policy: Any
    options: tuple[str, ...] = ()

    def __post_init__(self):
        bad = set(self.options) - {"solver", "fixed_rho"}
        if bad:
            raise ValueError(f"controller {self.name!r}: options {sorted(bad)} unknown; allowed: "
                             "solver, fixed_rho")


@dataclass(frozen=True)
class TaskEntry:
    """A data set (``experiment.task``).

    ``loader(exp, vit, rng) -> tsfa.fl.tasks.TaskData`` (or its reference): the data and
    backbone, given the ExperimentSpec, the model config and the partition stream; ``vit``: a
    torch-free callable of no arguments returning the task's :class:`tsfa.fl.vit_config.ViTConfig`
    (or its reference), read before any data loads (rank checks, FLOPs);
    ``vit_from_checkpoint``: with ``experiment.pretrained`` the model's sizes come from the
    checkpoint instead (known only once it is read).
    """

    name: str
    summary: str
    loader: Any
    vit: Any
    vit_from_checkpoint: bool = False


E = TypeVar("E", CompressorEntry, ControllerEntry, TaskEntry)


class Registry(Generic[E]):
    """Named entries of one extension point, in registration order. Iterating, ``len`` and ``in``
    see the names (so a registry serves as a config field's ``choices``); :meth:`entry` returns
    one entry and refuses an unknown name in one line naming ``key`` and the allowed names."""

    def __init__(self, key: str, entries: tuple[E, ...] = ()):
        self.key = key
        self._entries: dict[str, E] = {}
        for e in entries:
            self.register(e)

    def register(self, entry: E) -> E:
        """Add ``entry``; a name already registered is refused (no silent replacement)."""
        if not entry.name or not entry.name.isidentifier() or entry.name != entry.name.lower():
            raise ValueError(f"{self.key} = {entry.name!r}: a name must be a lower-case "
                             "identifier")
        if entry.name in self._entries:
            raise ValueError(f"{self.key} = {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> E:
        return self._entries.pop(self.entry(name).name)

    @contextmanager
    def registered(self, entry: E) -> Iterator[E]:
        """``entry`` registered inside the ``with`` block only."""
        self.register(entry)
        try:
            yield entry
        finally:
            self._entries.pop(entry.name, None)

    def load(self, name: str, attr: str, expected: type, instance: bool = False) -> Any:
        """Attribute ``attr`` of ``name``'s entry, resolved (:func:`resolve`) and checked to be a
        subclass of ``expected`` (an instance of it with ``instance``), else one line naming it."""
        obj = resolve(getattr(self.entry(name), attr))
        ok = isinstance(obj, expected) if instance else (isinstance(obj, type)
                                                          and issubclass(obj, expected))
        if not ok:
            what = "an instance" if instance else "a subclass"
            raise TypeError(f"{self.key} = {name!r}: its {attr} must be {what} of "
                            f"{expected.__name__}, got {obj!r}")
        return obj

    def entry(self, name: str) -> E:
        if name not in self._entries:
            raise ValueError(f"{self.key} = {name!r} is invalid; allowed: {', '.join(self)}")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {', '.join(self)})"

    def markdown(self, columns: Mapping[str, Callable[[E], str]] | None = None) -> str:
        """A markdown table of the entries: name and summary, then ``columns`` (header: cell)."""
        columns = dict(columns or {})
        head = ["name", *columns, "summary"]
        rows = [[f"`{e.name}`", *(f(e) for f in columns.values()), e.summary]
                for e in self._entries.values()]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


_P = "tsfa.maths.payload:"
_S = "tsfa.fl.compress.strategies:"
_L = "tsfa.fl.compress.lowrank:"
_PRODUCT_SPACE = {"experiment.cov_correction": ("none",)}  # no separate factor aggregation

#: Uplink compressors (``experiment.method``).
COMPRESSORS: Registry[CompressorEntry] = Registry("experiment.method", (
    CompressorEntry("soft", "SOFT: top-n rank components by ‖b_i‖ ‖a_i‖, with rank indices",
                    _S + "SOFT", _P + "COMPONENTS", "SOFT", proposed=True, orthogonality=True),
    CompressorEntry("tlora", "TLoRA: element top-k of each factor, positions coded",
                    _S + "TLoRA", _P + "TOP_ELEMENTS", "TLoRA"),
    CompressorEntry("rlora", "RLoRA: random k elements of each factor from a shared seed",
                    _S + "RLoRA", _P + "SEEDED_ELEMENTS", "RLoRA"),
    CompressorEntry("slora", "SLoRA: top-n SVD triplets of the client's product change",
                    _L + "SLoRA", _P + "TRIPLETS", "SLoRA", allowed=_PRODUCT_SPACE),
    CompressorEntry("svd", "exact top-n SVD of the product change from the factors only",
                    _L + "SVD", _P + "TRIPLETS", "SVD", allowed=_PRODUCT_SPACE),
    CompressorEntry("ilora", "ILoRA: the full factors every round (the ideal reference)",
                    _S + "ILoRA", _P + "FULL", "ILoRA", ideal=True),
    CompressorEntry("ffa", "FFA-LoRA: A frozen, top-n columns of B with rank indices",
                    _S + "FFA", _P + "B_COMPONENTS", "FFA-LoRA"),
))

_C = "tsfa.control."
#: Per-round policies (``experiment.controller``).
CONTROLLERS: Registry[ControllerEntry] = Registry("experiment.controller", (
    ControllerEntry("tsfa", "Lyapunov drift-plus-penalty: per-client rho and bandwidth (P2)",
                    _C + "lyapunov:LyapunovController", ("solver",)),
    ControllerEntry("fixed", "equal bandwidth and a fixed rho (experiment.rho)",
                    _C + "reference:EqualBandwidthPolicy", ("fixed_rho",)),
    ControllerEntry("myopic", "per-round budget, penalty-minimising, no queues",
                    _C + "reference:MyopicPolicy"),
))

_T, _V = "tsfa.fl.tasks:", "tsfa.fl.vit_config:"
#: Data sets (``experiment.task``).
TASKS: Registry[TaskEntry] = Registry("experiment.task", (
    TaskEntry("synthetic", "embedded synthetic teacher task (no files)", _T + "load_synthetic",
              _V + "synthetic_vit"),
    TaskEntry("fashion_mnist", "Fashion-MNIST idx files; backbone pre-trained on classes 0-4",
              _T + "load_fashion_mnist_task", _V + "fashion_mnist_vit"),
    TaskEntry("cifar100", "CIFAR-100 python files (experiment.data_dir); backbone from "
              "experiment.pretrained", _T + "load_cifar100_task", _V + "cifar100_vit",
              vit_from_checkpoint=True),
))


def _ref(obj: Any) -> str:
    return f"`{obj}`" if isinstance(obj, str) else f"`{getattr(obj, '__qualname__', obj)}`"


def docs_tables() -> dict[str, str]:
    """The markdown table of each registry, by name, as docs/architecture.md shows them between
    ``<!-- registry:NAME -->`` and ``<!-- /registry -->`` (``python -m tsfa.config.registry FILE``
    rewrites them; tests/test_registry.py checks they are current)."""
    flags = ("proposed", "orthogonality", "ideal")
    return {
        "compressors": COMPRESSORS.markdown({
            "strategy": lambda e: _ref(e.strategy), "payload": lambda e: _ref(e.payload),
            "flags": lambda e: ", ".join(f for f in flags if getattr(e, f)) or "-",
            "allows only": lambda e: "; ".join(f"{k} in {v}" for k, v in e.allowed.items()) or "-",
        }),
        "controllers": CONTROLLERS.markdown({
            "policy": lambda e: _ref(e.policy),
            "options": lambda e: ", ".join(e.options) or "-"}),
        "tasks": TASKS.markdown({"loader": lambda e: _ref(e.loader), "model": lambda e: _ref(e.vit)}),
    }


def write_docs_tables(text: str) -> str:
    """``text`` with every ``<!-- registry:NAME -->`` block replaced by :func:`docs_tables`."""
    import re

    tables = docs_tables()

    def sub(m):
        return f"<!-- registry:{m[1]} -->\n{tables[m[1]]}\n<!-- /registry -->"

    return re.sub(r"<!-- registry:(\w+) -->.*?<!-- /registry -->", sub, text, flags=re.S)


def register(entry: CompressorEntry | ControllerEntry | TaskEntry):
    """Register ``entry`` in the registry of its kind; returns it."""
    reg = {CompressorEntry: COMPRESSORS, ControllerEntry: CONTROLLERS, TaskEntry: TASKS}
    return reg[type(entry)].register(entry)


__all__ = ["COMPRESSORS", "CONTROLLERS", "TASKS", "CompressorEntry", "ControllerEntry",
           "Registry", "TaskEntry", "docs_tables", "register", "resolve", "write_docs_tables"]

if __name__ == "__main__":  # python -m tsfa.config.registry docs/architecture.md
    import sys
    from pathlib import Path

    for name in sys.argv[1:]:
        path = Path(name)
        path.write_text(write_docs_tables(path.read_text(encoding="utf-8")), encoding="utf-8")
