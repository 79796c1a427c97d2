"""Text rules every entry point shares (floor 1: imports nothing of personachat).

Data files, character cards, the server's requests and the Telegram bot all take text from
outside. Each checks it with these functions, so a lone surrogate, a list of strings with a
number in it or a value of the wrong type is described the same way everywhere; each entry
point adds its own advice (a data file says "fix or remove it", a request "send text that
UTF-8 can encode").
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable

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


def string_list_problems(
    value: object,
    where: str,
    *,
    fix: str,
    item: str = "string",
    allow_empty_list: bool = False,
    allow_empty_items: bool = False,
    blank_is_empty: bool = False,
) -> list[str]:
    """Every problem with a field that must be a list of strings (a persona, a history, the
    candidates, a conversation's turns), each naming ``where`` and the item.

    ``fix`` says how to repair an empty list or a value that is no list; ``item`` names one
    entry in the "empty" problem ("turn": "empty turn"); ``blank_is_empty`` counts
    whitespace-only items as empty (a turn of spaces carries no text to learn)."""
    if not isinstance(value, list | tuple):
        hint = "wrap it in a list: [...]" if isinstance(value, str) else fix
        return [f"{where}: expected a list of strings, got {describe(value)} — {hint}"]
    if not value and not allow_empty_list:
        return [f"{where}: empty list — {fix}"]
    problems = []
    for k, entry in enumerate(value):
        problem = _item_problem(entry, item, allow_empty_items, blank_is_empty)
        if problem:
            problems.append(f"{where}, item {k}: {problem}")
    return problems


def _item_problem(entry: object, item: str, allow_empty: bool, blank_is_empty: bool) -> str | None:
    """What is wrong with one entry of a list of strings, or None."""
    if not isinstance(entry, str):
        return (
            f"expected a string, got {describe(entry)} — each entry must be text in double quotes"
        )
    if not allow_empty and not (entry.strip() if blank_is_empty else entry):
        return f"empty {item} — remove it or write the text"
    return unicode_problem(entry)


def did_you_mean(wanted: str, keys: Iterable[object]) -> str:
    """'; found "persona" — rename it to "personality"?' when one of ``keys`` looks like a
    typo of the field ``wanted``, else ''."""
    names = [k for k in keys if isinstance(k, str)]
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    if not close:
        return ""
    return f'; found "{close[0]}" — rename it to "{wanted}"?'


def describe(value: object) -> str:
    """A short, never-raising description of a value for error messages (JSON vocabulary)."""
    try:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return f"the boolean {'true' if value else 'false'}"
        if isinstance(value, int | float):
            return _describe_number(value)
        if isinstance(value, str):
            return _describe_string(value)
        if isinstance(value, list | tuple):
            n = len(value)
            return "an empty list" if n == 0 else f"a list of {n} item{'s' if n != 1 else ''}"
        if isinstance(value, dict):
            return "an empty object" if not value else "an object"
        return f"a Python {type(value).__name__}"
    except Exception:  # a hostile __len__/__repr__ must not break error reporting
        return "an unprintable value"


def _describe_number(value: int | float) -> str:
    if isinstance(value, float):
        return f"the number {value!r}"
    if value.bit_length() > 64:  # Python refuses to print an int of over 4,300 digits
        return "a very large number"
    return f"the number {value}"


def _describe_string(value: str) -> str:
    if not value:
        return "an empty string"
    text = value if len(value) <= 40 else value[:37] + "..."
    return f"the string {json.dumps(text, ensure_ascii=False)}"
