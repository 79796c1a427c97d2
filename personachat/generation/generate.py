"""Decoding a reply: top-k / nucleus sampling or greedy, with the KV cache.

The prompt (persona + history + ``<speaker2>``) is encoded once; each new token then costs
one step over the cached keys and values. Generated tokens carry the ``<speaker2>`` token
type, as the reply's tokens do in training. A reply ends at ``<eos>`` or at any other special
token, and until ``min_length`` tokens exist those tokens are masked out instead of
re-sampled, so decoding can never loop.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from math import inf

import torch

from personachat.args import ArgsError, ConvAIArgs
from personachat.encoding.inputs import InputFormat, reply_history, truncate_to_fit
from personachat.errors import PersonachatError
from personachat.generation.decoders import Decoder, make_decoder
from personachat.generation.precision import decoding_model
from personachat.generation.prefix_cache import PrefixCache
from personachat.model.families import lm_head
from personachat.model.loading import context_size

# Below this many prompt tokens in a batch, prefill_threads is not used: splitting ~100
# tokens over two cores saves ~1 ms, and on a server the second thread then competes with the
# event loop (one-at-a-time serving measured 41-42 replies/s with it, 44-46 without).
PARALLEL_PREFILL_TOKENS = 1024


class DecodingError(PersonachatError, ValueError):
    """The model's scores cannot be decoded (NaN or infinite: weights from a diverged run)."""


PER_REQUEST = ("seed", "raw_prompt")  # the DecodingOptions a request sets, not ConvAIArgs


@dataclass(frozen=True)
class DecodingOptions:
    """The decoding subset of ConvAIArgs (kept separate so generation needs no trainer args).

    It has no defaults of its own: ``from_args`` takes them from ``ConvAIArgs``, the one
    place decoding defaults are written.
    """

    max_length: int
    min_length: int
    temperature: float
    top_k: float
    top_p: float
    do_sample: bool
    max_history: int
    max_history_tokens: int
    repetition_penalty: float
    no_repeat_ngram_size: int
    repeat_reply_penalty: float
    frequency_penalty: float
    presence_penalty: float
    rerank_samples: int
    cpu_bf16: bool | str
    cpu_quantize: str
    # Per request, never in ConvAIArgs (``from_args`` leaves them as written here):
    seed: int | None = None  # sampling: each row decoded alone, torch's generator seeded
    raw_prompt: bool = False  # the prompt is the one message as given: no persona, no format

    @classmethod
    def from_args(cls, args: ConvAIArgs | None = None, **overrides) -> DecodingOptions:
        """The decoding options of ``args`` (default: ``ConvAIArgs()``), then ``overrides``."""
        args = ConvAIArgs() if args is None else args
        values = {f.name: getattr(args, f.name) for f in fields(cls) if f.name not in PER_REQUEST}
        return cls(**{**values, **overrides})


def top_filtering(
    logits: torch.Tensor, top_k: float = 0, top_p: float = 0.0, filter_value: float = -float("inf")
) -> torch.Tensor:
    """Keep the top_k tokens and/or the smallest set whose probability exceeds top_p.

    ``logits`` is [vocab] or [batch, vocab] (each row filtered on its own). Returns a
    filtered copy; at least one token per row survives.
    """
    logits = logits.clone()
    top_k = min(int(top_k), logits.size(-1))
    if top_k > 0:
        kth = torch.topk(logits, top_k, dim=-1)[0][..., -1:]
        logits[logits < kth] = filter_value
    if 0.0 < top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        remove = cumulative > top_p
        # Shift right so the token that crosses the threshold is kept.
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits.scatter_(-1, sorted_idx, sorted_logits.masked_fill(remove, filter_value))
    return logits


def build_prompt(
    persona: Sequence[Sequence[int]],
    history: Sequence[Sequence[int]],
    special: InputFormat,
    max_history: int,
    max_tokens: int,
    max_history_tokens: int = 0,
) -> dict[str, list[int]]:
    """The model input up to and including the reply's ``<speaker2>`` token."""
    return build_prompt_and_prefix(
        persona, history, special, max_history, max_tokens, max_history_tokens
    )[0]


def build_prompt_and_prefix(
    persona: Sequence[Sequence[int]],
    history: Sequence[Sequence[int]],
    special: InputFormat,
    max_history: int,
    max_tokens: int,
    max_history_tokens: int = 0,
) -> tuple[dict[str, list[int]], int]:
    """``build_prompt`` and the length of its ``<bos>`` + persona prefix, the part that stays
    the same from turn to turn (what a ``PrefixCache`` keeps). The history is the window a
    reply reads (``reply_history``: messages, or tokens for chat templates), then cut oldest
    first to fit ``max_tokens``."""
    history = reply_history(history, special, max_history, max_history_tokens)
    persona, history, _ = truncate_to_fit(persona, history, [], max_tokens, special.overheads)
    prompt = special.build(persona, history, [], with_eos=False)
    return prompt, special.prefix_length(persona)


