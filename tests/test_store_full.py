"""A full disk under the session database: the write that needs room is refused with one line
naming the database file (HTTP 507 from ``serve``), and nothing stored before is lost.

The disk is filled the way SQLite meets a full one: the database file may not grow
(``PRAGMA max_page_count`` at its current size) and its pages are full, so SQLite raises its
own "database or disk is full" (``serve_helpers.fill_the_disk``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from personachat.serve.store import SessionStore, StoreFullError

from .serve_helpers import fill_the_disk, free_the_disk

SESSION = "session-0123456789abcdef"
# Longer than any room a filled page keeps (a same-size update may fit where the row is).
LONGER_PERSONA = [
    "i like coffee and long walks by the sea every morning .",
    "i have a garden full of roses and a small pond with fish .",
    "my brother lives in lisbon and we talk on sundays .",
]


def test_a_full_disk_refuses_the_write_in_one_line_and_keeps_every_stored_turn(tmp_path):
    db = tmp_path / "sessions.sqlite3"
    store = SessionStore(db)
    store.create(SESSION, ["i like tea ."])
    store.append_turn(SESSION, "hi", "hello !", keep=200)
    fill_the_disk(store)

    writes = {
        "a turn": lambda: store.append_turn(SESSION, "how are you ?", "fine .", keep=200),
        "a session": lambda: store.create("session-new-0123456789", ["i am new here ."]),
        "a persona": lambda: store.set_personality(SESSION, ["i like coffee and long walks ."]),
    }
    for what, write in writes.items():
        with pytest.raises(StoreFullError) as refused:
            write()
        message = str(refused.value)
        assert f"the session database {db} is full" in message, what
        assert "database or disk is full" in message and "\n" not in message
        assert "free space on its disk or pass another --db PATH" in message

    kept = store.get(SESSION)
    assert kept.personality == ["i like tea ."]
    assert [m.text for m in kept.messages] == ["hi", "hello !"]
    free_the_disk(store)  # room again: the same store goes on
    store.append_turn(SESSION, "how are you ?", "fine .", keep=200)
    store.close()

    reopened = SessionStore(db)  # and the file is whole
    assert [m.text for m in reopened.get(SESSION).messages] == [
        "hi",
        "hello !",
        "how are you ?",
        "fine .",
    ]
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    reopened.close()


# ---------------------------------------------------------------------- the server
pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import AUTH, SETTINGS, ThreadServer, model_with_personas  # noqa: E402


@pytest.fixture(scope="module")
def model(tiny_checkpoint, tmp_path_factory):
    from personachat import ConvAIModel

    folder = model_with_personas(tiny_checkpoint, tmp_path_factory.mktemp("full") / "model")
    return ConvAIModel("gpt2", folder, args={"max_length": 4}, use_cuda=False)


def test_serve_answers_507_naming_the_database_and_loses_nothing(model, tmp_path: Path):
    db = tmp_path / "sessions.sqlite3"
    with ThreadServer(model, db, SETTINGS) as server:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as api:
            created = api.post("/v1/sessions", json={"personality": ["i like tea ."]})
            session = created.json()["id"]
            first = api.post(f"/v1/sessions/{session}/messages", json={"text": "hi"})
            assert first.status_code == 200, first.text
            before = api.get(f"/v1/sessions/{session}").json()
            fill_the_disk(server.store)

            refused = [
                api.post(f"/v1/sessions/{session}/messages", json={"text": "are you there ?"}),
                api.post("/v1/sessions", json={"personality": ["i am new here ."]}),
                api.put(
                    f"/v1/sessions/{session}",
                    json={"personality": LONGER_PERSONA},
                ),
            ]
            for response in refused:
                assert response.status_code == 507, response.text
                err = response.json()["error"]
                assert err["code"] == "storage_full"
                assert f"the session database {db} is full" in err["message"]
            assert api.get(f"/v1/sessions/{session}").json() == before
            assert api.get("/health").status_code == 200  # the server goes on

            free_the_disk(server.store)
            again = api.post(f"/v1/sessions/{session}/messages", json={"text": "are you there ?"})
            assert again.status_code == 200, again.text
