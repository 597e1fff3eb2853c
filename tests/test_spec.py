"""Tests of tsfa.config.spec (docs/model.md §1-§3, §7): validation errors name the key and range; TOML."""

import dataclasses
import math
import re

import pytest

from tsfa.config.spec import SECTIONS, SpecError, SystemSpec, load_spec, spec_from_toml

# (id, nested dict of changes, substrings the message must contain: the key, and the range)
BAD = [
    ("zero_bandwidth", {"wireless": {"bandwidth_total_hz": 0.0}},
     ["wireless.bandwidth_total_hz", "> 0"]),
    ("negative_bandwidth", {"wireless": {"bandwidth_total_hz": -2e6}},
     ["wireless.bandwidth_total_hz", "> 0", "<= 1e+12"]),
    ("negative_min_bandwidth", {"wireless": {"bandwidth_min_hz": -1.0}},
     ["wireless.bandwidth_min_hz", "> 0"]),
    ("power_too_high", {"wireless": {"tx_power_dbm": 100.0}},
     ["wireless.tx_power_dbm", ">= -50", "<= 60"]),
    ("power_too_low", {"wireless": {"tx_power_dbm": -80}},
     ["wireless.tx_power_dbm", ">= -50", "<= 60"]),
    ("nan", {"training": {"learning_rate": math.nan}}, ["training.learning_rate", "> 0"]),
    ("inf", {"wireless": {"bandwidth_total_hz": math.inf}},
     ["wireless.bandwidth_total_hz", "finite"]),
    ("rank_above_dims", {"lora": {"d_in": 8, "d_out": 12, "rank_candidates": [2, 16]}},
     ["lora.rank_candidates", "16", "8"]),
    ("repeated_ranks", {"lora": {"rank_candidates": [4, 8, 4]}}, ["lora.rank_candidates"]),
    ("empty_ranks", {"lora": {"rank_candidates": []}}, ["lora.rank_candidates", "empty"]),
    ("zero_rank", {"lora": {"rank_candidates": [0, 4]}}, ["lora.rank_candidates[0]", ">= 1"]),
    ("unknown_key", {"wireless": {"bandwith_total_hz": 1e6}},
     ["wireless.bandwith_total_hz", "bandwidth_total_hz"]),
    ("unknown_section", {"radio": {"tx_power_dbm": 20.0}}, ["radio", "wireless"]),
    ("section_not_table", {"wireless": 3}, ["wireless", "table"]),
    ("string_for_number", {"wireless": {"tx_power_dbm": "23"}},
     ["wireless.tx_power_dbm", "number", ">= -50"]),
    ("bool_for_int", {"training": {"local_steps": True}}, ["training.local_steps", "number"]),
    ("float_for_int", {"training": {"local_steps": 2.5}}, ["training.local_steps", "integer"]),
    ("float_in_int_list", {"lora": {"rank_candidates": [2, 4.5]}},
     ["lora.rank_candidates[1]", "integer"]),
    ("scalar_for_list", {"lora": {"rank_candidates": 4}}, ["lora.rank_candidates", "list"]),
    ("list_for_scalar", {"training": {"rounds": [100]}}, ["training.rounds", "number"]),
    ("bad_choice", {"control": {"phi": "cube"}}, ["control.phi", "'inv'", "'linear'"]),
    ("number_for_string", {"control": {"phi": 1}}, ["control.phi", "string"]),
    ("k_wmin_above_wtot", {"clients": {"num_clients": 10},
                           "wireless": {"bandwidth_total_hz": 2e6, "bandwidth_min_hz": 3e5}},
     ["wireless.bandwidth_min_hz", "wireless.bandwidth_total_hz", "clients.num_clients"]),
    ("data_sizes_length", {"clients": {"num_clients": 3, "data_sizes": [10, 20]}},
     ["clients.data_sizes", "3"]),
    ("data_size_zero", {"clients": {"num_clients": 2, "data_sizes": [10, 0]}},
     ["clients.data_sizes[1]", ">= 1"]),
    ("distance_max_below_min", {"clients": {"distance_min_m": 300.0, "distance_max_m": 100.0}},
     ["clients.distance_max_m", "clients.distance_min_m"]),
    ("distance_too_small", {"clients": {"distance_min_m": 0.5}},
     ["clients.distance_min_m", ">= 1"]),
    ("flops_max_below_min", {"clients": {"device_flops_min": 5e12, "device_flops_max": 1e12}},
     ["clients.device_flops_max", "clients.device_flops_min"]),
    ("zero_clients", {"clients": {"num_clients": 0}}, ["clients.num_clients", ">= 1"]),
    ("negative_seed", {"clients": {"seed": -1}}, ["clients.seed", ">= 0"]),
    ("alpha_zero", {"clients": {"dirichlet_alpha": 0.0}}, ["clients.dirichlet_alpha", "> 0"]),
    ("budget_wrong_length", {"clients": {"num_clients": 4},
                             "control": {"latency_budget_s": [10.0, 20.0]}},
     ["control.latency_budget_s", "clients.num_clients = 4"]),
    ("budget_negative", {"control": {"latency_budget_s": [-1.0]}},
     ["control.latency_budget_s[0]", "> 0"]),
    ("budget_reference_rank_above_dims", {"lora": {"d_in": 8, "d_out": 8, "rank_candidates": [1, 2]},
                                          "control": {"budget_reference_rank": 16}},
     ["control.budget_reference_rank", "8"]),
    ("given_eps_empty_spectrum", {"bound": {"eps_model": "given", "spectrum": []}},
     ["bound.spectrum", "non-empty"]),
    ("given_eps_zero_spectrum", {"bound": {"eps_model": "given", "spectrum": [0.0, 0.0]}},
     ["bound.spectrum", "positive"]),
    ("negative_singular_value", {"bound": {"eps_model": "given", "spectrum": [1.0, -1.0]}},
     ["bound.spectrum[1]", ">= 0"]),
    ("spectrum_dim_below_rank", {"bound": {"spectrum_dim": 32}}, ["bound.spectrum_dim", "64"]),
    ("decay_too_large", {"bound": {"spectrum_decay": 25.0}}, ["bound.spectrum_decay", "<= 20"]),
    ("zero_smoothness", {"bound": {"smoothness": 0.0}}, ["bound.smoothness", "> 0"]),
    ("negative_constant", {"bound": {"c3": -1.0}}, ["bound.c3", ">= 0"]),
    ("bits_too_many", {"lora": {"bits_per_param": 128}}, ["lora.bits_per_param", "<= 64"]),
    ("negative_V", {"control": {"V": -1.0}}, ["control.V", ">= 0"]),
    ("zero_local_steps", {"training": {"local_steps": 0}}, ["training.local_steps", ">= 1"]),
    ("bad_deadline_rule", {"control": {"deadline": "drop"}},
     ["control.deadline", "'defer'", "'none'"]),
    ("deadline_factor_below_one", {"control": {"deadline_factor": 0.5}},
     ["control.deadline_factor", ">= 1"]),
    ("bad_constraint", {"control": {"constraint": "mean"}},
     ["control.constraint", "'per_client'", "'max'"]),
]


