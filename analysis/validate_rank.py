"""Out-of-sample validation of the offline rank r* (issue 15, item 3; docs/validation.md).

Protocol:

1. **Calibrate** the bound (:func:`tsfa.experiments.calibrate.calibrate`) on pilot runs of ONE
   system spec, the *calibration spec* (the base run of ``base.toml`` at the size), at the pilot
   ranks of ``validate_rank.toml``;
2. **predict** r* with the calibrated constants on held-out specs that differ in bandwidth, latency
   budget (seconds), number of clients K and Dirichlet alpha (nothing of a held-out spec enters
   the calibration);
3. **measure** the best rank on each held-out spec: SOFT + TSFA controller at every candidate rank,
   several seeds, final accuracy (mean of the last rounds) on the test set; paired (same seed)
   t-intervals of the accuracy difference between neighbouring ranks and between the best rank
   and every other; the *measured best* is the rank of highest mean accuracy, its *interval* the
   candidates not significantly worse than it;
4. report per spec: predicted r*, measured best with its interval, regret = acc(best) - acc(r*)
   with its interval, and whether r* is within one candidate of the best.

Resumable: runs live in the cache of :mod:`tsfa.experiments.cache` (``--store``), pilots in
``STORE/pilots``; ``validation_rank.csv`` (one row per run) grows as runs finish; replotting
(``--report-only``) trains nothing. Re-run at a larger size with one command::

    python analysis/validate_rank.py --size quick --jobs 2      # this CPU
    python analysis/validate_rank.py --size paper --jobs 4 --device cuda   # a GPU
    python analysis/validate_rank.py --size paper --task fashion_mnist --device cuda

Everything here is tsfa's reconstruction on its embedded task, not the paper's results.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tsfa.experiments import runs as an
from tsfa.experiments.cache import lookup, run_many

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


# --------------------------------------------------------------------------- specs
def heldout_changes(base: an.BaseRun, spec: dict) -> dict:
    """Dotted RunConfig changes of one held-out spec (``validate_rank.toml [[heldout]]``): W_tot
    scaled, K and alpha set, and the latency budget frozen in seconds as each client's compute
    time plus ``slack_factor`` x the calibration spec's mean uplink slack."""
    from tsfa.experiments.pipeline import resolved_system

    w = base.cfg.system.wireless.bandwidth_total_hz * float(spec.get("bandwidth_factor", 1.0))
    k = int(spec.get("clients", base.cfg.system.clients.num_clients))
    alpha = float(spec.get("alpha", base.cfg.system.clients.dirichlet_alpha))
    slack_s = float(np.mean(base.budget_s - base.compute_s)) * float(spec.get("slack_factor", 1.0))
    ch = {"wireless.bandwidth_total_hz": w, "clients.num_clients": k,
          "clients.dirichlet_alpha": alpha, "control.latency_budget_s": []}
    _, inst, _ = resolved_system(base.cfg.replace(**ch))
    ch["control.latency_budget_s"] = [float(c + slack_s) for c in inst.compute_s]
    return ch


def task_base(base: an.BaseRun, task: str) -> an.BaseRun:
    """The base run on another task (``fashion_mnist``: pre-trained backbone, eps(r) from the
    pilots' spectrum), its latency budget frozen in seconds on its own resolved system."""
    if task == base.cfg.experiment.task:
        return base
    from tsfa.experiments.pipeline import offline_stage

    cfg = base.cfg.replace(**{"experiment.task": task, "bound.eps_model": "power_law",
                              "bound.spectrum": [], "control.latency_budget_s": []})
    st = offline_stage(cfg)
    return an.BaseRun(st.cfg, st.rank, st.system, st.table, st.inst.compute_s, st.inst.budget_s)


def spec_row(name: str, ch: dict) -> dict:
    return {"spec": name, "bandwidth_hz": ch["wireless.bandwidth_total_hz"],
            "clients": ch["clients.num_clients"], "alpha": ch["clients.dirichlet_alpha"],
            "mean_budget_s": float(np.mean(ch["control.latency_budget_s"]))}


