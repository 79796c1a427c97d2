"""What a ``/v1/chat/completions`` request means to a persona bot (no HTTP here, no state).

- ``system`` (or ``developer``) messages are the persona: each is split into persona
  sentences, one per line and per sentence end, as character cards are
  (``data.cards.persona_sentences``); several system messages add their sentences in order.
  All together they may have ``max_card_chars`` characters (a SillyTavern prompt is a whole
  card), and what is beyond the model's ``card_prompt_tokens`` is left out from the end.
  No system message: no persona (the session routes draw a random one; a stateless request
  gets the same reply every time instead).
- ``user`` and ``assistant`` messages, in order, are the history; the last message must be the
  user's. Consecutive messages of one role are joined into one utterance (the input format
  alternates speakers).
- ``persona_card`` (an extension field: a Character Card V2 JSON object) adds the card's
  persona *before* the system messages' sentences (with the lorebook entries the last
  messages call up), and its first message as the bot's opening line when the conversation
  does not already begin with an assistant message.
- Decoding: ``temperature: 0`` (or ``top_p: 0``) is greedy decoding (what ``interact_single``
  does with ``do_sample=False``); any other ``temperature`` or ``top_p`` samples with it; with
  neither, the model's own decoding options apply, as on the session routes.
  ``max_tokens`` / ``max_completion_tokens`` is an upper bound, as vLLM, llama.cpp and Ollama
  take it: anything up to the model's context is accepted, the reply ends at the end of its
  turn and at the latest after ``min(max_tokens, max_reply_tokens)`` tokens
  (``finish_reason: "length"`` then). ``frequency_penalty`` / ``presence_penalty`` (within
  [-2, 2]) are OpenAI's penalties over the reply so far, applied by the decoder.
  ``logit_bias`` is refused unless empty (``{}``, as SillyTavern sends it): the decoder has
  no per-token bias, and ignoring one would change the reply behind the client's back. The
  extension fields ``min_tokens``, ``top_k``, ``repetition_penalty`` and
  ``no_repeat_ngram_size`` set the model's other options. Everything is checked against the
  server's limits and bounds.

Every refusal is a 400 naming the field (``param``); see ``openai_shapes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from personachat.data.cards import (
    CardError,
    CardLimits,
    PersonaCard,
    card_from_json,
    fit_pieces,
    persona_sentences,
)
from personachat.generation.generate import DecodingOptions
from personachat.option_checks import Bound, within
from personachat.serve.openai_shapes import bad_request
from personachat.serve.settings import (
    RequestError,
    ServeSettings,
    decoding_options,
    option_bounds,
    out_of_bounds,
    unicode_problem,
)

SYSTEM_ROLES = ("system", "developer")
HISTORY_ROLES = ("user", "assistant")
MAX_STOPS = 4  # as OpenAI's API
MAX_STOP_CHARS = 200
# Extension fields (as vLLM names them) and the option each sets.
EXTENSIONS = {
    "min_tokens": "min_length",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "no_repeat_ngram_size": "no_repeat_ngram_size",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat request: the conversation and how to decode and end its reply."""

    persona: list[str]
    history: list[str]
    options: DecodingOptions  # with the request's seed; raw_prompt for a text completion
    stops: tuple[str, ...]
    include_usage: bool


def read_request(
    body, defaults: DecodingOptions, settings: ServeSettings, model=None
) -> ChatRequest:
    """``body`` (an ``openai_api.ChatCompletionBody``) checked and turned into a request;
    ``model``: the served ``ConvAIModel`` (its tokenizer counts ``card_prompt_tokens``, its
    context bounds ``max_tokens``). CPU work (a card, tokenizing): call it in a worker
    thread."""
    check_unsupported(body)
    limits = CardLimits.from_settings(settings, model)
    card = read_card(body.persona_card, limits)
    persona, history = conversation(body.messages, settings, card, limits)
    if body.stream_options is not None and not body.stream:
        raise bad_request(
            "stream_options", "invalid_value", "stream_options is only allowed with stream: true"
        )
    return ChatRequest(
        persona,
        history,
        chat_options(body, defaults, settings, model_context(model)),
        stop_strings(body.stop),
        bool(body.stream and body.stream_options and body.stream_options.include_usage),
    )


