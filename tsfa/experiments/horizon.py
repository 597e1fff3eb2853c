"""The horizon calibration: weights of the offline objective measured on the user's task, with
their identity, uncertainty and provenance, as a file (docs/model.md §8b) [DESIGN].

:func:`fit_calibration` turns a pilot table (:func:`tsfa.experiments.weights.pilot_table`) into a
:class:`HorizonCalibration`; :meth:`HorizonCalibration.to_toml` / :func:`read_calibration` write
and read it (an integrity hash over the content: a truncated or hand-edited file is refused);
:func:`apply_calibration` puts the weights into a spec, so that every caller of the offline
objective (``tsfa rank``, ``tsfa run``, sensitivities, figures) evaluates

    J(r) = w_rank eps(r) + w_cov r + w_sparse (r_ref / r)^b sum_k p_k phi(pi_k rho_bar_k(r))

in test error at the horizon (the bound's c5, c3 and c4 set so that its rank, covariance and
sparsification terms equal those three at this spec) and the online controller uses the same
phi. A calibration is refused, naming the key, for another task, model (LoRA modules and sizes),
method or error-feedback rule; a different regime (clients, alpha, local steps, learning rate,
horizon) is allowed with a warning, since the weights were measured there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tsfa.config.spec import SystemSpec
from tsfa.maths import bound as bd
from tsfa.maths import horizon as hz

FORMAT = "tsfa-horizon-calibration/2"
#: Earlier formats still read: /1 had no rank exponent (the ratio form, b = 0).
READABLE = ("tsfa-horizon-calibration/1", FORMAT)
#: Keys that must match the spec or run a calibration is applied to (refused otherwise).
IDENTITY_KEYS = ("task", "method", "error_feedback", "upload", "n_modules", "d_in", "d_out")
#: Keys of the regime the weights were measured in (a difference is a warning).
REGIME_KEYS = ("num_clients", "dirichlet_alpha", "local_steps", "batch_size", "learning_rate",
               "rounds", "num_train")
WEIGHTS = ("w_rank", "w_cov", "w_sparse", "sparse_rank_exponent", "error_floor")


class CalibrationError(ValueError):
    """A calibration file is unreadable, corrupt, or made for another task or model."""


def identity_of(cfg) -> tuple[dict, dict]:
    """(identity, regime) of a run config whose ``[lora]`` is resolved for the trained model."""
    exp, s = cfg.experiment, cfg.system
    ident = {"task": exp.task, "method": exp.method, "error_feedback": exp.error_feedback,
             "upload": exp.upload, "n_modules": int(s.lora.n_modules), "d_in": int(s.lora.d_in),
             "d_out": int(s.lora.d_out)}
    regime = {"num_clients": int(s.clients.num_clients),
              "dirichlet_alpha": float(s.clients.dirichlet_alpha),
              "local_steps": int(s.training.local_steps), "batch_size": int(s.training.batch_size),
              "learning_rate": float(s.training.learning_rate), "rounds": int(s.training.rounds),
              "num_train": int(exp.num_train)}
    return ident, regime


@dataclass(frozen=True, eq=False)
class HorizonCalibration:
    """Weights (:class:`tsfa.maths.horizon.WeightEstimate` per name of :data:`WEIGHTS`; the rank
    exponent b of the sparsification term with its reference rank ``rank_ref``), the phi form
    chosen, every form's fit (``phi_fits``: form -> (w_sparse, stderr, SSE, LOO error, b)), the
    eps model
    the rank weight was fitted against (``eps``: bound keys), the ``identity`` and ``regime`` of
    the pilots' run config, the pilot table and free-form ``notes``."""

    weights: dict
    phi: str
    phi_fits: dict
    eps: dict
    identity: dict
    regime: dict
    pilots: pd.DataFrame
    notes: list = field(default_factory=list)
    rank_ref: int = 8
    source: str = ""  # the file it was read from (not part of the content)

    def value(self, name: str) -> float:
        return float(self.weights[name].value)

    # ---------------------------------------------------------------- file
    def payload(self) -> dict:
        """Everything the file holds, as plain data (the integrity hash covers this)."""
        w = {k: {"value": e.value, "stderr": e.stderr, "n": e.n, "method": e.method}
             for k, e in self.weights.items()}
        return {"format": FORMAT, "identity": dict(self.identity), "regime": dict(self.regime),
                "weights": w, "phi": self.phi, "rank_ref": int(self.rank_ref),
                "phi_fits": {k: list(v) for k, v in self.phi_fits.items()},
                "eps": {k: (list(v) if isinstance(v, list | tuple) else v)
                        for k, v in self.eps.items()},
                "pilots": self.pilots.drop(columns=["path"], errors="ignore").to_dict("list"),
                "notes": list(self.notes)}

    def to_toml(self) -> str:
        """The calibration as TOML: a readable header, then the tables; ``integrity.sha256`` over
        the canonical JSON of the content."""
        data = self.payload()
        lines = ["# tsfa horizon calibration (docs/model.md §8b): the offline objective's weights",
                 "# in test error (1 - accuracy) at the horizon, measured by pilot runs.",
                 "# Apply with `tsfa rank SPEC --calibration FILE` or `tsfa run --calibration FILE`.",
                 "# Do not edit: the integrity hash below refuses an edited file; re-run",
                 "# `tsfa calibrate-weights` instead."]
        for k, e in self.weights.items():
            lines.append(f"#   {k} = {e.value:.5g} +- {e.stderr:.2g} (n = {e.n}): {e.method}")
        lines.append(f"#   phi = {self.phi}, rank factor (r_ref / r)^b with r_ref = {self.rank_ref}"
                     " (least leave-one-out error of the forms: "
                     + ", ".join(f"{f} LOO {v[3]:.3g} at b = {v[4]:g}" if len(v) > 4 else
                                 f"{f} SSE {v[2]:.3g}" for f, v in self.phi_fits.items()) + ")")
        lines += [f"# {n}" for n in self.notes]
        lines += ["", f"format = {_toml(FORMAT)}", f"phi = {_toml(self.phi)}",
                  f"rank_ref = {_toml(int(self.rank_ref))}",
                  f"notes = {_toml(list(self.notes))}"]
        for table in ("identity", "regime", "eps"):
            lines += ["", f"[{table}]"] + [f"{k} = {_toml(v)}" for k, v in data[table].items()]
        for k, v in data["weights"].items():
            lines += ["", f"[weights.{k}]"] + [f"{a} = {_toml(b)}" for a, b in v.items()]
        lines += ["", "[phi_fits]"] + [f"{k} = {_toml(v)}" for k, v in data["phi_fits"].items()]
        lines += ["", "[pilots]"] + [f"{k} = {_toml(v)}" for k, v in data["pilots"].items()]
        lines += ["", "[integrity]", f"sha256 = {_toml(_digest(data))}", ""]
        return "\n".join(lines)


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = float(v)
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to the calibration file")


