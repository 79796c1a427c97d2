"""Text rules every entry point shares (floor 1: imports nothing of personachat).

Data files, character cards, the server's requests and the Telegram bot all take text from
outside. Each checks it with these functions, so a lone surrogate or a value of the wrong
type is described the same way everywhere; each entry point adds its own advice (a data file
says "fix or remove it", a request "send text that UTF-8 can encode").
"""

from __future__ import annotations

import json

DATA_ADVICE = " (a \\u escape without its pair?) — fix or remove it"


def unicode_problem(text: str, advice: str = DATA_ADVICE) -> str | None:
    """What makes ``text`` invalid Unicode, followed by ``advice``, or None when it is valid.
    JSON can escape a lone surrogate (``"\\ud800"``) that no UTF-8 text holds and no
    tokenizer takes, so text is checked where it enters, never in a tokenizer's exception."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (
            f"not valid Unicode: a lone surrogate (\\u{ord(text[err.start]):04x}) at "
            f"character {err.start}{advice}"
        )
    return None


def describe(value: object) -> str:
    """A short, never-raising description of a value for error messages (JSON vocabulary)."""
    try:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return f"the boolean {'true' if value else 'false'}"
        if isinstance(value, int):
            if value.bit_length() > 64:
                return "a very large number"
            return f"the number {value}"
        if isinstance(value, float):
            return f"the number {value!r}"
        if isinstance(value, str):
            if not value:
                return "an empty string"
            text = value if len(value) <= 40 else value[:37] + "..."
            return f"the string {json.dumps(text, ensure_ascii=False)}"
        if isinstance(value, list | tuple):
            n = len(value)
            return "an empty list" if n == 0 else f"a list of {n} item{'s' if n != 1 else ''}"
        if isinstance(value, dict):
            return "an empty object" if not value else "an object"
        return f"a Python {type(value).__name__}"
    except Exception:  # a hostile __len__/__repr__ must not break error reporting
        return "an unprintable value"
