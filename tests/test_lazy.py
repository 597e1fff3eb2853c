"""The PEP 562 package faces built by :func:`tsfa._lazy.lazy_face`: every listed name resolves,
``dir`` lists it, an unknown name is an ``AttributeError`` naming the package."""

import importlib

import pytest

from tsfa._lazy import lazy_face

FACES = {"tsfa": (), "tsfa.optim": ("cvxpy",), "tsfa.fl": ("torch",)}


@pytest.mark.parametrize("package", sorted(FACES))
def test_every_public_name_resolves(package):
    for dep in FACES[package]:
        pytest.importorskip(dep)
    mod = importlib.import_module(package)
    assert mod.__all__ and set(mod.__all__) <= set(dir(mod))
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'nope'"):
        mod.nope  # noqa: B018


def test_lazy_face_relative_and_absolute_modules():
    namespace = {"own": 1}
    getattr_, dir_, names = lazy_face("tsfa.maths", namespace,
                                      {".units": ("db_to_linear",), "math": ("pi",)})
    from tsfa.maths.units import db_to_linear

    assert getattr_("db_to_linear") is db_to_linear and getattr_("pi") > 3
    assert names == ["db_to_linear", "pi"] and dir_() == ["db_to_linear", "own", "pi"]
