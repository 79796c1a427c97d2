"""``personachat serve`` against real uvicorn servers on 127.0.0.1 with a tiny model.

Most tests share one in-thread server (API key on, small limits); a second one has a long
collection window and a small in-flight limit (batching, 429, disconnects); the restart test
runs the CLI in a subprocess, kills it and starts it again on the same database.
"""

from __future__ import annotations

import asyncio
import json
import platform
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from personachat import ConvAIModel
from personachat.cli import main
from personachat.serve.settings import ServeSettings
from personachat.serve.store import SessionNotFound, SessionStore, Turn

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import PERSONAS, ThreadServer, model_with_personas  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from serve_load import run_load, start_server  # noqa: E402

KEY = "test-key-0123456789"
AUTH = {"X-API-Key": KEY}
SETTINGS = ServeSettings(
    api_key=KEY,
    max_message_chars=200,
    max_persona_sentences=4,
    max_persona_chars=80,
    max_history_kept=6,
    max_body_bytes=4096,
    max_reply_tokens=16,
    batch_window_ms=5,
)
# Forced reply length: replies of a random model may otherwise end after one token.
LONG = {"max_length": 12, "min_length": 12}


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


@pytest.fixture(scope="module")
def slow_server(model, tmp_path_factory):
    """No key; a 300 ms window so concurrent requests surely meet; at most 4 in flight."""
    settings = ServeSettings(batch_window_ms=300, max_in_flight=4, max_batch_size=8)
    with ThreadServer(model, tmp_path_factory.mktemp("db") / "slow.sqlite3", settings) as s:
        yield s


@pytest.fixture()
def api(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


def new_session(api, personality=None) -> str:
    response = api.post("/v1/sessions", json={"personality": personality})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def sse_events(lines) -> list[tuple[str, dict]]:
    """(event, data) pairs from the lines of a text/event-stream body."""
    events, name = [], None
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line[5:])))
    return events


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


def test_a_client_disconnecting_mid_stream_loses_and_duplicates_nothing(slow_server):
    with httpx.Client(base_url=slow_server.url, timeout=30) as api:
        session_id = new_session(api)
        # The reply waits 300 ms in the collection window: the client leaves during it...
        with api.stream(
            "POST",
            f"/v1/sessions/{session_id}/messages/stream",
            json={"text": "first", "options": LONG},
        ) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("event: start")
        # ...and after the first token of the next reply.
        with api.stream(
            "POST",
            f"/v1/sessions/{session_id}/messages/stream",
            json={"text": "second", "options": {"max_length": 60, "min_length": 60}},
        ) as response:
            for line in response.iter_lines():
                if line.startswith("event: token"):
                    break
        # The turns finish and are stored once each; the session goes on normally.
        third = api.post(f"/v1/sessions/{session_id}/messages", json={"text": "third"})
        assert third.status_code == 200
        messages = api.get(f"/v1/sessions/{session_id}").json()["messages"]
        assert [(m["role"], m["text"]) for m in messages if m["role"] == "user"] == [
            ("user", "first"),
            ("user", "second"),
            ("user", "third"),
        ]
        assert [m["role"] for m in messages] == ["user", "bot"] * 3
        assert [m["seq"] for m in messages] == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------- batching and load
