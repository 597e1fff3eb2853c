"""Figures that need no federated training: (5) the controller's V trade-off on the paper-scale
default spec and (7) the measured client-side compression time, SOFT vs SLoRA (docs/model.md §7)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from tsfa.config.spec import SystemSpec
from tsfa.experiments.runs import v_sweep
from tsfa.reporting.plots import COLUMN_WIDTH_IN, plt

NOTE = "tsfa reconstruction, not the paper's results"


def fig5_control_v(ctx):
    """Running time-averaged latency / budget and mean virtual queue vs rounds, one curve per V;
    the CSV also holds the per-V summary (average penalty, time-averaged queue)."""
    conf = ctx.conf["sweep"]
    spec = SystemSpec()
    summary, traces = v_sweep(spec, conf["V"], int(conf["rounds"]))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(COLUMN_WIDTH_IN, 4.0), sharex=True,
                                   constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for i, (v, g) in enumerate(traces.groupby("V")):
        c = cmap(i / max(1, len(conf["V"]) - 1))
        ax1.plot(g["round"], g["avg_latency_over_budget"], color=c, lw=1, label=f"V = {v:g}")
        ax2.plot(g["round"], g["mean_queue_s"], color=c, lw=1)
    ax1.axhline(1.0, color="k", ls="--", lw=0.8)
    ax1.set_ylabel("time-avg latency / $\\bar T$")
    ax1.legend(fontsize=6, ncol=2)
    ax2.set_ylabel("mean queue $Q_k$ [s]")
    ax2.set_xlabel("round $t$")
    ax1.set_title(f"Controller, ViT-Base spec, r = {summary['rank'].iloc[0]}, "
                  f"{int(conf['rounds'])} rounds\n{NOTE}\nsize {ctx.size}: one fading draw "
                  f"(seed {spec.clients.seed}), no training, no bands", fontsize=6)
    traces = traces.merge(summary, on="V", how="left")
    return traces, fig


def _factors(gen, n_modules, dim, rank):
    import torch

    params = [(torch.randn(dim, rank, generator=gen) * 0.1, torch.randn(rank, dim, generator=gen)
               * 0.1) for _ in range(n_modules)]
    deltas = [(torch.randn(dim, rank, generator=gen) * 1e-2, torch.randn(rank, dim, generator=gen)
               * 1e-2) for _ in range(n_modules)]
    return params, deltas


def compression_times(models: dict, ranks, methods=("soft", "slora"), rho: float = 0.25,
                      repeats: int = 3, seed: int = 0) -> pd.DataFrame:
    """Measured wall time of one client's ``compressor.update`` (error feedback on, as in the
    trainer) for every LoRA module of a model: median over ``repeats`` [s].

    ``models``: name -> (n_modules, dim) with d_in = d_out = dim.
    """
    import torch

    from tsfa.fl.compress import make_compressor

    rows = []
    gen = torch.Generator().manual_seed(seed)
    for model, (n_mod, dim) in models.items():
        for r in ranks:
            if r > dim:
                continue
            params, deltas = _factors(gen, n_mod, dim, r)
            for m in methods:
                comp = make_compressor(m, True)
                times = []
                for i in range(repeats + 1):
                    state = comp.init(params)
                    t0 = time.perf_counter()
                    comp.update(deltas, state, params, rho, np.random.default_rng(i))
                    times.append(time.perf_counter() - t0)
                times = times[1:]  # the first call warms up
                rows.append({"model": model, "n_modules": n_mod, "dim": dim, "rank": r,
                             "method": m, "rho": rho, "seconds_median": float(np.median(times)),
                             "seconds_min": float(np.min(times)), "repeats": repeats})
    return pd.DataFrame(rows)


def fig7_client_compute(ctx):
    """Client compression time per round vs rank, SOFT (norm products) vs SLoRA (SVD of B A)."""
    conf = ctx.conf["sweep"]
    models = {k: tuple(v) for k, v in conf["models"].items()}
    df = compression_times(models, conf["ranks"], rho=float(conf["rho"]),
                           repeats=int(conf["repeats"]))
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.6), constrained_layout=True)
    styles = {"soft": ("C0", "SOFT"), "slora": ("C3", "SLoRA")}
    marks = dict(zip(models, ("o", "s", "^"), strict=False))
    for (model, m), g in df.groupby(["model", "method"]):
        color, label = styles[m]
        ax.plot(g["rank"], g["seconds_median"], color=color, marker=marks[model], lw=1, ms=4,
                label=f"{label}, {model} ({g['n_modules'].iloc[0]}x{g['dim'].iloc[0]}^2)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("LoRA rank $r$")
    ax.set_ylabel("compression time / round [s]")
    ax.legend(fontsize=5.5)
    ax.set_title(f"Client compression, rho = {conf['rho']:g} (measured, CPU)\n{NOTE}\nsize "
                 f"{ctx.size}: median of {int(conf['repeats'])} call(s) after a warm-up, "
                 "no bands", fontsize=6)
    return df, fig
