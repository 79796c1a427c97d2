"""Decoding for ``/v1/chat/completions``: replies with their token ids, and seeded sampling.

An OpenAI-style answer needs what ``ConvAIModel.generate_replies`` does not return: how many
tokens the prompt had and the reply took (``usage``), whether the reply ran out of tokens
(``finish_reason: "length"``) and where a stop string ended it. So chat requests carry
``ChatDecoding`` options, and the batcher's generate function (``batch_generate``) decodes
their groups here, through the same pipeline functions the facade uses, keeping the ids.
Session turns keep going through ``model.generate_replies`` unchanged. Both kinds of request
wait in the one batcher queue and take turns on the model; a model call decodes either chat
requests or session turns, since the batcher groups requests by equal options.

``seed``: a request that samples with a seed is decoded alone, its random draws from a
generator seeded with it (torch's global generator, forked and restored around the call), so
the same seed and request give the same reply whatever else the server is answering.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch

from personachat.encoding.inputs import TextEncoder
from personachat.generation.generate import (
    DecodingOptions,
    build_prompt,
    text_streamer,
)
from personachat.model.loading import context_size

ENCODER_ENTRIES = 20_000  # strings whose token ids the chat path keeps (as the facade's)
Conversation = tuple[list[str], list[str]]


@dataclass(frozen=True)
class ChatDecoding(DecodingOptions):
    """Decoding options of a chat request: the model's options and its ``seed`` (None:
    unseeded, or greedy, where a seed changes nothing). Unequal to every plain
    ``DecodingOptions``, so the batcher never puts a chat request in a session turn's call."""

    seed: int | None = None

    def plain(self) -> DecodingOptions:
        """The same options without the seed, as the generation functions take them."""
        return DecodingOptions(**{f.name: getattr(self, f.name) for f in fields(DecodingOptions)})


@dataclass(frozen=True)
class Completion:
    """One decoded reply: its text, its token ids and the length of the prompt it answered."""

    text: str
    ids: list[int]
    prompt_tokens: int


class ChatDecoder:
    """Decodes groups of chat requests for one ``ConvAIModel`` (see the module doc).

    It keeps its own token-id cache; the persona key/value cache is the model's
    (``ConvAIModel.reply_ids``), shared with the session routes.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.encode = TextEncoder(
            model.tokenizer, lowercase=model.args.do_lower_case, max_entries=ENCODER_ENTRIES
        )

    def decode(self, ids: Sequence[int]) -> str:
        return self.model.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def __call__(
        self,
        conversations: Sequence[Conversation],
        options: ChatDecoding,
        on_token: Callable[[int, str], None] | None,
        stream: Collection[int],
    ) -> list[Completion]:
        """Completions of ``conversations``; ``on_token(row, text_so_far)`` for the rows in
        ``stream``. Seeded sampling decodes each row alone with its seed."""
        encoded = [
            ([self.encode(s) for s in p], [self.encode(u) for u in h]) for p, h in conversations
        ]
        plain = options.plain()
        on_step = text_streamer(self.decode, on_token, stream)
        if options.seed is not None and options.do_sample:
            ids = []
            for row, conversation in enumerate(encoded):
                with seeded(options.seed, self.model.device):
                    ids += self.model.reply_ids([conversation], plain, shifted(on_step, row))
        else:
            ids = self.model.reply_ids(encoded, plain, on_step)
        room = context_size(self.model.model) - plain.max_length
        return [
            Completion(
                self.decode(reply),
                reply,
                prompt_tokens(p, h, self.model.special, plain, room),
            )
            for (p, h), reply in zip(encoded, ids, strict=True)
        ]


def shifted(
    on_step: Callable[[int, list[int]], None] | None, row: int
) -> Callable[[int, list[int]], None] | None:
    """``on_step`` for a one-row call whose row is ``row`` of the whole group."""
    if on_step is None:
        return None
    return lambda _, reply: on_step(row, reply)


@contextmanager
def seeded(seed: int, device: torch.device | str) -> Iterator[None]:
    """Run a block with torch's generators seeded with ``seed``, restored afterwards (so a
    seeded request leaves the randomness of unseeded ones as it was)."""
    device = torch.device(device)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % 2**64)
        yield


def batch_generate(model) -> Callable:
    """The batcher's generate function: chat groups (``ChatDecoding``) give ``Completion``s
    decoded here, other groups (session turns) ``model.generate_replies``' strings. The
    facade's method is looked up at each call, so a wrapped or patched one is used."""
    chat = ChatDecoder(model)

    def generate(
        conversations: Sequence[Conversation],
        options: DecodingOptions,
        on_token: Callable[[int, str], None] | None,
        stream: Collection[int],
    ) -> list:
        if getattr(options, "raw_prompt", False):  # /v1/completions: the prompt as given
            from personachat.serve.text_completions import complete_texts

            return complete_texts(
                model, [h[-1] for _, h in conversations], options, on_token, stream
            )
        if isinstance(options, ChatDecoding):
            return chat(conversations, options, on_token, stream)
        return model.generate_replies(conversations, options, on_token, stream)

    return generate


def prompt_tokens(persona, history, special, options: DecodingOptions, room: int) -> int:
    """Tokens of the prompt a reply was decoded from (the usage a chat response reports)."""
    prompt = build_prompt(
        persona, history, special, options.max_history, room, options.max_history_tokens
    )
    return len(prompt["input_ids"])
