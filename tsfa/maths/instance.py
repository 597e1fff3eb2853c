"""A realised system: the per-client arrays a :class:`~tsfa.config.spec.SystemSpec` describes.

The spec holds ranges and a seed; :func:`realize` draws distances and device speeds from their
own random streams and derives weights, mean gains, compute latencies and latency budgets.
All arrays have shape (K,) and SI units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tsfa.config.spec import SystemSpec
from tsfa.maths import wireless as wl
from tsfa.maths.payload import PayloadModel
from tsfa.maths.rng import streams
from tsfa.maths.units import dbm_to_w


@dataclass(frozen=True)
class SystemInstance:
    """Per-client quantities of one realised system (docs/model.md §1, §7)."""

    weights: np.ndarray  # p_k, sums to 1
    distance_m: np.ndarray  # d_k [m]
    path_gain: np.ndarray  # beta_k (linear)
    mean_gamma_hz: np.ndarray  # P beta_k / N0 [Hz]
    device_flops: np.ndarray  # f_k [FLOP/s]
    compute_s: np.ndarray  # T^cmp_k [s]
    budget_s: np.ndarray  # Tbar_k [s]

    @property
    def num_clients(self) -> int:
        return int(self.weights.shape[0])


def client_weights(data_sizes, num_clients: int) -> np.ndarray:
    """p_k = D_k / sum_j D_j; equal weights when no sizes are given (docs/model.md §1)."""
    if len(data_sizes) == 0:
        return np.full(num_clients, 1.0 / num_clients)
    d = np.asarray(data_sizes, dtype=float)
    return d / d.sum()


def full_payload_bits(spec: SystemSpec, rank: int) -> float:
    """Exact bits of a SOFT upload at rho = 1 (all factors, head, no index bits)."""
    return float(PayloadModel.from_spec(spec, "soft", rank).bits(1.0))


def equal_share_ergodic_rate_bps(spec: SystemSpec, mean_gamma_hz: np.ndarray) -> np.ndarray:
    """Ergodic rate R_bar_k on the equal share W_tot / K (docs/model.md §1, closed form with E1)."""
    w = spec.wireless.bandwidth_total_hz / spec.clients.num_clients
    return wl.ergodic_rate_bps(w, mean_gamma_hz)


def automatic_budget_s(spec: SystemSpec, compute_s, mean_gamma_hz) -> np.ndarray:
    """Default budget Tbar_k = T^cmp_k + f * S(rho=1, r_ref) / R_bar_k (docs/model.md §7, [DESIGN]).

    "Mean uplink latency" is taken as the payload over the ergodic rate: under Rayleigh fading
    E[S / R] itself is infinite (E[1/|g|^2] diverges), so the ergodic-rate latency is the
    finite reference. f = ``control.budget_uplink_fraction``, r_ref = ``budget_reference_rank``.
    """
    c = spec.control
    bits = full_payload_bits(spec, c.budget_reference_rank)
    return np.asarray(compute_s) + c.budget_uplink_fraction * bits / equal_share_ergodic_rate_bps(
        spec, mean_gamma_hz)


def realize(spec: SystemSpec) -> SystemInstance:
    """Draw the client geometry and devices (seeded by ``clients.seed``) and derive the rest."""
    cl, wi = spec.clients, spec.wireless
    rng = streams(cl.seed)
    k = cl.num_clients
    distance = wl.draw_distances_m(rng["geometry"], k, cl.distance_min_m, cl.distance_max_m)
    flops = rng["devices"].uniform(cl.device_flops_min, cl.device_flops_max, size=k)
    beta = wl.path_gain(distance, wi.pathloss_intercept_db, wi.pathloss_slope_db)
    gamma = wl.snr_bandwidth_hz(dbm_to_w(wi.tx_power_dbm), beta, dbm_to_w(wi.noise_psd_dbm_hz))
    tr = spec.training
    compute = wl.compute_latency_s(tr.local_steps, tr.batch_size, spec.compute.flops_per_sample,
                                   flops)
    given = spec.control.latency_budget_s
    if len(given) == 0:
        budget = automatic_budget_s(spec, compute, gamma)
    else:
        budget = np.broadcast_to(np.asarray(given, dtype=float), (k,)).copy()
    return SystemInstance(
        weights=client_weights(cl.data_sizes, k),
        distance_m=distance,
        path_gain=beta,
        mean_gamma_hz=gamma,
        device_flops=flops,
        compute_s=compute,
        budget_s=budget,
    )
