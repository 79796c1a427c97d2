"""Helpers for the serve tests: a model folder with personas, a real uvicorn server in a
thread (one loaded model shared by several apps) or in a subprocess (the CLI)."""

from __future__ import annotations

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
from personachat.serve.store import SessionStore

from .conftest import make_dialogs

PERSONAS = [d["personality"] for d in make_dialogs()]


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