def _digest(data: dict) -> str:
    def norm(v):
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        if isinstance(v, float | np.floating):
            return repr(float(v))
        if isinstance(v, np.integer):
            return int(v)
        return v

    return hashlib.sha256(json.dumps(norm(data), sort_keys=True).encode()).hexdigest()


def write_calibration(cal: HorizonCalibration, out: str | Path) -> Path:
    """Write :meth:`HorizonCalibration.to_toml` to ``out`` (parent folders created)."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(cal.to_toml(), encoding="utf-8")
    return p


def read_calibration(path: str | Path) -> HorizonCalibration:
    """Read a calibration file; :class:`CalibrationError` (one line) when it is missing, not
    TOML, of another format, incomplete, or its content does not match its integrity hash."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CalibrationError(f"calibration {str(p)!r}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"calibration {str(p)!r}: not a TOML file ({exc})") from None
    if data.get("format") not in READABLE:
        raise CalibrationError(f"calibration {str(p)!r}: format = {data.get('format')!r}, "
                               f"expected one of {', '.join(map(repr, READABLE))}")
    old = data["format"] != FORMAT
    for key in ("identity", "regime", "weights", "phi", "phi_fits", "eps", "pilots",
                "integrity"):
        if key not in data:
            raise CalibrationError(f"calibration {str(p)!r}: missing [{key}]")
    stored = data.pop("integrity").get("sha256")
    missing = [k for k in (*IDENTITY_KEYS, *REGIME_KEYS)
               if k not in data["identity"] and k not in data["regime"]]
    if missing:
        raise CalibrationError(f"calibration {str(p)!r}: missing key(s) {', '.join(missing)}")
    if stored != _digest(data):
        raise CalibrationError(f"calibration {str(p)!r}: content does not match integrity.sha256 "
                               "(edited or corrupt); re-run `tsfa calibrate-weights`")
    try:
        weights = {k: hz.WeightEstimate(float(v["value"]), float(v["stderr"]), int(v["n"]),
                                        str(v["method"])) for k, v in data["weights"].items()}
        if old:  # format 1: the ratio form, no rank factor
            weights["sparse_rank_exponent"] = hz.WeightEstimate(
                0.0, math.nan, 0, "format 1 file: the ratio form (b = 0)")
        rank_ref = int(data.get("rank_ref", 8))
        if set(weights) != set(WEIGHTS):
            raise KeyError(", ".join(sorted(set(WEIGHTS) ^ set(weights))))
        bd.phi_form(data["phi"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"calibration {str(p)!r}: bad [weights] or phi ({exc})") from None
    return HorizonCalibration(weights, data["phi"],
                              {k: tuple(v) for k, v in data["phi_fits"].items()}, data["eps"],
                              data["identity"], data["regime"], pd.DataFrame(data["pilots"]),
                              list(data.get("notes", [])), rank_ref=rank_ref, source=str(p))


# --------------------------------------------------------------------------- fit
def eps_keys(spec: SystemSpec) -> dict:
    """The bound keys that define eps(r) in ``spec`` (stored with the rank weight)."""
    b = spec.bound
    return {"eps_model": b.eps_model, "spectrum_decay": float(b.spectrum_decay),
            "spectrum_dim": int(b.spectrum_dim), "spectrum": [float(v) for v in b.spectrum]}


def pilots_at(pilots: pd.DataFrame, rounds: int) -> pd.DataFrame:
    """The pilot table at horizon ``rounds`` <= the pilots' own: ``final_error`` = 1 - the mean
    test accuracy of rounds ``rounds - LAST_ROUNDS .. rounds - 1`` of each pilot's
    ``accuracy_curve`` (:func:`tsfa.experiments.results.final_accuracy`'s definition). A pilot
    of T rounds trains its first t rounds as a pilot of t rounds would: nothing in a fixed-policy
    run depends on T (docs/model.md §8b)."""
    from tsfa.experiments.results import LAST_ROUNDS

    if "accuracy_curve" not in pilots:
        raise ValueError("pilots_at: the pilot table has no accuracy curves")
    t = int(rounds)
    if not 1 <= t <= int(pilots["rounds"].min()):
        raise ValueError(f"pilots_at: horizon {t} outside 1..{int(pilots['rounds'].min())} (the "
                         "pilots' rounds)")
    out = pilots.copy()
    out["final_error"] = [1.0 - float(np.mean(list(c)[max(0, t - LAST_ROUNDS):t]))
                          for c in pilots["accuracy_curve"]]
    out["rounds"] = t
    return out


def fit_calibration(pilots: pd.DataFrame, cfg, notes=()) -> HorizonCalibration:
    """Fit (H) of docs/model.md §8b to a pilot table (columns kind, rank, rho, seed,
    final_error) of the run config ``cfg`` (resolved ``[lora]``; its eps model is the one the
    rank weight is fitted against). The ratio pilots' reference is the rank pilot of their rank
    and seed at rho = 1; the sparsification model of least leave-one-out error is chosen."""
    ident, regime = identity_of(cfg)
    return _fit(pilots, cfg.system, ident, regime, notes)


def _fit(pilots: pd.DataFrame, spec: SystemSpec, ident: dict, regime: dict,
         notes=(), forms=bd.PHI_VARIANTS) -> HorizonCalibration:
    from tsfa.control.offline import eps_of

    ranks = pilots[pilots["kind"] == "rank"]
    if ranks.empty:
        raise ValueError("fit_calibration: no rank pilots")
    w = hz.fit_rank_weights(ranks["rank"], eps_of(spec, ranks["rank"].to_numpy()),
                            ranks["final_error"], ranks["seed"])
    ref = ranks[ranks["rho"] == 1.0].set_index(["rank", "seed"])["final_error"]
    rho = pilots[(pilots["kind"] == "rho") & (pilots["rho"] < 1.0)]
    keyed = [(r.rho, r.final_error - ref[(r.rank, r.seed)], r.rank) for r in rho.itertuples()
             if (r.rank, r.seed) in ref.index]
    if not keyed:
        raise ValueError("fit_calibration: no ratio pilot has a rank pilot of its rank and seed "
                         "at rho = 1")
    sel = hz.select_phi_form([k[0] for k in keyed], [k[1] for k in keyed], forms=tuple(forms),
                             rank=[k[2] for k in keyed])
    w["w_sparse"] = sel.w
    n_ranks = len({k[2] for k in keyed})
    w["sparse_rank_exponent"] = hz.WeightEstimate(
        sel.exponent, sel.exponent_se, len(keyed),
        f"least leave-one-out error over b in [0, 3] (step 0.05) of the ratio pilots at "
        f"{n_ranks} rank(s), stderr the half-width of the b within one residual variance of the "
        "least SSE" if n_ranks >= 2 else "one ratio-pilot rank: b is not identified, 0 (ratio form)")
    return HorizonCalibration(
        {k: w[k] for k in WEIGHTS}, sel.form,
        {f: (e.value, e.stderr, sse, loo, b) for f, (e, sse, loo, b) in sel.fits.items()},
        eps_keys(spec), ident, regime, pilots.reset_index(drop=True), list(notes),
        rank_ref=int(sel.rank_ref))


def at_horizon(cal: HorizonCalibration, rounds: int) -> HorizonCalibration:
    """``cal`` refitted at horizon ``rounds`` from its pilots' accuracy curves (:func:`pilots_at`,
    same estimators; the phi form kept, since it is the controller's too), when ``rounds`` is
    shorter than the pilots' and the file holds the curves; else ``cal`` itself (a longer horizon
    is extrapolated: :func:`check_calibration` warns)."""
    t, own = int(rounds), int(cal.regime.get("rounds", 0))
    if t >= own or "accuracy_curve" not in cal.pilots or t < 1:
        return cal
    spec = SystemSpec().replace(**{f"bound.{k}": (tuple(v) if isinstance(v, list) else v)
                                   for k, v in cal.eps.items()})
    notes = [*cal.notes, f"refitted at horizon T = {t} from the pilots' accuracy curves "
             f"(pilots of {own} rounds)"]
    out = _fit(pilots_at(cal.pilots, t), spec, dict(cal.identity), dict(cal.regime) | {
        "rounds": t}, notes, forms=(cal.phi,))
    return dataclasses.replace(out, source=cal.source)


# --------------------------------------------------------------------------- apply
def check_calibration(cal: HorizonCalibration, cfg=None, spec: SystemSpec | None = None) -> list:
    """Refuse (:class:`CalibrationError`, one line naming the key) a calibration made for another
    task, method or model than the run config ``cfg`` (or, with only ``spec``, its LoRA
    sizes); return warning lines for a different regime."""
    if cfg is not None:
        ident, regime = identity_of(cfg)
    else:
        ident = {"n_modules": spec.lora.n_modules, "d_in": spec.lora.d_in,
                 "d_out": spec.lora.d_out}
        regime = {"num_clients": spec.clients.num_clients,
                  "dirichlet_alpha": spec.clients.dirichlet_alpha,
                  "local_steps": spec.training.local_steps,
                  "batch_size": spec.training.batch_size,
                  "learning_rate": spec.training.learning_rate, "rounds": spec.training.rounds}
    for k, v in ident.items():
        if cal.identity.get(k) != v:
            key = f"experiment.{k}" if k in ("task", "method", "error_feedback", "upload") \
                else f"lora.{k}"
            raise CalibrationError(f"calibration made for {k} = {cal.identity.get(k)!r}, but "
                                   f"{key} = {v!r} here: calibrate this task and model "
                                   "(`tsfa calibrate-weights`)")
    curves = "accuracy_curve" in cal.pilots
    return [f"calibration measured at {k} = {cal.regime[k]!r}, applied at {v!r}: the weights "
            "are extrapolated" for k, v in regime.items()
            if k in cal.regime and not _same(cal.regime[k], v)
            and not (k == "rounds" and curves and int(v) <= int(cal.regime[k]))]


def _same(a, b) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9) if isinstance(a, int | float) else a == b


