"""Lazy package faces (PEP 562): a package's public names resolve on first use.

A package ``__init__`` lists which module holds each public name and gets its ``__getattr__``,
``__dir__`` and ``__all__`` from :func:`lazy_face`, so importing the package (or one of its light
submodules) imports nothing heavy (torch, pandas, cvxpy) until a name that needs it is used
(``tests/test_purity.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_face(package: str, namespace: Mapping[str, object], api: Mapping[str, tuple[str, ...]]
              ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` of the package ``package`` (its ``__name__``).

    ``api`` maps a module, absolute (``"tsfa.maths.bound"``) or relative to the package
    (``".compress"``), to the public names it holds; ``namespace`` is the package's ``globals()``.
    ``__getattr__(name)`` imports the module that holds ``name`` and returns it (an unknown name is
    an ``AttributeError``); ``__dir__()`` lists the package's own globals and every public name;
    ``__all__`` is the sorted public names.
    """
    where = {name: module for module, names in api.items() for name in names}

    def __getattr__(name: str) -> object:
        if name in where:
            return getattr(importlib.import_module(where[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__, sorted(where)