def check_unsupported(body) -> None:
    """Refuse the OpenAI features a persona bot does not have, rather than ignore them."""
    if body.n is not None and body.n != 1:
        raise bad_request(
            "n", "unsupported_value", f"n={body.n}: this server returns one choice; send n: 1"
        )
    check_unsupported_bias(body)
    if body.logprobs:
        raise bad_request("logprobs", "unsupported_parameter", "logprobs are not supported")
    if body.tools:
        raise bad_request("tools", "unsupported_parameter", "tools are not supported")
    kind = (body.response_format or {}).get("type", "text")
    if kind != "text":
        raise bad_request(
            "response_format",
            "unsupported_value",
            f"response_format {kind!r} is not supported; this bot answers in text",
        )


def read_card(card: dict | None, limits: CardLimits) -> PersonaCard | None:
    """The ``persona_card`` extension as a ``PersonaCard`` (None without one)."""
    if card is None:
        return None
    try:
        return card_from_json(card, "persona_card", limits=limits)
    except CardError as err:
        raise bad_request("persona_card", "invalid_card", str(err)) from None


def conversation(
    messages: list,
    settings: ServeSettings,
    card: PersonaCard | None = None,
    limits: CardLimits | None = None,
) -> tuple[list[str], list[str]]:
    """(persona sentences, history utterances) of ``messages`` (see the module doc)."""
    if not messages:
        raise bad_request("messages", "empty_messages", "messages is empty: send a user message")
    system: list[str] = []
    turns: list[list[str]] = []  # [role, text]
    for i, message in enumerate(messages):
        param = f"messages[{i}].content"
        if message.role in SYSTEM_ROLES:
            system += system_sentences(message.content, param)
            if sum(map(len, system)) > settings.max_card_chars:
                raise persona_limit(param, sum(map(len, system)), settings)
        elif message.role in HISTORY_ROLES:
            text = utterance(message.content, param, settings)
            if turns and turns[-1][0] == message.role:
                turns[-1][1] += " " + text
            else:
                turns.append([message.role, text])
        else:
            raise bad_request(
                f"messages[{i}].role",
                "invalid_role",
                f"messages[{i}].role {message.role!r} is not a role this bot takes; use "
                "system (the persona), user or assistant",
            )
    if messages[-1].role != "user":
        raise bad_request(
            f"messages[{len(messages) - 1}].role",
            "invalid_last_message",
            f"messages[{len(messages) - 1}] is the {messages[-1].role}'s; the bot replies "
            "to a user message, so end messages with one",
        )
    if card and card.first_message and turns[0][0] != "assistant":
        turns.insert(0, ["assistant", card.first_message])
    history = [text for _, text in turns]
    persona = card.persona_for(history) if card else []
    return persona + fitted(system, persona, limits or CardLimits()), history


def fitted(sentences: list[str], before: list[str], limits: CardLimits) -> list[str]:
    """The system messages' ``sentences`` within what ``card_prompt_tokens`` leaves after
    the card's persona ``before`` (all of them without a token counter), cut from the end."""
    if limits.count_tokens is None or limits.prompt_tokens is None or not sentences:
        return sentences
    used = sum(limits.count_tokens(before)) + len(before) if before else 0
    rest = replace(limits, prompt_tokens=max(0, limits.prompt_tokens - used))
    return [text for _, text in fit_pieces([("description", s) for s in sentences], rest)]


def content_text(content: Any, param: str) -> str:
    """A message's content: a string, or a list of text parts (joined by newlines)."""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        content = "\n".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise bad_request(
            param,
            "invalid_content",
            f"{param} must be a string or a list of text parts "
            '([{"type": "text", "text": "..."}]); this bot reads text only',
        )
    problem = unicode_problem(content)
    if problem:
        raise bad_request(param, "invalid_unicode", f"{param}: {problem}")
    return content


def utterance(content: Any, param: str, settings: ServeSettings) -> str:
    """A user or assistant message's text, stripped; refused if empty or too long."""
    text = content_text(content, param).strip()
    if not text:
        raise bad_request(param, "empty_content", f"{param} is empty: write some words")
    if len(text) > settings.max_message_chars:
        raise bad_request(
            param,
            "limit_exceeded",
            f"{param} has {len(text)} characters, more than the server allows (server "
            f"limit max_message_chars={settings.max_message_chars}, set with "
            "--max-message-chars)",
        )
    return text