def test_spec_path_that_is_a_directory(tmp_path):
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


def test_default_budget_is_in_seconds_and_documented():
    """The spec a user edits carries its budget in seconds; the relative rule is opt-in."""
    spec = SystemSpec()
    assert spec.control.latency_budget_s == (40.0,)
    assert spec.control.deadline == "defer"
    text = spec.to_toml()
    assert "latency_budget_s = [40.0]" in text
    assert "bound constants c4, L, G do not enter" in text  # the penalty normalisation


@pytest.mark.parametrize(("changes", "needles"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_spec_error_naming_key(changes, needles):
    with pytest.raises(SpecError) as info:
        SystemSpec.from_dict(changes)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, (needle, msg)


TOML_BAD = [
    ("malformed", "[wireless\ntx_power_dbm = ", ["TOML"]),
    ("malformed_value", "[wireless]\ntx_power_dbm = 23 dBm\n", ["TOML"]),
    ("nan_text", "[wireless]\nbandwidth_total_hz = nan\n", ["wireless.bandwidth_total_hz", "nan"]),
    ("inf_text", "[wireless]\ntx_power_dbm = inf\n", ["wireless.tx_power_dbm", "finite"]),
    ("string_text", '[training]\nrounds = "100"\n', ["training.rounds", "number"]),
    ("unknown_section_text", "[radio]\nx = 1\n", ["radio"]),
]


@pytest.mark.parametrize(("text", "needles"), [b[1:] for b in TOML_BAD], ids=[b[0] for b in TOML_BAD])
def test_bad_toml_text(text, needles):
    with pytest.raises(SpecError) as info:
        spec_from_toml(text)
    for needle in needles:
        assert needle in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(SpecError, match="nope.toml"):
        load_spec(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("[lora]\nrank_candidates = [1, 2,\n")
    with pytest.raises(SpecError, match="bad.toml.*TOML"):
        load_spec(bad)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[lora]\nrank_candidates = [4, 4]\n")
    with pytest.raises(SpecError, match="lora.rank_candidates"):
        load_spec(wrong)


def test_replace_unknown_key():
    with pytest.raises(SpecError, match="wireless"):
        SystemSpec().replace(**{"tx_power_dbm": 20.0})
    with pytest.raises(SpecError, match="radio.x"):
        SystemSpec().replace(**{"radio.x": 1})
    with pytest.raises(SpecError, match="wireless.nope"):
        SystemSpec().replace(**{"wireless.nope": 1})


# --------------------------------------------------------------------------- valid specs
def test_defaults_valid_and_frozen():
    spec = SystemSpec()
    assert spec.lora.params_per_rank == 36_864
    assert spec.lora.rank_candidates == (1, 2, 4, 8, 16, 32, 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.wireless.tx_power_dbm = 10.0


def test_replace_changes_one_value_and_validates():
    spec = SystemSpec()
    new = spec.replace(**{"wireless.tx_power_dbm": 20, "lora.rank_candidates": [8, 2, 4]})
    assert new.wireless.tx_power_dbm == 20.0 and isinstance(new.wireless.tx_power_dbm, float)
    assert new.lora.rank_candidates == (2, 4, 8)  # sorted
    assert new.training == spec.training and spec.wireless.tx_power_dbm == 23.0
    with pytest.raises(SpecError, match="wireless.tx_power_dbm"):
        spec.replace(**{"wireless.tx_power_dbm": 99.0})


def test_integer_valued_float_accepted_for_int():
    spec = SystemSpec().replace(**{"training.local_steps": 10.0})
    assert spec.training.local_steps == 10 and isinstance(spec.training.local_steps, int)


ROUND_TRIP = [
    {},
    {"clients.num_clients": 3, "clients.data_sizes": [5, 10, 20], "clients.dirichlet_alpha": math.inf,
     "control.latency_budget_s": [12.5, 7.25, 30.0], "control.phi": "inv_sq", "control.V": 0.0},
    {"bound.eps_model": "given", "bound.spectrum": [3.0, 2.5, 1e-3], "wireless.tx_power_dbm": -3.5,
     "lora.rank_candidates": [4], "soft.aggregation": "normalised"},
    {"wireless.tx_power_dbm": 0.1 + 0.2, "training.learning_rate": 1 / 3,
     "compute.flops_per_sample": 5.28e10 * 1.0000000000001},
]


@pytest.mark.parametrize("changes", ROUND_TRIP)
def test_toml_round_trip(changes):
    spec = SystemSpec().replace(**changes)
    text = spec.to_toml()
    assert spec_from_toml(text) == spec
    assert spec_from_toml(text).to_toml() == text


def test_toml_file_round_trip(tmp_path):
    spec = SystemSpec().replace(**{"training.rounds": 7})
    path = tmp_path / "spec.toml"
    path.write_text(spec.to_toml(), encoding="utf-8")
    assert load_spec(path) == spec
    assert load_spec(None) == SystemSpec()


def test_every_toml_key_has_a_comment_and_every_field_appears():
    lines = SystemSpec().to_toml().splitlines()
    keys = []
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*) = ", line)
        if m:
            keys.append(m.group(1))
            assert lines[i - 1].startswith("# "), line
            assert "allowed:" in lines[i - 1]
    expected = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert keys == expected
    assert [ln for ln in lines if ln.startswith("[")] == [f"[{s}]" for s in SECTIONS]
