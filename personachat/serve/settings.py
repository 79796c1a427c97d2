"""What the server allows: limits on what clients send and bounds on decoding options.

Everything a client sends is checked here before it reaches the model or the store, and each
refusal is a ``RequestError`` that names the limit, so a client can tell "my message is too
long (max_message_chars=1000)" from "the server is busy (max_in_flight=64)". Pure Python: no
web framework, so the checks are tested (and reusable) without a server.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from personachat.data.cards import DEFAULT_CARD_CHARS
from personachat.errors import PersonachatError
from personachat.generation.generate import DecodingOptions
from personachat.option_checks import Bound, within
from personachat.text import unicode_problem as text_unicode_problem

# Decoding options a request may set. max_history and rerank_samples stay the model's: the
# first is how the model was trained, the second costs N decodings per reply.
REQUEST_OPTIONS = (
    "max_length",
    "min_length",
    "temperature",
    "top_p",
    "top_k",
    "do_sample",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "frequency_penalty",
    "presence_penalty",
)


class RequestError(PersonachatError):
    """A request the server refuses: HTTP status, a stable code, a message saying what to do.

    ``extra`` carries machine-readable details, e.g. ``{"limit": "max_message_chars",
    "max": 1000}``; the JSON body is ``{"error": {"code", "message", **extra}}``.
    """

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


LOOPBACK = ("127.0.0.1", "::1", "localhost")  # addresses only this machine can reach


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to listen on) is reachable from this machine only."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServeError(PersonachatError, ValueError):
    """A problem starting the server that the user can fix (the CLI prints it in one line)."""


def limit_error(status: int, limit: str, maximum: int | float, what: str) -> RequestError:
    """A refusal because a server limit was exceeded; the limit is named in the body."""
    flag = "--" + limit.replace("_", "-")
    return RequestError(
        status,
        "limit_exceeded",
        f"{what} (server limit {limit}={maximum}, set with {flag})",
        limit=limit,
        max=maximum,
    )


@dataclass(frozen=True)
class ServeSettings:
    """Server options; each has a ``personachat serve --flag`` of the same name.

    Limits protect the server from one client (a huge persona, a flood of requests); decoding
    bounds keep one request from costing much more than the others in its batch.
    """

    api_key: str | None = None  # required on every /v1 route when set
    # Replies decoded together in one model call. 16, not more: on a CPU a reply costs about
    # the same in a batch of 16 as of 32, and with more users than that the batches
    # alternate, so the event loop answers one batch's clients and reads their next
    # messages while the model decodes the other (with 32 users in batches of 32 the model
    # waits ~50 ms a batch for that; 16 served 150 against 125 replies/s in
    # benchmarks/serve_load.py). On a GPU a larger batch may pay.
    max_batch_size: int = 16
    batch_window_ms: float = 10.0  # how long the first request waits for others to join
    max_in_flight: int = 256  # requests accepted and not answered yet; beyond: 429
    max_message_chars: int = 1000  # one user message; beyond: 413
    max_persona_sentences: int = 10  # beyond: 413
    max_persona_chars: int = 300  # one persona sentence; beyond: 413
    # A character card's text after {{char}}/{{user}} are filled, or the system messages of
    # a chat request, all together (data.cards); beyond: 422 (400 on the OpenAI routes).
    max_card_chars: int = DEFAULT_CARD_CHARS
    max_history_kept: int = 200  # messages stored per session; older turns are dropped
    max_body_bytes: int = 64 * 1024  # one request body; beyond: 413
    max_reply_tokens: int = 64  # upper bound of max_length
    max_temperature: float = 2.0
    max_top_k: int = 1000
    max_repetition_penalty: float = 2.0
    max_no_repeat_ngram_size: int = 6
    # Seconds a connection may take to send a request's headers (slow clients hold sockets).
    header_timeout: float = 10.0
    # Host header names answered (any port); others get 421. A web page whose own name is
    # made to resolve to 127.0.0.1 (DNS rebinding) sends its name: refused. "*": any.
    allowed_hosts: tuple[str, ...] = LOOPBACK

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                if value is not None and not value.strip():
                    raise ValueError("api_key is empty: pass a non-empty key or none at all")
                continue
            if f.name == "allowed_hosts":
                object.__setattr__(self, f.name, allowed_host_names(value))
                continue
            low = {"batch_window_ms": 0, "header_timeout": 0.1}.get(f.name, 1)
            if not Bound(low=low).holds(value):
                raise ValueError(
                    f"--{f.name.replace('_', '-')} must be a number >= {low}, got {value!r}"
                )
        if self.max_history_kept < 2:
            raise ValueError("--max-history-kept must be at least 2 (one message and its reply)")

    def public(self) -> dict:
        """The limits and bounds (never the API key), for /health and the chat page."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"}

    def allows_host(self, host: str | None) -> bool:
        """Whether a request with this Host header is answered (none: not from a browser,
        which always sends one, so not a DNS-rebinding page)."""
        return host is None or "*" in self.allowed_hosts or host_name(host) in self.allowed_hosts


def host_name(host: str) -> str:
    """The name of a Host header or ``--allowed-hosts`` entry: lowercase, without its port,
    the brackets of an IPv6 address, or a final dot (``[::1]:8000`` → ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    return host.rstrip(".")


def allowed_host_names(hosts: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """``--allowed-hosts`` as names (a comma-separated string or a list), refused if empty."""
    if isinstance(hosts, str):
        hosts = hosts.split(",")
    names = tuple(dict.fromkeys(host_name(h) for h in hosts if h.strip()))
    if not names or "" in names:
        raise ValueError(
            f"--allowed-hosts {','.join(hosts)!r} names no host: give names such as "
            "localhost,chat.example.com, or '*' to answer any Host"
        )
    return names


def unicode_problem(text: str) -> str | None:
    """What makes ``text`` invalid Unicode (``personachat.text``), with a client's advice."""
    return text_unicode_problem(text, "; send text that UTF-8 can encode")


