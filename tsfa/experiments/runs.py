"""Experiment helpers: run sizes, the shared base run, and sweeps of the offline rank and the
online controller used by the figures, the bound validation and the notebooks (docs/model.md
§3, §4, §7). Runs are trained through the cache of :mod:`tsfa.experiments.cache`. Notebooks and
``analysis/`` scripts hold no logic of their own.

Every number produced here is tsfa's reconstruction on the embedded task (or on the paper-scale
default spec for the analytic parts), not a result of the paper.

* :func:`base_run` builds the shared base run config of a size (``tiny`` for the test suite,
  ``quick`` for ``tsfa figures --quick``, ``full``), with the latency budget frozen in seconds
  so that runs at different ranks or with different compressors share the same budget;
* :func:`rank_sweep`, :func:`clients_sweep`, :func:`v_sweep` are the analytic sweeps.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tsfa.config.spec import SystemSpec
from tsfa.control.offline import optimal_rank, rank_table
from tsfa.maths.instance import realize

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
from tsfa.config.choices import SIZES  # noqa: E402  (paper: a GPU run, docs/figures.md)


# --------------------------------------------------------------------------- configs
def analysis_config(name: str, size: str = "quick", root: Path | None = None) -> dict:
    """Load the packaged run config ``tsfa/experiments/configs/<name>.toml`` (or ``root/<name>.toml``)
    and merge its ``[size.<size>]`` table over the rest.

    Returns a plain dict (tables of the file minus ``size``). Raises FileNotFoundError naming the
    path when there is no such config.
    """
    if size not in SIZES:
        raise ValueError(f"size = {size!r}: must be one of {', '.join(SIZES)}")
    path = (root or CONFIG_DIR) / f"{name}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: no run config named {name!r}")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    over = data.pop("size", {}).get(size, {})
    for table, values in over.items():
        data.setdefault(table, {}).update(values)
    return data


def synthetic_spectrum() -> list[float]:
    """Singular values of the embedded task's ideal update (known exactly, eps(r) exact)."""
    from tsfa.fl.synthetic import SyntheticConfig, power_law_spectrum

    c = SyntheticConfig()
    return power_law_spectrum(c.true_rank, c.spectrum_power).tolist()


@dataclass(frozen=True)
class BaseRun:
    """The shared base run of a size: ``cfg`` (budget frozen in seconds), the offline ``rank``
    r* of its resolved system, the resolved ``system`` and its rank ``table``."""

    cfg: object
    rank: int
    system: SystemSpec
    table: pd.DataFrame
    compute_s: np.ndarray
    budget_s: np.ndarray
    calibrated: bool = False  # J(r) with the shipped horizon weights (else the default constants)


def base_run(size: str = "quick", root: Path | None = None) -> BaseRun:
    """Base run config of ``base.toml`` at ``size``: the offline stage on its resolved system
    (budget frozen in seconds, rank r*; :func:`tsfa.experiments.plan.plan_run`)."""
    from tsfa.config.experiment import RunConfig
    from tsfa.experiments.plan import plan_run

    conf = analysis_config("base", size, root)
    changes = dict(conf.get("run", {}))
    bound = conf.get("bound", {})
    if bound.get("synthetic_spectrum", True):
        changes |= {"bound.eps_model": "given", "bound.spectrum": synthetic_spectrum()}
    cfg = RunConfig().replace(**changes)
    cal = None
    if bound.get("calibration", "none") == "shipped":  # tsfa run's own weights (docs/model.md §8b)
        from tsfa.experiments.horizon import default_calibration

        cal = default_calibration(cfg)
        if cal is None:
            raise ValueError(f"base run ({size}): bound.calibration = 'shipped', but the shipped "
                             "calibration is not made for this task, method or model")
    try:
        stage = plan_run(cfg, calibration=cal, rank="auto")
    except ValueError as exc:
        raise ValueError(f"base run ({size}): {exc}") from exc
    return BaseRun(stage.cfg, stage.rank, stage.system, stage.table, stage.inst.compute_s,
                   stage.inst.budget_s, cal is not None)


def scaled_budget(base: BaseRun, factor: float) -> list[float]:
    """Budgets with the uplink slack scaled: ``T^cmp_k + factor (Tbar_k - T^cmp_k)`` [s]."""
    return [float(c + factor * (b - c)) for c, b in zip(base.compute_s, base.budget_s, strict=True)]


# --------------------------------------------------------------------------- analytic sweeps
def frozen_budget(spec: SystemSpec) -> SystemSpec:
    """The spec with its realised budgets written out in seconds (a budget is a requirement;
    with the automatic rule it would move with the rate and hide every wireless effect)."""
    return spec.replace(**{"control.latency_budget_s": realize(spec).budget_s.tolist()})


def rank_sweep(spec: SystemSpec, key: str, values, freeze: bool = True) -> pd.DataFrame:
    """r* and J(r*) as ``key`` (dotted spec key) takes each of ``values``; budgets frozen at the
    base spec's realised values first (``freeze``). Infeasible points get r* = nan."""
    base = frozen_budget(spec) if freeze else spec
    rows = []
    for v in values:
        s = base.replace(**{key: v})
        res = optimal_rank(s)
        rows.append({key: v, "rank": res.solution["rank"] if res.ok else math.nan,
                     "J": res.objective, "status": res.status})
    return pd.DataFrame(rows)


