"""One client's bad input never reaches another client: real servers on 127.0.0.1.

A lone surrogate is valid JSON (``"\\ud800"``) but not valid Unicode: it is refused where it
enters (422 naming the field). And should a batched model call fail all the same, its
requests are answered one by one, so only the faulty one gets an error.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from personachat import ConvAIModel
from personachat.generation.generate import DecodingOptions
from personachat.serve.batcher import Batcher
from personachat.serve.settings import ServeSettings

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import ThreadServer, model_with_personas  # noqa: E402

# A 300 ms collection window: requests sent together surely share a batch.
MEETING = ServeSettings(batch_window_ms=300, max_batch_size=16, max_reply_tokens=8)
SHORT = {"max_length": 3, "min_length": 3}


@pytest.fixture(scope="module")
def model(tiny_checkpoint, tmp_path_factory) -> ConvAIModel:
    folder = model_with_personas(tiny_checkpoint, tmp_path_factory.mktemp("faults") / "model")
    return ConvAIModel("gpt2", folder, use_cuda=False)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    with ThreadServer(model, tmp_path_factory.mktemp("db") / "faults.sqlite3", MEETING) as s:
        yield s


def post_raw(client: httpx.Client, path: str, body: str, method: str = "POST") -> httpx.Response:
    """Send ``body`` as it is: json.dumps writes a lone surrogate as the escape ``\\ud800``."""
    return client.request(
        method, path, content=body.encode(), headers={"Content-Type": "application/json"}
    )


def test_lone_surrogates_are_refused_naming_the_field(server):
    with httpx.Client(base_url=server.url, timeout=30) as api:
        session_id = api.post("/v1/sessions", json={"personality": ["i am ok ."]}).json()["id"]
        cases = [
            ("POST", f"/v1/sessions/{session_id}/messages", {"text": "hi \ud800"}, "text"),
            ("POST", f"/v1/sessions/{session_id}/messages/stream", {"text": "\udfff"}, "text"),
            (
                "POST",
                f"/v1/sessions/{session_id}/messages",
                {"text": "hi", "client_id": "id-\ud800"},
                "client_id",
            ),
            ("POST", "/v1/sessions", {"personality": ["ok .", "bad \ud800 ."]}, "personality.1"),
            ("PUT", f"/v1/sessions/{session_id}", {"personality": ["\udc00"]}, "personality.0"),
        ]
        for method, path, body, field in cases:
            response = post_raw(api, path, json.dumps(body), method)
            assert response.status_code == 422, (path, body, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_unicode", error
            assert error["message"].startswith(f"{field}: not valid Unicode"), error
        # A field whose *name* is a lone surrogate: a 422 too (quoting it cannot fail).
        response = post_raw(api, "/v1/sessions", '{"\\ud800": 1}')
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_unicode"
        session = api.get(f"/v1/sessions/{session_id}").json()
        assert session["personality"] == ["i am ok ."] and session["messages"] == []


def test_a_poisoned_message_among_concurrent_clean_ones_fails_alone(server):
    """The attack of issue 13: one session sends a lone surrogate while 8 others talk."""
    with httpx.Client(base_url=server.url, timeout=60) as api:
        sessions = [api.post("/v1/sessions").json()["id"] for _ in range(9)]
        bodies = [json.dumps({"text": "hi \ud800", "options": SHORT})] + [
            json.dumps({"text": f"hello {i}", "options": SHORT}) for i in range(8)
        ]
        for _ in range(3):
            with ThreadPoolExecutor(9) as pool:
                responses = list(
                    pool.map(
                        lambda job: post_raw(api, f"/v1/sessions/{job[0]}/messages", job[1]),
                        zip(sessions, bodies, strict=True),
                    )
                )
            assert responses[0].status_code == 422, responses[0].text
            assert [r.status_code for r in responses[1:]] == [200] * 8, [r.text for r in responses]
        assert api.get("/health").json()["batching"]["largest_batch"] >= 2


def failing_for(model: ConvAIModel, persona: str, error: Exception):
    """``model.complete``, except that a call with ``persona`` in it raises."""
    generate = model.complete

    def complete(conversations, *args, **kwargs):
        if any(persona in personality for personality, _ in conversations):
            raise error
        return generate(conversations, *args, **kwargs)

    return complete


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ValueError("this persona cannot be encoded"), 422, "unprocessable_input"),
        (RuntimeError("CUDA out of memory"), 500, "generation_failed"),
    ],
)
def test_a_batch_that_fails_is_answered_one_by_one(
    model, tmp_path, monkeypatch, error, status, code
):
    monkeypatch.setattr(model, "complete", failing_for(model, "i am faulty .", error))
    with (
        ThreadServer(model, tmp_path / "batch.sqlite3", MEETING) as server,
        httpx.Client(base_url=server.url, timeout=60) as api,
    ):
        personas = [["i am faulty ."]] + [[f"i am client {i} ."] for i in range(5)]
        sessions = [
            api.post("/v1/sessions", json={"personality": p}).json()["id"] for p in personas
        ]
        with ThreadPoolExecutor(6) as pool:
            responses = list(
                pool.map(
                    lambda s: api.post(
                        f"/v1/sessions/{s}/messages", json={"text": "hi", "options": SHORT}
                    ),
                    sessions,
                )
            )
        assert responses[0].status_code == status, responses[0].text
        assert responses[0].json()["error"]["code"] == code
        assert str(error) in responses[0].json()["error"]["message"]
        assert [r.status_code for r in responses[1:]] == [200] * 5
        for session_id, response in zip(sessions[1:], responses[1:], strict=True):
            stored = api.get(f"/v1/sessions/{session_id}").json()["messages"]
            assert stored[1]["text"] == response.json()["reply"]
        assert api.get(f"/v1/sessions/{sessions[0]}").json()["messages"] == []
        # The failed batch was re-run one request at a time: five replies of one.
        assert api.get("/health").json()["batching"]["batch_sizes"] == {"1": 5}


def test_the_batcher_reruns_a_failed_batch_request_by_request():
    calls: list[list[str]] = []

    def generate(conversations, options, on_token, stream):
        names = [personality[0] for personality, _ in conversations]
        calls.append(names)
        if "bad" in names:
            raise ValueError("bad input")
        return [f"reply to {name}" for name in names]

    async def main():
        batcher = Batcher(generate, max_batch_size=8, window_s=0.05)
        batcher.start()
        options = DecodingOptions.from_args()
        results = await asyncio.gather(
            *(batcher.reply([name], ["hi"], options) for name in ("a", "bad", "c")),
            return_exceptions=True,
        )
        await batcher.stop()
        return results

    results = asyncio.run(main())
    assert results[0] == "reply to a" and results[2] == "reply to c"
    assert isinstance(results[1], ValueError)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
