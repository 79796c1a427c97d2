"""Persona-Chat dialogs: their structure, checked completely, and the one data error.

The training data is the Persona-Chat JSON format used by TransferTransfo and by
``simpletransformers.conv_ai``: a list of dialogs, each
``{"personality": [str, ...], "utterances": [{"history": [str, ...], "candidates": [str, ...]}]}``.
The gold reply of an utterance is its *last* candidate; ``history`` starts with the other
speaker and is an empty list for the first turn. The public file is a dict of splits,
``{"train": [...], "valid": [...]}``, of the same dialogs. Extra keys anywhere are allowed and
kept untouched, so callers can carry their own annotations through.

Everything here is standard library only and runs before any tokenizer or model is loaded, so
that a hand-edited file is reported at once, completely (every problem, not just the first)
and in words that say where the problem is and how to fix it, instead of surfacing later as a
``KeyError`` deep inside training. Reading files is ``personachat.data.files``; the public
download is ``personachat.data.download``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from personachat.errors import PersonachatError
from personachat.text import describe, unicode_problem

#: ``str(DataError)`` lists at most this many problems, then says how many more there are.
MAX_LISTED_PROBLEMS = 50

SPLITS_EXAMPLE = '{"train": [...], "valid": [...]}'
DIALOG_EXAMPLE = '{"personality": [...], "utterances": [...]}'
_UTTERANCE_EXAMPLE = '{"history": [...], "candidates": [...]}'


class DataError(PersonachatError, ValueError):
    """Raised for unusable input data.

    ``problems`` holds every problem found, each a self-contained sentence saying what is
    wrong, where (file, line/column or dialog index and field) and how to fix it. ``str()``
    lists them (at most :data:`MAX_LISTED_PROBLEMS`, then "... and N more"), so one run shows
    the user everything to fix rather than one error per attempt.

    It subclasses ``ValueError`` so code that already catches ``ValueError`` keeps working.
    """

    problems: list[str]

    def __init__(self, problems: str | Iterable[str], header: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else [str(p) for p in problems]
        self.header = header
        # Both go into args so the exception pickles (e.g. across DataLoader workers) intact.
        super().__init__(self.problems, header)

    def __str__(self) -> str:
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        hidden = len(self.problems) - len(shown)
        if self.header is None and len(self.problems) == 1:
            return self.problems[0]
        lines = [self.header or f"{len(self.problems)} problems found in the data:"]
        lines.extend(f"  - {problem}" for problem in shown)
        if hidden:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation


# Shared with every entry point that takes text (personachat.text); the names stay here
# for the readers that import them.
_describe = describe


def _did_you_mean(wanted: str, keys: Iterable[object]) -> str:
    """' (found "persona" — rename it to "personality"?)' when a key looks like a typo."""
    names = [k for k in keys if isinstance(k, str)]
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    if not close:
        return ""
    return f'; found "{close[0]}" — rename it to "{wanted}"?'


def _check_string_list(
    value: object, where: str, *, fix: str, allow_empty_list: bool, allow_empty_strings: bool
) -> list[str]:
    """Problems with a field that must be a list of strings (personality/history/candidates)."""
    if not isinstance(value, (list, tuple)):
        hint = " — wrap it in a list: [...]" if isinstance(value, str) else f" — {fix}"
        return [f"{where}: expected a list of strings, got {_describe(value)}{hint}"]
    if not value and not allow_empty_list:
        return [f"{where}: empty list — {fix}"]
    problems = []
    for k, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(
                f"{where}, item {k}: expected a string, got {_describe(item)} — "
                "each entry must be text in double quotes"
            )
        elif not item and not allow_empty_strings:
            problems.append(f"{where}, item {k}: empty string — remove it or write the text")
        elif unicode_problem(item):
            problems.append(f"{where}, item {k}: {unicode_problem(item)}")
    return problems


def _check_utterance(utterance: object, where: str) -> list[str]:
    if not isinstance(utterance, dict):
        return [
            f"{where}: expected an object like {_UTTERANCE_EXAMPLE}, got {_describe(utterance)}"
        ]
    problems = []
    if "history" not in utterance:
        problems.append(
            f'{where}: missing field "history" — add "history": the list of previous turns, '
            "starting with the other speaker ([] for the first turn)"
            + _did_you_mean("history", utterance)
        )
    else:
        problems += _check_string_list(
            utterance["history"],
            f'{where}, field "history"',
            fix="it must list the previous turns as strings ([] for the first turn)",
            allow_empty_list=True,
            allow_empty_strings=True,
        )
    if "candidates" not in utterance:
        problems.append(
            f'{where}: missing field "candidates" — add "candidates": a list of possible '
            "replies with the gold (true) reply last" + _did_you_mean("candidates", utterance)
        )
    else:
        problems += _check_string_list(
            utterance["candidates"],
            f'{where}, field "candidates"',
            fix="each utterance needs at least one candidate (the gold reply last)",
            allow_empty_list=False,
            allow_empty_strings=False,
        )
    return problems


def _check_dialog(dialog: object, where: str, allow_empty_personality: bool = False) -> list[str]:
    if not isinstance(dialog, dict):
        return [
            f"{where}: expected an object like {DIALOG_EXAMPLE}, got {_describe(dialog)} — "
            "each entry of the top-level list must be one dialog"
        ]
    problems = []
    if "personality" not in dialog:
        problems.append(
            f'{where}: missing field "personality" — add "personality": a list of persona '
            'sentences such as ["i like cats."]' + _did_you_mean("personality", dialog)
        )
    else:
        problems += _check_string_list(
            dialog["personality"],
            f'{where}, field "personality"',
            fix='give at least one persona sentence, e.g. ["i like cats."] (or set '
            "allow_empty_personality to read dialogs without a persona)",
            allow_empty_list=allow_empty_personality,
            allow_empty_strings=False,
        )
    if "utterances" not in dialog:
        problems.append(
            f'{where}: missing field "utterances" — add "utterances": a list of '
            f"{_UTTERANCE_EXAMPLE} objects" + _did_you_mean("utterances", dialog)
        )
        return problems
    utterances = dialog["utterances"]
    if not isinstance(utterances, (list, tuple)):
        problems.append(
            f'{where}, field "utterances": expected a list of {_UTTERANCE_EXAMPLE} objects, '
            f"got {_describe(utterances)}"
        )
    elif not utterances:
        problems.append(
            f'{where}, field "utterances": empty list — a dialog needs at least one utterance '
            f"{_UTTERANCE_EXAMPLE}; remove the dialog or add its turns"
        )
    else:
        for j, utterance in enumerate(utterances):
            problems += _check_utterance(utterance, f"{where}, utterance {j}")
    return problems


def validate_dialogs(
    dialogs: object, source: str = "<data>", allow_empty_personality: bool = False
) -> list[str]:
    """Return every problem found in ``dialogs`` (an empty list means valid).

    ``allow_empty_personality``: a dialog may have ``"personality": []`` (no persona).

    Never raises, whatever it is given (this is what lets :func:`load_dialogs` report all
    problems at once). Each problem starts with ``source`` and a location such as
    ``dialog 3, utterance 1, field "candidates"`` (indices count from 0, as in
    ``dialogs[3]["utterances"][1]``), then says how to fix it. Extra keys are not problems.
    """
    try:
        if isinstance(dialogs, dict):
            hint = (
                " — this looks like a file of splits; load one split with "
                "load_dialogs(path, split=...)"
                if dialogs and all(isinstance(v, list) for v in dialogs.values())
                else ""
            )
            return [
                f"{source}: top level: expected a list of dialogs {DIALOG_EXAMPLE}, "
                f"got {_describe(dialogs)}{hint}"
            ]
        if not isinstance(dialogs, (list, tuple)):
            return [
                f"{source}: top level: expected a list of dialogs {DIALOG_EXAMPLE}, "
                f"got {_describe(dialogs)}"
            ]
        if not dialogs:
            return [f"{source}: no dialogs (empty list) — add at least one dialog {DIALOG_EXAMPLE}"]
        problems: list[str] = []
        for i, dialog in enumerate(dialogs):
            problems += _check_dialog(dialog, f"{source}: dialog {i}", allow_empty_personality)
        return problems
    except Exception as exc:  # pragma: no cover - defensive: the contract is "never raises"
        return [f"{source}: could not be checked ({type(exc).__name__}: {exc})"]


# --------------------------------------------------------------------------- helpers


def personalities(dialogs: list[dict]) -> list[list[str]]:
    """Distinct personas (each a list of sentences) of validated dialogs, in first-seen order.

    Used by the interactive chat to pick a random persona without tokenizing the dataset.
    Two personas are the same when they have the same sentences in the same order.
    """
    seen: set[tuple[str, ...]] = set()
    result: list[list[str]] = []
    for dialog in dialogs:
        key = tuple(dialog["personality"])
        if key not in seen:
            seen.add(key)
            result.append(list(key))
    return result