def unit_terms(spec: SystemSpec) -> tuple[float, float]:
    """(covariance term per unit rank at c3 = 1, sparsification weight Gamma at c4 = 1) of
    ``spec``'s bound (docs/model.md §2): the divisors that turn the weights into c3 and c4."""
    b, tr = spec.bound, spec.training
    cov1 = float(bd.covariance_term(1, tr.learning_rate, tr.local_steps, b.grad_bound, 1.0,
                                    form=b.cov_form, grad_noise=b.grad_noise,
                                    heterogeneity=b.heterogeneity))
    gam1 = float(bd.sparsification_gamma(b.smoothness, tr.learning_rate, tr.local_steps,
                                         b.grad_bound, 1.0))
    return cov1, gam1


def apply_calibration(spec: SystemSpec, cal: HorizonCalibration) -> SystemSpec:
    """``spec`` with the calibration's weights: its eps model, ``c5 = w_rank``, ``c3`` and ``c4``
    such that the covariance term is ``w_cov r`` and the sparsification weight ``w_sparse`` at
    this spec, and ``control.phi`` the calibrated form (the controller's too). Raises
    :class:`CalibrationError` when the bound of ``spec`` has a zero unit term."""
    cal = at_horizon(cal, spec.training.rounds)
    cov1, gam1 = unit_terms(spec)
    if not (cov1 > 0 and gam1 > 0):
        raise CalibrationError("calibration: the spec's bound gives a zero covariance or "
                               "sparsification unit (bound.grad_bound, training.learning_rate)")
    eps = dict(cal.eps)
    changes = {f"bound.{k}": (tuple(v) if isinstance(v, list) else v) for k, v in eps.items()}
    if eps.get("eps_model") != "given":
        changes.pop("bound.spectrum", None)
    changes |= {"bound.c5": cal.value("w_rank"), "bound.c3": cal.value("w_cov") / cov1,
                "bound.c4": cal.value("w_sparse") / gam1, "control.phi": cal.phi,
                "bound.sparse_rank_exponent": cal.value("sparse_rank_exponent"),
                "bound.sparse_rank_ref": int(cal.rank_ref)}
    return spec.replace(**changes)


