"""Persona use: does the bot state its persona's facts, and does it contradict them?

Probe utterances carry ``"probe": {"slot": "job", "value": "nurse"}`` (the bundled persona
benchmark, :mod:`personachat.data.synthetic`, annotates every one). For each probe the model
replies greedily to the probe's history and the reply is checked for values:

- ``persona_accuracy``: the share of probe replies that state the persona's value;
- ``persona_contradiction_rate``: the share that state *another* value of the probed slot
  ("i am a pilot ." from a nurse), over the probes whose slot is one of the benchmark's
  (:data:`personachat.data.synthetic_slots.SLOTS`, which lists every value of each slot).

A reply can do neither (it dodges the question) or, rarely, both ("i am a nurse , not a
pilot ."). ``persona_hits@1`` is the ranking accuracy on the persona probes alone.

A probe whose answer is in the *history* (something the user or the bot said earlier in the
conversation, not the persona) carries ``"from": "history"``:
``{"slot": "pet_name", "value": "rex", "from": "history"}``. Those are not persona probes:

- ``history_recall``: the share of history probes whose greedy reply states the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from personachat.data.synthetic_slots import SLOTS
from personachat.evaluation.replies import RepliesFn, reply_all


def _value_pattern(value: str) -> str:
    return rf"(?<!\w){re.escape(value.lower())}(?!\w)"


def mentions(reply: str, value: str) -> bool:
    """Whether the reply states the value as whole words ("tea" does not match "teacher")."""
    return re.search(_value_pattern(value), reply.lower()) is not None


def stated_values(reply: str, values: Iterable[str]) -> set[str]:
    """The values (lowercased) that ``reply`` states as whole words. Longer values are
    matched first and taken out of the reply, so a value inside a longer stated one ("twin
    brother" in "a twin brother") is not stated on its own."""
    text = reply.lower()
    found = set()
    for value in sorted({v.lower() for v in values}, key=len, reverse=True):
        pattern = _value_pattern(value)
        if re.search(pattern, text):
            found.add(value)
            text = re.sub(pattern, " | ", text)
    return found


def contradicts(reply: str, value: str, slot_values: Iterable[str]) -> bool:
    """Whether ``reply`` states a value of the slot other than the persona's ``value``."""
    return bool(stated_values(reply, [*slot_values, value]) - {value.lower()})


PERSONA, HISTORY = "persona", "history"  # where a probe's answer is: its "from"


def probe_items(dialogs: Sequence[dict], source: str = PERSONA) -> list[tuple[int, int, str]]:
    """(dialog index, utterance index, expected value) of every annotated probe whose answer
    is in ``source``: the persona (probes without ``"from"``, or ``"from": "persona"``) or
    the history (``"from": "history"``)."""
    return [
        (d, u, utt["probe"]["value"])
        for d, dialog in enumerate(dialogs)
        for u, utt in enumerate(dialog["utterances"])
        if isinstance(utt.get("probe"), dict)
        and isinstance(utt["probe"].get("value"), str)
        and utt["probe"].get("from", PERSONA) == source
    ]


def history_recall(
    replies_fn: RepliesFn, dialogs: Sequence[dict], silent: bool = False
) -> float | None:
    """Share of history probes (``"from": "history"``) whose greedy reply states the value
    said earlier in the conversation; None when the data has none."""
    probes = probe_items(dialogs, HISTORY)
    if not probes:
        return None
    conversations = [
        (dialogs[d]["personality"], dialogs[d]["utterances"][u]["history"]) for d, u, _ in probes
    ]
    replies = reply_all(replies_fn, conversations, desc="History probes", silent=silent)
    stated = sum(mentions(r, value) for r, (_, _, value) in zip(replies, probes, strict=True))
    return stated / len(probes)


def slot_values(probe: dict) -> tuple[str, ...] | None:
    """Every value of the probe's slot, or None when the slot is not a benchmark slot."""
    slot = SLOTS.get(probe.get("slot")) if isinstance(probe.get("slot"), str) else None
    return slot.values if slot is not None else None


def persona_scores(
    replies_fn: RepliesFn, dialogs: Sequence[dict], silent: bool = False
) -> dict[str, float | None]:
    """``persona_accuracy`` and ``persona_contradiction_rate`` of greedy replies to every
    probe (one decoding pass for both); None where the data has nothing to measure."""
    probes = probe_items(dialogs)
    if not probes:
        return {"persona_accuracy": None, "persona_contradiction_rate": None}
    conversations = [
        (dialogs[d]["personality"], dialogs[d]["utterances"][u]["history"]) for d, u, _ in probes
    ]
    replies = reply_all(replies_fn, conversations, desc="Persona probes", silent=silent)
    stated = contradicted = checked = 0
    for reply, (d, u, value) in zip(replies, probes, strict=True):
        stated += mentions(reply, value)
        values = slot_values(dialogs[d]["utterances"][u]["probe"])
        if values is not None:
            checked += 1
            contradicted += contradicts(reply, value, values)
    return {
        "persona_accuracy": stated / len(probes),
        "persona_contradiction_rate": contradicted / checked if checked else None,
    }


def persona_accuracy(
    replies_fn: RepliesFn, dialogs: Sequence[dict], silent: bool = False
) -> float | None:
    """Share of probes whose reply contains the persona's value (None: no probes in data)."""
    return persona_scores(replies_fn, dialogs, silent)["persona_accuracy"]


def persona_contradiction_rate(
    replies_fn: RepliesFn, dialogs: Sequence[dict], silent: bool = False
) -> float | None:
    """Share of probes whose reply states another value of the probed slot (None: no probe
    of a benchmark slot in the data)."""
    return persona_scores(replies_fn, dialogs, silent)["persona_contradiction_rate"]


def persona_hits_at_1(
    dialogs: Sequence[dict], index: Sequence[tuple], labels: Sequence[int], preds: Sequence[int]
) -> float | None:
    """MC accuracy restricted to probe utterances; ``index[i]`` = (dialog, utterance, …)."""
    probes = {(d, u) for d, u, _ in probe_items(dialogs)}
    picks = [
        y == p for (d, u, *_), y, p in zip(index, labels, preds, strict=True) if (d, u) in probes
    ]
    return sum(picks) / len(picks) if picks else None


def without_persona(dialogs: Sequence[dict]) -> list[dict]:
    """The ablation: the same dialogs with every persona removed from the model's input.

    A persona probe whose value the conversation already states (the bot said its job two
    turns before, and is asked again) can be answered from the history, which the ablation
    keeps: such utterances stay, but are no longer probes, so the ablated accuracy measures
    what the persona alone supplied."""
    return [
        {
            **dialog,
            "personality": [],
            "utterances": [_unless_in_history(u) for u in dialog["utterances"]],
        }
        for dialog in dialogs
    ]


def _unless_in_history(utterance: dict) -> dict:
    """``utterance`` without its ``probe`` when the probed value is said in its history."""
    probe = utterance.get("probe")
    if not isinstance(probe, dict) or not isinstance(probe.get("value"), str):
        return utterance
    if not any(mentions(message, probe["value"]) for message in utterance["history"]):
        return utterance
    return {key: value for key, value in utterance.items() if key != "probe"}
