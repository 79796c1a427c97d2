"""How much of a conversation a reply reads, decided before decoding and told to the client.

The model reads a window: the persona, then the newest messages that fit its history budget
(``reply_history``) and its context with room for the reply (``truncate_to_fit``). Older
messages beyond it are dropped, oldest first, and the response says how many
(``history``: ``sent``, ``read``, ``dropped``). What is never done silently: answering
without the message being answered, or without the persona. When the newest message alone
(with the persona and the reply's room) does not fit, the request is a 400 saying how many
tokens fit and how many it took.

Tokenizing is CPU work: ``fit_history`` runs in a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from personachat.encoding.inputs import TextEncoder, reply_history, truncate_to_fit
from personachat.generation.generate import DecodingOptions
from personachat.model.loading import context_size
from personachat.serve.settings import RequestError

ENCODER_ENTRIES = 4096  # strings whose ids are kept between requests


@dataclass(frozen=True)
class HistoryFit:
    """How many messages a reply was given (the new one and the stored ones fetched for
    it: ``max_history``'s window, or every kept one for chat templates) and how many of
    them it reads."""

    sent: int
    read: int

    @property
    def dropped(self) -> int:
        return self.sent - self.read

    def to_json(self) -> dict:
        return {"sent": self.sent, "read": self.read, "dropped": self.dropped}


class ContextFitter:
    """``fit_history`` for one served model, with a bounded cache of token ids."""

    def __init__(self, model) -> None:
        self.model = model
        self.encoder = TextEncoder(
            model.tokenizer, lowercase=model.args.do_lower_case, max_entries=ENCODER_ENTRIES
        )
        # Requests are fitted in several worker threads at once: one at a time through the
        # cache (its eviction) and the tokenizer (a Rust tokenizer may refuse a second
        # borrower: "Already borrowed").
        self.lock = threading.Lock()

    def encode_all(self, texts: Sequence[str]) -> list[list[int]]:
        with self.lock:
            self.encoder.prime(texts)
            return [self.encoder(text) for text in texts]

    def fit_history(
        self,
        personality: Sequence[str],
        history: Sequence[str],
        options: DecodingOptions,
        field: str = "text",
    ) -> HistoryFit:
        """The window the reply to ``history`` (its last message the one being answered)
        reads, or a 400 naming ``field`` when that message and the persona do not fit with
        the reply."""
        if not history:
            return HistoryFit(0, 0)
        special = self.model.special
        room = context_size(self.model.model) - options.max_length
        persona = self.encode_all(personality)
        ids = self.encode_all(history)
        window = reply_history(ids, special, options.max_history, options.max_history_tokens)
        kept_persona, kept, _ = truncate_to_fit(persona, window, [], room, special.overheads)
        if not kept or len(kept_persona) < len(persona):
            persona_tokens = sum(map(len, persona))
            raise too_long(
                len(ids[-1]), persona_tokens, room, context_size(self.model.model), field
            )
        return HistoryFit(len(history), len(kept))


def too_long(message: int, persona: int, room: int, context: int, field: str) -> RequestError:
    """The 400 of a message that cannot be read whole with its persona."""
    fits = max(0, room - persona)
    return RequestError(
        400,
        "context_exceeded",
        f"the message being answered takes {message:,} tokens, and the model reads at most "
        f"{fits:,} for it (a context of {context:,} tokens, less the persona's {persona:,} and "
        f"room for the reply's max_length {context - room:,}); send a shorter message (older "
        "messages are dropped as needed, this one cannot be), a shorter persona, or a lower "
        "max_length",
        field=field,
        fits=fits,
        tokens=message,
    )
