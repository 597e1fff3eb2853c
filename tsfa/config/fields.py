"""Validated spec fields: the field factory, range checks with one-line errors naming the key,
the section base class and the TOML reading and writing shared by every config section."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import field
from pathlib import Path


class SpecError(ValueError):
    """A configuration value is missing, malformed or out of its allowed range."""


def _f(default, doc: str, unit: str = "", lo=None, hi=None, *, lo_open=False, choices=None,
       kind=None, allow_empty=True, allow_inf=False):
    """A spec field with documentation and range metadata.

    ``lo``/``hi`` bound numbers (and the items of number lists); ``lo_open`` makes ``lo`` strict;
    ``choices`` lists allowed strings; ``kind`` is the Python type (items' type for lists).
    """
    meta = dict(doc=doc, unit=unit, lo=lo, hi=hi, lo_open=lo_open, choices=choices, kind=kind,
                allow_empty=allow_empty, allow_inf=allow_inf)
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): d, metadata=meta)
    return field(default=default, metadata=meta)


def _range_text(meta) -> str:
    if meta["choices"]:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    if meta["kind"] is str:
        return "any string"
    if meta["kind"] is bool:
        return "true or false"
    lo, hi = meta["lo"], meta["hi"]
    parts = []
    if lo is not None:
        parts.append(f"{'>' if meta['lo_open'] else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    return " and ".join(parts) if parts else "any finite value"


def _check_scalar(key: str, value, meta, kind):
    if kind is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{key} = {value!r}: expected true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise SpecError(f"{key} = {value!r}: expected a string, {_range_text(meta)}")
        if meta["choices"] and value not in meta["choices"]:
            raise SpecError(f"{key} = {value!r}: must be {_range_text(meta)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{key} = {value!r}: expected a number, {_range_text(meta)}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise SpecError(f"{key} = {value!r}: expected an integer, {_range_text(meta)}")
        value = int(value)
    else:
        value = float(value)
        if math.isnan(value):
            raise SpecError(f"{key} = nan: must be {_range_text(meta)} ({meta['doc']})")
        if math.isinf(value) and not meta["allow_inf"]:
            raise SpecError(f"{key} = {value!r}: must be finite, {_range_text(meta)} "
                            f"({meta['doc']})")
    lo, hi = meta["lo"], meta["hi"]
    bad_lo = lo is not None and (value <= lo if meta["lo_open"] else value < lo)
    bad_hi = hi is not None and value > hi
    if bad_lo or bad_hi:
        unit = f" {meta['unit']}" if meta["unit"] else ""
        raise SpecError(f"{key} = {value!r}{unit}: must be {_range_text(meta)} ({meta['doc']})")
    return value


def _validate_fields(obj, section: str) -> None:
    """Type- and range-check every field of a spec section in place (frozen-safe)."""
    for f in dataclasses.fields(obj):
        meta = f.metadata
        key = f"{section}.{f.name}"
        value = getattr(obj, f.name)
        kind = meta["kind"]
        if f.default is dataclasses.MISSING:  # list-valued field
            if not isinstance(value, list | tuple):
                raise SpecError(f"{key} = {value!r}: expected a list of {kind.__name__} "
                                f"({_range_text(meta)})")
            if not value and not meta["allow_empty"]:
                raise SpecError(f"{key}: must not be empty")
            checked = tuple(_check_scalar(f"{key}[{i}]", v, meta, kind) for i, v in
                            enumerate(value))
        else:
            checked = _check_scalar(key, value, meta, kind)
        object.__setattr__(obj, f.name, checked)


class _Section:
    SECTION = ""

    def __post_init__(self):
        _validate_fields(self, self.SECTION)
        self._check()

    def _check(self) -> None:  # cross-field checks inside a section
        pass



def build_section(sec_cls: type, table) -> _Section:
    """Validate one TOML table (a dict; unknown keys are errors) into its frozen section."""
    name = sec_cls.SECTION
    if not isinstance(table, dict):
        raise SpecError(f"[{name}]: expected a table, got {table!r}")
    allowed = {f.name for f in dataclasses.fields(sec_cls)}
    bad = set(table) - allowed
    if bad:
        raise SpecError(f"unknown key {name}.{sorted(bad)[0]}: allowed keys in [{name}] are "
                        + ", ".join(sorted(allowed)))
    return sec_cls(**table)



def section_toml_lines(section) -> list[str]:
    """``key = value`` lines of one spec section, each after a comment with its meaning, unit
    and allowed range."""
    lines = []
    for f in dataclasses.fields(section):
        meta = f.metadata
        unit = f" [{meta['unit']}]" if meta["unit"] else ""
        lines.append(f"# {meta['doc']}{unit}; allowed: {_range_text(meta)}")
        lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
    return lines


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = repr(v)  # shortest string that round-trips exactly
        return text if any(c in text for c in ".en") else text + ".0"

    return str(v)



def read_toml(path: str | Path, what: str = "file", hint: str = "") -> dict:
    """Parse a TOML file; a missing file or malformed TOML is a :class:`SpecError`."""
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"{what} {str(p)!r} is a directory, not a TOML file"
                        + (f" ({hint})" if hint else ""))
    if not p.is_file():
        raise SpecError(f"{what} {str(p)!r} does not exist" + (f" ({hint})" if hint else ""))
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{what} {str(p)!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise SpecError(f"{what} {str(p)!r} cannot be read: {exc.strerror}") from None
