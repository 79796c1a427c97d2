"""From dialogs to model inputs: the TransferTransfo input layout.

One input is ``<bos>`` + persona sentences, then the last ``2*max_history+1`` history
utterances, then a candidate reply + ``<eos>``. Every utterance starts with a speaker token;
speakers alternate counting back from the reply, so the reply is always ``<speaker2>`` (the
bot) and the message just before it ``<speaker1>`` (the user). Token-type ids repeat each
segment's speaker token; the persona belongs to the bot, so it carries ``<speaker2>`` too.

Everything here is pure: token-id lists in, token-id lists out. Tokenization happens once per
distinct string (``TextEncoder``). ``encoding.dataset`` turns dialogs into examples and pads
one batch at a time; ``token_cache`` stores the token ids on disk (Arrow) so that a file is
tokenized only once, its dataset yielding the same items.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Protocol, TypeVar

from personachat.errors import PersonachatError

SPECIAL_TOKENS = ["<bos>", "<eos>", "<speaker1>", "<speaker2>", "<pad>"]
ATTR_TO_SPECIAL_TOKEN = {
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "additional_special_tokens": ["<speaker1>", "<speaker2>"],
}
T = TypeVar("T")
IGNORE_INDEX = -100  # label value cross-entropy skips
# Version of the input layout below. Cached tokenized datasets (token_cache) are keyed on it:
# bump it whenever build_input_from_segments, truncate_to_fit or the example index change.
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class Overheads:
    """Tokens an input format writes around the content: what every input length (for
    truncation, length-grouped batching and the token cache) is computed from. The defaults
    are TransferTransfo's: ``<bos>``, the reply's speaker token and ``<eos>``, and one speaker
    token per history utterance."""

    fixed: int = 3
    between_sentences: int = 0
    user_turn: int = 1
    assistant_turn: int = 1


TRANSFERTRANSFO = Overheads()


class InputFormat(Protocol):
    """How (persona, history, reply) token ids become one input: ``SpecialIds`` (the
    TransferTransfo layout) or ``chat_format.ChatFormat`` (the tokenizer's chat template)."""

    pad: int

    @property
    def overheads(self) -> Overheads: ...

    @property
    def stop_ids(self) -> frozenset[int]: ...

    @property
    def reply_enders(self) -> frozenset[int]: ...

    @property
    def reply_type(self) -> int: ...

    @property
    def window_by_tokens(self) -> bool: ...

    def build(
        self, persona, history, reply, lm_labels=False, with_eos=True, history_labels=False
    ) -> dict: ...

    def prefix_length(self, persona: Sequence[Sequence[int]]) -> int: ...


def layout_length(
    overheads: Overheads, persona: Sequence[int], history: Sequence[int], reply: int
) -> int:
    """Tokens of one input from token *counts*: persona sentences, history utterances (the
    last one the user's) and the reply (with its end token)."""
    turns = sum(
        overheads.user_turn if (len(history) - 1 - i) % 2 == 0 else overheads.assistant_turn
        for i in range(len(history))
    )
    between = overheads.between_sentences * max(0, len(persona) - 1)
    return overheads.fixed + sum(persona) + between + sum(history) + turns + reply


class EncodingError(PersonachatError, ValueError):
    """The data cannot be turned into model inputs with the chosen options."""


@dataclass(frozen=True)
class SpecialIds:
    """Token ids of the five special tokens, looked up once from the tokenizer."""

    bos: int
    eos: int
    speaker1: int
    speaker2: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialIds:
        ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
        unk = getattr(tokenizer, "unk_token_id", None)
        missing = [
            tok
            for tok, i in zip(SPECIAL_TOKENS, ids, strict=True)
            if i is None or (i == unk and tok != getattr(tokenizer, "unk_token", None))
        ]
        if missing:
            raise EncodingError(
                f"the tokenizer lacks the special tokens {missing}; call "
                "personachat.model.loading.add_special_tokens_(model, tokenizer) first"
            )
        return cls(*ids)

    @property
    def stop_ids(self) -> frozenset[int]:
        """Tokens that end a generated reply."""
        return frozenset({self.eos, self.speaker1, self.speaker2, self.bos, self.pad})

    @property
    def reply_enders(self) -> frozenset[int]:
        """The stop tokens that may end a reply (the others never belong in one)."""
        return frozenset({self.eos, self.speaker2})

    @property
    def reply_type(self) -> int:
        """Token type of the reply's tokens: the bot's speaker token."""
        return self.speaker2

    @property
    def window_by_tokens(self) -> bool:
        """False: replies read the last ``2*max_history+1`` messages (simpletransformers)."""
        return False

    @property
    def overheads(self) -> Overheads:
        return TRANSFERTRANSFO

    def build(
        self,
        persona: Sequence[Sequence[int]],
        history: Sequence[Sequence[int]],
        reply: Sequence[int],
        lm_labels: bool = False,
        with_eos: bool = True,
        history_labels: bool = False,
    ) -> dict[str, list[int]]:
        """The TransferTransfo input (``build_input_from_segments``)."""
        return build_input_from_segments(
            persona, history, reply, self, lm_labels, with_eos, history_labels
        )

    def prefix_length(self, persona: Sequence[Sequence[int]]) -> int:
        """Tokens of the input's start that depend on the persona alone: ``<bos>`` + persona."""
        return 1 + sum(map(len, persona))


def history_window(history: Sequence[T], max_history: int) -> list[T]:
    """The turns an input keeps: the last ``2 * max_history + 1`` (``max_history`` exchanges
    of both speakers, then the message being answered). The one place that window is cut."""
    return list(history)[-(2 * max_history + 1) :]


def history_within_budget(
    history: Sequence[Sequence[int]], overheads: Overheads, max_tokens: int
) -> list[Sequence[int]]:
    """The newest messages of ``history`` whose tokens, with the tokens the format writes
    around each turn, come to at most ``max_tokens``: the oldest are dropped first, a message
    is kept whole or not at all, and the message being answered (the last) is always kept
    (the context limit cuts it later if it alone is too long). The persona is not counted:
    the budget is the history's own, so a long conversation never pushes the persona out."""
    kept: list[Sequence[int]] = []
    used = 0
    for back, message in enumerate(reversed(history)):
        cost = len(message) + (overheads.user_turn if back % 2 == 0 else overheads.assistant_turn)
        if kept and used + cost > max_tokens:
            break
        kept.append(message)
        used += cost
    return kept[::-1]


def reply_history(
    history: Sequence[Sequence[int]],
    special: InputFormat,
    max_history: int,
    max_history_tokens: int,
) -> list[Sequence[int]]:
    """The history a reply is generated from: for a chat-template format the whole
    conversation within ``max_history_tokens`` (oldest messages dropped first); for the
    TransferTransfo layout the last ``2 * max_history + 1`` messages, as simpletransformers
    kept them, then the same token budget (0: none)."""
    if not special.window_by_tokens:
        history = history_window(history, max_history)
    if max_history_tokens > 0:
        history = history_within_budget(history, special.overheads, max_history_tokens)
    return list(history)


def build_input_from_segments(
    persona: Sequence[Sequence[int]],
    history: Sequence[Sequence[int]],
    reply: Sequence[int],
    special: SpecialIds,
    lm_labels: bool = False,
    with_eos: bool = True,
    history_labels: bool = False,
) -> dict[str, list[int]]:
    """Lay out one (persona, history, reply) triple as the model sees it.

    Returns ``input_ids``, ``token_type_ids``, ``mc_token_ids`` (index of the last token, where
    the multiple-choice head reads) and ``lm_labels`` (-100 everywhere except the reply's
    tokens and ``<eos>`` when ``lm_labels`` is true: only the gold reply is learned; with
    ``history_labels`` too the bot's earlier turns in the history, after their speaker token).
    An empty persona (dialogs read with ``allow_empty_personality``, the persona ablation)
    has no persona segment: ``<bos>`` is followed by the history.
    """
    reply_segment = list(reply) + ([special.eos] if with_eos else [])
    utterances = [*history, reply_segment]
    # Alternate speakers counting back from the reply, which is always the bot (<speaker2>).
    speakers = [
        special.speaker2 if (len(utterances) - 1 - i) % 2 == 0 else special.speaker1
        for i in range(len(utterances))
    ]
    persona_segment = [special.bos, *chain.from_iterable(persona)]
    segments = [persona_segment] + [
        [spk, *utt] for spk, utt in zip(speakers, utterances, strict=True)
    ]
    types = [special.speaker2] + speakers

    input_ids = list(chain.from_iterable(segments))
    token_type_ids = [t for t, seg in zip(types, segments, strict=True) for _ in seg]
    labels = [IGNORE_INDEX] * len(input_ids)
    if lm_labels:
        # The reply's speaker token is the context; everything after it is predicted.
        start = len(input_ids) - len(reply_segment)
        labels[start:] = reply_segment
    if lm_labels and history_labels:
        at = len(persona_segment)
        for spk, segment in zip(speakers[:-1], segments[1:-1], strict=True):
            if spk == special.speaker2:
                labels[at + 1 : at + len(segment)] = segment[1:]
            at += len(segment)
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "mc_token_ids": len(input_ids) - 1,
        "lm_labels": labels,
    }


