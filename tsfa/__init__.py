"""tsfa: communication-efficient wireless federated LoRA fine-tuning.

SOFT (sparsified orthogonal fine-tuning) and TSFA (two-stage federated algorithm: offline rank,
online Lyapunov control), after Kim and Choi, arXiv 2505.00333. See docs/model.md for which parts
are the paper's and which are tsfa's reconstruction.

The package is layered (docs/architecture.md):

* :mod:`tsfa.config`: the system spec and the run config (frozen, validated dataclasses; TOML);
* :mod:`tsfa.maths`: pure maths (wireless, payload, bound, covariance, symbolic): numpy only;
* :mod:`tsfa.optim`, :mod:`tsfa.control`: the per-round solvers, the offline rank (stage 1) and
  the Lyapunov controller (stage 2);
* :mod:`tsfa.fl`: torch: ViT, LoRA, data, compressors, aggregation, server and client;
* :mod:`tsfa.engines`: drivers of the server and clients (in-process, Flower);
* :mod:`tsfa.experiments`, :mod:`tsfa.reporting`: run cache, sweeps, reports, figures.

Nothing is imported eagerly (PEP 562): ``import tsfa`` and the pure maths load without cvxpy,
pandas or torch; the names below resolve on first use.
"""

from __future__ import annotations

from tsfa._lazy import lazy_face

__version__ = "0.2.0"

__getattr__, __dir__, __all__ = lazy_face(__name__, globals(), {
    "tsfa.maths.bound": ("PHI_VARIANTS", "bound_terms", "eps_from_spectrum", "phi", "term_table"),
    "tsfa.maths.covariance": ("covariance_frobenius", "factor_covariance"),
    "tsfa.control.offline": ("optimal_rank", "rank_table", "relaxed_rank"),
    "tsfa.control.sensitivity": ("rank_sensitivity",),
    "tsfa.config.spec": ("SpecError", "SystemSpec", "load_spec"),
    "tsfa.maths.instance": ("SystemInstance", "realize"),
})
__all__ += ["__version__"]