# --------------------------------------------------------------------------- 1. calibration
def calibrate_on_pilots(base: an.BaseRun, conf: dict, store: Path, seed: int = 0):
    """Pilots of the calibration spec at ``conf['ranks']`` (saved in ``store/pilots``, reused),
    then :func:`tsfa.experiments.calibrate.calibrate` with the resolved system as base."""
    import torch

    from tsfa.experiments.calibrate import calibrate
    from tsfa.experiments.pilot import PilotConfig, load_pilot, run_pilot, save_pilot
    from tsfa.fl.build import run_task
    from tsfa.fl.lora import apply_lora
    from tsfa.fl.tasks import build_model

    cfg = base.cfg
    tr = cfg.system.training
    keys = ("steps", "checkpoints", "minibatches", "pilot_samples", "client_samples",
            "test_samples")
    pc = PilotConfig(batch_size=tr.batch_size, learning_rate=tr.learning_rate,
                     optimizer=cfg.experiment.optimizer, local_steps=tr.local_steps, seed=seed,
                     **{k: int(conf[k]) for k in keys if k in conf})
    tag = "-".join(str(int(conf[k])) for k in keys if k in conf)
    task, pilots = None, []
    for r in conf["ranks"]:
        path = store / "pilots" / f"{cfg.system.clients.num_clients}k-r{r}-{tag}-s{seed}"
        if (path / "summary.json").is_file():
            pilots.append(load_pilot(path))
            continue
        log(f"pilot rank {r}")
        task = run_task(cfg) if task is None else task
        model = build_model(task, cfg.experiment)
        apply_lora(model, int(r), cfg.experiment.lora_alpha,
                   generator=torch.Generator().manual_seed(seed))
        res = run_pilot(model, task, pc)
        save_pilot(res, path, system=base.system)
        pilots.append(load_pilot(path))
    return calibrate(pilots, base.system)


def predicted_rank(cfg, bound, ranks) -> tuple[int, pd.DataFrame]:
    """r* of the held-out run config ``cfg`` with the calibrated ``[bound]`` section, over the
    candidate ``ranks`` (the resolved system of the model trained, budget in seconds)."""
    from tsfa.control.offline import optimal_rank
    from tsfa.experiments.pipeline import resolved_system
    from tsfa.maths.instance import realize

    system, _, _ = resolved_system(cfg)
    system = system.replace(**{f"bound.{k}": v for k, v in bound.items()},
                            **{"lora.rank_candidates": [int(r) for r in ranks]})
    res = optimal_rank(system, realize(system))
    table = res.solution["table"] if res.solution else pd.DataFrame()
    return (int(res.solution["rank"]) if res.ok else -1), table


def bound_values(system) -> dict:
    b = system.bound
    return {k: getattr(b, k) for k in b.__dataclass_fields__}


