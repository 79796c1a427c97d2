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

__all__ = ["dialog_from_turns"]


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
