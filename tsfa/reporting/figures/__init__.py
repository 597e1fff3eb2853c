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


def save(fig, df, out: Path, name: str) -> list[Path]:
    """Write ``name``.png (200 dpi), .pdf and .csv into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf", out / f"{name}.csv"]
    fig.savefig(paths[0], dpi=200)
    fig.savefig(paths[1])
    df.to_csv(paths[2], index=False)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


def make_figure(name: str, out: str | Path, size: str = "quick", store: str | Path | None = None,
                log=print, _shared: dict | None = None, train=None, **options) -> list[Path]:
    """Compute (or reuse the runs of) one figure and write it into ``out``. ``train``: the
    trainer of missing runs (:class:`Context`); ``options``: ``clients``, ``device``,
    ``precision`` of the runs it trains."""
    from . import analytic, training

    out = Path(out)
    ctx = Context(name, size, Path(store) if store else out / "runs", log,
                  _shared if _shared is not None else {}, options, train)
    fn = getattr(analytic, name, None) or getattr(training, name)
    import matplotlib.pyplot as plt

    with plt.rc_context(RC):
        df, fig = fn(ctx)
    return save(fig, df, out, name)


def make_all(out: str | Path, size: str = "quick", names=None, store=None, log=print,
             on_figure=None, train=None, **options) -> dict:
    """Every figure (or ``names``) into ``out``; returns and writes ``out/timing.json``.

    ``on_figure(name, seconds)`` after each figure (e.g. a progress bar); ``options``: see
    :func:`make_figure`. Torch threads are the caller's setting
    (:func:`tsfa.fl.device.set_threads`; ``tsfa figures --threads``).
    """
    out = Path(out)
    shared: dict = {}
    timing = {}
    for name in names or FIGURES:
        t0 = time.perf_counter()
        make_figure(name, out, size, store, log, shared, train, **options)
        timing[name] = round(time.perf_counter() - t0, 2)
        log(f"{name}: {timing[name]:.1f} s")
        if on_figure is not None:
            on_figure(name, timing[name])
    (out / "timing.json").write_text(json.dumps({"size": size, "seconds": timing}, indent=1))
    return timing


__all__ = ["FIGURES", "NOTE", "Context", "make_figure", "make_all", "save"]