def system_sentences(content: Any, param: str) -> list[str]:
    """A system message as persona sentences (``max_card_chars`` bounds them all)."""
    sentences = persona_sentences(content_text(content, param))
    if not sentences:
        raise bad_request(
            param,
            "empty_content",
            f"{param} has no persona sentence: write the persona, one sentence per line",
        )
    return sentences


def persona_limit(param: str, chars: int, settings: ServeSettings) -> RequestError:
    return bad_request(
        param,
        "limit_exceeded",
        f"{param}: the system messages have {chars:,} characters of persona (server limit "
        f"max_card_chars={settings.max_card_chars:,}, set with --max-card-chars); keep what "
        "matters",
    )


def check_range(name: str, value: float | None, bound: Bound) -> None:
    """Refuse (400) a field the request set outside ``bound`` (None: not set, the default)."""
    if value is not None and not bound.holds(value):
        raise bad_request(name, "invalid_value", out_of_bounds(name, value, bound))


def field_bounds(settings: ServeSettings, context: int | None) -> dict[str, Bound]:
    """The ranges of OpenAI's own fields: the server's bounds on the options they set, except
    that ``temperature`` 0 is greedy decoding and ``max_tokens`` is an upper bound up to the
    model's context (None: no bound)."""
    bounds = option_bounds(settings)
    return {
        "max_tokens": within(1, context or math.inf, "the model's context"),
        "temperature": replace(bounds["temperature"], low=0),
        "top_p": bounds["top_p"],
        "frequency_penalty": bounds["frequency_penalty"],
        "presence_penalty": bounds["presence_penalty"],
    }


def model_context(model) -> int | None:
    """The served model's context in tokens (None without a model: no upper bound)."""
    if model is None:
        return None
    from personachat.model.loading import context_size

    return context_size(model.model)


def chat_options(
    body, defaults: DecodingOptions, settings: ServeSettings, context: int | None = None
) -> DecodingOptions:
    """The decoding options of a request (see the module doc for the mapping); ``context``:
    the model's, the largest ``max_tokens`` accepted."""
    max_name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = getattr(body, max_name)
    bounds = field_bounds(settings, context)
    check_range(max_name, max_tokens, bounds["max_tokens"])
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        check_range(name, getattr(body, name), bounds[name])
    requested = requested_options(body, max_tokens, defaults, settings)
    try:
        options = decoding_options(requested, defaults, settings)
    except RequestError as err:
        raise in_field_names(err, max_name) from None
    seed = body.seed if options.do_sample else None  # a greedy reply needs no seed
    return replace(options, seed=seed)


def requested_options(
    body, max_tokens: int | None, defaults: DecodingOptions, settings: ServeSettings
) -> dict[str, Any]:
    """The decoding options the request's fields set, by the module doc's mapping."""
    requested: dict[str, Any] = {}
    if max_tokens is not None:  # an upper bound: the reply ends at its turn's end anyway
        longest = min(max_tokens, settings.max_reply_tokens)
        requested.update(max_length=longest, min_length=min(defaults.min_length, longest))
    if body.temperature == 0 or body.top_p == 0:
        requested["do_sample"] = False
    elif body.temperature is not None or body.top_p is not None:
        requested["do_sample"] = True
        if body.temperature is not None:  # (0, 0.01) is decoded at the server's lowest, 0.01
            requested["temperature"] = max(body.temperature, 0.01)
        if body.top_p is not None:
            requested["top_p"] = body.top_p
    for field, option in EXTENSIONS.items():
        if getattr(body, field) is not None:
            requested[option] = getattr(body, field)
    return requested


def in_field_names(err: RequestError, max_name: str) -> RequestError:
    """The session API's refusal of an option as a 400 in the request's own names (its
    ``max_length`` is ``max_name`` here, ``min_length`` is ``min_tokens``)."""
    names = {option: field for field, option in EXTENSIONS.items()}
    names["max_length"] = max_name
    message = err.message
    for option, field in names.items():
        message = message.replace(option, field)
    option = err.extra.get("option")
    return bad_request(names.get(option, option), err.code, message)


def stop_strings(stop: Any) -> tuple[str, ...]:
    """``stop`` (a string, a list of up to 4, or null) as a tuple of non-empty strings."""
    stops = [stop] if isinstance(stop, str) else [] if stop is None else stop
    valid = isinstance(stops, list) and all(
        isinstance(s, str) and s and len(s) <= MAX_STOP_CHARS and not unicode_problem(s)
        for s in stops
    )
    if not valid or len(stops) > MAX_STOPS:
        raise bad_request(
            "stop",
            "invalid_value",
            f"stop must be a string or a list of at most {MAX_STOPS} strings, each of 1 to "
            f"{MAX_STOP_CHARS} characters",
        )
    return tuple(stops)


