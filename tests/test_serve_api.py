"""``personachat serve``'s API against a real uvicorn server on 127.0.0.1 with a tiny model:
routes, bad input, sessions, streaming.

The tests share one in-thread server (API key on, small limits). Batching, load and shutdown
are in ``test_serve_batching.py``; the CLI and restarts in ``test_serve_cli.py``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from personachat import ConvAIModel

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import (  # noqa: E402
    AUTH,
    KEY,
    LONG,
    PERSONAS,
    SETTINGS,
    ThreadServer,
    error,
    model_with_personas,
    new_session,
    sse_events,
)


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    return model_with_personas(tiny_checkpoint, tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def model(model_dir) -> ConvAIModel:
    return ConvAIModel("gpt2", model_dir, use_cuda=False)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    with ThreadServer(model, tmp_path_factory.mktemp("db") / "s.sqlite3", SETTINGS) as s:
        yield s


@pytest.fixture()
def api(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


# ---------------------------------------------------------------------- routes
def test_health_docs_and_chat_page(api):
    health = api.get("/health", headers={}).json()
    assert health["status"] == "ok" and health["api_key_required"] is True
    assert health["limits"]["max_message_chars"] == 200 and "api_key" not in health["limits"]
    assert api.get("/docs", headers={}).status_code == 200
    paths = api.get("/openapi.json", headers={}).json()["paths"]
    assert {
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/messages",
        "/v1/sessions/{session_id}/messages/stream",
        "/health",
    } <= set(paths)
    page = api.get("/", headers={})
    assert page.status_code == 200 and 'id="log"' in page.text
    assert "localStorage" in api.get("/static/app.js", headers={}).text


def test_session_lifecycle(api):
    session_id = new_session(api, ["i work as a nurse .", "i have a cat ."])
    assert len(session_id) >= 32
    session = api.get(f"/v1/sessions/{session_id}").json()
    assert session["personality"] == ["i work as a nurse .", "i have a cat ."]
    assert session["messages"] == []

    turn = api.post(f"/v1/sessions/{session_id}/messages", json={"text": " hi , any pets ? "})
    assert turn.status_code == 200, turn.text
    body = turn.json()
    assert isinstance(body["reply"], str) and body["replayed"] is False
    assert [(m["seq"], m["role"]) for m in body["messages"]] == [(1, "user"), (2, "bot")]
    assert body["messages"][0]["text"] == "hi , any pets ?"  # stripped

    changed = api.put(f"/v1/sessions/{session_id}", json={"personality": ["i am a pilot ."]})
    assert changed.status_code == 200
    assert changed.json()["personality"] == ["i am a pilot ."]
    assert len(changed.json()["messages"]) == 2  # the persona changes, the history stays
    api.post(f"/v1/sessions/{session_id}/messages", json={"text": "what do you do ?"})
    session = api.get(f"/v1/sessions/{session_id}").json()
    assert [m["seq"] for m in session["messages"]] == [1, 2, 3, 4]
    assert session["personality"] == ["i am a pilot ."]

    assert api.delete(f"/v1/sessions/{session_id}").status_code == 204
    assert error(api.get(f"/v1/sessions/{session_id}"), 404)["code"] == "session_not_found"
    assert error(api.delete(f"/v1/sessions/{session_id}"), 404)["code"] == "session_not_found"
    assert (
        error(api.post(f"/v1/sessions/{session_id}/messages", json={"text": "hi"}), 404)["code"]
        == "session_not_found"
    )


def test_random_persona_comes_from_the_models_data(api):
    for body in (None, {}, {"personality": None}, {"personality": []}):
        response = (
            api.post("/v1/sessions", json=body) if body is not None else api.post("/v1/sessions")
        )
        assert response.status_code == 201, (body, response.text)
        assert response.json()["personality"] in PERSONAS
    session_id = new_session(api, ["i like tea ."])
    redrawn = api.put(f"/v1/sessions/{session_id}", json={"personality": None}).json()
    assert redrawn["personality"] in PERSONAS


def test_api_key_is_required_on_every_v1_route(server, api):
    session_id = new_session(api)
    routes = [
        ("POST", "/v1/sessions", {}),
        ("GET", f"/v1/sessions/{session_id}", None),
        ("PUT", f"/v1/sessions/{session_id}", {"personality": ["x ."]}),
        ("DELETE", f"/v1/sessions/{session_id}", None),
        ("POST", f"/v1/sessions/{session_id}/messages", {"text": "hi"}),
        ("POST", f"/v1/sessions/{session_id}/messages/stream", {"text": "hi"}),
        ("GET", "/v1/sessions/unknown-session-id-000", None),
        ("GET", "/v1", None),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for method, path, body in routes:
            for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
                response = anonymous.request(method, path, json=body, headers=headers)
                assert error(response, 401)["code"] == "unauthorized", (method, path)
        # Malformed JSON without a key is still a 401, not a parse error.
        response = anonymous.post("/v1/sessions", content=b"{not json")
        assert response.status_code == 401
        assert (
            anonymous.get(
                f"/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {KEY}"}
            ).status_code
            == 200
        )
        assert anonymous.get("/health").status_code == 200
    assert api.get(f"/v1/sessions/{session_id}").json()["messages"] == []  # nothing happened


# ---------------------------------------------------------------------- bad input
def test_bad_input_gets_clear_json_errors_and_the_server_keeps_serving(api):
    session_id = new_session(api)
    post = f"/v1/sessions/{session_id}/messages"

    def send(content):
        return api.post(
            post,
            content=content,
            headers={**AUTH, "Content-Type": "application/json"},
        )

    assert error(send(b'{"text": "hi"'), 422)["code"] == "malformed_json"
    assert error(send(b"\xff\xfe garbage"), 422)["code"] == "malformed_json"
    assert error(send(b'["a list"]'), 422)["code"] == "invalid_request"
    wrong_type = error(api.post(post, json={"text": 5}), 422)
    assert wrong_type["code"] == "invalid_request" and "text" in wrong_type["message"]
    assert "required" in error(api.post(post, json={}), 422)["message"]
    assert "unknown field" in error(api.post(post, json={"text": "hi", "txt": 1}), 422)["message"]
    assert error(api.post(post, json={"text": "   "}), 422)["code"] == "empty_text"
    assert error(api.post("/v1/sessions", json={"personality": "one string"}), 422)
    assert error(api.post("/v1/sessions", json={"personality": [1, 2]}), 422)
    assert (
        error(api.post("/v1/sessions", json={"personality": ["ok .", " "]}), 422)["code"]
        == "empty_persona_sentence"
    )

    # Decoding options: unknown, wrong type, out of the server's bounds.
    assert (
        "unknown field"
        in error(api.post(post, json={"text": "hi", "options": {"top_q": 1}}), 422)["message"]
    )
    assert error(api.post(post, json={"text": "hi", "options": {"temperature": "hot"}}), 422)
    assert error(api.post(post, json={"text": "hi", "options": {"do_sample": 1}}), 422)
    bound = error(api.post(post, json={"text": "hi", "options": {"max_length": 500}}), 422)
    assert bound["code"] == "option_out_of_bounds" and bound["option"] == "max_length"
    assert bound["max"] == 16
    assert (
        error(api.post(post, json={"text": "hi", "options": {"temperature": 0}}), 422)["option"]
        == "temperature"
    )
    assert error(
        api.post(post, json={"text": "hi", "options": {"min_length": 9, "max_length": 3}}), 422
    )

    # Unknown and malformed session ids, unknown routes and methods: JSON 404/405.
    for bad in ("no-such-session-id-0000", "..%2F..%2Fetc%2Fpasswd", "x" * 300, "a b"):
        assert error(api.get(f"/v1/sessions/{bad}"), 404)["code"] in (
            "session_not_found",
            "not_found",
        )
    assert error(api.get("/v1/sessions"), 405)["code"] == "method_not_allowed"
    assert error(api.get("/nowhere"), 404)["code"] == "not_found"

    assert api.get(f"/v1/sessions/{session_id}").json()["messages"] == []  # nothing stored
    assert api.post(post, json={"text": "still there ?"}).status_code == 200


def test_limits_answer_413_naming_the_limit(api):
    session_id = new_session(api)
    post = f"/v1/sessions/{session_id}/messages"
    too_long = error(api.post(post, json={"text": "a" * 201}), 413)
    assert too_long["limit"] == "max_message_chars" and too_long["max"] == 200
    assert "max_message_chars" in too_long["message"]
    assert (
        error(api.post("/v1/sessions", json={"personality": ["i am ."] * 5}), 413)["limit"]
        == "max_persona_sentences"
    )
    assert (
        error(api.put(f"/v1/sessions/{session_id}", json={"personality": ["b" * 81]}), 413)["limit"]
        == "max_persona_chars"
    )
    big = {"text": "hi", "client_id": "c" * 5000}
    assert error(api.post(post, json=big), 413)["limit"] == "max_body_bytes"

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(10):
            yield b" " * 1000

    response = api.post(
        post, content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert error(response, 413)["limit"] == "max_body_bytes"
    assert api.get(f"/v1/sessions/{session_id}").json()["messages"] == []


def test_history_kept_is_limited_to_whole_recent_turns(api):
    session_id = new_session(api)
    for i in range(5):
        assert (
            api.post(
                f"/v1/sessions/{session_id}/messages",
                json={"text": f"message {i}", "options": {"max_length": 2}},
            ).status_code
            == 200
        )
    messages = api.get(f"/v1/sessions/{session_id}").json()["messages"]
    assert [m["seq"] for m in messages] == [5, 6, 7, 8, 9, 10]  # max_history_kept=6
    assert [m["text"] for m in messages if m["role"] == "user"] == [
        "message 2",
        "message 3",
        "message 4",
    ]


# ---------------------------------------------------------------------- sessions
def test_sessions_are_isolated(api):
    a, b = new_session(api, ["i am a nurse ."]), new_session(api, ["i am a pilot ."])
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda args: api.post(f"/v1/sessions/{args[0]}/messages", json={"text": args[1]}),
                [(a, "from a 1"), (b, "from b 1"), (a, "from a 2"), (b, "from b 2")],
            )
        )
    for sid, own, persona in ((a, "from a", "i am a nurse ."), (b, "from b", "i am a pilot .")):
        session = api.get(f"/v1/sessions/{sid}").json()
        users = [m["text"] for m in session["messages"] if m["role"] == "user"]
        assert sorted(users) == [f"{own} 1", f"{own} 2"], session
        assert session["personality"] == [persona]
    api.put(f"/v1/sessions/{a}", json={"personality": ["changed ."]})
    api.delete(f"/v1/sessions/{a}")
    assert api.get(f"/v1/sessions/{b}").json()["personality"] == ["i am a pilot ."]


def test_concurrent_messages_to_one_session_take_turns(api):
    session_id = new_session(api)
    texts = [f"message {i}" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        replies = list(
            pool.map(
                lambda t: api.post(
                    f"/v1/sessions/{session_id}/messages",
                    json={"text": t, "options": {"max_length": 2}},
                ),
                texts,
            )
        )
    assert all(r.status_code == 200 for r in replies)
    messages = api.get(f"/v1/sessions/{session_id}").json()["messages"]
    # max_history_kept=6: the last three turns, each message followed by its own reply.
    assert [m["role"] for m in messages] == ["user", "bot"] * 3
    by_text = {r.json()["messages"][0]["text"]: r.json()["reply"] for r in replies}
    for user, bot in zip(messages[::2], messages[1::2], strict=True):
        assert bot["seq"] == user["seq"] + 1 and by_text[user["text"]] == bot["text"]
    assert messages[-1]["seq"] == 12


def test_a_retried_client_id_returns_the_stored_turn(api):
    session_id = new_session(api)
    body = {"text": "hello there", "client_id": "msg-1"}
    first = api.post(f"/v1/sessions/{session_id}/messages", json=body).json()
    again = api.post(f"/v1/sessions/{session_id}/messages", json=body).json()
    assert again["replayed"] is True and again["reply"] == first["reply"]
    assert again["messages"] == first["messages"]
    assert len(api.get(f"/v1/sessions/{session_id}").json()["messages"]) == 2


def test_decoding_options_are_applied(api):
    greedy = {"do_sample": False, "max_length": 4, "min_length": 4}
    replies = []
    for _ in range(2):
        session_id = new_session(api, ["i have a cat ."])
        body = api.post(
            f"/v1/sessions/{session_id}/messages", json={"text": "any pets ?", "options": greedy}
        ).json()
        assert body["options"]["do_sample"] is False and body["options"]["max_length"] == 4
        replies.append(body["reply"])
    assert replies[0] == replies[1]  # greedy decoding of the same conversation


# ---------------------------------------------------------------------- streaming
def test_streaming_sends_tokens_then_the_stored_reply(api):
    session_id = new_session(api)
    with api.stream(
        "POST",
        f"/v1/sessions/{session_id}/messages/stream",
        json={"text": "tell me about you", "options": LONG},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done" and "token" in names
    tokens = [data for name, data in events if name == "token"]
    text = ""
    for token in tokens:  # each event extends the reply by its delta
        assert token["text"] == text + token["delta"]
        text = token["text"]
    done = events[-1][1]
    assert done["reply"].startswith(text)
    stored = api.get(f"/v1/sessions/{session_id}").json()["messages"]
    assert stored == done["messages"] and stored[1]["text"] == done["reply"]


def test_stream_errors_before_streaming_are_plain_json(api):
    assert (
        error(
            api.post("/v1/sessions/no-such-session-id-0000/messages/stream", json={"text": "hi"}),
            404,
        )["code"]
        == "session_not_found"
    )
    session_id = new_session(api)
    assert (
        error(api.post(f"/v1/sessions/{session_id}/messages/stream", json={"text": ""}), 422)[
            "code"
        ]
        == "empty_text"
    )
