"""Paper-style figures of docs/model.md §7, regenerated from saved runs (``tsfa figures``).

One configuration TOML per figure ships with the package (``tsfa/experiments/configs``) and one
thin script per figure lives in ``analysis/``; the logic lives here. Training-based figures read
runs from a cache keyed by the hash of each run's resolved config
(:func:`tsfa.experiments.cache.cached_train`), so figures share runs and never retrain a
finished run.
Each figure is written as PNG, PDF and the CSV behind it. Every figure is **tsfa's
reconstruction on its embedded task** (or on the paper-scale default spec for the analytic
parts), not a result of the paper.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tsfa.reporting.captions import NOTE

RC = {"font.size": 7, "axes.labelsize": 7, "axes.titlesize": 7, "legend.fontsize": 6,
      "xtick.labelsize": 6, "ytick.labelsize": 6, "lines.markersize": 3}

FIGURES = {
    "fig1_rank": "bound J(r) and final accuracy vs rank r",
    "fig2_covariance": "||Cov^t||_F vs rounds for several tau, alpha, r",
    "fig3_methods": "accuracy vs rounds, all methods, same latency budget",
    "fig4_fixed_rho": "final accuracy vs fixed rho, SOFT vs TLoRA/RLoRA",
    "fig5_control_v": "time-averaged latency and queues vs rounds for several V",
    "fig6_budget": "accuracy vs latency budget, TSFA vs single-stage variants",
    "fig7_client_compute": "client compression time per round, SOFT vs SLoRA",
    "fig8_zeta": "zeta ablation and orthogonality defect R(B, A) over training",
}


@dataclass
class Context:
    """What a figure function gets: its config (``<name>.toml`` at ``size``), the run
    ``store``, the shared base run (built lazily), a ``log`` callable, the run ``options``
    (``clients``, ``device``, ``precision``) and the ``train`` function that trains a missing
    run (:func:`tsfa.experiments.cache.cached_train`; the engines' floor, given by the caller:
    ``tsfa figures`` passes :func:`tsfa.engines.local.train`). Analytic figures need none."""

    name: str
    size: str
    store: Path
    log: object = print
    _base: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    train: object = None
    jobs: int = 1  # runs trained at a time (worker processes, one share of the cores each)
    runs: set = field(default_factory=set)  # cache keys of the runs the figure read

    @property
    def conf(self) -> dict:
        from tsfa.experiments.runs import analysis_config

        return analysis_config(self.name, self.size)

    @property
    def seeds(self) -> list[int]:
        """Seeds of every training figure at this size (``base.toml [seeds]``)."""
        from tsfa.experiments.runs import analysis_config

        return [int(x) for x in analysis_config("base", self.size).get("seeds", {}).get(
            "seeds", [0])]

    @property
    def base(self):
        if "base" not in self._base:
            from tsfa.experiments.runs import base_run

            self._base["base"] = base_run(self.size)
        return self._base["base"]


def runs_digest(keys) -> str:
    """One digest of the cache keys of the runs behind a figure (empty for analytic figures)."""
    import hashlib

    return hashlib.sha256(" ".join(sorted(keys)).encode()).hexdigest()[:16] if keys else ""


def save(fig, df, out: Path, name: str, runs=()) -> list[Path]:
    """Write ``name``.png (200 dpi), .pdf and .csv into ``out``. The PNG's text metadata holds
    the SHA-256 of the CSV written beside it and the digest of the runs behind both
    (:func:`png_provenance` reads them back), so a shipped PNG is checkable against its CSV."""
    import hashlib

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf", out / f"{name}.csv"]
    df.to_csv(paths[2], index=False)
    meta = {"tsfa-csv-sha256": hashlib.sha256(paths[2].read_bytes()).hexdigest(),
            "tsfa-runs": runs_digest(runs), "tsfa-runs-count": str(len(runs))}
    fig.savefig(paths[0], dpi=200, metadata=meta)
    fig.savefig(paths[1])
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def png_provenance(path: str | Path) -> dict:
    """The ``tsfa-*`` text metadata of a PNG written by :func:`save`."""
    from PIL import Image

    with Image.open(path) as im:
        return {k: v for k, v in im.text.items() if k.startswith("tsfa-")}


def make_figure(name: str, out: str | Path, size: str = "cpu", store: str | Path | None = None,
                log=print, _shared: dict | None = None, train=None, jobs: int = 1,
                **options) -> list[Path]:
    """Compute (or reuse the runs of) one figure and write it into ``out``. ``train``: the
    trainer of missing runs (:class:`Context`); ``jobs``: runs trained at a time; ``options``:
    ``clients``, ``device``, ``precision`` of the runs it trains."""
    from . import analytic, training

    out = Path(out)
    ctx = Context(name, size, Path(store) if store else out / "runs", log,
                  _shared if _shared is not None else {}, options, train, int(jobs))
    fn = getattr(analytic, name, None) or getattr(training, name)
    import matplotlib.pyplot as plt

    with plt.rc_context(RC):
        df, fig = fn(ctx)
    return save(fig, df, out, name, ctx.runs)


def make_all(out: str | Path, size: str = "cpu", names=None, store=None, log=print,
             on_figure=None, train=None, jobs: int = 1, **options) -> dict:
    """Every figure (or ``names``) into ``out``; returns and writes ``out/timing.json`` (wall
    time, CPU-minutes of this process and its workers, load average) and ``out/verdicts.md`` (each
    claim's verdict from the CSVs in ``out``, :mod:`tsfa.reporting.figures.verdicts`).

    ``on_figure(name, seconds)`` after each figure (e.g. a progress bar); ``options``: see
    :func:`make_figure`. Torch threads are the caller's setting
    (:func:`tsfa.fl.device.set_threads`; ``tsfa figures --threads``).
    """
    import os
    import resource

    out = Path(out)
    shared: dict = {}
    timing = {}
    t_all = time.perf_counter()
    for name in names or FIGURES:
        t0 = time.perf_counter()
        make_figure(name, out, size, store, log, shared, train, jobs, **options)
        timing[name] = round(time.perf_counter() - t0, 2)
        log(f"{name}: {timing[name]:.1f} s")
        if on_figure is not None:
            on_figure(name, timing[name])
    from .verdicts import verdict_table

    (out / "verdicts.md").write_text(verdict_table(out), encoding="utf-8")
    cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    (out / "timing.json").write_text(json.dumps(
        {"size": size, "jobs": int(jobs), "seconds": timing,
         "wall_s": round(time.perf_counter() - t_all, 1), "cpu_minutes": round(cpu / 60, 1),
         "load_average": [round(x, 2) for x in os.getloadavg()],
         "cores": os.cpu_count()}, indent=1))
    return timing


__all__ = ["FIGURES", "NOTE", "Context", "make_figure", "make_all", "save", "runs_digest",
           "png_provenance"]