def first_stop(text: str, stops: tuple[str, ...]) -> tuple[int, int] | None:
    """(start, end) of the earliest stop string in ``text``, or None."""
    found = [(text.find(s), -len(s)) for s in stops if s in text]
    if not found:
        return None
    start, minus_length = min(found)
    return start, start - minus_length


@dataclass(frozen=True)
class Answer:
    """A reply as the client gets it: cut at a stop string, why it ended, its token counts."""

    content: str
    finish_reason: str  # "stop" (the model ended it, or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def answer(completion, request: ChatRequest, decode: Callable[[list[int]], str]) -> Answer:
    """The ``Answer`` of a ``generation.completion.Completion``. Cut at a stop string, the reply
    counts the tokens decoded until the stop string was complete (as if decoding had stopped
    there); ``decode``: token ids to the stripped text, as the reply was decoded."""
    ids, text = completion.ids, completion.text
    stop = first_stop(text, request.stops)
    if stop is None:
        ended = "length" if len(ids) >= request.options.max_length else "stop"
        return Answer(text, ended, completion.prompt_tokens, len(ids))
    start, end = stop
    used = next((k for k in range(1, len(ids)) if len(decode(ids[:k])) >= end), len(ids))
    return Answer(text[:start], "stop", completion.prompt_tokens, used)


class StreamedText:
    """The content deltas of a streamed reply from its texts so far.

    With stop strings, the last ``len(longest stop) - 1`` characters are held back (they may
    be the start of a stop string) and nothing past a stop string is sent; ``finish`` sends
    the rest of the final content. A text that does not extend what was sent (the batcher
    re-ran a failed batch and the reply started over) is skipped.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.sent = stops, ""
        self.hold = max((len(s) for s in stops), default=1) - 1

    def push(self, text: str) -> str:
        if not text.startswith(self.sent):
            return ""
        stop = first_stop(text, self.stops)
        end = stop[0] if stop else len(text) - self.hold
        delta = text[len(self.sent) : end] if end > len(self.sent) else ""
        self.sent += delta
        return delta

    def finish(self, content: str) -> str:
        return content[len(self.sent) :] if content.startswith(self.sent) else ""


def read_text_request(body, service) -> ChatRequest:
    """A ``/v1/completions`` body (``openai_api.CompletionBody``) checked and turned into a
    request for the batcher: no persona, the prompt as the only history entry, decoded by
    ``ConvAIModel.complete`` (``raw_prompt``). Tokenizes the prompt: a worker thread's job."""
    from personachat.serve.text_completions import check_prompt, text_options

    for name, value, allowed in (
        ("n", body.n, 1),
        ("best_of", body.best_of, 1),
        ("echo", body.echo, False),
        ("suffix", body.suffix, None),
        ("logprobs", body.logprobs, None),
    ):
        if value is not None and value != allowed:
            raise bad_request(
                name, "unsupported_value", f"{name}={value!r} is not supported; leave it out"
            )
    check_unsupported_bias(body)
    prompt = (
        body.prompt[0] if isinstance(body.prompt, list) and len(body.prompt) == 1 else body.prompt
    )
    if not isinstance(prompt, str):
        raise bad_request(
            "prompt", "invalid_prompt", "prompt must be a string (or a list of one string)"
        )
    problem = unicode_problem(prompt)
    if problem:
        raise bad_request("prompt", "invalid_unicode", f"prompt: {problem}")
    model = service.model
    options = text_options(
        chat_options(body, service.defaults, service.settings, model_context(model))
    )
    check_prompt(model, prompt, options.max_length)
    if body.stream_options is not None and not body.stream:
        raise bad_request(
            "stream_options", "invalid_value", "stream_options is only allowed with stream: true"
        )
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    return ChatRequest([], [prompt], options, stop_strings(body.stop), include_usage)


def check_unsupported_bias(body) -> None:
    if body.logit_bias:
        raise bad_request(
            "logit_bias",
            "unsupported_parameter",
            "logit_bias is not supported (this decoder has no per-token bias); send {} or "
            "leave it out",
        )
