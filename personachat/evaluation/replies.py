"""Metrics of generated replies: word F1 against the gold reply, and self-play repetition.

They take a ``replies_fn`` (a batch of ``(persona, history)`` conversations in, one reply
each out) rather than a model, so they run the same on any decoder and tests need no model.
A figure of generated text depends on the decoding that produced it, so the decoding is
reported beside it (:func:`decoding_label`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from personachat.evaluation.metrics import normalize_answer, word_f1

RepliesFn = Callable[[list[tuple[list[str], list[str]]]], list[str]]
"""Answers a batch of (persona, history) conversations with one reply each."""


def reply_all(
    replies_fn: RepliesFn,
    conversations: Sequence[tuple[list[str], list[str]]],
    batch_size: int = 32,
    desc: str = "Generating",
    silent: bool = False,
) -> list[str]:
    """Replies to every conversation, ``batch_size`` at a time (one padded decoding call)."""
    replies: list[str] = []
    for start in tqdm(
        range(0, len(conversations), batch_size), desc=desc, disable=silent, leave=False
    ):
        replies += replies_fn(list(conversations[start : start + batch_size]))
    return replies


def generation_f1(
    replies_fn: RepliesFn, dialogs: Sequence[dict], limit: int | None = None, silent: bool = False
) -> float:
    """Mean word F1 of generated replies against the gold reply over the dialogs' utterances.

    ``limit`` caps the number of utterances.
    """
    items = [
        (d["personality"], u["history"], u["candidates"][-1])
        for d in dialogs
        for u in d["utterances"]
    ]
    items = items[:limit] if limit else items
    replies = reply_all(replies_fn, [(p, h) for p, h, _ in items], silent=silent)
    scores = [word_f1(reply, gold) for reply, (_, _, gold) in zip(replies, items, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


# Decoding settings that change replies, with the value at which they do nothing.
_NEUTRAL = {
    "repetition_penalty": 1.0,
    "repeat_reply_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "rerank_samples": 0,
}


def decoding_label(options) -> str:
    """The decoding of ``options`` (a ``DecodingOptions`` or ``ConvAIArgs``) in words, for
    results: ``"greedy"`` or ``"top_k=0,top_p=0.9,temperature=0.7"``, followed by the
    settings that steer decoding away from their neutral value
    (``",repetition_penalty=1.2"``). With ``rerank_samples`` > 1 the replies are samples (the
    best of N), so the sampling settings are named even when ``do_sample`` is off."""
    # best-of-N samples (rerank_samples > 1) are drawn with sampling whatever do_sample says
    if getattr(options, "do_sample", False) or getattr(options, "rerank_samples", 0) > 1:
        label = (
            f"top_k={options.top_k:g},top_p={options.top_p:g},temperature={options.temperature:g}"
        )
    else:
        label = "greedy"
    for name, neutral in _NEUTRAL.items():
        value = getattr(options, name, neutral)
        if value != neutral:
            label += f",{name}={value:g}"
    return label


def repetition_rate(replies_fn: RepliesFn, dialogs: Sequence[dict], silent: bool = False) -> float:
    """Share of the bot's replies that repeat one of its earlier replies in the same dialog
    (``repetition_rates``)."""
    return repetition_rates(replies_fn, dialogs, silent)["repetition_rate"]


def repetition_rates(
    replies_fn: RepliesFn, dialogs: Sequence[dict], silent: bool = False
) -> dict[str, float]:
    """How often the bot repeats itself, in one self-play pass:

    - ``repetition_rate``: share of replies equal to *any* earlier reply of the bot in the
      same dialog;
    - ``repeat_previous_rate``: share of replies (from the second on) equal to the bot's
      *previous* reply: the loop users see ("the same reply three turns in a row").

    Replies compare after ConvAI2 normalisation (``normalize_answer``). The bot talks to each
    dialog's partner messages with its *own* replies in the history (self-play against a
    scripted partner), which is where repetition shows up. All dialogs advance turn by turn
    together, so each turn is one batched decoding call.
    """
    histories: list[list[str]] = [[] for _ in dialogs]
    said: list[list[str]] = [[] for _ in dialogs]
    repeats = previous = total = followed = 0
    for turn in range(max((len(d["utterances"]) for d in dialogs), default=0)):
        active = [i for i, d in enumerate(dialogs) if turn < len(d["utterances"])]
        for i in active:
            history = dialogs[i]["utterances"][turn]["history"]
            histories[i].append(history[-1] if history else "")
        replies = reply_all(
            replies_fn,
            [(dialogs[i]["personality"], histories[i]) for i in active],
            desc=f"Self-play turn {turn + 1}",
            silent=silent,
        )
        for i, reply in zip(active, replies, strict=True):
            key = normalize_answer(reply)
            repeats += key in said[i]
            if said[i]:
                followed += 1
                previous += key == said[i][-1]
            total += 1
            said[i].append(key)
            histories[i].append(reply)
    return {
        "repetition_rate": repeats / total if total else 0.0,
        "repeat_previous_rate": previous / followed if followed else 0.0,
    }
