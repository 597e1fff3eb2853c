"""Wiring a system spec to the online policies of :mod:`tsfa.control.lyapunov` (docs/model.md §4, §7).

The controller works on plain arrays; this module derives them from a
:class:`~tsfa.config.spec.SystemSpec`, its realised :class:`~tsfa.maths.instance.SystemInstance` and a rank:

* payload slope ``a`` and head bits ``h`` of the method's :class:`~tsfa.maths.payload.PayloadModel`
  (affine relaxation of its exact count, §1; for SOFT ``a = S_full(r) + M r ceil(log2 r)``);
* ``rho_min = 1 / r``;
* penalty normalisation [DESIGN]: ``Gamma_k`` (``sparsity_weights``) from
  :func:`tsfa.maths.penalty.penalty_scale_s2`, so that the queues settle near ``V`` times each
  client's uplink budget ``Tbar_k - T^cmp_k`` at every rank and phi form (docs/model.md §4,
  docs/notation.md "Gamma_k"); the bound's constants do not enter;
* a deferred round priced at ``phi(1 / (2 r_max))``, ``r_max`` the largest of
  ``lora.rank_candidates`` and ``rank``: the same price at every rank (``defer_rho``);
* per-round deadlines ``D_k`` (``control.deadline``, :func:`tsfa.maths.instance.round_deadlines_s`)
  and the long-term ``control.constraint``.
"""

from __future__ import annotations

import numpy as np

from tsfa.config.registry import CONTROLLERS
from tsfa.config.spec import SystemSpec
from tsfa.control.base import BasePolicy
from tsfa.maths.instance import SystemInstance, equal_share_ergodic_rate_bps, round_deadlines_s
from tsfa.maths.payload import PayloadModel
from tsfa.maths.penalty import penalty_scale_s2

POLICIES = CONTROLLERS  # the registered policies (iterable names; tsfa.config.registry)


def policy_arrays(spec: SystemSpec, inst: SystemInstance, rank: int,
                  payload: PayloadModel | None = None) -> dict:
    """Keyword arguments shared by every policy constructor (see module docstring). ``payload``:
    the method's payload model (default: SOFT for the spec at ``rank``)."""
    wi = spec.wireless
    payload = PayloadModel.from_spec(spec, "soft", rank) if payload is None else payload
    if payload.rank != rank:
        raise ValueError(f"payload.rank = {payload.rank}: must equal rank = {rank}")
    head, slope = float(payload.head_bits), float(payload.slope_bits)
    rate = equal_share_ergodic_rate_bps(spec, inst.mean_gamma_hz)
    gamma = penalty_scale_s2(inst.weights, inst.budget_s - inst.compute_s, rate, slope, head,
                             1.0 / rank, spec.control.phi)
    return dict(
        weights=inst.weights,
        compute_s=inst.compute_s,
        budget_s=inst.budget_s,
        sparsity_weights=gamma,
        defer_rho=0.5 / max(rank, *spec.lora.rank_candidates),
        slope_bits=slope,
        head_bits=head,
        total_bandwidth_hz=wi.bandwidth_total_hz,
        min_bandwidth_hz=wi.bandwidth_min_hz,
        rho_min=1.0 / rank,
        phi=spec.control.phi,
        deadline_s=round_deadlines_s(spec, inst),
        constraint=spec.control.constraint,
        payload=payload,
    )


def policy_class(kind: str) -> type[BasePolicy]:
    """The :class:`BasePolicy` subclass registered as ``kind``
    (:data:`tsfa.config.registry.CONTROLLERS`)."""
    return CONTROLLERS.load(kind, "policy", BasePolicy)


def make_policy(spec: SystemSpec, inst: SystemInstance, rank: int, kind: str = "tsfa",
                solver: str = "joint", fixed_rho: float = 1.0, V: float | None = None,
                payload: PayloadModel | None = None):
    """A registered policy for ``rank``, built from :func:`policy_arrays` plus ``V`` and the
    options its entry names: ``tsfa`` (Lyapunov; ``solver``), ``fixed`` (equal bandwidth,
    ``fixed_rho``) or ``myopic`` (per-round budget, penalty-minimising). ``V`` defaults to
    ``control.V``; ``payload`` (default SOFT's) sets the planned bits (see :func:`policy_arrays`)."""
    entry = CONTROLLERS.entry(kind)
    cls = policy_class(kind)
    if "fixed_rho" in entry.options and not (np.isfinite(fixed_rho) and 0.0 < fixed_rho <= 1.0):
        raise ValueError(f"rho = {fixed_rho!r}: must be in (0, 1]")
    kwargs = policy_arrays(spec, inst, rank, payload)
    kwargs["V"] = spec.control.V if V is None else float(V)
    options = {"solver": solver, "fixed_rho": fixed_rho}
    return cls(**kwargs, **{k: options[k] for k in entry.options})
