"""Random JSON bodies against every route of a real server on 127.0.0.1: never a 500.

Bodies are random JSON (nested lists and objects of numbers, NaN, booleans, nulls and
strings with lone surrogates), bodies shaped like the API's with random values, and random
bytes; then chat bodies (session messages and OpenAI chat) with hostile values: numbers of
thousands of digits, 1e999, NaN, nesting thousands deep. Each goes to every route, with a
live session's id or an unknown one. Whatever comes in, the answer is a 2xx or a 4xx with a
JSON error (naming the field, for the hostile chat bodies), a stream never reports a server
fault, and the server keeps answering.
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personachat import ConvAIModel
from personachat.serve.settings import ServeSettings

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import ThreadServer, model_with_personas  # noqa: E402

LIVE, UNKNOWN = "{live}", "no-such-session-id-0000"
ROUTES = [  # every route of serve/app.py
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("PUT", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("POST", "/v1/sessions/{id}/messages"),
    ("POST", "/v1/sessions/{id}/messages/stream"),
    ("GET", "/health"),
    ("GET", "/"),
]
OPTIONS = [
    "max_length",
    "min_length",
    "temperature",
    "top_p",
    "top_k",
    "do_sample",
    "repetition_penalty",
    "no_repeat_ngram_size",
]
SERVER_FAULTS = ("internal_error", "generation_failed")

surrogates = st.integers(0xD800, 0xDFFF).map(chr)
strings = st.one_of(
    st.lists(st.one_of(st.characters(), surrogates), max_size=12).map("".join),
    st.sampled_from(["", " ", "hi", "hi \ud800", "\x00"]),
    st.integers(1000, 1500).map(lambda n: "a" * n),  # over max_message_chars
)
keys = st.one_of(
    st.sampled_from(["text", "options", "client_id", "personality", *OPTIONS]), strings
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    strings,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
options = st.dictionaries(st.sampled_from(OPTIONS), scalars, max_size=4)
shaped = st.one_of(
    st.fixed_dictionaries(
        {"text": strings}, optional={"options": options | values, "client_id": strings}
    ),
    st.fixed_dictionaries({"personality": st.lists(strings, max_size=5) | values}),
)
bodies = st.one_of(  # json.dumps writes NaN, and lone surrogates as \ud800 escapes
    values.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),  # twice: half the bodies are API-shaped
    st.binary(max_size=40),
)


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    folder = model_with_personas(tiny_checkpoint, tmp_path_factory.mktemp("fuzz") / "model")
    model = ConvAIModel("gpt2", folder, use_cuda=False)
    limits = ServeSettings(batch_window_ms=0, max_reply_tokens=3, max_body_bytes=8192)
    with ThreadServer(model, tmp_path_factory.mktemp("db") / "fuzz.sqlite3", limits) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def check_answer(response: httpx.Response, route: tuple[str, str], body: bytes) -> None:
    where = f"{route} {body[:200]!r}: {response.status_code} {response.text[:500]}"
    assert response.status_code < 500, where
    if response.status_code >= 400:
        assert response.json()["error"]["code"] not in SERVER_FAULTS, where
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        assert not any(code in response.text for code in SERVER_FAULTS), where


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(route=st.sampled_from(ROUTES), session=st.sampled_from([LIVE, UNKNOWN]), body=bodies)
def test_random_bodies_on_every_route_never_get_a_500(client, route, session, body):
    method, path = route
    if session == LIVE:  # a fresh session: a DELETE or PUT of one example spares the next
        session = client.post("/v1/sessions", json={"personality": ["i am a fuzzer ."]})
        session = session.json()["id"]
    response = client.request(
        method,
        path.replace("{id}", session),
        content=body,
        headers={"Content-Type": "application/json"},
    )
    check_answer(response, route, body)


def test_the_server_still_answers_after_the_fuzzing(client):
    assert client.get("/health").json()["status"] == "ok"
    session = client.post("/v1/sessions").json()["id"]
    reply = client.post(f"/v1/sessions/{session}/messages", json={"text": "still there ?"})
    assert reply.status_code == 200 and isinstance(reply.json()["reply"], str)


# Hostile values: what a careless client or an attacker sends, bounded before any use.
hostile_numbers = st.one_of(
    st.integers(101, 6000).map(lambda n: "9" * n),  # past MAX_NUMBER_CHARS
    st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1e308", "-0", "0.0"]),
    st.integers(-(2**80), 2**80).map(str),
)
hostile_texts = st.one_of(strings, st.integers(0, 70).map(lambda n: "[" * n + "]" * n))
CHAT_ROUTES = [
    ("POST", "/v1/sessions/{id}/messages", "message"),
    ("POST", "/v1/chat/completions", "openai"),
]
WHOLE_BODY_CODES = {"invalid_json", "malformed_json", "limit_exceeded", "session_not_found"}


def hostile_body(kind: str, number: str, text: str, key: str, depth: int) -> bytes:
    """A chat body of ``kind`` with ``number`` (raw JSON text) under the option ``key`` and
    ``text`` as the message, the whole wrapped in ``depth`` lists (0: as is)."""
    message = json.dumps(text)
    if kind == "message":
        body = f'{{"text": {message}, "options": {{"{key}": {number}}}}}'
    else:
        openai_key = {"max_length": "max_tokens"}.get(key, key)
        body = (
            f'{{"model": "m", "messages": [{{"role": "user", "content": {message}}}], '
            f'"{openai_key}": {number}}}'
        )
    return ("[" * depth + body + "]" * depth).encode()


def names_a_field(error: dict) -> bool:
    """Whether a 4xx error says where the problem is: a field, OpenAI's param, an option or
    a server limit, validation details with their location, or a code about the body as a
    whole."""
    if any(error.get(key) for key in ("field", "param", "option", "limit", "details")):
        return True
    return error.get("code") in WHOLE_BODY_CODES or error.get("type") == "invalid_request_error"


@settings(  # the same 60 bodies every run: a failure here reproduces
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    route=st.sampled_from(CHAT_ROUTES),
    number=hostile_numbers,
    text=hostile_texts,
    key=st.sampled_from(["max_length", "temperature", "top_p", "top_k", "seed"]),
    depth=st.sampled_from([0, 0, 0, 1, 70, 5000]),
)
def test_hostile_chat_bodies_end_in_a_2xx_or_a_4xx_naming_the_field(
    client, route, number, text, key, depth
):
    method, path, kind = route
    session = client.post("/v1/sessions", json={"personality": ["i am a fuzzer ."]}).json()["id"]
    body = hostile_body(kind, number, text, key, depth)
    started = time.monotonic()
    response = client.request(
        method,
        path.replace("{id}", session),
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert time.monotonic() - started < 60  # bounded: every hostile value refused early
    check_answer(response, (method, path), body)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert names_a_field(error), f"{body[:200]!r}: {response.text[:500]}"
