"""Calibrate the bound's constants from pilot runs (docs/model.md "Calibration") [DESIGN].

:func:`calibrate` reads pilot folders (:mod:`tsfa.experiments.pilot`) or results, applies the
estimators of :mod:`tsfa.maths.estimators` and returns a :class:`Calibration`: a validated
:class:`~tsfa.config.spec.SystemSpec` whose ``[bound]`` section holds the estimates, each
estimate with its standard error, and the provenance of every key. :meth:`Calibration.to_toml`
writes the spec with that provenance as comments; ``tsfa calibrate RUNS... --out spec.toml``
does this from the command line.

What the pilots determine: L, sigma, G, zeta_h, F0 - F*, the rank floor eps(r) (as a given
spectrum, from the pilot of the highest rank), c3 (from the measured ||Cov||_F in the spec's
covariance form) and, given pilots at three or more ranks, c5 (least squares of their final test
losses against the r-dependent part of the bound). c0, c1, c2 and c4 are not determined by
uncompressed pilots and keep the base spec's values; the provenance says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tsfa.config.spec import SystemSpec
from tsfa.experiments.pilot import PilotResult, load_pilot
from tsfa.maths import bound as bd
from tsfa.maths import estimators as est
from tsfa.maths.rng import substream


@dataclass(frozen=True, eq=False)
class Calibration:
    """``spec``: the calibrated spec; ``estimates``: bound key -> :class:`Estimate`;
    ``provenance``: bound key -> one line; ``eps``: eps(r) per candidate rank with its standard
    error; ``covariance``: measured vs predicted ||Cov||_F per pilot checkpoint; ``runs``: the
    pilot folders (or labels) used."""

    spec: SystemSpec
    estimates: dict[str, est.Estimate]
    provenance: dict[str, str]
    eps: pd.DataFrame
    covariance: pd.DataFrame
    runs: list[str] = field(default_factory=list)

    def to_toml(self) -> str:
        """The calibrated spec as commented TOML: every ``[bound]`` key preceded by its estimate,
        standard error and provenance; eps(r) and the covariance fit in the header."""
        lines = ["# tsfa spec calibrated from pilot runs (docs/model.md, Calibration).",
                 f"# runs: {', '.join(self.runs) if self.runs else '(in memory)'}",
                 "# eps(r) of the calibrated spectrum at the candidate ranks (bootstrap over "
                 "modules):"]
        for row in self.eps.itertuples(index=False):
            lines.append(f"#   r = {row.rank}: eps = {row.eps:.4g} +- {row.stderr:.2g}")
        cov = self.covariance
        if len(cov):
            ratio = cov["measured_fro"] / cov["predicted_fro"]
            lines.append(f"# covariance ({self.spec.bound.cov_form}): measured / predicted "
                         f"||Cov||_F over {len(cov)} pilot checkpoints: median "
                         f"{float(ratio.median()):.3g}, range {float(ratio.min()):.3g} - "
                         f"{float(ratio.max()):.3g}")
        out = []
        section = None
        for line in self.spec.to_toml().splitlines():
            if line.startswith("["):
                section = line.strip("[]")
            key = line.split(" = ")[0] if " = " in line and not line.startswith("#") else None
            if section == "bound" and key in self.provenance:
                e = self.estimates.get(key)
                if e is not None:
                    out.append(f"# calibrated: {e.value:.6g} +- {e.stderr:.2g} (n = {e.n}); "
                               f"{self.provenance[key]}")
                else:
                    out.append(f"# {self.provenance[key]}")
            out.append(line)
        return "\n".join(lines + [""] + out) + "\n"


def _load(run) -> tuple[PilotResult, str]:
    if isinstance(run, PilotResult):
        return run, str(run.path) if run.path else "(in memory)"
    return load_pilot(run), str(run)


def _per_run_stats(p: PilotResult) -> dict:
    """sigma^2, G^2 and zeta^2 of one pilot at its own batch size (trajectory means)."""
    mb, cl = p.minibatches, p.clients
    z = ((cl["dev_sq"] - cl["noise_sq"]) * cl["weight"]).groupby(cl["checkpoint"]).sum()
    return {"sigma_sq": float(mb["dev_sq"].mean()), "g_sq": float(mb["norm_sq"].mean()),
            "zeta_sq": float(max(z.mean(), 0.0))}


def default_base(p: PilotResult) -> SystemSpec:
    """The pilot's own system (its ``system.toml``), else the default tiny-model system, with the
    pilot model's LoRA sizes: the base spec when none is given."""
    from tsfa.config.experiment import default_system

    ctx = p.context
    dim = min(int(ctx["d_in"]), int(ctx["d_out"]))
    base = p.system if p.system is not None else default_system()
    ranks = [r for r in base.lora.rank_candidates if r <= dim] or [dim]
    return base.replace(**{"lora.n_modules": int(ctx["n_modules"]), "lora.d_in": int(ctx["d_in"]),
                           "lora.d_out": int(ctx["d_out"]), "lora.rank_candidates": ranks,
                           "control.budget_reference_rank": min(base.control.budget_reference_rank,
                                                                dim)})


