"""From a conversation (a list of turns, each by the bot or its partner) to a Persona-Chat dialog.

Formats without candidates (plain dialogs, Synthetic-Persona-Chat) all end here, so they share
one convention, the one Persona-Chat itself follows: every bot turn that answers something
becomes an utterance whose ``history`` is the conversation so far, *starting with the
partner*, and whose only candidate is the bot's reply (distractors are added later by
:mod:`personachat.data.candidates`).

When the bot speaks first, its opening line answers nothing: it is not made an utterance, and
it is left out of every history, so histories still start with the partner's first line. This
keeps "history begins with the other speaker" true for every dialog, which the input layout
relies on to give the partner ``<speaker1>`` and the bot ``<speaker2>``.
"""

from __future__ import annotations

from collections.abc import Sequence

from personachat.text import describe, unicode_problem

__all__ = ["dialog_from_turns", "string_list_problems"]


def dialog_from_turns(
    personality: Sequence[str], turns: Sequence[str], by_bot: Sequence[bool]
) -> dict:
    """A Persona-Chat dialog for the bot of ``turns`` (``by_bot[k]``: turn k is the bot's).

    Turns must alternate speakers (readers merge consecutive turns of one speaker first).
    The dialog may have no utterances (the bot never answers); callers report that.
    """
    start = 1 if by_bot and by_bot[0] else 0
    utterances = [
        {"history": list(turns[start:k]), "candidates": [turns[k]]}
        for k in range(start + 1, len(turns))
        if by_bot[k]
    ]
    return {"personality": list(personality), "utterances": utterances}


def string_list_problems(value: object, where: str, what: str, fix: str) -> list[str]:
    """Problems with a field that must be a non-empty list of non-blank strings.

    ``what`` names one item ("persona sentence", "turn") and ``fix`` says how to repair an
    empty list. Blank (whitespace-only) strings count as empty: they carry no text to learn.
    """
    if not isinstance(value, list):
        hint = " — wrap it in a list: [...]" if isinstance(value, str) else ""
        return [f"{where}: expected a list of strings, got {describe(value)}{hint}"]
    if not value:
        return [f"{where}: empty list — {fix}"]
    problems = []
    for k, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(
                f"{where}, item {k}: expected a {what} as a string, got {describe(item)}"
            )
        elif not item.strip():
            problems.append(f"{where}, item {k}: empty {what} — remove it or write the text")
        elif unicode_problem(item):
            problems.append(f"{where}, item {k}: {unicode_problem(item)}")
    return problems
