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
from tsfa.maths.outage import deferral_stats
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
    """Relative budget rule, used only when ``control.latency_budget_s`` is empty [DESIGN]:
    ``Tbar_k = T^cmp_k + f U_k`` with ``f = control.budget_uplink_fraction`` and ``U_k`` client
    k's expected upload time of a SOFT upload at rho = 1 and rank ``budget_reference_rank`` on the
    equal share (docs/model.md §1 "Deep fades").

    Under Rayleigh fading the plain mean ``E[S / R]`` is infinite (``E[1/|g|^2]`` diverges), so
    with ``control.deadline = 'defer'`` ``U_k`` is the finite mean of the policy "upload unless it
    would take longer than ``deadline_factor`` times the ergodic-rate time ``S / R_bar_k``, else
    defer" (:func:`tsfa.maths.outage.deferral_stats`), which that policy attains; with
    ``'none'`` it is the ergodic-rate time ``S / R_bar_k`` itself (the old rule: finite, but no
    policy without deferral attains it).
    """
    c = spec.control
    bits = full_payload_bits(spec, c.budget_reference_rank)
    rbar = equal_share_ergodic_rate_bps(spec, mean_gamma_hz)
    uplink = bits / rbar
    if c.deadline == "defer":
        w = spec.wireless.bandwidth_total_hz / spec.clients.num_clients
        _, uplink = deferral_stats(bits, w, mean_gamma_hz, c.deadline_factor * uplink)
    return np.asarray(compute_s) + c.budget_uplink_fraction * uplink


def round_deadlines_s(spec: SystemSpec, inst: SystemInstance) -> np.ndarray | None:
    """Per-round deadlines ``D_k = T^cmp_k + deadline_factor (Tbar_k - T^cmp_k)`` [s], (K,);
    ``None`` when ``control.deadline = 'none'`` (docs/model.md §4 "Deep fades")."""
    c = spec.control
    if c.deadline == "none":
        return None
    return inst.compute_s + c.deadline_factor * (inst.budget_s - inst.compute_s)


def realize(spec: SystemSpec, budget_s=None) -> SystemInstance:
    """Draw the client geometry and devices (seeded by ``clients.seed``) and derive the rest.

    ``budget_s`` (K,) overrides the spec's budgets (the sensitivity analysis holds realised
    budgets fixed without writing them into the spec)."""
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
    if budget_s is not None:
        budget = np.broadcast_to(np.asarray(budget_s, dtype=float), (k,)).copy()
    elif len(given) == 0:
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
