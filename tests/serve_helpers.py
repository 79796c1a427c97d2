"""Helpers for the serve tests: a model folder with personas, a real uvicorn server in a
thread (one loaded model shared by several apps), the settings and small client helpers the
test modules share."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import uvicorn

from personachat.serve.app import create_app
from personachat.serve.server import uvicorn_config
from personachat.serve.settings import ServeSettings
from personachat.serve.store import SessionStore, StoreFullError

from .conftest import make_dialogs

PERSONAS = [d["personality"] for d in make_dialogs()]
KEY = "test-key-0123456789"
AUTH = {"X-API-Key": KEY}
SETTINGS = ServeSettings(
    api_key=KEY,
    max_message_chars=200,
    max_persona_sentences=4,
    max_persona_chars=80,
    max_card_chars=400,
    max_history_kept=6,
    max_body_bytes=4096,
    max_reply_tokens=16,
    batch_window_ms=5,
)
# Forced reply length: replies of a random model may otherwise end after one token.
LONG = {"max_length": 12, "min_length": 12}


def model_with_personas(tiny_checkpoint: Path, folder: Path) -> Path:
    """A copy of the tiny checkpoint with personas.json, as a trained model has (the shared
    fixture folder is left as it is)."""
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "personas.json").write_text(json.dumps(PERSONAS), encoding="utf-8")
    return folder


class ThreadServer:
    """``create_app`` under a real uvicorn server on 127.0.0.1 (a free port), in a thread,
    configured as ``personachat serve`` configures it."""

    def __init__(self, model, db: Path, settings: ServeSettings) -> None:
        self.store = SessionStore(db)
        self.app = create_app(model, self.store, settings)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn_config(self.app, settings, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        self.store.close()


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


def fill_the_disk(store: SessionStore) -> None:
    """Make ``store``'s database as full as a full disk makes it: SQLite may not grow the
    file past its current pages (``PRAGMA max_page_count`` on the store's own write
    connection, the one SQLite checks), and filler sessions and messages take the room left
    in them, so the next write that needs space fails with "database or disk is full"."""
    filler = store.create("filler-session-messages", ["filler"]).id
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    store._db.execute("PRAGMA synchronous = OFF")  # fillers need no disk syncs
    sessions = (f"filler-session-{n:08d}" for n in range(10**6))
    for size in (4000, 400, 40, 4, 1):
        with contextlib.suppress(StoreFullError):
            while True:  # the sessions' pages
                store.create(next(sessions), ["x" * size])
        with contextlib.suppress(StoreFullError):
            while True:  # the messages' pages
                store.append_turn(filler, "x" * size, "x" * size, keep=10**9)
    store._db.execute("PRAGMA synchronous = FULL")


def free_the_disk(store: SessionStore) -> None:
    """Room again (``fill_the_disk`` undone): SQLite may grow the file as it needs."""
    store._db.execute("PRAGMA max_page_count = 1073741823")
