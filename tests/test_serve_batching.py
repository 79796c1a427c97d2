"""Batching, load, disconnects and shutdown of ``personachat serve`` on real servers on
127.0.0.1: concurrent sessions share model calls, excess requests get 429, a client leaving
mid-reply loses and duplicates nothing, and a stopping server finishes what it decodes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from personachat import ConvAIModel
from personachat.serve.settings import ServeSettings
from personachat.serve.store import SessionNotFound, SessionStore, Turn

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import (  # noqa: E402
    AUTH,
    LONG,
    SETTINGS,
    ThreadServer,
    model_with_personas,
    new_session,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from serve_load import run_load  # noqa: E402


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


# ---------------------------------------------------------------------- disconnects
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
