"""Argument checks shared by the whole package: one way to validate, one style of message.

Every checker takes ``(name, value, ...)``, returns the value normalised (``int``, ``float``,
...) and raises

* ``TypeError`` when ``value`` has the wrong type, and
* ``ValueError`` when it has the right type but lies outside the allowed range,

with a message that names the argument, says what was expected and shows what was given, e.g.
``eps must be a finite float > 0, got 0.0``. Bounds are keyword-only: ``ge``/``gt`` (lower,
inclusive/exclusive) and ``le``/``lt`` (upper). Floats must always be finite.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

__all__ = [
    "check_int",
    "check_float",
    "check_bool",
    "check_choice",
    "check_optional_int",
]


def _bounds(ge=None, gt=None, le=None, lt=None) -> str:
    lo = f">= {ge}" if ge is not None else (f"> {gt}" if gt is not None else "")
    hi = f"<= {le}" if le is not None else (f"< {lt}" if lt is not None else "")
    if lo and hi:
        left = "[" if ge is not None else "("
        right = "]" if le is not None else ")"
        a = ge if ge is not None else gt
        b = le if le is not None else lt
        return f"in {left}{a}, {b}{right}"
    return lo or hi


def _in_range(v, ge, gt, le, lt) -> bool:
    return (
        (ge is None or v >= ge)
        and (gt is None or v > gt)
        and (le is None or v <= le)
        and (lt is None or v < lt)
    )


def check_int(name: str, value: Any, *, ge=None, gt=None, le=None, lt=None) -> int:
    """``value`` as an ``int`` (numpy integers accepted, ``bool`` refused) within the bounds."""
    want = " ".join(filter(None, ("an int", _bounds(ge, gt, le, lt))))
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}")
    v = int(value)
    if not _in_range(v, ge, gt, le, lt):
        raise ValueError(f"{name} must be {want}, got {v}")
    return v


def check_optional_int(name: str, value: Any, **bounds) -> int | None:
    """``None`` or :func:`check_int`."""
    return None if value is None else check_int(name, value, **bounds)


def check_float(name: str, value: Any, *, ge=None, gt=None, le=None, lt=None) -> float:
    """``value`` as a finite ``float`` (ints accepted, ``bool`` refused) within the bounds."""
    want = " ".join(filter(None, ("a finite float", _bounds(ge, gt, le, lt))))
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or not _in_range(v, ge, gt, le, lt):
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return v


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool`` (true/false), else TypeError."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {type(value).__name__} {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``: TypeError for a value of another type than the
    choices, ValueError for an unknown one."""
    choices = list(choices)
    if choices and not any(isinstance(value, type(c)) for c in choices):
        raise TypeError(f"{name} must be one of {choices}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