# --------------------------------------------------------------------------- 3. measurement
def t_interval(diff: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Mean and the two-sided Student-t interval of paired differences (nan width if n < 2)."""
    from scipy import stats

    d = np.asarray(diff, float)
    m = float(d.mean())
    if len(d) < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return m, m - h, m + h


def summarise_spec(acc: pd.DataFrame, r_star: int, confidence: float) -> dict:
    """One held-out spec from its per-run accuracies (columns rank, seed, final_accuracy):
    measured best rank, the candidates not significantly worse (paired t, ``confidence``),
    neighbouring-rank difference intervals, regret of r* with its interval."""
    piv = acc.pivot(index="seed", columns="rank", values="final_accuracy").dropna()
    ranks = sorted(piv.columns)
    means = piv.mean()
    best = int(means.idxmax())
    tied = [r for r in ranks if r == best or t_interval(piv[best] - piv[r], confidence)[1] <= 0]
    neigh = []
    for lo, hi in zip(ranks[:-1], ranks[1:], strict=True):
        m, a, b = t_interval(piv[hi] - piv[lo], confidence)
        neigh.append(f"{hi}-{lo}: {m:+.3f} [{a:+.3f}, {b:+.3f}]")
    out = {"predicted_r_star": r_star, "measured_best": best,
           "best_interval": f"{min(tied)}..{max(tied)}" if len(tied) > 1 else str(best),
           "ranks_resolved": len(tied) == 1, "seeds": len(piv),
           "acc_best": float(means[best]), "neighbour_diffs": "; ".join(neigh),
           "n_candidates": len(ranks)}
    if r_star in piv.columns:
        m, a, b = t_interval(piv[best] - piv[r_star], confidence)
        out |= {"r_star_index": ranks.index(r_star), "acc_r_star": float(means[r_star]),
                "regret": m,
                "regret_lo": a, "regret_hi": b,
                "steps_off": abs(ranks.index(best) - ranks.index(r_star)),
                "r_star_in_interval": r_star in tied}
    else:
        out |= {"r_star_index": -1, "acc_r_star": math.nan, "regret": math.nan, "regret_lo": math.nan,
                "regret_hi": math.nan, "steps_off": math.nan, "r_star_in_interval": False}
    out["within_one"] = bool(out["steps_off"] <= 1) if not math.isnan(out["steps_off"]) else False
    return out


def measure(base, specs, conf, store, jobs, report_only, options) -> pd.DataFrame:
    """Per-run accuracies of every held-out spec x rank x seed (trained unless cached or
    ``report_only``); ``store/validation_rank.csv`` rewritten after every spec."""
    rows = []
    csv = store / "validation_rank.csv"
    for name, ch in specs:
        cfgs = [(int(r), int(s), base.cfg.replace(**ch, **conf["run"], **{
            "experiment.rank": int(r), "experiment.seed": int(s)}))
            for s in conf["measure"]["seeds"] for r in conf["measure"]["ranks"]]
        if report_only:
            found = [(r, s, lookup(c, store)) for r, s, c in cfgs]
        else:
            t0 = time.perf_counter()
            found = zip([r for r, _, _ in cfgs], [s for _, s, _ in cfgs],
                        run_many([c for _, _, c in cfgs], store, jobs, log, **options),
                        strict=True)
            log(f"{name}: {len(cfgs)} runs in {time.perf_counter() - t0:.0f} s")
        from tsfa.reporting.results import final_accuracy

        for r, s, run in found:
            if run is None:
                continue
            rows.append({"spec": name, "rank": r, "seed": s,
                         "final_accuracy": final_accuracy(run.rounds),
                         "final_test_loss": final_accuracy(run.rounds, column="test_loss"),
                         "mean_latency_over_budget": float(
                             (run.clients["latency_s"].mean()
                              / np.mean(ch["control.latency_budget_s"]))
                             if "latency_s" in run.clients else math.nan)})
        pd.DataFrame(rows).to_csv(csv, index=False)
    return pd.DataFrame(rows)


def build_table(specs_df: pd.DataFrame, acc: pd.DataFrame, confidence: float,
                min_seeds: int = 1) -> pd.DataFrame:
    """The out-of-sample table: one row per held-out spec (``specs_df``: spec, predicted_r_star,
    ...) joined with :func:`summarise_spec` of its runs in ``acc``; specs with fewer than
    ``min_seeds`` complete seeds (every rank finished) are left out."""
    rows = []
    for _, s in specs_df.iterrows():
        a = acc[acc["spec"] == s["spec"]]
        if a.empty:
            continue
        row = {**s.to_dict(), **summarise_spec(a, int(s["predicted_r_star"]), confidence)}
        if row["seeds"] < min_seeds:  # a spec whose runs are still training
            continue
        ranks = sorted(a["rank"].unique())
        d = s.get("r_star_default_constants")
        if d is not None and not pd.isna(d) and int(d) in ranks:
            row["default_within_one"] = abs(ranks.index(int(d))
                                            - ranks.index(row["measured_best"])) <= 1
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="quick", choices=an.SIZES)
    p.add_argument("--store", default="figures/runs")
    p.add_argument("--out", default=None,
                   help="report (default docs/validation_rank.md, _fmnist for Fashion-MNIST)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes for training")
    p.add_argument("--device", default="cpu")
    p.add_argument("--task", default="synthetic", choices=("synthetic", "fashion_mnist"),
                   help="embedded task (known spectrum) or Fashion-MNIST (pre-trained backbone)")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the cache")
    a = p.parse_args(argv)
    from tsfa.fl.device import set_threads

    if a.out is None:
        a.out = str(ROOT / "docs" / ("validation_rank.md" if a.task == "synthetic"
                                     else f"validation_rank_{a.task}.md"))

    set_threads(1)
    t0 = time.perf_counter()
    store = Path(a.store)
    store.mkdir(parents=True, exist_ok=True)
    conf = an.analysis_config("validate_rank", a.size)
    base = task_base(an.base_run(a.size), a.task)
    log(f"calibration spec: K = {base.cfg.system.clients.num_clients}, "
        f"alpha = {base.cfg.system.clients.dirichlet_alpha:g}")
    cal = calibrate_on_pilots(base, conf["pilot"], store)
    bound = bound_values(cal.spec)
    log(f"calibrated in {time.perf_counter() - t0:.0f} s")
    ranks = conf["measure"]["ranks"]
    specs = [(h["name"], heldout_changes(base, h)) for h in conf["heldout"]]
    saved = store / f"validation_rank_specs-{a.task}-{a.size}.csv"
    if a.report_only and saved.is_file():  # predictions of the training invocation, reused
        specs_df = pd.read_csv(saved)
    else:
        srows = []
        for name, ch in specs:
            r_star, _ = predicted_rank(base.cfg.replace(**ch), bound, ranks)
            r_def, _ = predicted_rank(base.cfg.replace(**ch), bound_values(base.system), ranks)
            srows.append({**spec_row(name, ch), "predicted_r_star": r_star,
                          "r_star_default_constants": r_def})
        specs_df = pd.DataFrame(srows)
        specs_df.to_csv(saved, index=False)
    log("predicted r*: " + ", ".join(f"{r.spec} {r.predicted_r_star}"
                                     for r in specs_df.itertuples()))
    options = {} if a.device == "cpu" else {"device": a.device}
    acc = measure(base, specs, conf, store, a.jobs, a.report_only, options)
    table = build_table(specs_df, acc, float(conf["measure"]["confidence"]),
                        min_seeds=len(conf["measure"]["seeds"]))
    import validation_report as report

    elapsed = time.perf_counter() - t0
    out = Path(a.out)
    out.write_text(report.render_rank(a, base, conf, cal, table, acc, elapsed,
                                      os.getloadavg()), encoding="utf-8")
    table.to_csv(store / "validation_rank_table.csv", index=False)
    log(f"wrote {out} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