def calibrate(runs, base: SystemSpec | None = None, *, cov_form: str | None = None,
              quantile: float = 0.9, seed: int = 0) -> Calibration:
    """Calibrate ``base`` (default: :func:`default_base` of the first run) from pilot ``runs``
    (folders or :class:`PilotResult`). ``cov_form`` overrides ``base.bound.cov_form``;
    ``quantile``: of the secant ratios for L. Bootstrap streams come from ``seed``."""
    loaded = [_load(r) for r in runs]
    if not loaded:
        raise ValueError("calibrate: need at least one pilot run")
    pilots = [p for p, _ in loaded]
    base = default_base(pilots[0]) if base is None else base
    form = cov_form or base.bound.cov_form
    if form not in bd.COV_FORMS:
        raise ValueError(f"cov_form = {form!r}: must be one of {', '.join(bd.COV_FORMS)}")
    rng = substream(seed, "sampling", 777)
    tr = base.training
    b_to = tr.batch_size
    estimates, prov = {}, {}

    # smoothness: secant pairs of every pilot
    ck = pd.concat([p.checkpoints for p in pilots], ignore_index=True)
    e_l = est.smoothness(ck["secant_grad_diff"], ck["secant_step"], rng, quantile)
    estimates["smoothness"], prov["smoothness"] = e_l, e_l.method

    # sigma^2, G^2 at the spec's batch size; zeta^2; pooled over pilots (means of the runs)
    sig_e, g_e, z_e = [], [], []
    for p in pilots:
        s, g = est.minibatch_moments(
            p.minibatches.pivot(index="checkpoint", columns="minibatch", values="dev_sq"),
            p.minibatches.pivot(index="checkpoint", columns="minibatch", values="norm_sq"))
        b_from = p.config.batch_size
        sig_e.append((est.rescale_noise(s.value, b_from, b_to),
                      est.rescale_noise(s.stderr, b_from, b_to)))
        g_e.append((max(est.second_moment_at_batch(g.value, s.value, b_from, b_to), 1e-300),
                    g.stderr))
        cl = p.clients.assign(dev_sq=p.clients["dev_sq"] - p.clients["noise_sq"])
        z_e.append(est.heterogeneity(cl.pivot(index="checkpoint", columns="client",
                                              values="dev_sq"),
                                     cl.groupby("client")["weight"].first().to_numpy(), rng))
    n_runs = len(pilots)

    def pooled(pairs, n, method):
        v = np.mean([a for a, _ in pairs])
        se = math.sqrt(sum(s**2 for _, s in pairs)) / len(pairs)
        return est.Estimate(float(v), float(se), n, method)

    sigma_sq = pooled(sig_e, sum(len(p.minibatches) for p in pilots),
                      f"mean ||g_b - g||^2 of {n_runs} pilot(s), rescaled to batch {b_to}")
    g_sq = pooled(g_e, sigma_sq.n, f"mean ||g_b||^2 of {n_runs} pilot(s) at batch {b_to}")
    zeta_sq = pooled([(max(z.value, 0.0), z.stderr) for z in z_e], sum(z.n for z in z_e),
                     f"sum_k p_k ||g_k - g||^2 less sampling noise, {n_runs} pilot(s)")
    for key, e2 in (("grad_noise", sigma_sq), ("grad_bound", g_sq), ("heterogeneity", zeta_sq)):
        root = math.sqrt(max(e2.value, 0.0))
        estimates[key] = est.Estimate(root, e2.stderr / (2 * root) if root > 0 else 0.0, e2.n,
                                      e2.method)
        prov[key] = f"square root of {e2.method}"

    # F0 - F*: initial population loss minus the lowest loss reached (a lower bound on the gap)
    f0 = float(np.mean([p.summary["initial_population_loss"] for p in pilots]))
    f_min = float(min(p.summary["final_population_loss"] for p in pilots))
    if f0 > f_min:
        estimates["initial_gap"] = est.Estimate(f0 - f_min, 0.0, n_runs,
                                                "initial minus lowest final pilot loss")
        prov["initial_gap"] = ("initial pilot loss minus the lowest final pilot loss (a lower "
                               "bound on F0 - F*)")
    else:
        prov["initial_gap"] = "not determined (the pilots' loss did not decrease); base value kept"

    # eps(r): the spectrum of the highest-rank pilot, pooled over its modules
    top = max(pilots, key=lambda p: p.context["rank"])
    spectra = [g["singular_value"].to_numpy() for _, g in top.spectrum.groupby("module_index")]
    spectrum = est.pooled_spectrum(spectra)
    ranks = np.asarray(base.lora.rank_candidates)
    eps = bd.eps_from_spectrum(spectrum, ranks)
    boots = [bd.eps_from_spectrum(est.pooled_spectrum([spectra[i] for i in idx]), ranks)
             for idx in rng.integers(len(spectra), size=(est.DEFAULT_BOOTSTRAP, len(spectra)))]
    eps_df = pd.DataFrame({"rank": ranks, "eps": eps,
                           "stderr": np.std(boots, axis=0, ddof=1) if len(spectra) > 1
                           else np.zeros(len(ranks))})
    prov["spectrum"] = (f"singular values of the rank-{top.context['rank']} pilot update, pooled "
                        f"over its {len(spectra)} modules (eps(r) in the header)")
    if top.context["rank"] < ranks.max():
        prov["spectrum"] += (f"; eps(r) = 0 for r >= {top.context['rank']} only because the "
                             "pilot's rank is lower: use a pilot of rank >= the largest candidate")
    prov["eps_model"] = "given: the calibrated spectrum below"

    # c3: measured ||Cov||_F of every pilot checkpoint against the form's prediction (c3 = 1)
    rows = []
    for p, stats in zip(pilots, [_per_run_stats(p) for p in pilots], strict=True):
        unit = float(bd.covariance_magnitude(
            p.context["rank"], p.config.learning_rate, p.config.local_steps,
            math.sqrt(stats["g_sq"]), math.sqrt(stats["sigma_sq"]), math.sqrt(stats["zeta_sq"]),
            1.0, form))
        for v in p.checkpoints["cov_fro"]:
            rows.append({"rank": p.context["rank"], "measured_fro": float(v), "unit_fro": unit})
    cov = pd.DataFrame(rows)
    squared = form == "sqrt_r"  # sqrt_r predicts E||Cov||_F^2 = c3 unit^2, linear_hetero c3 unit
    e_c3 = est.covariance_constant(cov["measured_fro"], cov["unit_fro"] ** (2 if squared else 1),
                                   rng, squared=squared)
    cov["predicted_fro"] = cov["unit_fro"] * (math.sqrt(e_c3.value) if squared else e_c3.value)
    estimates["c3"] = e_c3
    prov["c3"] = f"{e_c3.method}, form {form}, {len(cov)} pilot checkpoints"
    prov["cov_form"] = f"{form} (docs/model.md §2)"

    # c5: final test losses of pilots at >= 3 distinct ranks, c3 term held at its calibrated value
    values = {k: e.value for k, e in estimates.items()}
    spec = base.replace(**{f"bound.{k}": v for k, v in values.items()},
                        **{"bound.eps_model": "given", "bound.spectrum": spectrum.tolist(),
                           "bound.spectrum_dim": max(base.bound.spectrum_dim, len(spectrum)),
                           "bound.cov_form": form})
    c5 = _fit_c5(pilots, spec, rng)
    if c5 is not None:
        estimates["c5"] = c5
        prov["c5"] = c5.method
        spec = spec.replace(**{"bound.c5": c5.value})
    else:
        prov["c5"] = ("not determined (needs pilots at >= 3 distinct ranks whose losses show "
                      "the covariance effect); base value kept")
    for key in ("c0", "c1", "c2", "c4"):
        prov[key] = "not determined by uncompressed pilots; base value kept"
    return Calibration(spec, estimates, prov, eps_df, cov, [name for _, name in loaded])


