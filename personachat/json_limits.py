"""JSON from outside read within bounds: nesting depth and the size of every number.

Python's ``json`` nests as deep as its recursion limit allows (a ``RecursionError`` past
it; code that walks the result recursively fails sooner), turns a 5,000-digit integer into a
``ValueError`` that is not a ``JSONDecodeError``, and reads ``1e999`` as infinity and
``NaN`` as a float that every comparison calls false. ``loads_bounded`` refuses all of them
with a ``JSONLimitError`` naming the field (``messages[3].content``) before any caller
does arithmetic with them: the depth is measured on the text before parsing (strings
skipped), the numbers as the parser meets them.

The limits are far beyond any real request, dialog file or config (Persona-Chat nests 4
levels, a number of a request has at most a few digits): they only stop hostile input.
"""

from __future__ import annotations

import json
import math
import re

from personachat.errors import PersonachatError

MAX_DEPTH = 64  # nested lists / objects
MAX_NUMBER_CHARS = 100  # characters of one number literal (a float needs ~25)
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class JSONLimitError(PersonachatError, ValueError):
    """JSON nested too deep, or a number too long or too large; ``field`` names where
    (``messages[3].content``; empty for the document as a whole)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class _Refused:
    """Stands in the parsed value for a number that is refused (found after parsing, with
    its path)."""

    def __init__(self, literal: str, why: str) -> None:
        self.literal, self.why = literal, why


def nesting_depth(text: str) -> int:
    """How deep lists and objects nest in the JSON ``text`` (strings are skipped)."""
    import numpy as np

    brackets = np.frombuffer(_NOT_BRACKET.sub("", _STRING.sub("", text)).encode(), np.uint8)
    if not len(brackets):
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def loads_bounded(
    text: str | bytes,
    max_depth: int | None | object = ...,
    max_number_chars: int | None = None,
) -> object:
    """``json.loads(text)``, refusing (JSONLimitError) nesting beyond ``max_depth``, a number
    literal longer than ``max_number_chars``, one too large for a float, and NaN/Infinity.
    Malformed JSON still raises ``json.JSONDecodeError``. ``max_depth=None`` skips measuring
    the depth (it costs a pass over the text: ~0.1 s a MB, too much for a 200 MB data file)
    and refuses only what the parser cannot nest (its recursion limit). The defaults are
    read at each call: ``MAX_DEPTH`` and ``MAX_NUMBER_CHARS`` of this module raise them."""
    max_depth = MAX_DEPTH if max_depth is ... else max_depth
    max_number_chars = max_number_chars or MAX_NUMBER_CHARS
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="surrogatepass")
    too_deep = f"the JSON nests lists or objects more than {max_depth or 'a few hundred'} levels"
    if max_depth is not None and text.count("[") + text.count("{") > max_depth:
        if nesting_depth(text) > max_depth:
            raise JSONLimitError(too_deep + " deep")
    refused = []

    def number(literal: str, kind: type) -> object:
        if len(literal) > max_number_chars:
            why = f"a number of {len(literal):,} characters (at most {max_number_chars})"
        elif kind is float and math.isinf(value := float(literal)):
            why = f"the number {literal} is too large for a float"
        else:
            return value if kind is float else int(literal)
        refused.append(_Refused(literal, why))
        return refused[-1]

    def constant(name: str) -> object:
        refused.append(_Refused(name, f"{name} is not a JSON number"))
        return refused[-1]

    try:
        data = json.loads(
            text,
            parse_int=lambda s: number(s, int),
            parse_float=lambda s: number(s, float),
            parse_constant=constant,
        )
    except RecursionError:
        raise JSONLimitError(too_deep + " deep") from None
    if refused:
        where, bad = _find_refused(data)
        raise JSONLimitError(f"{where or 'the JSON'}: {bad.why}", where)
    return data


def _find_refused(data: object) -> tuple[str, _Refused]:
    """The path (``a.b[2]``) and marker of the first refused number in ``data``."""
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _Refused):
            return path, value
        if isinstance(value, dict):
            items = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        else:
            continue
        stack.extend(reversed(items))
    raise AssertionError("a refused number was recorded but not found")
