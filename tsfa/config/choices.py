"""The fixed choices of tsfa's options, one tuple each: the config's validation, the command
line's ``--help`` and its refusals, and the modules that implement them all read these.

Each tuple is the single list of what its layer implements: a test ties it to the implementation
(tests/test_cli_choices.py), so a name added here without its implementation, or the reverse,
fails CI.
"""

#: Data of a run (``experiment.task``; :func:`tsfa.fl.tasks.build_task`).
TASKS = ("synthetic", "fashion_mnist", "cifar100")
#: Uplink compressors (``experiment.method``; :mod:`tsfa.fl.compress`, :mod:`tsfa.maths.payload`).
METHODS = ("soft", "tlora", "rlora", "slora", "svd", "ilora", "ffa")
#: Per-round policies (``experiment.controller``; :func:`tsfa.control.from_spec.make_policy`).
CONTROLLERS = ("tsfa", "fixed", "myopic")
#: P2 solvers of the Lyapunov controller (``experiment.solver``; :mod:`tsfa.control.lyapunov`).
SOLVERS = ("analytic", "joint", "cvxpy")
#: How the in-process engine runs its clients (``--clients``; :mod:`tsfa.fl.pool`).
POOLS = ("batched", "sequential")
#: Where training runs (``--device``; :func:`tsfa.fl.device.resolve_device`).
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Local-training precision (``--precision``; :func:`tsfa.fl.device.autocast`).
PRECISIONS = ("fp32", "bf16")
#: Engines of ``tsfa train --engine``.
ENGINES = ("inprocess", "flower")
#: Run sizes of the figures and analyses (``tsfa figures --size``; paper: a GPU run).
SIZES = ("tiny", "quick", "full", "paper")

__all__ = ["TASKS", "METHODS", "CONTROLLERS", "SOLVERS", "POOLS", "DEVICES", "PRECISIONS",
           "ENGINES", "SIZES"]