@torch.no_grad()
def generate_reply(
    model,
    persona: Sequence[Sequence[int]],
    history: Sequence[Sequence[int]],
    special: InputFormat,
    options: DecodingOptions,
    device: torch.device | str = "cpu",
) -> list[int]:
    """Token ids of the bot's next reply (special tokens excluded)."""
    return generate_replies(model, [(persona, history)], special, options, device)[0]


@torch.inference_mode()
def generate_replies(
    model,
    conversations: Sequence[tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]]],
    special: InputFormat,
    options: DecodingOptions,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, list[int]], None] | None = None,
    prefix_cache: PrefixCache | None = None,
    prefill_threads: int | None = None,
) -> list[list[int]]:
    """Replies to many (persona, history) conversations in one padded decoding loop.

    Prompts are left-padded so every row's next token sits in the last column; the attention
    mask hides the padding and position ids restart at each row's first real token, so a
    row's reply is the same as when it is decoded alone. ``on_step(row, reply_ids)`` is
    called each time a row's reply grows by a token (for streaming). ``prefix_cache``: keep
    each persona's keys and values between calls, so a persona seen before is not encoded
    again (GPT-2 models; the cache empties itself when the weights change).
    ``prefill_threads``: CPU threads for encoding the prompts when they come to at least
    ``PARALLEL_PREFILL_TOKENS`` (padded) tokens (default: torch's setting). A batch's prompts
    are one burst of large matrix products that parallelises well; one prompt is too little
    work to split, and the decoding steps are many small products that do not split well.
    """
    model = decoding_model(model, options, device)
    model.eval()
    max_prompt = context_size(model) - options.max_length
    if max_prompt < 8:
        raise ArgsError(
            f"max_length={options.max_length} leaves no room for the conversation in a model "
            f"whose context is {context_size(model)} tokens; lower max_length"
        )
    built = [
        build_prompt_and_prefix(
            p, h, special, options.max_history, max_prompt, options.max_history_tokens
        )
        for p, h in conversations
    ]
    input_ids, token_types, mask = left_pad([prompt for prompt, _ in built], special.pad, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    width = input_ids.shape[1]
    decoder = make_decoder(model, width + options.max_length)
    big = input_ids.numel() >= PARALLEL_PREFILL_TOKENS
    with intra_op_threads(prefill_threads if big else None):
        hidden = decoder.prefill(
            input_ids, token_types, mask, positions, [length for _, length in built], prefix_cache
        )
    # The bot's earlier utterances (history alternates, ending with the user's message): what
    # repetition_penalty and no_repeat_ngram_size keep the bot from saying again. The persona
    # and the user's words are not penalised: copying the persona is the point.
    own_turns = [[list(u) for u in list(h)[-2::-2]] for _, h in conversations]
    stops: list[torch.Tensor] = []  # made at the first step, from the vocabulary's size

    def choose(step: int, logits, replies, finished) -> list[int | None]:
        stops[:] = stops or stop_biases(logits.shape[-1], special, device)
        logits += stops[0] if step < options.min_length else stops[1]
        return choose_tokens(logits, replies, finished, own_turns, options, special.reply_enders)

    return decode_steps(
        model, decoder, hidden, positions, options.max_length, choose, special, on_step
    )


def decode_steps(
    model,
    decoder: Decoder,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    max_length: int,
    choose: Callable[[int, torch.Tensor, list[list[int]], list[bool]], list[int | None]],
    ends: InputFormat,
    on_step: Callable[[int, list[int]], None] | None = None,
) -> list[list[int]]:
    """The decoding loop after ``prefill``: per step the LM head over ``hidden`` (each row's
    newest token), ``choose(step, logits, replies, finished)`` picks each row's next token
    (the caller's biases and penalties, then ``choose_tokens``), ``advance`` adds it, and the
    decoder steps on the new tokens (``ends.reply_type``: their token type; a finished row is
    fed ``ends.pad``). ``positions``: the prompt's position ids. Returns the replies."""
    replies: list[list[int]] = [[] for _ in range(hidden.shape[0])]
    finished = [False] * len(replies)
    head = lm_head(model)
    for step in range(max_length):
        chosen = choose(step, head(hidden).float(), replies, finished)
        next_tokens = advance(chosen, replies, finished, ends, on_step)
        if all(finished) or step + 1 == max_length:
            break
        next_ids = torch.tensor(next_tokens, device=hidden.device).unsqueeze(1)
        positions = positions[:, -1:] + 1
        hidden = decoder.step(next_ids, torch.full_like(next_ids, ends.reply_type), positions)
    return replies


def text_streamer(
    decode: Callable[[list[int]], str],
    on_token: Callable[[int, str], None] | None,
    stream: Collection[int] | None = None,
) -> Callable[[int, list[int]], None] | None:
    """An ``on_step`` for ``generate_replies`` that calls ``on_token(row, decode(ids))``
    for the rows in ``stream`` (all when None); a token that ends inside a multi-byte
    character waits for the rest of it, so each text extends the previous one."""
    if on_token is None:
        return None

    def on_step(row: int, reply: list[int]) -> None:
        if stream is not None and row not in stream:
            return
        text = decode(reply)
        if not text.endswith("\ufffd"):  # never stream half a character
            on_token(row, text)

    return on_step


def advance(
    chosen: list[int | None],
    replies: list[list[int]],
    finished: list[bool],
    special: InputFormat,
    on_step: Callable[[int, list[int]], None] | None,
) -> list[int]:
    """Append each unfinished row's chosen token to its reply (a stop token, or None, ends
    the row instead); the tokens the next step is fed (padding for finished rows)."""
    next_tokens = []
    for row, reply in enumerate(replies):
        token = None if finished[row] else chosen[row]
        if token is None or token in special.stop_ids:
            finished[row] = True
            next_tokens.append(special.pad)
        else:
            reply.append(token)
            next_tokens.append(token)
            if on_step is not None:
                on_step(row, list(reply))
    return next_tokens


def left_pad(
    prompts: Sequence[dict[str, list[int]]], pad: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, token types and attention mask of prompts padded on the left, so every
    row's next token sits in the last column."""
    width = max(len(p["input_ids"]) for p in prompts)

    def padded(key: str) -> torch.Tensor:
        return torch.tensor(
            [[pad] * (width - len(p[key])) + p[key] for p in prompts], device=device
        )

    mask = torch.tensor(
        [[0] * (width - len(p["input_ids"])) + [1] * len(p["input_ids"]) for p in prompts],
        device=device,
    )
    return padded("input_ids"), padded("token_type_ids"), mask


def stop_biases(
    vocab: int, special: InputFormat, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """What is added to the logits before ``min_length`` tokens, and after: start, pad and
    speaker1 never belong inside a reply (only the format's ``reply_enders``, ``<eos>`` or
    ``<speaker2>`` in TransferTransfo, end one), and before min_length no stop token at all is
    allowed."""
    allowed = torch.zeros(vocab, device=device)
    allowed[[t for t in special.stop_ids if t not in special.reply_enders]] = -inf
    allowed_short = allowed.clone()
    allowed_short[sorted(special.stop_ids)] = -inf
    return allowed_short, allowed


def choose_tokens(
    logits: torch.Tensor,
    replies: list[list[int]],
    finished: list[bool],
    own_turns: list[list[list[int]]],
    options: DecodingOptions,
    enders: Collection[int] = (),
) -> list[int | None]:
    """The next token of every row (None for a finished row or one with nothing left);
    ``enders``: the tokens that end a reply (what ``repeat_reply_penalty`` penalises when a
    reply is a whole earlier one)."""
    if (
        options.repetition_penalty != 1.0
        or options.repeat_reply_penalty != 1.0
        or options.no_repeat_ngram_size > 0
        or options.frequency_penalty
        or options.presence_penalty
    ):
        # the repetition controls depend on each row's own words
        return [
            None
            if finished[row]
            else next_token(logits[row], reply, own_turns[row], options, enders)
            for row, reply in enumerate(replies)
        ]
    return pick_tokens(logits, options).tolist()  # one batched choice, one device->host copy


@contextmanager
def intra_op_threads(count: int | None) -> Iterator[None]:
    """Run the block with torch using ``count`` CPU threads (None: leave it as it is)."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def next_token(
    logits: torch.Tensor,
    reply: list[int],
    own_turns: Sequence[Sequence[int]],
    options: DecodingOptions,
    enders: Collection[int] = (),
) -> int | None:
    """Apply the repetition controls to one row's logits and pick; None if nothing is left."""
    if options.repetition_penalty != 1.0:
        logits = logits.clone()
        penalize_repeats_(logits, own_turns, reply, options.repetition_penalty)
    if options.repeat_reply_penalty != 1.0:
        copying = copied_continuations(own_turns, reply, enders)
        if copying:
            logits = logits.clone()
            penalize_(logits, sorted(copying), options.repeat_reply_penalty)
    if (options.frequency_penalty or options.presence_penalty) and reply:
        logits = logits.clone()
        penalize_counts_(logits, reply, options.frequency_penalty, options.presence_penalty)
    if options.no_repeat_ngram_size > 0:
        banned = banned_ngram_tokens([*own_turns, reply], reply, options.no_repeat_ngram_size)
        if banned:
            logits = logits.clone()
            logits[list(banned)] = -float("inf")
    if torch.isneginf(logits).all():  # everything banned: end the reply instead
        return None
    return pick_token(logits, options)


def pick_token(logits: torch.Tensor, options: DecodingOptions) -> int:
    """One token from 1-D logits: argmax, or a sample after temperature/top-k/top-p."""
    return int(pick_tokens(logits.unsqueeze(0), options)[0])


def pick_tokens(logits: torch.Tensor, options: DecodingOptions) -> torch.Tensor:
    """One token per row of [batch, vocab] logits, as ``pick_token`` does for one row."""
    if not options.do_sample:
        return torch.argmax(logits, dim=-1)
    filtered = top_filtering(logits / options.temperature, options.top_k, options.top_p)
    return sample_rows(torch.softmax(filtered, dim=-1))


def sample_rows(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of [batch, vocab] probabilities, drawn by inverting each row's
    cumulative distribution at a uniform draw: the distribution ``torch.multinomial`` draws
    from, at a fraction of its cost on a CPU batch (it draws an exponential per vocabulary
    entry). The first index whose cumulative sum passes the draw always has probability > 0.
    """
    cumulative = probs.cumsum(dim=-1)
    if not bool(torch.isfinite(cumulative[:, -1]).all()):
        raise DecodingError(
            "the model gave NaN or infinite scores, so no token can be drawn: "
            "its weights are broken (a training run that diverged?); retrain "
            "or load another checkpoint"
        )
    draws = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cumulative.dtype)
    picked = torch.searchsorted(cumulative, draws * cumulative[:, -1:], right=True)
    return picked.squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def penalize_repeats_(
    logits: torch.Tensor, own_turns: Sequence[Sequence[int]], reply: Sequence[int], penalty: float
) -> None:
    """CTRL-style penalty, in place, on tokens the bot already used (this reply or earlier)."""
    used = sorted({t for turn in (*own_turns, reply) for t in turn})
    if used:
        penalize_(logits, used, penalty)


def penalize_counts_(
    logits: torch.Tensor, reply: Sequence[int], frequency: float, presence: float
) -> None:
    """OpenAI's frequency and presence penalties, in place, over the reply so far (as vLLM
    applies them): each token's logit less ``frequency`` times its count, less ``presence``
    once it occurs at all. Negative values encourage repeats instead."""
    tokens, counts = torch.unique(
        torch.tensor(list(reply), device=logits.device), return_counts=True
    )
    logits[tokens] -= frequency * counts.to(logits.dtype) + presence


# A reply must share this many first tokens with an earlier one before going on copying it
# is penalised: fewer would penalise every reply that starts like an earlier one ("I ...").
COPIED_PREFIX = 2


def copied_continuations(
    own_turns: Sequence[Sequence[int]], reply: Sequence[int], enders: Collection[int] = ()
) -> set[int]:
    """Tokens that would go on copying one of the bot's earlier replies that ``reply`` has
    copied from its start (at least ``COPIED_PREFIX`` tokens): that turn's next token, or
    the ``enders`` when ``reply`` already is the whole turn."""
    n = len(reply)
    if n < COPIED_PREFIX:
        return set()
    tokens: set[int] = set()
    for turn in own_turns:
        if len(turn) >= n and list(turn[:n]) == list(reply):
            tokens.update([int(turn[n])] if len(turn) > n else enders)
    return tokens


def penalize_(logits: torch.Tensor, tokens: Sequence[int], penalty: float) -> None:
    """CTRL's rule, in place: positive logits divided by ``penalty``, negative multiplied."""
    idx = torch.tensor(list(tokens), device=logits.device)
    values = logits[idx]
    logits[idx] = torch.where(values > 0, values / penalty, values * penalty)


def banned_ngram_tokens(
    sequences: Sequence[Sequence[int]], reply: Sequence[int], n: int
) -> set[int]:
    """Tokens that would complete an n-gram already present in any of ``sequences``."""
    if len(reply) < n - 1:
        return set()
    prefix = tuple(reply[len(reply) - (n - 1) :]) if n > 1 else ()
    banned = set()
    for seq in sequences:
        for i in range(len(seq) - n + 1):
            if tuple(seq[i : i + n - 1]) == prefix:
                banned.add(int(seq[i + n - 1]))
    return banned
