"""The run runner and result cache shared by the figures, the bound validation and the method
comparisons: a finished run lives in ``store/<hash of its resolved config.toml>`` and is never
trained twice.

* :func:`cached_train`: one run, trained unless it finished before (an interrupted run resumes
  from its checkpoint);
* :func:`run_many`: many runs, the missing ones trained in ``jobs`` worker processes (torch
  threads split between them, :func:`tsfa.fl.device.default_threads`).

Both take the trainer, ``train(cfg, out=..., resume=..., **options)``, from their caller (the
in-process engine, :func:`tsfa.engines.local.train`, is on a higher floor than this one,
docs/architecture.md): the cache stores and finds runs, an engine trains them.

The key is the resolved config (``bf16`` runs get a ``-bf16`` suffix); how the clients were
run (batched or sequential) and the device are not part of it: they change results by
floating-point rounding only.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tsfa.config.experiment import RunConfig
from tsfa.config.registry import COMPRESSORS

CHECKPOINT = "checkpoint.pt"


def canonical(cfg: RunConfig) -> RunConfig:
    """Equivalent configs hash equally: ILoRA ignores the controller and the budget (rho = 1, no
    latency constraint), so its runs drop both (the automatic budget is always feasible)."""
    if COMPRESSORS.entry(cfg.experiment.method).ideal:
        return cfg.replace(**{"experiment.controller": "fixed", "experiment.rho": 1.0,
                              "experiment.solver": "joint", "control.latency_budget_s": []})
    return cfg


#: Revision of the Lyapunov controller's behaviour. A run under ``experiment.controller = "tsfa"``
#: hashes it with its config, so that runs cached before a change of the controller (same config,
#: other decisions) are not reused. 2: penalty normalised at the operating ratio, latency of the
#: bits on the wire, deferral priced alike at every rank (docs/model.md §4).
CONTROLLER_REVISION = 2


#: Tables of the run config that no trained quantity reads: ``[bound]`` holds the offline
#: objective's constants (J's weights, eps model, c0..c5). The controller's penalty is normalised
#: at the operating ratio (docs/model.md §4), so a horizon calibration changes a run's training
#: only through ``control.phi``.
NOT_TRAINED = ("bound",)


def training_key(cfg: RunConfig) -> str:
    """The text that keys a run: the canonical resolved config TOML without its comments, blank
    lines and the tables of :data:`NOT_TRAINED` (runs that differ in J's constants alone are one
    run; a reused run's ``rank_table.csv`` is that of the config that trained it, and a key added
    to ``[bound]`` keeps every cached run)."""
    keep, out = True, []
    for ln in canonical(cfg).to_toml().splitlines():
        s = ln.strip()
        if s.startswith("[") and s.endswith("]"):
            keep = s.strip("[]").split(".")[0] not in NOT_TRAINED
        if keep and s and not s.startswith("#"):
            out.append(ln)
    return "\n".join(out)


def config_hash(cfg: RunConfig, precision: str = "fp32") -> str:
    """First 12 hex digits of the SHA-256 of :func:`training_key` (+ "-bf16"), so that editing a
    key's help text or recalibrating J keeps every cached run; controller runs add
    :data:`CONTROLLER_REVISION` (fixed-policy runs are unaffected)."""
    text = training_key(cfg)
    if cfg.experiment.controller == "tsfa" and not COMPRESSORS.entry(cfg.experiment.method).ideal:
        text += f"\n# controller revision {CONTROLLER_REVISION}\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return digest if precision == "fp32" else f"{digest}-{precision}"


@dataclass(frozen=True)
class CachedRun:
    """A finished run read back from its directory: per-round and per-client tables."""

    path: Path
    rounds: pd.DataFrame
    clients: pd.DataFrame
    reused: bool


def _done(path: Path, cfg: RunConfig, keep_checkpoint: bool = False) -> bool:
    """Finished: every round logged (rounds.csv is appended round by round), and the
    checkpoint kept if asked for."""
    rounds = path / "rounds.csv"
    if not rounds.is_file() or (keep_checkpoint and not (path / CHECKPOINT).is_file()):
        return False
    return len(pd.read_csv(rounds, usecols=["round"])) >= cfg.system.training.rounds


def _train(train, cfg: RunConfig, path: Path, options: dict, threads: int | None = None) -> None:
    if threads is not None:
        from tsfa.fl.device import set_threads

        set_threads(threads)
    resume = (path / CHECKPOINT).is_file()
    if resume:
        cfg = resume_config(cfg, path)
    train(cfg, out=path, resume=resume, **options)


def resume_config(cfg: RunConfig, path: Path) -> RunConfig:
    """The config to resume the unfinished run in ``path`` with: its own saved config when it
    differs from ``cfg`` only in tables no trained quantity reads (:data:`NOT_TRAINED`, e.g. J's
    constants after a recalibration), so the run continues as it started; else ``cfg`` (the
    trainer's resume check then names any other difference)."""
    from tsfa.config.experiment import load_run_config

    saved = path / "config.toml"
    if not saved.is_file():
        return cfg
    own = load_run_config(saved)
    return own if training_key(own) == training_key(cfg) else cfg


def run_path(cfg: RunConfig, store: str | Path, precision: str = "fp32") -> Path:
    """The folder of ``cfg``'s run in ``store``: ``store/<config_hash>`` (the one place the key
    is formed; every reader and writer of the cache goes through it)."""
    return Path(store) / config_hash(canonical(cfg), precision)


def _read(path: Path, reused: bool, keep_checkpoint: bool) -> CachedRun:
    if not keep_checkpoint:
        (path / CHECKPOINT).unlink(missing_ok=True)
    return CachedRun(path, pd.read_csv(path / "rounds.csv"), pd.read_csv(path / "clients.csv"),
                     reused)


def cached_train(cfg: RunConfig, store: str | Path, train, log=None,
                 keep_checkpoint: bool = False, **options) -> CachedRun:
    """Train ``cfg`` into ``store/<config_hash>`` with ``train`` (module docstring) unless that
    run already finished there.

    A started but unfinished run resumes from its checkpoint. The final checkpoint (global
    factors, memories) is deleted unless ``keep_checkpoint`` (a finished run without one is
    trained again). ``options``: ``clients``, ``device``, ``precision`` of
    :func:`tsfa.engines.local.train`.
    """
    cfg = canonical(cfg)
    path = run_path(cfg, store, options.get("precision", "fp32"))
    reused = _done(path, cfg, keep_checkpoint)
    if not reused:
        if log:
            log(f"train {path.name}: {cfg.experiment.method}/{cfg.experiment.controller} "
                f"r={cfg.experiment.rank} rho={cfg.experiment.rho:g}")
        _train(train, cfg, path, options)
    return _read(path, reused, keep_checkpoint)


def lookup(cfg: RunConfig, store: str | Path, precision: str = "fp32") -> CachedRun | None:
    """The finished run of ``cfg`` in ``store``, or None (nothing is trained)."""
    cfg = canonical(cfg)
    path = run_path(cfg, store, precision)
    return _read(path, True, True) if _done(path, cfg) else None


def run_many(cfgs: list[RunConfig], store: str | Path, train, jobs: int = 1, log=None,
             **options) -> list[CachedRun]:
    """:func:`cached_train` for every config, in order; the runs not yet in the cache are
    trained ``jobs`` at a time in worker processes (each with its share of the cores) by
    ``train``, a module-level function (it is sent to the workers by name)."""
    from tsfa.fl.device import default_threads

    precision = options.get("precision", "fp32")
    paths = [run_path(c, store, precision) for c in cfgs]
    todo = {p: canonical(c) for c, p in zip(cfgs, paths, strict=True) if not _done(p, c)}
    if todo and jobs > 1:
        threads = default_threads(jobs)
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_train, train, c, p, options, threads) for p, c in todo.items()]
            for p, f in zip(todo, futures, strict=True):
                f.result()
                if log:
                    log(f"finished {p.name}")
    return [cached_train(c, store, train, log, **options) for c in cfgs]


def rehash_store(store: str | Path) -> list[tuple[str, str]]:
    """Rename every run folder of ``store`` to the key of its own ``config.toml`` under the
    current :func:`config_hash` (a store written under an earlier key keeps its runs); a folder
    whose key is taken already is left as it is. Returns the ``(old, new)`` names renamed."""
    from tsfa.config.experiment import load_run_config

    moved = []
    for path in sorted(Path(store).iterdir()):
        if not (path / "config.toml").is_file():
            continue
        precision = path.name.partition("-")[2] or "fp32"
        new = config_hash(load_run_config(path / "config.toml"), precision)
        if new != path.name and not (path.parent / new).exists():
            path.rename(path.parent / new)
            moved.append((path.name, new))
    return moved


__all__ = ["canonical", "NOT_TRAINED", "training_key", "config_hash", "CachedRun", "cached_train",
           "lookup", "run_many", "run_path", "resume_config",
           "rehash_store", "CONTROLLER_REVISION"]
