"""What one completion call returns, and the two pieces of decoding only it needs.

``ConvAIModel.complete`` answers a batch of conversations or of prompts with ``Completion``s:
the text, the token ids, and how many tokens the prompt had and the reply took (what an
OpenAI ``usage`` reports and what ``finish_reason: "length"`` is read from). Every front end
shares that one call: the Python API (``generate_replies`` keeps its texts), the session
routes and both OpenAI routes through the server's batcher.

- ``decode_rows``: seeded sampling (``DecodingOptions.seed``) decodes each row alone with
  torch's generator seeded with it (forked and restored around the row), so the same seed
  and request give the same reply whatever else shares the batch;
- ``continue_prompts``: prompts taken as given (``DecodingOptions.raw_prompt``: token ids as
  the tokenizer encodes text by default, no persona, no speaker tokens or chat template),
  continued until the tokenizer's end of text; ``generate_replies``' loop over them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from personachat.encoding.inputs import InputFormat
from personachat.errors import PersonachatError
from personachat.generation.decoders import make_decoder
from personachat.generation.generate import (
    DecodingOptions,
    build_prompt,
    choose_tokens,
    decode_steps,
    left_pad,
)
from personachat.generation.precision import decoding_model

OnStep = Callable[[int, list[int]], None]


@dataclass(frozen=True)
class Completion:
    """One decoded reply: its text, its token ids and the length of the prompt it answered
    (after the history was cut to fit the context, as the model read it)."""

    text: str
    ids: list[int]
    prompt_tokens: int

    @property
    def reply_tokens(self) -> int:
        """Tokens the reply took (its end-of-turn token not counted, as it is not kept)."""
        return len(self.ids)


class PromptError(PersonachatError, ValueError):
    """A conversation given where a raw prompt was asked for (``DecodingOptions.raw_prompt``)."""


def prompt_length(
    persona: Sequence[Sequence[int]],
    history: Sequence[Sequence[int]],
    special: InputFormat,
    options: DecodingOptions,
    room: int,
) -> int:
    """Tokens of the prompt a reply to an encoded conversation is decoded from, its history
    cut to ``room`` tokens as ``generate_replies`` cuts it (an OpenAI ``usage``'s
    ``prompt_tokens``)."""
    prompt = build_prompt(
        persona, history, special, options.max_history, room, options.max_history_tokens
    )
    return len(prompt["input_ids"])


def raw_prompt(personality: Sequence[str], history: Sequence[str]) -> str:
    """The prompt of a conversation read as a raw prompt: no personality, one message."""
    if personality or len(history) != 1:
        raise PromptError(
            f"a raw prompt (raw_prompt=True) is one text with no persona; got "
            f"{len(personality)} persona sentence(s) and {len(history)} message(s): send the "
            "whole prompt as one string, or decode without raw_prompt"
        )
    return history[0]


def decode_rows(
    decode: Callable[[list, OnStep | None], list[list[int]]],
    rows: list,
    options: DecodingOptions,
    device: torch.device | str,
    on_step: OnStep | None,
) -> list[list[int]]:
    """``decode(rows, on_step)``: one call for the batch, or, when ``options`` sample with a
    ``seed``, one call per row under that seed (``on_step`` still sees the row's index in
    ``rows``)."""
    if options.seed is None or not options.do_sample:
        return decode(rows, on_step)
    replies: list[list[int]] = []
    for index, row in enumerate(rows):
        with seeded(options.seed, device):
            replies += decode([row], shifted(on_step, index))
    return replies


def shifted(on_step: OnStep | None, row: int) -> OnStep | None:
    """``on_step`` for a one-row call whose row is ``row`` of the whole batch."""
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


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A raw prompt's token ids, as the tokenizer encodes text by default (a Llama tokenizer
    adds its ``<s>``, GPT-2's adds nothing)."""
    return list(tokenizer(prompt)["input_ids"])


@torch.inference_mode()
def continue_prompts(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    special: InputFormat,
    options: DecodingOptions,
    device: torch.device | str,
    end_of_text: int | None,
    on_step: OnStep | None = None,
) -> list[list[int]]:
    """The continuations of prompts given as token ids, as ``generate_replies`` decodes
    conversations (left padding, one prefill, then ``decode_steps``), each ending at
    ``end_of_text`` (None: only at ``max_length``). A TransferTransfo model, which embeds a
    speaker on every token, reads them all as the bot's."""
    net = decoding_model(model, options, device)
    net.eval()
    rows = [{"input_ids": p, "token_type_ids": [special.reply_type] * len(p)} for p in prompts]
    input_ids, token_types, mask = left_pad(rows, special.pad, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    decoder = make_decoder(net, input_ids.shape[1] + options.max_length)
    hidden = decoder.prefill(input_ids, token_types, mask, positions, None, None)
    enders = [] if end_of_text is None else [end_of_text]
    no_own_turns: list[list[list[int]]] = [[] for _ in prompts]

    def choose(step: int, logits, replies, finished) -> list[int | None]:
        if step < options.min_length and enders:
            logits[:, enders] = -float("inf")
        return choose_tokens(logits, replies, finished, no_own_turns, options)

    ends = PromptEnds(frozenset(enders), special.pad, special.reply_type)
    return decode_steps(net, decoder, hidden, positions, options.max_length, choose, ends, on_step)


@dataclass(frozen=True)
class PromptEnds:
    """What ``decode_steps`` reads of an input format, for raw prompts: the tokens that end a
    completion (the tokenizer's end of text), the padding fed after it and the token type
    of new tokens."""

    stop_ids: frozenset[int]
    pad: int = 0
    reply_type: int = 0