def test_concurrent_sessions_share_batches_and_excess_requests_get_429(slow_server):
    with httpx.Client(base_url=slow_server.url, timeout=30) as api:
        sessions = [new_session(api) for _ in range(10)]
        before = api.get("/health").json()["batching"]
        with ThreadPoolExecutor(10) as pool:
            responses = list(
                pool.map(
                    lambda s: api.post(f"/v1/sessions/{s}/messages", json={"text": "hi"}), sessions
                )
            )
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 1 and codes.count(429) >= 1 and set(codes) <= {200, 429}
        busy = next(r for r in responses if r.status_code == 429)
        assert busy.json()["error"]["limit"] == "max_in_flight"
        assert busy.headers["retry-after"] == "1"
        after = api.get("/health").json()["batching"]
        assert after["largest_batch"] >= 2  # requests of different sessions shared a call
        assert after["replies"] - before["replies"] == codes.count(200)

        # Different decoding options in one window: one model call per set of options.
        before = after
        jobs = [(sessions[i], {"max_length": 2 + i % 2}) for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            responses = list(
                pool.map(
                    lambda j: api.post(
                        f"/v1/sessions/{j[0]}/messages", json={"text": "hi", "options": j[1]}
                    ),
                    jobs,
                )
            )
        assert [r.status_code for r in responses] == [200] * 4
        after = api.get("/health").json()["batching"]
        assert after["replies"] - before["replies"] == 4
        assert after["batches"] - before["batches"] == 2


def test_small_load_has_no_errors_and_complete_ordered_histories(server):
    result = asyncio.run(
        run_load(
            server.url,
            clients=8,
            messages=3,
            options={"max_length": 4, "min_length": 4},
            headers=AUTH,
        )
    )
    assert result.errors == [] and result.history_errors == []
    assert result.replies == 24


def test_stopping_the_server_finishes_and_stores_the_replies_in_progress(model, tmp_path):
    db = tmp_path / "stop.sqlite3"
    with (
        ThreadServer(model, db, ServeSettings(batch_window_ms=300)) as server,
        ThreadPoolExecutor(1) as pool,
    ):
        session_id = httpx.post(server.url + "/v1/sessions").json()["id"]
        pending = pool.submit(
            httpx.post,
            f"{server.url}/v1/sessions/{session_id}/messages",
            json={"text": "goodbye"},
            timeout=30,
        )
        time.sleep(0.1)  # the message now waits in the collection window
        server.server.should_exit = True
        assert pending.result().status_code == 200
    store = SessionStore(db)
    assert [m.text for m in store.get(session_id).messages][:1] == ["goodbye"]
    store.close()


def test_turns_stored_together_stand_alone(tmp_path):
    store = SessionStore(tmp_path / "turns.sqlite3")
    store.create("session-a-0123456789", ["i am a.", "x"])
    store.create("session-b-0123456789", ["i am b."])
    store.delete("session-b-0123456789")
    results = store.append_turns(
        [
            Turn("session-a-0123456789", "hi", "hello"),
            Turn("session-b-0123456789", "hi", "hello"),
            Turn("session-a-0123456789", "again", "yes"),
        ],
        keep=10,
    )
    assert isinstance(results[1], SessionNotFound)
    assert [(m.seq, m.text) for m in store.get("session-a-0123456789").messages] == [
        (1, "hi"),
        (2, "hello"),
        (3, "again"),
        (4, "yes"),
    ]
    store.close()


# ---------------------------------------------------------------------- the CLI, restarts
def test_restart_continues_the_conversation(model_dir, model, tmp_path):
    """The CLI server (API key from the environment) is killed outright; a new server on
    the same database has the conversation and continues it."""
    db = tmp_path / "sessions.sqlite3"
    process, url = start_server(model_dir, db, env={"PERSONACHAT_API_KEY": KEY})
    try:
        assert httpx.get(url + "/v1/sessions/any-session-id-000000").status_code == 401
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as api:
            session_id = new_session(api, ["i work as a nurse ."])
            first = api.post(f"/v1/sessions/{session_id}/messages", json={"text": "hi"}).json()
    finally:
        process.send_signal(signal.SIGKILL)  # no clean shutdown
        process.wait(timeout=30)

    with (
        ThreadServer(model, db, SETTINGS) as again,
        httpx.Client(base_url=again.url, headers=AUTH, timeout=30) as api,
    ):
        session = api.get(f"/v1/sessions/{session_id}").json()
        assert session["personality"] == ["i work as a nurse ."]
        assert session["messages"] == first["messages"]
        second = api.post(f"/v1/sessions/{session_id}/messages", json={"text": "and you ?"})
        assert [m["seq"] for m in second.json()["messages"]] == [3, 4]


def test_cli_reports_a_taken_port_in_one_line(model_dir, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = main(
            [
                "serve",
                "--model",
                str(model_dir),
                "--device",
                "cpu",
                "--port",
                str(taken.getsockname()[1]),
                "--db",
                str(tmp_path / "x.db"),
            ]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("personachat serve: error: cannot listen on 127.0.0.1:")
    assert "Traceback" not in err and "--port" in err


def test_cli_rejects_bad_server_options_in_one_line(model_dir, tmp_path, capsys):
    code = main(
        [
            "serve",
            "--model",
            str(model_dir),
            "--device",
            "cpu",
            "--port",
            "0",
            "--db",
            str(tmp_path / "x.db"),
            "--max-batch-size",
            "0",
        ]
    )
    assert code == 2
    assert "--max-batch-size must be a number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--threads", "--prefill-threads"])
def test_cli_rejects_zero_threads_in_one_line(model_dir, tmp_path, capsys, flag):
    code = main(
        [
            "serve",
            "--model",
            str(model_dir),
            "--device",
            "cpu",
            "--port",
            "0",
            "--db",
            str(tmp_path / "x.db"),
            flag,
            "0",
        ]
    )
    assert code == 2
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt",
)
def test_the_server_process_can_keep_freed_memory_for_reuse():
    # In a child process: the setting is process-wide, and this one runs the rest of the suite.
    check = (
        "from personachat.serve.command import keep_freed_memory; "
        "import sys; sys.exit(0 if keep_freed_memory() is True else 1)"
    )
    assert subprocess.run([sys.executable, "-c", check], timeout=60).returncode == 0