def _fit_c5(pilots, spec: SystemSpec, rng) -> est.Estimate | None:
    """c5 from the final test losses of pilots at >= 3 distinct ranks.

    ``loss_r ~ a + s (c5 eps(r) + cov(r))``: the loss follows the r-dependent part of J up to an
    affine map; with cov(r) in its calibrated value, the NNLS coefficients ``(s c5, s)`` of
    ``(eps(r), cov(r))`` give ``c5 = (s c5) / s``. None when there are too few ranks or the
    losses show no covariance effect (s = 0).
    """
    from tsfa.control.offline import covariance_of, eps_of

    ranks = np.array([p.context["rank"] for p in pilots])
    if len(set(ranks.tolist())) < 3:
        return None
    loss = np.array([p.summary["final_test_loss"] for p in pilots])
    x = np.column_stack([eps_of(spec, ranks), covariance_of(spec, ranks)])
    coef = est.nnls_affine(loss, x)
    if not coef[2] > 0:
        return None
    boots = []
    for idx in rng.integers(len(loss), size=(est.DEFAULT_BOOTSTRAP, len(loss))):
        c = est.nnls_affine(loss[idx], x[idx])
        if c[2] > 0:
            boots.append(c[1] / c[2])
    se = float(np.std(boots, ddof=1)) if len(boots) > 1 else float("nan")
    return est.Estimate(float(coef[1] / coef[2]), se, len(pilots),
                        f"final test losses of {len(pilots)} pilots at ranks "
                        f"{sorted(set(ranks.tolist()))} on a + s (c5 eps(r) + cov(r))")


def write_calibration(cal: Calibration, out: str | Path) -> Path:
    """Write ``cal.to_toml()`` to ``out`` (parent folders created)."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(cal.to_toml(), encoding="utf-8")
    return p

