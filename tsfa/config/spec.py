"""System specification: frozen, validated configuration loaded from TOML (docs/model.md §1-§3, §7).

Every field carries its meaning, unit and allowed range as metadata; the same metadata drives
validation (one clear :class:`SpecError` naming the key and the allowed range) and the
commented TOML printed by ``tsfa spec``. All defaults are tsfa's [DESIGN] defaults of docs/model.md §7,
not numbers from the paper's body.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsfa.config.fields import (
    SpecError,
    _f,
    _Section,
    build_section,
    read_toml,
    section_toml_lines,
)


@dataclass(frozen=True)
class ClientsSpec(_Section):
    """Clients and their data (docs/model.md §1)."""

    SECTION = "clients"
    num_clients: int = _f(10, "number of clients K", "", 1, 100_000, kind=int)
    data_sizes: tuple = _f([], "samples per client D_k; empty = equal sizes (p_k = 1/K)", "samples",
                           1, None, kind=int)
    dirichlet_alpha: float = _f(0.5, "label-Dirichlet concentration alpha (inf = IID)", "", 0.0,
                                None, lo_open=True, kind=float, allow_inf=True)
    distance_min_m: float = _f(50.0, "smallest client distance to the server", "m", 1.0, 1e5,
                               kind=float)
    distance_max_m: float = _f(500.0, "largest client distance to the server", "m", 1.0, 1e5,
                               kind=float)
    device_flops_min: float = _f(1e12, "slowest client compute speed f_k", "FLOP/s", 0.0, 1e18,
                                 lo_open=True, kind=float)
    device_flops_max: float = _f(5e12, "fastest client compute speed f_k", "FLOP/s", 0.0, 1e18,
                                 lo_open=True, kind=float)
    seed: int = _f(0, "seed of the drawn distances and device speeds", "", 0, 2**63 - 1, kind=int)

    def _check(self):
        if self.distance_max_m < self.distance_min_m:
            raise SpecError(f"clients.distance_max_m = {self.distance_max_m:g}: must be >= "
                            f"clients.distance_min_m = {self.distance_min_m:g}")
        if self.device_flops_max < self.device_flops_min:
            raise SpecError(f"clients.device_flops_max = {self.device_flops_max:g}: must be >= "
                            f"clients.device_flops_min = {self.device_flops_min:g}")
        if self.data_sizes and len(self.data_sizes) != self.num_clients:
            raise SpecError(f"clients.data_sizes has {len(self.data_sizes)} entries: must be empty "
                            f"or have clients.num_clients = {self.num_clients} entries")


@dataclass(frozen=True)
class LoraSpec(_Section):
    """LoRA modules and payload (docs/model.md §1). Default: ViT-Base query+value, 24 modules 768x768."""

    SECTION = "lora"
    n_modules: int = _f(24, "number of LoRA modules M (ViT-Base q,v: 12 blocks x 2)", "", 1,
                        10_000, kind=int)
    d_in: int = _f(768, "input dimension of each adapted projection", "", 1, 1_000_000, kind=int)
    d_out: int = _f(768, "output dimension of each adapted projection", "", 1, 1_000_000,
                    kind=int)
    rank_candidates: tuple = _f([1, 2, 4, 8, 16, 32, 64], "LoRA ranks r considered offline", "", 1,
                                None, kind=int, allow_empty=False)
    lora_alpha: float = _f(16.0, "LoRA scaling numerator (scaling = lora_alpha / r)", "", 0.0, None,
                           lo_open=True, kind=float)
    bits_per_param: int = _f(32, "bits per transmitted value q_b (training sends real floats: 16, "
                             "32 or 64)", "bit", 1, 64, kind=int)
    value_dtype: str = _f("bf16", "float format of 16-bit values on the air: bf16 or fp16",
                          choices=("bf16", "fp16"), kind=str)
    head_params: int = _f(76_900, "classification-head parameters sent in full (768x100+100)", "",
                          0, None, kind=int)

    def _check(self):
        cap = min(self.d_in, self.d_out)
        for r in self.rank_candidates:
            if r > cap:
                raise SpecError(f"lora.rank_candidates contains {r}: must be between 1 and "
                                f"min(lora.d_in, lora.d_out) = {cap}")
        if len(set(self.rank_candidates)) != len(self.rank_candidates):
            raise SpecError("lora.rank_candidates: must not repeat a rank")
        object.__setattr__(self, "rank_candidates", tuple(sorted(self.rank_candidates)))

    @property
    def params_per_rank(self) -> int:
        """``sum_m (d_in + d_out)``: parameters sent per rank component (36,864 for ViT-Base q,v)."""
        return self.n_modules * (self.d_in + self.d_out)


@dataclass(frozen=True)
class WirelessSpec(_Section):
    """FDMA uplink under Rayleigh fading (docs/model.md §1)."""

    SECTION = "wireless"
    bandwidth_total_hz: float = _f(2e6, "total uplink bandwidth W_tot", "Hz", 0.0, 1e12,
                                   lo_open=True, kind=float)
    bandwidth_min_hz: float = _f(2e4, "smallest bandwidth a client can get w_min", "Hz", 0.0, 1e12,
                                 lo_open=True, kind=float)
    tx_power_dbm: float = _f(23.0, "client transmit power P_k", "dBm", -50.0, 60.0, kind=float)
    noise_psd_dbm_hz: float = _f(-174.0, "noise power spectral density N0", "dBm/Hz", -250.0,
                                 -100.0, kind=float)
    pathloss_intercept_db: float = _f(128.1, "path loss at 1 km", "dB", 0.0, 300.0, kind=float)
    pathloss_slope_db: float = _f(37.6, "path-loss slope per decade of distance", "dB/decade",
                                  0.0, 100.0, kind=float)


@dataclass(frozen=True)
class ComputeSpec(_Section):
    """Client computation model T^cmp = tau b C_s / f_k (docs/model.md §1)."""

    SECTION = "compute"
    flops_per_sample: float = _f(1.05e11, "C_s: forward+backward FLOPs per sample (3 x 35 GFLOP "
                                 "forward = 17.6 GMAC, ViT-B/16 at 224 px)", "FLOP", 0.0, 1e18,
                                 lo_open=True, kind=float)


@dataclass(frozen=True)
class TrainingSpec(_Section):
    """Local training (docs/model.md §2, §7)."""

    SECTION = "training"
    local_steps: int = _f(20, "local steps per round tau", "", 1, 100_000, kind=int)
    batch_size: int = _f(32, "local batch size b", "samples", 1, 1_000_000, kind=int)
    learning_rate: float = _f(5e-4, "local step size eta", "", 0.0, 10.0, lo_open=True, kind=float)
    rounds: int = _f(100, "communication rounds T", "", 1, 10_000_000, kind=int)


@dataclass(frozen=True)
class ControlSpec(_Section):
    """Online Lyapunov control, latency budget and per-round deadline (docs/model.md §4, §7).

    The controller's penalty is normalised, not the bound's: its weight of p_k phi(rho_k) is
    V Gamma_k with Gamma_k [s^2] such that the queues settle near V x each client's uplink budget
    (tsfa.maths.penalty); the bound's c4 L^2 eta^2 tau^2 G^2 does not enter (docs/notation.md).
    """

    SECTION = "control"
    V: float = _f(1.0, "drift-plus-penalty trade-off V; the penalty weight is V Gamma_k, "
                  "Gamma_k [s^2] normalised so that the queues settle near V x each client's "
                  "uplink budget Tbar_k - T^cmp_k at every rank (docs/model.md §4; bound constants "
                  "c4, L, G do not enter); V < 0.3 is degenerate",
                  "", 0.0, 1e12, kind=float)
    phi: str = _f("inv", "sparsification penalty phi: inv=(1-rho)/rho, inv_sq=(1-rho)/rho^2, "
                  "linear=1-rho", choices=("inv", "inv_sq", "linear"), kind=str)
    latency_budget_s: tuple = _f([40.0], "long-term latency budget per round Tbar_k (compute + "
                                 "upload); one value = every client, else one per client; empty "
                                 "= the relative rule of budget_uplink_fraction", "s", 0.0, None,
                                 lo_open=True, kind=float)
    budget_uplink_fraction: float = _f(0.5, "relative rule (only when latency_budget_s is empty): "
                                       "Tbar_k = T^cmp_k + this fraction of client k's expected "
                                       "upload time at rho = 1 on an equal share, uploads slower "
                                       "than deadline_factor x the ergodic-rate time deferred "
                                       "(deadline = 'none': of the ergodic-rate time)",
                                       "", 0.0, 100.0, lo_open=True, kind=float)
    budget_reference_rank: int = _f(16, "relative rule: rank of the upload at rho = 1", "", 1,
                                    None, kind=int)
    constraint: str = _f("per_client", "long-term constraint: per_client (mean latency of each "
                         "client <= Tbar_k, one queue each) or max (mean of max_k T_k <= "
                         "max_k Tbar_k, one queue)", choices=("per_client", "max"), kind=str)
    deadline: str = _f("defer", "per-round deadline rule: defer (an upload that would end after "
                       "D_k = T^cmp_k + deadline_factor (Tbar_k - T^cmp_k) is not sent that round; "
                       "it stays in the error-feedback memory) or none (no deadline: deep fades "
                       "make the mean latency unbounded)", choices=("defer", "none"), kind=str)
    queue_start: str = _f("steady", "virtual queues at round 0: steady (each client's 90th "
                          "percentile of its queue in a simulation of the controller on fading "
                          "draws disjoint from the run's, so that the time-averaged latency over "
                          "the run's own rounds stays within budget, docs/model.md §4) or zero",
                          choices=("steady", "zero"), kind=str)
    deadline_factor: float = _f(4.0, "D_k = T^cmp_k + this factor x (Tbar_k - T^cmp_k): the longest "
                                "upload allowed in one round, in units of the uplink budget", "",
                                1.0, 1e6, kind=float)


@dataclass(frozen=True)
class SoftSpec(_Section):
    """SOFT regulariser and aggregation (docs/model.md §5)."""

    SECTION = "soft"
    zeta: float = _f(1e-3, "orthogonality penalty weight zeta (0 = ablation)", "", 0.0, 1e6,
                     kind=float)
    aggregation: str = _f("separate", "per-rank aggregation: separate, or normalised by the "
                          "selected weight mass", choices=("separate", "normalised"), kind=str)


@dataclass(frozen=True)
class BoundSpec(_Section):
    """Convergence-bound constants and the rank-floor spectrum (docs/model.md §2).

    Defaults are tsfa's illustrative values, chosen so that the default system has an interior
    optimal rank; they are meant to be calibrated from pilot runs (docs/model.md).
    """

    SECTION = "bound"
    c0: float = _f(1.0, "constant of the initialisation term", "", 0.0, None, kind=float)
    c1: float = _f(1.0, "constant of the gradient-noise term", "", 0.0, None, kind=float)
    c2: float = _f(1.0, "constant of the client-drift term", "", 0.0, None, kind=float)
    c3: float = _f(1.0, "constant of the covariance term", "", 0.0, None, kind=float)
    cov_form: str = _f("linear_hetero", "covariance term: linear_hetero = c3 r eta tau G (zeta_h^2 "
                       "+ sigma^2/tau) / (G^2 + zeta_h^2) (||Cov||_F linear in r, grows with client "
                       "dissimilarity), sqrt_r = c3 r eta^2 tau^2 G^4 (earlier form, ||Cov||_F ~ "
                       "sqrt(r), no heterogeneity)", choices=("linear_hetero", "sqrt_r"), kind=str)
    c4: float = _f(1.0, "constant of the sparsification term", "", 0.0, None, kind=float)
    c5: float = _f(1.0, "constant of the rank term", "", 0.0, None, kind=float)
    sparse_rank_exponent: float = _f(
        0.0, "exponent b of the sparsification term's rank factor (r_ref / r)^b: 0 charges the "
        "ratio rho (the bound's form), b = 2 under phi = inv_sq the number of components sent "
        "(docs/model.md §8b); set by a horizon calibration", "", 0.0, 4.0, kind=float)
    sparse_rank_ref: int = _f(8, "reference rank r_ref of that factor (the ratio pilots' rank)",
                              "", 1, None, kind=int)
    smoothness: float = _f(10.0, "smoothness constant L", "", 0.0, None, lo_open=True, kind=float)
    grad_bound: float = _f(3.0, "gradient second-moment bound G", "", 0.0, None, lo_open=True,
                           kind=float)
    grad_noise: float = _f(1.0, "stochastic-gradient standard deviation sigma", "", 0.0, None,
                           kind=float)
    heterogeneity: float = _f(1.0, "client heterogeneity zeta_h", "", 0.0, None, kind=float)
    initial_gap: float = _f(1.0, "F(x0) - F*", "", 0.0, None, kind=float)
    eps_model: str = _f("power_law", "rank floor eps(r): power_law spectrum s_i = i^-decay, or "
                        "given singular values", choices=("power_law", "given"), kind=str)
    spectrum_decay: float = _f(1.0, "power-law exponent of the ideal update's singular values", "",
                               0.0, 20.0, kind=float)
    spectrum_dim: int = _f(768, "number of singular values of the ideal update", "", 1, None,
                           kind=int)
    spectrum: tuple = _f([], "given singular values (eps_model = given), in any order", "", 0.0,
                         None, kind=float)

    def _check(self):
        if self.eps_model == "given":
            if not self.spectrum or sum(self.spectrum) <= 0:
                raise SpecError("bound.spectrum: eps_model = 'given' needs a non-empty list of "
                                "singular values >= 0 with a positive sum")


SECTIONS: dict[str, type] = {
    "clients": ClientsSpec,
    "lora": LoraSpec,
    "wireless": WirelessSpec,
    "compute": ComputeSpec,
    "training": TrainingSpec,
    "control": ControlSpec,
    "soft": SoftSpec,
    "bound": BoundSpec,
}


@dataclass(frozen=True)
class SystemSpec:
    """The complete system specification: one frozen section per TOML table."""

    clients: ClientsSpec = field(default_factory=ClientsSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    wireless: WirelessSpec = field(default_factory=WirelessSpec)
    compute: ComputeSpec = field(default_factory=ComputeSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    control: ControlSpec = field(default_factory=ControlSpec)
    soft: SoftSpec = field(default_factory=SoftSpec)
    bound: BoundSpec = field(default_factory=BoundSpec)

    def __post_init__(self):
        k, lo = self.clients.num_clients, self.wireless
        if k * lo.bandwidth_min_hz > lo.bandwidth_total_hz:
            raise SpecError(
                f"wireless.bandwidth_min_hz = {lo.bandwidth_min_hz:g} Hz: must be <= "
                f"wireless.bandwidth_total_hz / clients.num_clients = "
                f"{lo.bandwidth_total_hz / k:g} Hz (K w_min <= W_tot)")
        nb = len(self.control.latency_budget_s)
        if nb not in (0, 1, k):
            raise SpecError(f"control.latency_budget_s has {nb} entries: must have 0 (automatic), "
                            f"1 (all clients) or clients.num_clients = {k}")
        cap = min(self.lora.d_in, self.lora.d_out)
        if self.control.budget_reference_rank > cap:
            raise SpecError(f"control.budget_reference_rank = {self.control.budget_reference_rank}"
                            f": must be between 1 and min(lora.d_in, lora.d_out) = {cap}")
        rmax = max(self.lora.rank_candidates)
        b = self.bound
        if b.eps_model == "power_law" and b.spectrum_dim < rmax:
            raise SpecError(f"bound.spectrum_dim = {b.spectrum_dim}: must be >= the largest rank "
                            f"candidate {rmax}")

    # ------------------------------------------------------------------ dict / TOML
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (lists for tuples), the exact content of the TOML file."""
        out = {}
        for name in SECTIONS:
            sec = getattr(self, name)
            out[name] = {f.name: (list(v) if isinstance(v := getattr(sec, f.name), tuple) else v)
                         for f in dataclasses.fields(sec)}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SystemSpec:
        """Build and validate from a nested dict; unknown tables or keys are errors."""
        if not isinstance(data, dict):
            raise SpecError(f"spec: expected a table of sections, got {type(data).__name__}")
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise SpecError(f"unknown section [{sorted(unknown)[0]}]: allowed sections are "
                            + ", ".join(SECTIONS))
        return cls(**{name: build_section(sec_cls, data.get(name, {}))
                      for name, sec_cls in SECTIONS.items()})

    def replace(self, **changes: Any) -> SystemSpec:
        """Copy with dotted-key changes, e.g. ``spec.replace(**{"wireless.tx_power_dbm": 20})``."""
        data = self.to_dict()
        for key, value in changes.items():
            section, _, name = key.partition(".")
            if section not in data or not name:
                raise SpecError(f"unknown key {key!r}: use 'section.key' with a section among "
                                + ", ".join(SECTIONS))
            data[section][name] = value
        return SystemSpec.from_dict(data)

    def to_toml(self) -> str:
        """Commented TOML: every key with its meaning, unit and allowed range."""
        lines = ["# tsfa system specification (docs/model.md §1-§3, §7). [DESIGN] defaults of tsfa.",
                 "# Load with `tsfa bound FILE`, `tsfa rank FILE`, `tsfa control FILE`.", ""]
        for name, sec_cls in SECTIONS.items():
            sec = getattr(self, name)
            doc = (sec_cls.__doc__ or "").strip().splitlines()[0]
            lines += [f"[{name}]", f"# {doc}", *section_toml_lines(sec), ""]
        return "\n".join(lines)


def load_spec(path: str | Path | None = None) -> SystemSpec:
    """Load a spec from a TOML file; ``None`` gives the embedded default.

    Raises :class:`SpecError` for a missing file, malformed TOML, unknown keys and bad values.
    """
    if path is None:
        return SystemSpec()
    return SystemSpec.from_dict(read_toml(path, "spec file", "create one with `tsfa spec > FILE`"))


def spec_from_toml(text: str) -> SystemSpec:
    """Parse a spec from TOML text (see :func:`load_spec`)."""
    try:
        return SystemSpec.from_dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"spec is not valid TOML: {exc}") from None
