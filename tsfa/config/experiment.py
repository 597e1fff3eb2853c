"""Configuration of one federated fine-tuning run: ``[experiment]`` plus the system spec.

A run config TOML has an ``[experiment]`` table (task, method, controller, rank, seed, ...) and
the tables of :class:`~tsfa.config.spec.SystemSpec` (``[clients]``, ``[wireless]``, ``[training]``,
``[control]``, ``[soft]``, ...). The ``[lora]`` and ``[compute]`` tables are *derived from the
model actually trained* (module count and dimensions, head size, FLOPs per sample), so the
latencies the controller plans with are those of the real payloads.

Default: the embedded synthetic teacher task on a tiny ViT. Its wireless and device numbers are
scaled down with the model (tsfa's [DESIGN], not the paper's): the payload of a tiny ViT is about
a thousand times smaller than ViT-Base's, so bandwidth and device speed are scaled so that, as in
docs/model.md §7, uplink and compute latency are of the same order and communication binds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from tsfa.config.choices import CONTROLLERS, METHODS, SOLVERS, TASKS
from tsfa.config.registry import COMPRESSORS
from tsfa.config.spec import (
    SECTIONS,
    SpecError,
    SystemSpec,
    _f,
    _Section,
    build_section,
    read_toml,
    section_toml_lines,
)

UPLOADS = ("update", "factor")
FILLS = ("global", "zero")
ERROR_FEEDBACK = ("all", "none", "proposed")
COV_CORRECTIONS = ("none", "row_space")


@dataclass(frozen=True)
class ExperimentSpec(_Section):
    """One federated LoRA fine-tuning run (docs/model.md §5-§7)."""

    SECTION = "experiment"
    task: str = _f("synthetic", "data: synthetic teacher (embedded), fashion_mnist, cifar100",
                   choices=TASKS, kind=str)
    data_dir: str = _f("", "directory of the real data set (idx files / cifar-100-python)",
                       kind=str)
    pretrained: str = _f("", "local backbone weights (torch state dict or safetensors); empty = "
                         "the task's own backbone", kind=str)
    method: str = _f("soft", "uplink compressor: " + ", ".join(METHODS), choices=METHODS,
                     kind=str)
    controller: str = _f("tsfa", "per-round policy: tsfa (Lyapunov), fixed (equal bandwidth, "
                         "fixed rho), myopic", choices=CONTROLLERS, kind=str)
    solver: str = _f("joint", "P2 solver of the tsfa controller", choices=SOLVERS, kind=str)
    rho: float = _f(0.25, "sparsification ratio of the fixed policy", "", 0.0, 1.0, lo_open=True,
                    kind=float)
    rank: int = _f(8, "LoRA rank r", "", 1, 4096, kind=int)
    lora_alpha: float = _f(16.0, "LoRA scaling numerator", "", 0.0, None, lo_open=True, kind=float)
    optimizer: str = _f("adamw", "local optimizer", choices=("adamw", "sgd"), kind=str)
    error_feedback: str = _f("all", "error-feedback memories on the clients: all (every method), "
                             "none, or proposed (SOFT only; baselines without); true/false read "
                             "as all/none", choices=ERROR_FEEDBACK, kind=str)
    upload: str = _f("update", "what clients send: update (compressed changes dB, dA of the "
                     "factors) or factor (sparsified local factors B_k, A_k, FedIT style)",
                     choices=UPLOADS, kind=str)
    factor_fill: str = _f("global", "upload = factor: where a client sent nothing the server takes "
                          "the global value (global) or zero (zero)", choices=FILLS, kind=str)
    equal_bits: bool = _f(False, "every compressor fits SOFT's bits at the same rho (values plus "
                          "index bits); false: SOFT's number of values", kind=bool)
    cov_correction: str = _f("none", "server correction of separate aggregation (docs/model.md "
                             "§2): none, or row_space (B += Cov A_bar^T (A_bar A_bar^T + lambda "
                             "I)^-1, no extra uplink)", choices=COV_CORRECTIONS, kind=str)
    cov_ridge: float = _f(0.0, "lambda of row_space, relative to trace(A_bar A_bar^T) / r", "",
                          0.0, None, kind=float)
    num_train: int = _f(20000, "training samples (synthetic task; subsample of real data)", "", 10,
                        None, kind=int)
    num_test: int = _f(1000, "test samples", "", 10, None, kind=int)
    seed: int = _f(0, "seed of every random stream of the run", "", 0, 2**63 - 1, kind=int)

    def __post_init__(self):
        if isinstance(self.error_feedback, bool):  # the former boolean key
            object.__setattr__(self, "error_feedback", "all" if self.error_feedback else "none")
        super().__post_init__()

    def _check(self):
        # the method's config constraints (its registry entry's ``allowed``: experiment keys)
        for key, allowed in COMPRESSORS.entry(self.method).allowed.items():
            value = getattr(self, key.removeprefix("experiment."))
            if value not in allowed:
                raise SpecError(f"{key} = {value!r}: experiment.method = {self.method!r} allows "
                                f"only {', '.join(map(repr, allowed))}")

    @property
    def uses_error_feedback(self) -> bool:
        """Whether this run's method keeps error-feedback memories (``error_feedback`` policy)."""
        return self.error_feedback == "all" or (self.error_feedback == "proposed"
                                                and COMPRESSORS.entry(self.method).proposed)


