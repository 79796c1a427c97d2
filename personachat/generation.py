"""Decoding a reply: top-k / nucleus sampling or greedy, with the KV cache.

The prompt (persona + history + ``<speaker2>``) is encoded once; each new token then costs
one step over the cached keys and values. Generated tokens carry the ``<speaker2>`` token
type, as the reply's tokens do in training. A reply ends at ``<eos>`` or at any other special
token, and until ``min_length`` tokens exist those tokens are masked out instead of
re-sampled, so decoding can never loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .encoding import SpecialIds, build_input_from_segments, truncate_to_fit
from .modeling import context_size


@dataclass(frozen=True)
class DecodingOptions:
    """The decoding subset of ConvAIArgs (kept separate so generation needs no trainer args)."""

    max_length: int = 20
    min_length: int = 1
    temperature: float = 0.7
    top_k: float = 0
    top_p: float = 0.9
    do_sample: bool = True
    max_history: int = 2

    @classmethod
    def from_args(cls, args) -> DecodingOptions:
        return cls(args.max_length, args.min_length, args.temperature, args.top_k,
                   args.top_p, args.do_sample, args.max_history)


def top_filtering(logits: torch.Tensor, top_k: float = 0, top_p: float = 0.0,
                  filter_value: float = -float("inf")) -> torch.Tensor:
    """Keep the top_k tokens and/or the smallest set whose probability exceeds top_p.

    ``logits`` is 1-D (vocabulary). Returns a filtered copy; at least one token survives.
    """
    logits = logits.clone()
    top_k = min(int(top_k), logits.size(-1))
    if top_k > 0:
        kth = torch.topk(logits, top_k)[0][-1]
        logits[logits < kth] = filter_value
    if 0.0 < top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        remove = cumulative > top_p
        # Shift right so the token that crosses the threshold is kept.
        remove[1:] = remove[:-1].clone()
        remove[0] = False
        logits[sorted_idx[remove]] = filter_value
    return logits


def build_prompt(persona: Sequence[Sequence[int]], history: Sequence[Sequence[int]],
                 special: SpecialIds, max_history: int, max_tokens: int) -> dict[str, list[int]]:
    """The model input up to and including the reply's ``<speaker2>`` token."""
    history = list(history)[-(2 * max_history + 1):]
    persona, history, _ = truncate_to_fit(persona, history, [], max_tokens)
    return build_input_from_segments(persona, history, [], special, with_eos=False)


@torch.no_grad()
def generate_reply(model, persona: Sequence[Sequence[int]], history: Sequence[Sequence[int]],
                   special: SpecialIds, options: DecodingOptions,
                   device: torch.device | str = "cpu") -> list[int]:
    """Token ids of the bot's next reply (special tokens excluded)."""
    model.eval()
    max_prompt = context_size(model) - options.max_length
    if max_prompt < 8:
        raise ValueError(
            f"max_length={options.max_length} leaves no room for the conversation in a model "
            f"whose context is {context_size(model)} tokens; lower max_length"
        )
    prompt = build_prompt(persona, history, special, options.max_history, max_prompt)
    # OpenAI GPT has no KV cache in transformers: it re-encodes the sequence every step.
    use_cache = model.config.model_type != "openai-gpt"
    input_ids = torch.tensor([prompt["input_ids"]], device=device)
    token_types = torch.tensor([prompt["token_type_ids"]], device=device)
    all_ids, all_types = input_ids, token_types
    stop = torch.tensor(sorted(special.stop_ids), device=device)
    past = None
    reply: list[int] = []
    for step in range(options.max_length):
        out = model.transformer(input_ids=input_ids, token_type_ids=token_types,
                                past_key_values=past, use_cache=use_cache)
        logits = model.lm_head(out.last_hidden_state[0, -1]).float()
        if step < options.min_length:
            logits[stop] = -float("inf")
        # Start/pad/speaker1 never belong inside a reply; only <eos>/<speaker2> end one.
        logits[stop[(stop != special.eos) & (stop != special.speaker2)]] = -float("inf")
        token = pick_token(logits, options)
        if token in special.stop_ids:
            break
        reply.append(token)
        next_id = torch.tensor([[token]], device=device)
        next_type = torch.tensor([[special.speaker2]], device=device)
        if use_cache:
            past, input_ids, token_types = out.past_key_values, next_id, next_type
        else:
            all_ids = torch.cat([all_ids, next_id], dim=1)
            all_types = torch.cat([all_types, next_type], dim=1)
            input_ids, token_types = all_ids, all_types
    return reply


def pick_token(logits: torch.Tensor, options: DecodingOptions) -> int:
    if not options.do_sample:
        return int(torch.argmax(logits))
    filtered = top_filtering(logits / options.temperature, options.top_k, options.top_p)
    return int(torch.multinomial(torch.softmax(filtered, dim=-1), 1))
