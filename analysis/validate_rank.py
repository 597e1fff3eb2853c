"""Validation of the offline rank r* against the measured best rank (issue 19; docs/validation.md).

Protocol (``tsfa/experiments/configs/validate_rank.toml``):

1. **Calibration**: the horizon weights of the embedded task's main job (the shipped file,
   ``tsfa calibrate-weights``; docs/model.md §8b), made on the main job's own system only.
2. **Specs**: the main job's system, then held-out specs that change its bandwidth, uplink slack
   (budget in seconds), K, Dirichlet alpha or horizon T.
3. **Predictors** per spec, over the same candidate ranks: tsfa's r* (calibrated weights), the
   bound with its default (uncalibrated) constants, the largest candidate whose upload fits
   every client's budget at rho = 1, and always r = 8.
4. **Measurement**: SOFT + TSFA controller at every candidate rank, every seed (paired); final
   accuracy = mean of the last rounds; the *measured best set* = candidates whose paired 95%
   t-interval of the difference to the highest-mean candidate contains 0. A hit: the predictor's
   rank is in the best set; a spec whose best set holds 3 or more candidates is *unresolved* and
   counts as a miss; a spec where some rank defers more than 10% of its uploads is *confounded*
   (the rank point measures the controller) and is not scored. Regret = acc(best) - acc(r).
   Every client's time-averaged latency over budget is reported per rank.

Runs live in the cache of :mod:`tsfa.experiments.cache` (``--store``), so the command resumes
and re-running it trains nothing new; ``--report-only`` re-renders docs/validation_rank.md.

    python analysis/validate_rank.py --size main --jobs 2

Everything here is tsfa's reconstruction on its embedded task, not the paper's results.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tsfa.experiments.paired import CONFIDENCE, t_interval  # noqa: E402
from tsfa.experiments.paired import best_set as _best_set  # noqa: E402

MAX_DEFERRAL = 0.10
UNRESOLVED_AT = 3  # a best set of this many candidates or more is unresolved


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


# --------------------------------------------------------------------------- statistics
def best_set(acc: pd.DataFrame, confidence: float = CONFIDENCE):
    """:func:`tsfa.experiments.paired.best_set` over ranks (ints)."""
    top, members, means, piv = _best_set(acc, confidence)
    return int(top), [int(r) for r in members], means, piv


def score(rank: int, acc: pd.DataFrame, confidence: float = CONFIDENCE) -> dict:
    """Hit (``rank`` in the best set, and the set resolved), regret with its interval."""
    top, members, means, piv = best_set(acc, confidence)
    resolved = len(members) < UNRESOLVED_AT
    out = {"hit": bool(resolved and rank in members), "in_best_set": rank in members}
    if rank in piv.columns:
        m, lo, hi = t_interval((piv[top] - piv[rank]).dropna(), confidence)
        out |= {"regret": m, "regret_lo": lo, "regret_hi": hi}
    else:
        out |= {"regret": math.nan, "regret_lo": math.nan, "regret_hi": math.nan}
    return out


# --------------------------------------------------------------------------- specs
def main_config():
    """(stage, calibration, uncalibrated run config) of the main job (``tsfa run`` on the
    embedded default): budget frozen in seconds on its resolved system; ``stage`` with the
    shipped calibration applied."""
    from tsfa.config.experiment import load_run_config
    from tsfa.experiments.horizon import default_calibration
    from tsfa.experiments.plan import plan_run

    cfg = load_run_config(None)
    cal = default_calibration(cfg)
    if cal is None:
        raise SystemExit("no shipped calibration for the embedded task's main job: run "
                         "`tsfa calibrate-weights --out tsfa/experiments/configs/"
                         "calibration_synthetic.toml`")
    return plan_run(cfg, calibration=cal, rank="auto"), cal, plan_run(cfg, rank="auto").cfg


def spec_changes(stage, spec: dict) -> dict:
    """Dotted RunConfig changes of one spec of ``validate_rank.toml``: W_tot scaled, K, alpha
    and T set, and the budget frozen in seconds as each client's compute time plus
    ``slack_factor`` x the main job's mean uplink slack."""
    from tsfa.experiments.plan import plan_run

    cfg, s = stage.cfg, stage.cfg.system
    slack = float(np.mean(stage.inst.budget_s - stage.inst.compute_s))
    ch = {"wireless.bandwidth_total_hz": s.wireless.bandwidth_total_hz
          * float(spec.get("bandwidth_factor", 1.0)),
          "clients.num_clients": int(spec.get("clients", s.clients.num_clients)),
          "clients.dirichlet_alpha": float(spec.get("alpha", s.clients.dirichlet_alpha)),
          "training.rounds": int(spec.get("rounds", s.training.rounds))}
    if spec.get("slack_factor", 1.0) == 1.0 and all(
            ch[k] == v for k, v in (("clients.num_clients", s.clients.num_clients),
                                    ("wireless.bandwidth_total_hz",
                                     s.wireless.bandwidth_total_hz))):
        ch["control.latency_budget_s"] = list(stage.system.control.latency_budget_s)
        return ch
    inst = plan_run(cfg.replace(**ch, **{"control.latency_budget_s": []})).inst
    ch["control.latency_budget_s"] = [float(c + float(spec.get("slack_factor", 1.0)) * slack)
                                      for c in inst.compute_s]
    return ch