def calibration_table(cal: HorizonCalibration) -> pd.DataFrame:
    """The weights as a table: key, value, stderr, n, method (for printing and reports)."""
    return pd.DataFrame([{"key": k, "value": e.value, "stderr": e.stderr, "n": e.n,
                          "method": e.method} for k, e in cal.weights.items()])


#: The shipped calibration of the embedded task's default run (regenerated by
#: ``tsfa calibrate-weights --out tsfa/experiments/configs/calibration_synthetic.toml``).
SHIPPED = Path(__file__).resolve().parent / "configs" / "calibration_synthetic.toml"


def default_calibration(cfg) -> HorizonCalibration | None:
    """The shipped calibration when ``cfg`` runs the task, method, error feedback and upload it
    was made for (the embedded task's main job), else None (a user's own task is calibrated by
    ``tsfa calibrate-weights``). A different regime (K, T, ...) is applied with the warnings of
    :func:`check_calibration`."""
    if not SHIPPED.is_file() or cfg.experiment.task != "synthetic":
        return None
    cal = read_calibration(SHIPPED)
    ident, _ = identity_of(cfg)
    if any(cal.identity.get(k) != v for k, v in ident.items()
           if k not in ("n_modules", "d_in", "d_out")):
        return None
    return cal


__all__ = ["FORMAT", "IDENTITY_KEYS", "REGIME_KEYS", "WEIGHTS", "CalibrationError",
           "identity_of", "HorizonCalibration", "write_calibration", "read_calibration",
           "eps_keys", "pilots_at", "fit_calibration", "at_horizon", "check_calibration",
           "unit_terms", "apply_calibration",
           "calibration_table", "SHIPPED", "default_calibration"]
