"""Pilot runs that measure the offline objective's weights on the user's task (docs/model.md §8b)
[DESIGN].

The weights that decide r* are measured in one unit, the test error at the run's horizon T, from
short federated runs of the user's own run config (the trainer tsfa runs, not a model of it):

* **rank pilots**: the method at every pilot rank, every component sent (rho = 1, fixed policy,
  no deadline), so their errors differ by rank only: ``err(r) = e0 + w_rank eps(r) + w_cov r``;
* **ratio pilots**: one or more ranks at several ratios rho < 1, same seeds, *with the method's
  own error feedback*: ``err(r, rho) - err(r, 1) = w_sparse phi(rho, r)``, for each form of phi
  (two ranks separate a form in the ratio from one in the number of components sent).

:func:`pilot_configs` builds them (run through :func:`tsfa.experiments.cache.run_many`, so a
pilot is never trained twice); :func:`pilot_table` reads their final errors back and
:func:`tsfa.experiments.horizon.fit_calibration` fits the weights with the estimators of
:mod:`tsfa.maths.horizon` and keeps them with their identity and provenance.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tsfa.config.experiment import RunConfig

#: Default pilot plan: ranks at rho = 1, the ratio pilots' rank and ratios, seeds.
PILOT_RANKS = (1, 2, 4, 8, 16)
PILOT_RHOS = (0.5, 0.25, 0.125)
PILOT_RHO_RANKS = (8,)
PILOT_SEEDS = (0, 1)


@dataclass(frozen=True)
class PilotPlan:
    """Which pilots to run: ``ranks`` at rho = 1; ``rhos`` (< 1) at each of ``rho_ranks``; ``seeds``
    (every pilot at every seed, so differences are paired); ``num_test`` test samples."""

    ranks: tuple[int, ...] = PILOT_RANKS
    rhos: tuple[float, ...] = PILOT_RHOS
    rho_ranks: tuple[int, ...] = PILOT_RHO_RANKS
    seeds: tuple[int, ...] = PILOT_SEEDS
    num_test: int = 5000

    def check(self, max_rank: int) -> None:
        """ValueError naming the pilot option out of range (``max_rank`` = min(d_in, d_out))."""
        if len(set(self.ranks)) < 3:
            raise ValueError(f"pilot ranks = {list(self.ranks)}: need >= 3 distinct ranks (the "
                             "rank weight, the covariance weight and the floor)")
        if not self.rho_ranks:
            raise ValueError("pilot rho ranks: need >= 1 rank for the ratio pilots")
        for r in (*self.ranks, *self.rho_ranks):
            if not 1 <= int(r) <= max_rank:
                raise ValueError(f"pilot rank {r}: must be an integer between 1 and {max_rank}")
        if not self.rhos or any(not 0 < float(p) < 1 for p in self.rhos):
            raise ValueError(f"pilot rhos = {list(self.rhos)}: need >= 1 ratio, each in (0, 1)")
        if not self.seeds:
            raise ValueError("pilot seeds: need >= 1 seed")


def pilot_configs(cfg: RunConfig, plan: PilotPlan) -> list[tuple[str, int, float, int, RunConfig]]:
    """``(kind, rank, rho, seed, config)`` of every pilot of ``plan`` on the run config ``cfg``
    (its system, method, error feedback and horizon kept): fixed policy, no deadline (every
    upload sent, so the pilots see no fading), ``num_test`` test samples."""
    common = {"experiment.controller": "fixed", "control.deadline": "none",
              "experiment.num_test": int(plan.num_test)}
    out = []
    for s in plan.seeds:
        for r in plan.ranks:
            out.append(("rank", int(r), 1.0, int(s), cfg.replace(**common, **{
                "experiment.rank": int(r), "experiment.rho": 1.0, "experiment.seed": int(s)})))
        for q in plan.rho_ranks:
            for p in plan.rhos:
                out.append(("rho", int(q), float(p), int(s), cfg.replace(**common, **{
                    "experiment.rank": int(q), "experiment.rho": float(p),
                    "experiment.seed": int(s)})))
    return out


def pilot_table(pilots, runs) -> pd.DataFrame:
    """One row per pilot: kind, rank, rho, seed, final_error (1 - mean accuracy of the last
    rounds, :func:`tsfa.experiments.results.final_accuracy`), final_test_loss, rounds,
    accuracy_curve (test accuracy per round: the error at any shorter horizon), train_wall_s
    (the run's own round wall time, whenever it was trained), path."""
    from tsfa.experiments.results import final_accuracy

    rows = []
    for (kind, r, p, s, _), run in zip(pilots, runs, strict=True):
        if run is None:
            continue
        rows.append({"kind": kind, "rank": r, "rho": p, "seed": s,
                     "final_error": 1.0 - final_accuracy(run.rounds),
                     "final_test_loss": final_accuracy(run.rounds, column="test_loss"),
                     "rounds": len(run.rounds),
                     "accuracy_curve": [float(a) for a in
                                        run.rounds.sort_values("round")["accuracy"]],
                     "train_wall_s": float(run.rounds["wall_s"].sum()) if "wall_s" in run.rounds
                     else float("nan"), "path": str(run.path)})
    return pd.DataFrame(rows)


__all__ = ["PILOT_RANKS", "PILOT_RHOS", "PILOT_RHO_RANKS", "PILOT_SEEDS", "PilotPlan",
           "pilot_configs", "pilot_table"]