def predictions(stage, cal, plain, ch: dict, candidates) -> dict:
    """r* of tsfa (calibrated), of the default constants, of 'largest rank that fits at rho = 1'
    and of 'always 8', over ``candidates``, on the spec ``ch``; and tsfa's J table."""
    from tsfa.control.offline import affordable_rho
    from tsfa.experiments.plan import plan_run

    cands = [int(r) for r in candidates]
    cfg = stage.cfg.replace(**ch, **{"lora.rank_candidates": cands})
    ours = plan_run(cfg, calibration=cal, rank="auto")
    default = plan_run(plain.replace(**ch, **{"lora.rank_candidates": cands}), rank="auto")
    rho = affordable_rho(ours.system, ours.inst, np.asarray(cands))
    fits = [r for r, row in zip(cands, rho, strict=True) if np.min(row) >= 1.0]
    return {"tsfa": ours.rank, "default_weights": default.rank,
            "largest_fit_rho1": max(fits) if fits else min(cands), "always_8": 8,
            "table": ours.table, "cfg": ours.cfg, "warnings": list(ours.warnings)}


# --------------------------------------------------------------------------- measurement
def target_seeds(rows: pd.DataFrame, seeds, ladder=(), confidence: float = CONFIDENCE) -> list[int]:
    """The seeds every member of the best set is measured at: ``seeds``, or more where more would
    likely resolve the set. A power projection: for the first count ``n`` of ``ladder`` above the
    top's own count at which some member's observed paired gap to the top exceeds the projected
    half-width t_{n-1} sd / sqrt(n), the set gets ``n`` seeds (the base seeds, then the next
    integers). The rule reads the gaps, never the predictors, so it treats every spec alike; it is
    an adaptive design, so its intervals are nominal."""
    from scipy import stats

    seeds = [int(s) for s in seeds]
    top, members, _, piv = best_set(rows, confidence)
    if any(not set(seeds) <= set(piv[r].dropna().index) for r in members):
        return seeds  # the base design first: the projection reads complete pairs only
    have = int(piv[top].count())
    for n in sorted(int(k) for k in ladder if int(k) > max(have, len(seeds))):
        if len(members) < 2:
            break
        for r in members:
            d = (piv[top] - piv[r]).dropna()
            if r == top or len(d) < 2:
                continue
            hw = stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
            if abs(d.mean()) > hw:
                return seeds + list(range(max(seeds) + 1, max(seeds) + 1 + n - len(seeds)))
    return seeds if have <= len(seeds) else sorted(set(seeds) | set(piv[top].dropna().index))


def run_rows(name: str, cfg, candidates, seeds, store, jobs, report_only,
             first_seeds: int | None = None, ladder=()) -> pd.DataFrame:
    """Per-run rows of one spec (trained unless cached or ``report_only``). Sequential design:
    every candidate at the first ``first_seeds`` seeds, then the remaining seeds for the
    candidates in the best set, recomputed after each addition until every member has every
    seed (a candidate that joins the set when the top changes gets its seeds too); then, where
    :func:`target_seeds` projects that more seeds resolve the set, the counts of ``ladder``."""
    first = list(seeds) if first_seeds is None else list(seeds)[:first_seeds]
    rows = _measure(name, cfg, [(r, s) for s in first for r in candidates], store, jobs,
                    report_only)
    rest = [s for s in seeds if s not in first]
    if not rest and not ladder:
        return rows
    if report_only:  # whatever the cache holds of the later seeds
        most = max([len(seeds), *ladder])
        later = [s for s in range(max(seeds) + 1 + most) if s not in first]
        more = _measure(name, cfg, [(r, s) for s in later for r in candidates], store, jobs, True)
        return pd.concat([rows, more], ignore_index=True)
    while not rows.empty:  # until every member of the best set has every seed
        todo = _missing(rows, target_seeds(rows, seeds, ladder))
        if not todo:
            break
        rows = pd.concat([rows, _measure(name, cfg, todo, store, jobs, False)],
                         ignore_index=True)
    return rows


