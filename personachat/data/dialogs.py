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

from collections.abc import Iterable

from personachat.errors import PersonachatError
from personachat.text import describe, did_you_mean, string_list_problems

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


def _check_utterance(utterance: object, where: str) -> list[str]:
    if not isinstance(utterance, dict):
        return [f"{where}: expected an object like {_UTTERANCE_EXAMPLE}, got {describe(utterance)}"]
    problems = []
    if "history" not in utterance:
        problems.append(
            f'{where}: missing field "history" — add "history": the list of previous turns, '
            "starting with the other speaker ([] for the first turn)"
            + did_you_mean("history", utterance)
        )
    else:
        problems += string_list_problems(
            utterance["history"],
            f'{where}, field "history"',
            fix="it must list the previous turns as strings ([] for the first turn)",
            allow_empty_list=True,
            allow_empty_items=True,
        )
    if "candidates" not in utterance:
        problems.append(
            f'{where}: missing field "candidates" — add "candidates": a list of possible '
            "replies with the gold (true) reply last" + did_you_mean("candidates", utterance)
        )
    else:
        problems += string_list_problems(
            utterance["candidates"],
            f'{where}, field "candidates"',
            fix="each utterance needs at least one candidate (the gold reply last)",
        )
    return problems


def dialog_problems(dialog: object, where: str, allow_empty_personality: bool = False) -> list[str]:
    """Every problem with one Persona-Chat dialog, each starting with ``where`` (its place in
    the file); the readers check a dialog at a time with it."""
    if not isinstance(dialog, dict):
        return [
            f"{where}: expected an object like {DIALOG_EXAMPLE}, got {describe(dialog)} — "
            "each entry of the top-level list must be one dialog"
        ]
    problems = []
    if "personality" not in dialog:
        problems.append(
            f'{where}: missing field "personality" — add "personality": a list of persona '
            'sentences such as ["i like cats."]' + did_you_mean("personality", dialog)
        )
    else:
        problems += string_list_problems(
            dialog["personality"],
            f'{where}, field "personality"',
            fix='give at least one persona sentence, e.g. ["i like cats."] (or set '
            "allow_empty_personality to read dialogs without a persona)",
            allow_empty_list=allow_empty_personality,
        )
    if "utterances" not in dialog:
        problems.append(
            f'{where}: missing field "utterances" — add "utterances": a list of '
            f"{_UTTERANCE_EXAMPLE} objects" + did_you_mean("utterances", dialog)
        )
        return problems
    utterances = dialog["utterances"]
    if not isinstance(utterances, (list, tuple)):
        problems.append(
            f'{where}, field "utterances": expected a list of {_UTTERANCE_EXAMPLE} objects, '
            f"got {describe(utterances)}"
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
                f"got {describe(dialogs)}{hint}"
            ]
        if not isinstance(dialogs, (list, tuple)):
            return [
                f"{source}: top level: expected a list of dialogs {DIALOG_EXAMPLE}, "
                f"got {describe(dialogs)}"
            ]
        if not dialogs:
            return [f"{source}: no dialogs (empty list) — add at least one dialog {DIALOG_EXAMPLE}"]
        problems: list[str] = []
        for i, dialog in enumerate(dialogs):
            problems += dialog_problems(dialog, f"{source}: dialog {i}", allow_empty_personality)
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