def default_system() -> SystemSpec:
    """System spec of the default (tiny-model) run: scaled wireless and devices, short rounds."""
    return SystemSpec().replace(**{
        "clients.num_clients": 10,
        "clients.device_flops_min": 5e8,
        "clients.device_flops_max": 2.5e9,
        "wireless.bandwidth_total_hz": 20e3,
        "wireless.bandwidth_min_hz": 100.0,
        "training.local_steps": 20,
        "training.batch_size": 32,
        "training.learning_rate": 3e-3,
        "training.rounds": 100,
        # V = 1: with the penalty normalised at the operating ratio the queues settle near the
        # uplink budget; from the warm start every client's time-averaged latency over T = 100
        # rounds is within 0.1% of its budget at every candidate rank (docs/model.md §4).
        "control.V": 1.0,
        # the relative budget rule (the paper-scale default is a budget in seconds, 40 s, which
        # means nothing for this scaled-down system); frozen in seconds by the pipeline
        "control.latency_budget_s": [],
        "control.budget_reference_rank": 8,
        "lora.rank_candidates": [1, 2, 4, 8, 16, 32],
        "lora.n_modules": 6, "lora.d_in": 64, "lora.d_out": 64,
        "bound.spectrum_dim": 64,
    })


@dataclass(frozen=True)
class RunConfig:
    """``experiment`` plus ``system``: everything a run needs, written beside its results."""

    experiment: ExperimentSpec = field(default_factory=ExperimentSpec)
    system: SystemSpec = field(default_factory=default_system)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        data = dict(data)
        experiment = build_section(ExperimentSpec, data.pop("experiment", {}))
        base = default_system().to_dict()
        for name, table in data.items():
            if name not in SECTIONS:
                raise SpecError(f"unknown section [{name}]: allowed sections are experiment, "
                                + ", ".join(SECTIONS))
            if not isinstance(table, dict):
                raise SpecError(f"[{name}]: expected a table, got {table!r}")
            base[name].update(table)
        return cls(experiment, SystemSpec.from_dict(base))

    def replace(self, **changes) -> RunConfig:
        """Copy with dotted-key changes (``experiment.method``, ``training.rounds``, ...)."""
        exp = dataclasses.asdict(self.experiment)
        sys_changes = {}
        for key, value in changes.items():
            section, _, name = key.partition(".")
            if section == "experiment":
                if name not in exp:
                    raise SpecError(f"unknown key {key}")
                exp[name] = value
            else:
                sys_changes[key] = value
        system = self.system.replace(**sys_changes) if sys_changes else self.system
        return RunConfig(ExperimentSpec(**exp), system)

    def to_toml(self) -> str:
        lines = ["# tsfa federated run configuration: [experiment] plus the system spec.",
                 "# [lora] and [compute] are re-derived from the trained model at run time.", "",
                 "[experiment]", f"# {(ExperimentSpec.__doc__ or '').strip()}"]
        lines += [*section_toml_lines(self.experiment), ""]
        body = self.system.to_toml().split("\n")
        return "\n".join(lines + [ln for ln in body if not ln.startswith("# Load with")][1:])


def load_run_config(path: str | Path | None = None) -> RunConfig:
    """Load a run config TOML (missing tables and keys take the defaults); None = default."""
    if path is None:
        return RunConfig()
    return RunConfig.from_dict(read_toml(path, "config file",
                                         "print the default with `tsfa train --print-config`"))
