"""Option values as their declared types: what YAML, the command line or JSON give, coerced.

Values are coerced lightly ("16" -> 16, "false" -> False, 2.0 -> 2, a list read back from
JSON -> tuple), and anything else is refused with ``TypeError``, which ``personachat.args``
turns into an ``ArgsError`` naming the option, the value and the type expected.
"""

from __future__ import annotations

import os
from typing import Any

# What each declared type takes, in words, for error messages.
EXPECTED = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a mapping (dict)",
    tuple: "a list of numbers",
}

_TRUE_WORDS, _FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


def is_int(value: Any) -> bool:
    """An integer, and not a bool (``True`` is an int to Python, never a size to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def coerce(value: Any, kind: type) -> Any:
    """``value`` (not None) as ``kind``; ``TypeError`` if it cannot be one."""
    if kind is bool:
        return _as_bool(value)
    if isinstance(value, bool):  # True would pass below as the number 1
        raise TypeError(value)
    if kind is int:
        return _as_int(value)
    if kind is float:
        return _as_float(value)
    if kind is str:
        return _as_str(value)
    if kind is tuple and isinstance(value, list):  # a tuple read back from JSON or YAML
        return tuple(value)
    if not isinstance(value, kind):
        raise TypeError(value)
    return value


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (*_TRUE_WORDS, *_FALSE_WORDS):
        return value.lower() in _TRUE_WORDS
    raise TypeError(value)


def _as_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise TypeError(value)


def _as_float(value: Any) -> float:
    if isinstance(value, int | float | str):
        try:
            return float(value)
        except (ValueError, OverflowError):
            pass
    raise TypeError(value)


def _as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike | int):  # a Path, or a folder named 2024 in YAML
        return str(value)
    raise TypeError(value)
