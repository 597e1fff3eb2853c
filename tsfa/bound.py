"""Stable alias of :mod:`tsfa.maths.bound` (the convergence bound, docs/model.md §2).

The bound lived at ``tsfa.bound`` before the maths layer moved to :mod:`tsfa.maths`; this module
keeps ``import tsfa.bound`` and ``from tsfa.bound import phi`` working. It re-exports the public
names of :mod:`tsfa.maths.bound` (its ``__all__``), the same objects, and nothing else; like that
module it imports numpy only, never cvxpy, pandas or torch (``tests/test_purity.py``).
"""

from tsfa.maths.bound import *  # noqa: F403
from tsfa.maths.bound import __all__  # noqa: F401
