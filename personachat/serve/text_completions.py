"""``POST /v1/completions``: OpenAI's text completion, the prompt used as given.

SillyTavern's text-completion mode and many scripts build the whole prompt themselves (the
character card, the chat, ``{{char}}:`` at the end) and ask the model to continue it. No
persona, no chat template, no speaker tokens are added: the prompt is tokenized as the
tokenizer does by default (a Llama tokenizer adds its ``<s>``, GPT-2's adds nothing) and the
model continues it until its end-of-text token, a stop string or ``max_tokens``.

Requests wait in the same batcher as chat requests and session turns (``TextDecoding``
options keep them in calls of their own); ``decode_prompts`` is ``generate_replies``'s loop
over prompts given as token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass

import torch

from personachat.generation.decoders import make_decoder
from personachat.generation.generate import choose_tokens, decode_steps, left_pad
from personachat.generation.precision import decoding_model
from personachat.model.loading import context_size
from personachat.serve.chat_decoding import ChatDecoding, Completion, seeded, shifted
from personachat.serve.openai_shapes import bad_request


@dataclass(frozen=True)
class TextDecoding(ChatDecoding):
    """Options of a text completion: never equal to a chat request's, so never batched with
    one (their prompts are built otherwise)."""

    raw_prompt: bool = True


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids, as the tokenizer encodes it by default."""
    return list(tokenizer(prompt)["input_ids"])


def check_prompt(model, prompt: str, max_length: int) -> None:
    """Refuse a prompt that leaves no room for ``max_length`` tokens in the model's context
    (a 400 naming ``prompt``)."""
    room = context_size(model.model) - max_length
    length = len(prompt_ids(model.tokenizer, prompt))
    if not prompt.strip():
        raise bad_request("prompt", "empty_prompt", "prompt is empty: send some text to continue")
    if length > room:
        raise bad_request(
            "prompt",
            "context_length_exceeded",
            f"prompt has {length} tokens; with max_tokens={max_length} the model's context "
            f"({context_size(model.model)} tokens) holds at most {room}: shorten the prompt",
        )


def complete_texts(
    model,
    prompts: Sequence[str],
    options: TextDecoding,
    on_token: Callable[[int, str], None] | None,
    stream: Collection[int],
) -> list[Completion]:
    """Completions of ``prompts`` for a ``ConvAIModel``; ``on_token(row, text_so_far)`` for
    the rows in ``stream``. Seeded sampling decodes each prompt alone with its seed."""
    tokenizer = model.tokenizer
    ids = [prompt_ids(tokenizer, p) for p in prompts]

    def decode(reply: list[int]) -> str:
        return tokenizer.decode(reply, skip_special_tokens=True)

    def on_step(row: int, reply: list[int]) -> None:
        text = decode(reply)
        if on_token is not None and row in stream and not text.endswith("\ufffd"):
            on_token(row, text)

    plain = options.plain()
    if options.seed is not None and options.do_sample:
        replies = []
        for row, one in enumerate(ids):
            with seeded(options.seed, model.device):
                replies += decode_prompts(model, [one], plain, shifted(on_step, row))
    else:
        replies = decode_prompts(model, ids, plain, on_step)
    return [Completion(decode(r), r, len(p)) for p, r in zip(ids, replies, strict=True)]


@torch.inference_mode()
def decode_prompts(model, prompts: list[list[int]], options, on_step) -> list[list[int]]:
    """The continuations of prompts given as token ids (as ``generate_replies``: left
    padding, one prefill, then ``decode_steps``; the reply types of TransferTransfo models,
    which embed a speaker on every token)."""
    special, device = model.special, model.device
    net = decoding_model(model.model, options, device)
    net.eval()
    rows = [{"input_ids": p, "token_type_ids": [special.reply_type] * len(p)} for p in prompts]
    input_ids, token_types, mask = left_pad(rows, special.pad, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    decoder = make_decoder(net, input_ids.shape[1] + options.max_length)
    hidden = decoder.prefill(input_ids, token_types, mask, positions, None, None)
    enders = sorted({tokenizer_eos(model)} - {None})

    def choose(step: int, logits, replies, finished) -> list[int | None]:
        if step < options.min_length and enders:
            logits[:, enders] = -float("inf")
        return choose_tokens(logits, replies, finished, [[] for _ in prompts], options)

    ends = _Ends(frozenset(enders), special.pad, special.reply_type)
    return decode_steps(net, decoder, hidden, positions, options.max_length, choose, ends, on_step)


@dataclass(frozen=True)
class _Ends:
    """What ``decode_steps`` reads of an input format: the tokens that end a completion (the
    tokenizer's end of text), the padding fed after and the token type of new tokens."""

    stop_ids: frozenset[int]
    pad: int = 0
    reply_type: int = 0  # the token type the completion's tokens are fed with


def tokenizer_eos(model) -> int | None:
    return model.tokenizer.eos_token_id


def text_options(options: ChatDecoding) -> TextDecoding:
    return TextDecoding(**asdict(options))