def _missing(rows: pd.DataFrame, seeds) -> list[tuple[int, int]]:
    """(rank, seed) pairs that the best set's members lack of ``seeds``."""
    have = rows.groupby("rank")["seed"].apply(set)
    return [(r, s) for s in seeds for r in best_set(rows)[1] if s not in have.get(r, set())]


def _measure(name: str, cfg, pairs, store, jobs, report_only) -> pd.DataFrame:
    from tsfa.engines.local import train
    from tsfa.experiments.cache import lookup, run_many
    from tsfa.experiments.results import budget_summary, final_accuracy

    cfgs = [(int(r), int(s), cfg.replace(**{"experiment.rank": int(r), "experiment.seed": int(s)}))
            for r, s in pairs]
    if report_only:
        runs = [lookup(c, store) for *_, c in cfgs]
    else:
        todo = sum(lookup(c, store) is None for *_, c in cfgs)
        t0, done = time.perf_counter(), [0]

        def progress(msg):
            if msg.startswith("finished"):
                done[0] += 1
                el = time.perf_counter() - t0
                log(f"{name}: {done[0]}/{todo} runs trained, {el:.0f} s, ETA "
                    f"{el / done[0] * (todo - done[0]):.0f} s")

        runs = run_many([c for *_, c in cfgs], store, train, jobs, progress)
    rows = []
    for (r, s, _), run in zip(cfgs, runs, strict=True):
        if run is None:
            continue
        cl = run.clients
        deferred, per_client = budget_summary(cl)
        rows.append({"spec": name, "rank": r, "seed": s,
                     "final_accuracy": final_accuracy(run.rounds),
                     "deferral_share": deferred,
                     "max_latency_over_budget": float(per_client.max()),
                     "mean_rho": float(cl.loc[cl["sent"].astype(bool), "rho"].mean()),
                     "train_wall_s": float(run.rounds["wall_s"].sum())})
    return pd.DataFrame(rows)


def incomplete(acc: pd.DataFrame, candidates, seeds, first_seeds: int | None,
               ladder=()) -> bool:
    """The sequential design (:func:`run_rows`) is not finished: some candidate lacks one of the
    first seeds, or a member of the best set lacks one of the seeds it is due (a spec still being
    trained)."""
    first = list(seeds)[:first_seeds] if first_seeds else list(seeds)
    have = acc.groupby("rank")["seed"].apply(set)
    if any(not set(first) <= have.get(int(r), set()) for r in candidates):
        return True
    return bool(_missing(acc, target_seeds(acc, seeds, ladder)))