def input_length(
    persona: Sequence[Sequence[int]],
    history: Sequence[Sequence[int]],
    reply: Sequence[int],
    overheads: Overheads = TRANSFERTRANSFO,
) -> int:
    """Tokens of an input (with its end token) without building it."""
    return layout_length(overheads, list(map(len, persona)), list(map(len, history)), len(reply))


def truncate_to_fit(
    persona: Sequence[Sequence[int]],
    history: Sequence[Sequence[int]],
    reply: Sequence[int],
    max_tokens: int,
    overheads: Overheads = TRANSFERTRANSFO,
) -> tuple[list[Sequence[int]], list[Sequence[int]], Sequence[int]]:
    """Drop the oldest history first, then persona sentences from the end, to fit max_tokens.

    ``overheads``: what the input format adds (TransferTransfo's by default). Only when the
    reply alone cannot fit is the reply itself cut (keeping its start). Never raises.
    """
    persona, history = list(persona), list(history)

    def length() -> int:
        return input_length(persona, history, reply, overheads)

    while length() > max_tokens and history:
        history.pop(0)
    while length() > max_tokens and persona:
        persona.pop()
    if length() > max_tokens:
        reply = reply[: max(0, max_tokens - overheads.fixed)]
    return persona, history, reply


class TextEncoder:
    """Tokenizes each distinct string once and hands back the shared token-id list.

    Persona sentences and history utterances repeat across the examples of a dialog (and
    across dialogs); caching by string makes dataset encoding linear in distinct text.
    ``max_entries`` bounds the cache for long-lived users such as a chat server, whose
    messages never stop coming (the oldest strings are forgotten first); None: unbounded.
    """

    def __init__(self, tokenizer, lowercase: bool = False, max_entries: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.lowercase = lowercase
        self.max_entries = max_entries
        self._cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            self.prime([text])
            ids = self._cache[text]
        return ids

    def prime(self, texts: Iterable[str]) -> None:
        """Tokenize many new strings in one batched call (the fast tokenizer runs in Rust)."""
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if not new:
            return
        prepared = [t.lower() if self.lowercase else t for t in new]
        encoded = self.tokenizer(prepared, add_special_tokens=False)["input_ids"]
        self._cache.update(zip(new, encoded, strict=True))
        if self.max_entries is not None and len(self._cache) > self.max_entries:
            # dicts keep insertion order: drop the oldest, never the strings just added
            drop = len(self._cache) - max(self.max_entries, len(new))
            for key in list(itertools.islice(self._cache, drop)):
                del self._cache[key]


def check_num_candidates(dialogs: Sequence[dict], num_candidates: int, source: str) -> None:
    """Raise an EncodingError listing utterances with fewer candidates than asked for."""
    short = [
        (i, j, len(u["candidates"]))
        for i, d in enumerate(dialogs)
        for j, u in enumerate(d["utterances"])
        if len(u["candidates"]) < num_candidates
    ]
    if not short:
        return
    fewest = min(n for _, _, n in short)
    where = ", ".join(f"dialog {i} utterance {j} has {n}" for i, j, n in short[:5])
    more = f" (and {len(short) - 5} more)" if len(short) > 5 else ""
    raise EncodingError(
        f"{source}: num_candidates={num_candidates} but {len(short)} utterance(s) have fewer "
        f"candidates: {where}{more}. Set num_candidates to at most {fewest} or add "
        "distractor candidates to the data."
    )


def example_index(
    persona_sizes: Sequence[int],
    utterance_counts: Sequence[int],
    permutations: int = 1,
    seed: int = 0,
) -> Iterator[tuple[int, int, tuple[int, ...]]]:
    """``(dialog, utterance, persona order)`` of every example, in dataset order: per dialog,
    each persona order (``persona_orders``, one seeded generator for the whole dataset) over
    all its utterances. The in-memory and the cached dataset both index with this."""
    rng = random.Random(seed)
    for d, (n_sentences, n_utterances) in enumerate(
        zip(persona_sizes, utterance_counts, strict=True)
    ):
        for order in persona_orders(n_sentences, permutations, rng):
            for u in range(n_utterances):
                yield d, u, order


def example_length(
    persona: Sequence[int],
    history: Sequence[int],
    candidates: Sequence[int],
    max_tokens: int,
    overheads: Overheads = TRANSFERTRANSFO,
) -> int:
    """Tokens of an example's longest candidate input, from token *counts* alone.

    ``persona`` (in the example's order), ``history`` (already cut to the history window) and
    ``candidates`` (the chosen ones) are lengths. When the longest candidate fits, so do all
    and the answer is a sum; otherwise the exact ``truncate_to_fit`` rule runs on stand-in
    sequences of those lengths.
    """
    longest = layout_length(overheads, persona, history, max(candidates))
    if longest <= max_tokens:
        return longest
    persona_, history_ = [range(n) for n in persona], [range(n) for n in history]
    return max(
        input_length(
            *truncate_to_fit(persona_, history_, range(n), max_tokens, overheads), overheads
        )
        for n in candidates
    )


def persona_orders(
    n_sentences: int, permutations: int, rng: random.Random
) -> list[tuple[int, ...]]:
    """The original order first, then up to ``permutations - 1`` distinct shuffles."""
    original = tuple(range(n_sentences))
    orders = [original]
    seen = {original}
    attempts = 0
    while len(orders) < permutations and attempts < 20 * permutations:
        attempts += 1
        order = list(original)
        rng.shuffle(order)
        if tuple(order) not in seen:
            seen.add(tuple(order))
            orders.append(tuple(order))
    return orders


def build_example(
    persona: Sequence[Sequence[int]],
    history: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[int]],
    special: SpecialIds,
    num_candidates: int,
    max_history: int,
    max_tokens: int,
    label_history: bool = False,
) -> dict:
    """All candidates of one utterance laid out; the gold (last) candidate gets LM labels
    (with ``label_history``, on the bot's earlier turns in the history as well)."""
    history = history_window(history, max_history)
    chosen = list(candidates)[-num_candidates:]
    inputs = []
    for j, candidate in enumerate(chosen):
        p, h, r = truncate_to_fit(persona, history, candidate, max_tokens, special.overheads)
        gold = j == len(chosen) - 1
        inputs.append(special.build(p, h, r, lm_labels=gold, history_labels=label_history))
    return {"candidates": inputs, "mc_label": len(chosen) - 1}
