"""The horizon calibration file (docs/model.md §8b): round trip, refusal of a corrupt file or of
one made for another task or model, and `tsfa rank --calibration` moving r* as the weights say."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tsfa.cli import app
from tsfa.config.experiment import RunConfig
from tsfa.config.spec import SystemSpec
from tsfa.control.offline import client_terms, eps_of, optimal_rank
from tsfa.experiments import horizon as hc
from tsfa.maths.horizon import WeightEstimate
from tsfa.maths.instance import realize

runner = CliRunner()


def make_cal(spec: SystemSpec, w_rank=0.3, w_cov=0.001, w_sparse=0.01, form="inv",
             task="synthetic", b=0.0, rank_ref=8) -> hc.HorizonCalibration:
    """A calibration made for ``spec``'s LoRA sizes (as if fitted), with given weights."""
    cfg = RunConfig().replace(**{"experiment.task": task})
    cfg = RunConfig(cfg.experiment, spec)
    ident, regime = hc.identity_of(cfg)
    w = {"w_rank": w_rank, "w_cov": w_cov, "w_sparse": w_sparse, "sparse_rank_exponent": b,
         "error_floor": 0.4}
    pilots = pd.DataFrame({"kind": ["rank", "rank", "rank", "rho"], "rank": [1, 2, 4, 4],
                           "rho": [1.0, 1.0, 1.0, 0.5], "seed": [0, 0, 0, 0],
                           "final_error": [0.6, 0.5, 0.45, 0.47]})
    return hc.HorizonCalibration(
        {k: WeightEstimate(v, 0.1 * v, 4, f"planted {k}") for k, v in w.items()}, form,
        {form: (w_sparse, 0.001, 1e-5, 2e-5, b)}, hc.eps_keys(spec), ident, regime, pilots,
        ["a note"], rank_ref=rank_ref)


def test_round_trip(tmp_path):
    spec = SystemSpec()
    cal = make_cal(spec, form="inv_sq")
    back = hc.read_calibration(hc.write_calibration(cal, tmp_path / "c.toml"))
    assert back.payload() == cal.payload()
    assert back.source == str(tmp_path / "c.toml")
    assert hc.apply_calibration(spec, back) == hc.apply_calibration(spec, cal)


def test_corrupt_or_edited_file_refused(tmp_path):
    path = hc.write_calibration(make_cal(SystemSpec()), tmp_path / "c.toml")
    text = path.read_text()
    path.write_text(text.replace("w_rank]\nvalue = 0.3", "w_rank]\nvalue = 0.5"))
    with pytest.raises(hc.CalibrationError, match="integrity"):
        hc.read_calibration(path)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(hc.CalibrationError, match="c.toml"):
        hc.read_calibration(path)
    path.write_text("format = 'something else'\n")
    with pytest.raises(hc.CalibrationError, match="format"):
        hc.read_calibration(path)
    with pytest.raises(hc.CalibrationError, match="missing.toml"):
        hc.read_calibration(tmp_path / "missing.toml")


