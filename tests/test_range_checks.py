"""One range check (``option_checks.Bound``) behind the options, the session API and the
OpenAI routes: the same value is refused by each entry point with the same range, in that
entry point's own error (an ``ArgsError``, a 422, a 400)."""

from __future__ import annotations

import math

import pytest

from personachat.args import ArgsError, make_args
from personachat.generation.generate import DecodingOptions
from personachat.option_checks import BOUNDS, Bound, within
from personachat.serve.settings import (
    RequestError,
    ServeSettings,
    decoding_options,
    option_bounds,
)

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")

from personachat.serve.chat_completions import chat_options  # noqa: E402
from personachat.serve.openai_api import ChatCompletionBody  # noqa: E402

SETTINGS = ServeSettings(max_reply_tokens=16, max_temperature=1.5)
DEFAULTS = DecodingOptions.from_args(max_length=16)
SAID = [{"role": "user", "content": "hi"}]


def refusals(name: str, value: float) -> tuple[str, RequestError, RequestError]:
    """The refusal of ``name=value`` by the options, the session API and the OpenAI route."""
    with pytest.raises(ArgsError) as option:
        make_args({name: value})
    with pytest.raises(RequestError) as session:
        decoding_options({name: value}, DEFAULTS, SETTINGS)
    with pytest.raises(RequestError) as openai:
        chat_options(ChatCompletionBody(messages=SAID, **{name: value}), DEFAULTS, SETTINGS)
    return str(option.value), session.value, openai.value


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan, math.inf])
def test_top_p_out_of_range_is_refused_alike_by_options_session_and_openai_route(value):
    option, session, openai = refusals("top_p", value)
    assert option == f"top_p must be within [0, 1], got {value!r}"
    said = f"top_p={value} is outside the server's bounds [0, 1]"
    assert session.message == openai.message == said
    assert (session.status, session.code, session.extra) == (
        422,
        "option_out_of_bounds",
        {"option": "top_p", "min": 0, "max": 1},
    )
    assert (openai.status, openai.code, openai.extra) == (400, "invalid_value", {"param": "top_p"})


def test_a_penalty_beyond_openais_range_is_refused_alike_everywhere():
    option, session, openai = refusals("presence_penalty", 2.5)
    assert option == "presence_penalty must be within [-2, 2], got 2.5"
    assert (
        session.message
        == openai.message
        == ("presence_penalty=2.5 is outside the server's bounds [-2, 2]")
    )


def test_a_bound_the_server_sets_names_its_flag_on_both_routes():
    with pytest.raises(RequestError) as session:
        decoding_options({"temperature": 1.8}, DEFAULTS, SETTINGS)
    with pytest.raises(RequestError) as openai:
        chat_options(ChatCompletionBody(messages=SAID, temperature=1.8), DEFAULTS, SETTINGS)
    flag = "(the upper bound is the server's --max-temperature)"
    assert (
        session.value.message
        == f"temperature=1.8 is outside the server's bounds [0.01, 1.5] {flag}"
    )
    # On the OpenAI route 0 is greedy decoding, so its range starts at 0.
    assert openai.value.message == f"temperature=1.8 is outside the server's bounds [0, 1.5] {flag}"
    with pytest.raises(RequestError) as top_k:
        decoding_options({"top_k": 5000}, DEFAULTS, SETTINGS)
    assert top_k.value.message.endswith("[0, 1000] (the upper bound is the server's --max-top-k)")


def test_max_tokens_is_bounded_by_the_models_context_not_the_servers_reply_limit():
    body = ChatCompletionBody(messages=SAID, max_tokens=300)
    assert chat_options(body, DEFAULTS, SETTINGS, context=2048).max_length == 16
    with pytest.raises(RequestError) as beyond:
        chat_options(ChatCompletionBody(messages=SAID, max_tokens=2049), DEFAULTS, SETTINGS, 2048)
    assert beyond.value.message == (
        "max_tokens=2049 is outside the server's bounds [1, 2048] "
        "(the upper bound is the model's context)"
    )
    with pytest.raises(RequestError) as zero:
        chat_options(ChatCompletionBody(messages=SAID, max_completion_tokens=0), DEFAULTS, SETTINGS)
    assert zero.value.extra == {"param": "max_completion_tokens"}
    assert "[1, inf]" in zero.value.message  # no model: no upper bound


def test_the_values_at_the_edges_of_a_server_bound_are_accepted_on_both_routes():
    accepted = decoding_options({"top_p": 1, "temperature": 1.5}, DEFAULTS, SETTINGS)
    assert (accepted.top_p, accepted.temperature) == (1, 1.5)
    body = ChatCompletionBody(messages=SAID, top_p=0.0, frequency_penalty=-2.0)
    assert chat_options(body, DEFAULTS, SETTINGS).do_sample is False


def test_whatever_the_server_accepts_the_options_accept_too():
    """A request's options become the model's decoding options: the server's range of each
    lies inside the option's own range, at its default limits and at the largest ones."""
    for settings in (ServeSettings(), SETTINGS):
        for name, bound in option_bounds(settings).items():
            for edge in (bound.low, bound.high):
                assert BOUNDS[name].holds(edge), (name, edge)


def test_the_server_options_are_checked_by_the_same_bound():
    for bad in (0, -1, math.inf, math.nan, True, "16"):
        with pytest.raises(ValueError, match="--max-batch-size must be a number >= 1"):
            ServeSettings(max_batch_size=bad)
    assert ServeSettings(batch_window_ms=0).batch_window_ms == 0


def test_a_bound_says_its_interval_open_or_closed():
    assert within(0, 1).interval() == "[0, 1]"
    assert BOUNDS["lora_dropout"].interval() == "[0, 1)"
    assert Bound(low=0, open_low=True).interval() == "(0, inf]"
    assert within(1, 64, "the server's --max-reply-tokens").interval() == (
        "[1, 64] (the upper bound is the server's --max-reply-tokens)"
    )
    assert not within(0, 1).holds(True) and within(0, 1).holds(1) and not within(0, 1).holds(None)