def budget_sweep(spec: SystemSpec, factors) -> pd.DataFrame:
    """r* as the uplink slack of the realised budgets is scaled: ``Tbar_k = T^cmp_k + f (Tbar_k -
    T^cmp_k)`` for each factor f; also the mean budget [s]."""
    inst = realize(spec)
    rows = []
    for f in factors:
        budget = inst.compute_s + float(f) * (inst.budget_s - inst.compute_s)
        res = optimal_rank(spec.replace(**{"control.latency_budget_s": budget.tolist()}))
        rows.append({"slack_factor": float(f), "mean_budget_s": float(budget.mean()),
                     "rank": res.solution["rank"] if res.ok else math.nan,
                     "J": res.objective, "status": res.status})
    return pd.DataFrame(rows)


def power_sweep(spec: SystemSpec, powers_dbm) -> pd.DataFrame:
    """r* vs the transmit power (budgets frozen), with the resulting mean SNR on the equal
    bandwidth share [dB] (the SNR axis of docs/model.md §7's sensitivity study)."""
    out = rank_sweep(spec, "wireless.tx_power_dbm", powers_dbm)
    out["mean_snr_db"] = [mean_snr_db(spec.replace(**{"wireless.tx_power_dbm": float(p)}))
                          for p in powers_dbm]
    return out


def clients_sweep(spec: SystemSpec, counts, slack_s: float | None = None) -> pd.DataFrame:
    """r* vs the number of clients K at a fixed uplink slack ``Tbar_k - T^cmp_k = slack_s`` [s]
    per client (default: the base spec's mean realised slack). More clients share W_tot."""
    inst = realize(spec)
    slack = float(np.mean(inst.budget_s - inst.compute_s)) if slack_s is None else slack_s
    rows = []
    for k in counts:
        s = spec.replace(**{"clients.num_clients": int(k), "clients.data_sizes": [],
                            "control.latency_budget_s": []})
        comp = realize(s).compute_s
        s = s.replace(**{"control.latency_budget_s": (comp + slack).tolist()})
        res = optimal_rank(s)
        rows.append({"num_clients": int(k), "rank": res.solution["rank"] if res.ok else math.nan,
                     "J": res.objective, "status": res.status, "slack_s": slack})
    return pd.DataFrame(rows)


def mean_snr_db(spec: SystemSpec) -> float:
    """Mean over clients of the mean SNR on the equal bandwidth share [dB]."""
    inst = realize(spec)
    w = spec.wireless.bandwidth_total_hz / spec.clients.num_clients
    return float(np.mean(10 * np.log10(inst.mean_gamma_hz / w)))


def rank_table_with_eps(spec: SystemSpec, inst=None, eps=None) -> pd.DataFrame:
    """``rank_table`` with eps(r) replaced by a measured curve ``eps[r]`` (r = 0..len-1; ranks
    beyond it get 0), e.g. from the spectrum of a trained full update. ``None``: unchanged."""
    t = rank_table(spec, inst)
    if eps is None:
        return t
    eps = np.asarray(eps, float)
    new = eps[np.clip(t["rank"].to_numpy(), 0, len(eps) - 1)]
    new = np.where(t["rank"].to_numpy() >= len(eps), 0.0, new)
    t["J"] = t["J"] - t["rank_term"] + spec.bound.c5 * new
    t["eps"], t["rank_term"] = new, spec.bound.c5 * new
    return t


def term_breakdown(spec: SystemSpec) -> pd.DataFrame:
    """J(r) and its rank, covariance and sparsification terms per candidate (``rank_table``),
    with each term's share of J."""
    t = rank_table(spec)
    for c in ("rank_term", "cov_term", "sparse_term"):
        t[c.replace("_term", "_share")] = t[c] / t["J"]
    return t


def v_sweep(spec: SystemSpec, values, rounds: int, rank: int | None = None,
            solver: str = "joint") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lyapunov controller at each V over the same fading draws (docs/model.md §4).

    Returns (summary, traces): summary per V with the average penalty, the time-averaged queue,
    the worst client's time-averaged latency over budget and the mean rho; traces per
    (V, round) with the running time-average of the latency over budget (mean over clients) and
    the mean queue [s].
    """
    from tsfa.control.from_spec import make_policy
    from tsfa.control.simulate import simulate
    from tsfa.maths.rng import substream

    inst = realize(spec)
    rank = int(optimal_rank(spec, inst).solution["rank"]) if rank is None else rank
    rows, traces = [], []
    for v in values:
        pol = make_policy(spec, inst, rank, "tsfa", solver, V=float(v))
        sim = simulate(pol, inst.mean_gamma_hz, rounds, substream(spec.clients.seed, "fading"))
        r = sim.rounds
        lat = r.pivot(index="round", columns="client", values="latency_s")
        q = r.pivot(index="round", columns="client", values="queue_s")
        running = (lat.expanding().mean() / inst.budget_s[None, :]).mean(axis=1)
        traces.append(pd.DataFrame({"V": float(v), "round": lat.index,
                                    "avg_latency_over_budget": running.to_numpy(),
                                    "mean_queue_s": q.mean(axis=1).to_numpy()}))
        rows.append({"V": float(v), "rank": rank, "average_penalty": sim.average_penalty,
                     "time_avg_queue_s": float(q.to_numpy().mean()),
                     "max_latency_ratio": float(sim.summary["latency_ratio"].max()),
                     "mean_rho": float(r["rho"].mean())})
    return pd.DataFrame(rows), pd.concat(traces, ignore_index=True)


__all__ = [
    "SIZES", "analysis_config", "base_run", "BaseRun", "scaled_budget", "synthetic_spectrum",
    "frozen_budget",
    "rank_table_with_eps", "rank_sweep", "budget_sweep", "power_sweep", "clients_sweep",
    "mean_snr_db", "term_breakdown", "v_sweep",
]