def check_unicode(text: str, field: str) -> None:
    """Refuse ``text`` with a 422 naming ``field`` when it is not valid Unicode."""
    problem = unicode_problem(text)
    if problem:
        raise RequestError(422, "invalid_unicode", f"{field}: {problem}", field=field)


def clean_text(text: str, settings: ServeSettings) -> str:
    """The user's message without surrounding whitespace; refused if empty, too long or not
    valid Unicode."""
    check_unicode(text, "text")
    text = text.strip()
    if not text:
        raise RequestError(
            422, "empty_text", "text is empty: send a message with some words", field="text"
        )
    if len(text) > settings.max_message_chars:
        raise limit_error(
            413,
            "max_message_chars",
            settings.max_message_chars,
            f"text has {len(text)} characters, more than the server allows",
        )
    return text


def clean_personality(sentences: list[str], settings: ServeSettings) -> list[str]:
    """Persona sentences without surrounding whitespace; refused if empty, too large or not
    valid Unicode."""
    cleaned = [s.strip() for s in sentences]
    for i, sentence in enumerate(cleaned):
        check_unicode(sentence, f"personality[{i}]")
        if not sentence:
            raise RequestError(
                422,
                "empty_persona_sentence",
                f"personality[{i}] is empty: remove it or write a sentence",
            )
        if len(sentence) > settings.max_persona_chars:
            raise limit_error(
                413,
                "max_persona_chars",
                settings.max_persona_chars,
                f"personality[{i}] has {len(sentence)} characters",
            )
    if len(cleaned) > settings.max_persona_sentences:
        raise limit_error(
            413,
            "max_persona_sentences",
            settings.max_persona_sentences,
            f"personality has {len(cleaned)} sentences",
        )
    return cleaned


def option_bounds(settings: ServeSettings) -> dict[str, Bound]:
    """The closed range of each numeric option a request may set, naming the server option
    that sets its upper end where one does."""

    def flag(limit: str) -> str:
        return "the server's --" + limit.replace("_", "-")

    reply = flag("max_reply_tokens")
    return {
        "max_length": within(1, settings.max_reply_tokens, reply),
        "min_length": within(0, settings.max_reply_tokens, reply),
        "temperature": within(0.01, settings.max_temperature, flag("max_temperature")),
        "top_p": within(0, 1),
        "top_k": within(0, settings.max_top_k, flag("max_top_k")),
        "repetition_penalty": within(
            1.0, settings.max_repetition_penalty, flag("max_repetition_penalty")
        ),
        "no_repeat_ngram_size": within(
            0, settings.max_no_repeat_ngram_size, flag("max_no_repeat_ngram_size")
        ),
        "frequency_penalty": within(-2, 2),  # OpenAI's range
        "presence_penalty": within(-2, 2),
    }


def out_of_bounds(name: str, value: Any, bound: Bound) -> str:
    """The refusal of ``value`` for ``name`` outside ``bound``, on every route that takes
    decoding options (the session API's 422, the OpenAI routes' 400)."""
    return f"{name}={value} is outside the server's bounds {bound.interval()}"


def server_defaults(model_defaults: DecodingOptions, settings: ServeSettings) -> DecodingOptions:
    """The model's decoding options, brought within the server's bounds."""
    max_length = min(model_defaults.max_length, settings.max_reply_tokens)
    return replace(
        model_defaults,
        max_length=max_length,
        min_length=min(model_defaults.min_length, max_length),
        temperature=min(max(model_defaults.temperature, 0.01), settings.max_temperature),
    )


def decoding_options(
    requested: dict[str, Any] | None, defaults: DecodingOptions, settings: ServeSettings
) -> DecodingOptions:
    """``defaults`` with the request's options applied, each checked against its bound.

    An option out of bounds is refused (422 naming the option and its range) rather than
    silently clamped: a client asking for 500 tokens should learn it gets at most 64.
    """
    requested = {k: v for k, v in (requested or {}).items() if v is not None}
    unknown = sorted(set(requested) - set(REQUEST_OPTIONS))
    if unknown:
        raise RequestError(
            422,
            "unknown_option",
            f"unknown decoding option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(REQUEST_OPTIONS)}",
        )
    bounds = option_bounds(settings)
    for name, value in requested.items():
        check_option(name, value, bounds.get(name))
    options = replace(defaults, **requested)
    if options.min_length > options.max_length:
        raise RequestError(
            422,
            "option_out_of_bounds",
            f"min_length={options.min_length} is more than max_length={options.max_length}",
            option="min_length",
            min=0,
            max=options.max_length,
        )
    return options


def check_option(name: str, value: Any, bound: Bound | None) -> None:
    """Refuse (422) one requested decoding option of the wrong type or outside ``bound``
    (None: ``do_sample``, true or false)."""
    if bound is None:
        if not isinstance(value, bool):
            raise RequestError(422, "invalid_option", f"{name} must be true or false", option=name)
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(422, "invalid_option", f"{name} must be a number", option=name)
    if not bound.holds(value):
        raise RequestError(
            422,
            "option_out_of_bounds",
            out_of_bounds(name, value, bound),
            option=name,
            min=bound.low,
            max=bound.high,
        )