def test_other_task_or_model_refused_regime_warned():
    spec = SystemSpec()
    cal = make_cal(spec, task="fashion_mnist")
    run = RunConfig(RunConfig().experiment, spec)  # task synthetic
    with pytest.raises(hc.CalibrationError, match="experiment.task = 'synthetic'"):
        hc.check_calibration(cal, run)
    other = spec.replace(**{"lora.d_in": spec.lora.d_in // 2})
    with pytest.raises(hc.CalibrationError, match="lora.d_in"):
        hc.check_calibration(make_cal(spec), spec=other)
    warned = hc.check_calibration(make_cal(spec), spec=spec.replace(**{"training.rounds": 7}))
    assert len(warned) == 1 and "rounds" in warned[0]


def test_applied_weights_are_the_terms_of_J():
    """At the spec it is applied to, J(r) = w_rank eps(r) + w_cov r + w_sparse sum p phi."""
    spec = SystemSpec()
    cal = make_cal(spec, w_rank=0.2, w_cov=0.003, w_sparse=0.02, form="inv_sq", b=1.5,
                   rank_ref=8)
    s = hc.apply_calibration(spec, cal)
    inst = realize(s)
    table = optimal_rank(s, inst).solution["table"]
    ranks = table["rank"].to_numpy()
    terms = client_terms(s, inst, ranks)
    want = (0.2 * eps_of(s, ranks) + 0.003 * ranks
            + 0.02 * (8.0 / ranks) ** 1.5 * terms["phi_mean"])
    ok = table["feasible"].to_numpy()
    np.testing.assert_allclose(table["J"].to_numpy()[ok], want[ok], rtol=1e-12)
    assert s.control.phi == "inv_sq"


def _rank_cli(tmp_path, cal, name):
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(SystemSpec().to_toml())
    path = hc.write_calibration(cal, tmp_path / name)
    res = runner.invoke(app, ["rank", str(spec_file), "--calibration", str(path), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_rank_cli_moves_r_star_as_the_weights_say(tmp_path):
    """Free sparsification and no covariance cost: r* is the largest feasible candidate; a heavy
    sparsification weight pulls it down to the rank that sends the most of itself; each r* is
    the argmin of the weights' J computed here from its parts."""
    spec = SystemSpec()
    inst = realize(spec)
    ranks = np.asarray(spec.lora.rank_candidates)
    terms = client_terms(spec, inst, ranks)
    feas = terms["feasible"]
    got = {}
    for name, (wr, wc, ws) in {"free": (0.3, 0.0, 0.0), "costly": (0.3, 0.0, 5.0)}.items():
        rep = _rank_cli(tmp_path, make_cal(spec, wr, wc, ws), f"{name}.toml")
        j = wr * eps_of(spec, ranks) + wc * ranks + ws * terms["phi_mean"]
        want = int(ranks[feas][np.argmin(j[feas])])
        assert rep["rank"] == want, name
        got[name] = rep["rank"]
    assert got["free"] == int(ranks[feas].max())
    assert got["costly"] < got["free"]


@pytest.mark.filterwarnings("error::RuntimeWarning")  # phi of a never-uploading client stays finite
def test_rank_exponent_moves_r_star_up_as_the_weights_say(tmp_path):
    """A count form (b = 2 under inv_sq) charges a large rank less for the same ratio than the
    ratio form (b = 0): r* never falls, and each is the argmin of J computed here."""
    spec = SystemSpec().replace(**{"control.phi": "inv_sq"})
    inst = realize(spec)
    ranks = np.asarray(spec.lora.rank_candidates)
    terms = client_terms(spec, inst, ranks)
    feas = terms["feasible"]
    got = {}
    for b in (0.0, 2.0):
        rep = _rank_cli(tmp_path, make_cal(spec, 0.3, 0.0, 0.05, form="inv_sq", b=b),
                        f"b{b}.toml")
        j = 0.3 * eps_of(spec, ranks) + 0.05 * (8.0 / ranks) ** b * terms["phi_mean"]
        assert rep["rank"] == int(ranks[feas][np.argmin(j[feas])]), b
        got[b] = rep["rank"]
    assert got[2.0] > got[0.0]


def test_format_1_file_reads_as_the_ratio_form(tmp_path):
    """A calibration written before the rank exponent (format 1) still applies: b = 0."""
    cal = make_cal(SystemSpec(), b=0.7)
    data = cal.payload()
    data["format"] = "tsfa-horizon-calibration/1"
    del data["weights"]["sparse_rank_exponent"], data["rank_ref"]
    data["phi_fits"] = {k: v[:3] for k, v in data["phi_fits"].items()}
    lines = [f"format = {hc._toml(data['format'])}", f"phi = {hc._toml(data['phi'])}",
             f"notes = {hc._toml(data['notes'])}"]
    for table in ("identity", "regime", "eps"):
        lines += [f"[{table}]"] + [f"{k} = {hc._toml(v)}" for k, v in data[table].items()]
    for k, v in data["weights"].items():
        lines += [f"[weights.{k}]"] + [f"{a} = {hc._toml(x)}" for a, x in v.items()]
    lines += ["[phi_fits]"] + [f"{k} = {hc._toml(list(v))}" for k, v in data["phi_fits"].items()]
    lines += ["[pilots]"] + [f"{k} = {hc._toml(v)}" for k, v in data["pilots"].items()]
    lines += ["[integrity]", f"sha256 = {hc._toml(hc._digest(data))}"]
    (tmp_path / "v1.toml").write_text("\n".join(lines) + "\n")
    back = hc.read_calibration(tmp_path / "v1.toml")
    assert back.value("sparse_rank_exponent") == 0.0
    assert hc.apply_calibration(SystemSpec(), back).bound.sparse_rank_exponent == 0.0


def test_rank_cli_refuses_a_corrupt_calibration_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("not toml [")
    res = runner.invoke(app, ["rank", "--calibration", str(bad)])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "bad.toml" in res.output


def _curves_cal(spec: SystemSpec, T=40, rho_ranks=(8, 16), seeds=(0, 1)):
    """A calibration whose pilots' accuracy curves come from known weights at every horizon t:
    w_rank(t) = 0.3 + 3/t, w_sparse(t) = 0.002 (b = 1), error floor 0.4 + 2/t."""
    from tsfa.experiments.results import LAST_ROUNDS

    rows = []
    eps = lambda r: eps_of(spec, np.asarray([r]))[0]  # noqa: E731
    for s in seeds:
        for kind, r, rho in ([("rank", r, 1.0) for r in (1, 2, 4, 8, 16)]
                             + [("rho", q, p) for q in rho_ranks for p in (0.5, 0.25, 0.125)]):
            curve = []
            for t in range(1, T + 1):
                err = 0.4 + 2 / t + (0.3 + 3 / t) * eps(r) + 0.01 * s
                if kind == "rho":
                    err += 0.002 * float((1 - rho) / rho**2) * (8 / r)
                curve.append(1 - err)
            rows.append({"kind": kind, "rank": r, "rho": rho, "seed": s,
                         "final_error": 1 - float(np.mean(curve[-LAST_ROUNDS:])),
                         "final_test_loss": 1.0, "rounds": T, "accuracy_curve": curve})
    pilots = pd.DataFrame(rows)
    cfg = RunConfig(RunConfig().experiment, spec.replace(**{"training.rounds": T}))
    return hc.fit_calibration(pilots, cfg)


def test_horizon_refit_from_the_pilots_curves(tmp_path):
    """A shorter horizon is refitted from the curves (same estimators, phi form kept), the
    pilots' own horizon and longer ones are the file's weights; the file round-trips the curves."""
    from tsfa.experiments.results import LAST_ROUNDS

    spec = SystemSpec().replace(**{"bound.eps_model": "given",
                                   "bound.spectrum": tuple(1 / np.arange(1, 17))})
    cal = _curves_cal(spec)
    assert cal.value("w_rank") == pytest.approx(np.mean([0.3 + 3 / t for t in (38, 39, 40)]),
                                                rel=1e-6)
    back = hc.read_calibration(hc.write_calibration(cal, tmp_path / "c.toml"))
    for t in (6, 20):
        at = hc.at_horizon(back, t)
        ts = range(t - LAST_ROUNDS + 1, t + 1)
        assert at.value("w_rank") == pytest.approx(np.mean([0.3 + 3 / u for u in ts]), rel=1e-6)
        assert at.value("w_sparse") == pytest.approx(0.002, rel=1e-6)
        assert at.value("sparse_rank_exponent") == pytest.approx(1.0, abs=1e-9)
        assert at.phi == cal.phi and at.regime["rounds"] == t
        applied = hc.apply_calibration(spec.replace(**{"training.rounds": t}), back)
        assert applied.bound.c5 == pytest.approx(at.value("w_rank"))
        assert not hc.check_calibration(back, spec=spec.replace(**{"training.rounds": t}))
    assert hc.at_horizon(back, 40) is back and hc.at_horizon(back, 80) is back
    assert hc.check_calibration(back, spec=spec.replace(**{"training.rounds": 80}))


def test_pilots_at_is_final_accuracy_of_the_first_rounds():
    """Independent reference: the error at horizon t is 1 - final_accuracy of the first t rows."""
    from tsfa.experiments.results import final_accuracy

    rng = np.random.default_rng(1)
    curve = list(rng.uniform(0.2, 0.6, 30))
    pilots = pd.DataFrame([{"kind": "rank", "rank": 4, "rho": 1.0, "seed": 0,
                            "final_error": 0.0, "rounds": 30, "accuracy_curve": curve}])
    for t in (1, 2, 7, 30):
        want = 1 - final_accuracy(pd.DataFrame({"round": range(t), "accuracy": curve[:t]}))
        assert hc.pilots_at(pilots, t)["final_error"].iloc[0] == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="horizon 31"):
        hc.pilots_at(pilots, 31)


def test_a_pilots_first_rounds_are_a_shorter_pilot(tmp_path):
    """What the horizon refit rests on: a fixed-policy run of T rounds trains its first t rounds
    exactly as a run of t rounds (nothing depends on T)."""
    from tsfa.engines.local import train

    base = RunConfig().replace(**{"training.local_steps": 2, "experiment.num_train": 200,
                                  "experiment.num_test": 50, "clients.num_clients": 2,
                                  "experiment.rank": 4, "experiment.controller": "fixed",
                                  "experiment.rho": 0.5, "control.deadline": "none"})
    long = train(base.replace(**{"training.rounds": 3}), out=tmp_path / "l").rounds
    short = train(base.replace(**{"training.rounds": 2}), out=tmp_path / "s").rounds
    cols = ["accuracy", "test_loss", "train_loss", "total_bits"]
    pd.testing.assert_frame_equal(long[cols].head(2), short[cols])


def test_pilots_do_not_read_V_or_the_budget(tmp_path):
    """A pilot (fixed policy, no deadline) trains alike whatever V and the latency budget: the
    shipped calibration's pilots, trained under V = 0.1 and a frozen budget, are the pilots of
    today's default (docs/model.md §8b)."""
    from tsfa.engines.local import train
    from tsfa.experiments.weights import PilotPlan, pilot_configs

    base = RunConfig().replace(**{"training.local_steps": 2, "experiment.num_train": 200,
                                  "experiment.num_test": 50, "clients.num_clients": 2,
                                  "training.rounds": 2})
    (_, _, _, _, a), = pilot_configs(base, PilotPlan((1, 2, 4), (0.5,), (4,), (0,), 50))[3:4]
    b = a.replace(**{"control.V": 0.1, "control.latency_budget_s": [9.0, 7.5]})
    ra = train(a, out=tmp_path / "a").rounds
    rb = train(b, out=tmp_path / "b").rounds
    cols = ["accuracy", "test_loss", "train_loss", "total_bits", "mean_rho", "senders"]
    pd.testing.assert_frame_equal(ra[cols], rb[cols])
