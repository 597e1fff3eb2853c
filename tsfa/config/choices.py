"""The fixed choices of tsfa's options, one tuple each: the config's validation, the command
line's ``--help`` and its refusals, and the modules that implement them all read these.

Each tuple is the single list of what its layer implements: a test ties it to the implementation
(tests/test_cli_choices.py), so a name added here without its implementation, or the reverse,
fails CI. Tasks, methods and controllers are extension points: their lists are the registries of
:mod:`tsfa.config.registry` (iterable names), which a user extends.
"""

from tsfa.config import registry as _registry

#: Data of a run (``experiment.task``): the names of the task registry
#: (:data:`tsfa.config.registry.TASKS`; registering a task adds its name here).
TASKS = _registry.TASKS
#: Uplink compressors (``experiment.method``): :data:`tsfa.config.registry.COMPRESSORS`.
METHODS = _registry.COMPRESSORS
#: Per-round policies (``experiment.controller``): :data:`tsfa.config.registry.CONTROLLERS`.
CONTROLLERS = _registry.CONTROLLERS
#: P2 solvers of the Lyapunov controller (``experiment.solver``; :mod:`tsfa.control.lyapunov`).
SOLVERS = ("analytic", "joint", "cvxpy")
#: How the in-process engine runs its clients (``--clients``; :mod:`tsfa.fl.pool`).
POOLS = ("batched", "sequential")
#: Where training runs (``--device``; :func:`tsfa.fl.device.resolve_device`).
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Local-training precision (``--precision``; :func:`tsfa.fl.device.autocast`).
PRECISIONS = ("fp32", "bf16")
#: Engines of ``tsfa train --engine``: in-process, Flower simulation (Ray), Flower deployment
#: (real SuperLink and SuperNode processes on this machine).
ENGINES = ("inprocess", "flower", "deployment")
#: Run sizes of the figures and analyses (``tsfa figures --size``): cpu resolves the figures'
#: claims on 2 CPU cores in about an hour (docs/figures.md); paper: a GPU run.
SIZES = ("tiny", "quick", "cpu", "full", "paper")

__all__ = ["TASKS", "METHODS", "CONTROLLERS", "SOLVERS", "POOLS", "DEVICES", "PRECISIONS",
           "ENGINES", "SIZES"]