def spec_row(name: str, ch: dict, pred: dict, acc: pd.DataFrame,
             design: tuple | None = None) -> dict:
    """One line of the validation table: the spec, every predictor's rank and score.
    ``design``: (candidates, seeds, first_seeds, ladder); a spec whose design is not finished is
    "incomplete" and not scored."""
    row = {"spec": name, "bandwidth_hz": ch["wireless.bandwidth_total_hz"],
           "clients": ch["clients.num_clients"], "alpha": ch["clients.dirichlet_alpha"],
           "rounds": ch["training.rounds"],
           "mean_budget_s": float(np.mean(ch["control.latency_budget_s"]))}
    for k in ("tsfa", "default_weights", "largest_fit_rho1", "always_8"):
        row[f"r_{k}"] = pred[k]
    if acc.empty:
        return row | {"status": "not run"}
    if design is not None and incomplete(acc, *design):
        return row | {"status": "incomplete", "seeds": int(acc.groupby("rank").size().max())}
    top, members, means, piv = best_set(acc)
    confounded = acc.groupby("rank")["deferral_share"].mean().max() > MAX_DEFERRAL
    row |= {"seeds": int(piv.count().max()), "measured_top": top, "largest_candidate": int(max(piv.columns)),
            "best_set": " ".join(str(r) for r in members),
            "status": ("confounded" if confounded else "unresolved"
                       if len(members) >= UNRESOLVED_AT else "resolved"),
            "max_latency_over_budget": float(acc["max_latency_over_budget"].max())}
    for k in ("tsfa", "default_weights", "largest_fit_rho1", "always_8"):
        sc = score(pred[k], acc)
        row[f"hit_{k}"] = bool(sc["hit"] and not confounded)
        row[f"regret_{k}"] = sc["regret"]
        if k == "tsfa":
            row |= {"regret_lo": sc["regret_lo"], "regret_hi": sc["regret_hi"]}
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="main", choices=("tiny", "main"))
    p.add_argument("--store", default="figures/runs")
    p.add_argument("--out", default=str(ROOT / "docs" / "validation_rank.md"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--specs", type=int, default=None,
                   help="train the first N specs only (the others: predictions and cached runs)")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the cache")
    p.add_argument("--only", action="append", default=None, metavar="SPEC",
                   help="train this spec only (repeatable, in the order given); no report")
    a = p.parse_args(argv)
    from tsfa.experiments.runs import analysis_config
    from tsfa.fl.device import set_threads

    set_threads(1)
    t0, cpu0 = time.perf_counter(), time.process_time()
    # the main size is the file's base tables (no [size.*] override); tiny is the test suite's
    conf = analysis_config("validate_rank", "tiny" if a.size == "tiny" else "full")
    m = conf["measure"]
    store = Path(a.store)
    store.mkdir(parents=True, exist_ok=True)
    stage, cal, plain = main_config()
    run = conf.get("run", {})
    stage = dataclasses.replace(stage, cfg=stage.cfg.replace(**run))
    plain = plain.replace(**run)
    specs = [{"name": "main job"}, *conf.get("heldout", [])]
    if a.only:  # train the named specs, in that order, and nothing else (then --report-only)
        by_name = {s["name"]: s for s in specs}
        unknown = [n for n in a.only if n not in by_name]
        if unknown:
            raise SystemExit(f"--only: no spec {unknown[0]!r}; one of {', '.join(by_name)}")
        specs = [by_name[n] for n in a.only]
    rows, accs, tables = [], [], []
    for i, spec in enumerate(specs):
        ch = spec_changes(stage, spec)
        try:
            pred = predictions(stage, cal, plain, ch, m["candidates"])
        except ValueError as exc:  # an infeasible spec: said in the table, not scored
            log(f"{spec['name']}: {str(exc)[:200]}")
            rows.append({"spec": spec["name"], "status": "infeasible"})
            continue
        log(f"{spec['name']}: r* = {pred['tsfa']} (default {pred['default_weights']}, fits at "
            f"rho = 1 {pred['largest_fit_rho1']})")
        # specs past --specs: predictions and whatever runs the cache holds, nothing trained
        only_cached = a.report_only or (a.specs is not None and i >= a.specs and not a.only)
        # a spec may ask for more seeds at the main size (its gaps are small): the extra seeds
        # go to the contenders only (the sequential design of run_rows)
        seeds = spec.get("seeds", m["seeds"]) if a.size == "main" else m["seeds"]
        ladder = tuple(m.get("seed_ladder", ()))
        acc = run_rows(spec["name"], pred["cfg"], m["candidates"], seeds, store, a.jobs,
                       only_cached, m.get("first_seeds"), ladder)
        accs.append(acc)
        tables.append(pred["table"].assign(spec=spec["name"]))
        rows.append(spec_row(spec["name"], ch, pred, acc,
                             (m["candidates"], seeds, m.get("first_seeds"), ladder)))
        pd.DataFrame(rows).to_csv(store / "validation_rank_specs.csv", index=False)
        pd.concat(accs).to_csv(store / "validation_rank_runs.csv", index=False)
    if a.only:
        log(f"trained {', '.join(a.only)}; render the report with --report-only")
        return
    import validation_report as report

    out = Path(a.out)
    cost = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0,
            "load": os.getloadavg()}
    out.write_text(report.render_rank_horizon(a, conf, cal, pd.DataFrame(rows),
                                              pd.concat(accs, ignore_index=True),
                                              pd.concat(tables, ignore_index=True), cost),
                   encoding="utf-8")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
