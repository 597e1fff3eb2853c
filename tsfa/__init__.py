"""tsfa: communication-efficient wireless federated LoRA fine-tuning.

SOFT (sparsified orthogonal fine-tuning) and TSFA (two-stage federated algorithm: offline rank,
online Lyapunov control), after Kim and Choi, arXiv 2505.00333. See docs/model.md for which parts
are the paper's and which are tsfa's reconstruction.
"""

from .bound import PHI_VARIANTS, bound_terms, eps_from_spectrum, phi, term_table
from .covariance import covariance_frobenius, factor_covariance
from .rank import optimal_rank, rank_sensitivity, rank_table, relaxed_rank
from .spec import SpecError, SystemSpec, load_spec
from .system import SystemInstance, realize

__version__ = "0.1.0"

__all__ = [
    "PHI_VARIANTS",
    "SpecError",
    "SystemInstance",
    "SystemSpec",
    "bound_terms",
    "covariance_frobenius",
    "eps_from_spectrum",
    "factor_covariance",
    "load_spec",
    "optimal_rank",
    "phi",
    "rank_sensitivity",
    "rank_table",
    "realize",
    "relaxed_rank",
    "term_table",
    "__version__",
]
