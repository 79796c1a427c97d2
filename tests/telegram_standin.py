"""A stand-in for the Telegram Bot API on 127.0.0.1, for the bot's end-to-end tests.

A real HTTP server (the standard library's, one thread per request) that speaks the methods
the bot calls, at the real API's paths and in its JSON shapes: ``POST /bot<token>/<method>``
with form or JSON parameters, answered ``{"ok": true, "result": …}`` or ``{"ok": false,
"error_code": …, "description": …}``; files at ``GET /file/bot<token>/<file_path>``.

- ``getMe``, ``deleteWebhook``, ``setMyCommands``, ``sendChatAction``;
- ``getUpdates`` with ``offset`` (confirms the updates before it), ``limit`` and ``timeout``
  (long polling: waits until an update comes or the time is up);
- ``sendMessage``: recorded, for the test to read; ``getFile`` and the download path.
  While ``failing_sends`` is above 0, each ``sendMessage`` is answered 502 Bad Gateway (as
  when Telegram or the network is down) and not recorded, and the count goes down by one.

The test plays the users: ``send_text``, ``send_sticker``, ``send_document`` queue updates
as Telegram would deliver them, and ``replies(chat_id)`` reads what the bot sent there.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote

BOT_USER = {"id": 4242, "is_bot": True, "first_name": "Persona", "username": "persona_test_bot"}


class BotApiStandIn:
    """The stand-in server: ``with BotApiStandIn(token) as api: api.url …``."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.updates: list[dict] = []  # not yet confirmed by an offset
        self.sent: list[dict] = []  # every sendMessage: chat_id, text
        self.calls: list[str] = []  # every method called, in order
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, bytes)
        self.failing_sends = 0  # the next sendMessage calls answered 502
        self.changed = threading.Condition()
        self._next_update, self._next_message = 1, 1
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BotApiStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.changed:
            self.changed.notify_all()

    # ------------------------------------------------------------ the users' side
    def send_text(self, chat_id: int, text: str, **extra) -> dict:
        """A user writes ``text`` in the private chat ``chat_id`` (a ``/command`` carries its
        bot_command entity, as Telegram marks it)."""
        message = {"text": text, **extra}
        if text.startswith("/"):
            length = len(text.split(maxsplit=1)[0].encode("utf-16-le")) // 2
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        return self._deliver(chat_id, message)

    def send_texts(self, texts: list[tuple[int, str]]) -> None:
        """Messages (chat id, text) written at the same moment: one getUpdates brings them
        all."""
        with self.changed:  # a poll waiting for updates wakes once they are all queued
            for chat_id, text in texts:
                self.send_text(chat_id, text)

    def send_sticker(self, chat_id: int) -> dict:
        sticker = {
            "file_id": "sticker-file",
            "file_unique_id": "sticker-unique",
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
        }
        return self._deliver(chat_id, {"sticker": sticker})

    def send_document(
        self, chat_id: int, data: bytes, file_name: str, caption: str | None = None
    ) -> dict:
        """A user sends a file (with an optional caption); the bot can fetch it with getFile."""
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = (f"documents/{file_id}_{file_name}", data)
        document = {
            "file_id": file_id,
            "file_unique_id": file_id + "-unique",
            "file_name": file_name,
            "mime_type": "application/octet-stream",
            "file_size": len(data),
        }
        message: dict = {"document": document}
        if caption is not None:
            message["caption"] = caption
        return self._deliver(chat_id, message)

    def _deliver(self, chat_id: int, content: dict) -> dict:
        with self.changed:
            user = {"id": chat_id, "is_bot": False, "first_name": f"User{chat_id}"}
            message = {
                "message_id": self._next_message,
                "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private", "first_name": user["first_name"]},
                "from": user,
                **content,
            }
            self.updates.append({"update_id": self._next_update, "message": message})
            self._next_update += 1
            self._next_message += 1
            self.changed.notify_all()
        return message

    def replies(self, chat_id: int) -> list[str]:
        with self.changed:
            return [m["text"] for m in self.sent if m["chat_id"] == chat_id]

    def wait_replies(self, chat_id: int, count: int, timeout: float = 60.0) -> list[str]:
        """The first ``count`` messages the bot sent to ``chat_id``, waiting for them."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.replies(chat_id)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"chat {chat_id}: {count} replies expected, got {self.replies(chat_id)}"
                    )
                self.changed.wait(left)
            return self.replies(chat_id)[:count]

    # ------------------------------------------------------------ the Bot API's side
    def call(self, method: str, params: dict) -> tuple[int, dict]:
        """One Bot API method: (HTTP status, JSON body)."""
        self.calls.append(method)
        if method == "getUpdates":
            return 200, ok(self._get_updates(params))
        if method in ("getMe", "deleteWebhook", "setMyCommands", "sendChatAction"):
            return 200, ok(BOT_USER if method == "getMe" else True)
        if method == "sendMessage":
            return self._send_message(params)
        if method == "getFile":
            if params.get("file_id") not in self.files:
                return 400, failed(400, "Bad Request: invalid file_id")
            path, data = self.files[params["file_id"]]
            file_id = params["file_id"]
            result = {"file_id": file_id, "file_unique_id": file_id + "-unique"}
            return 200, ok({**result, "file_size": len(data), "file_path": path})
        return 404, failed(404, "Not Found: method not found")

    def _get_updates(self, params: dict) -> list[dict]:
        offset = int(params.get("offset", 0))
        limit = int(params.get("limit", 100))
        deadline = time.monotonic() + float(params.get("timeout", 0))
        with self.changed:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]  # confirmed
            while not self.updates and time.monotonic() < deadline:
                self.changed.wait(min(0.2, deadline - time.monotonic()))
            return self.updates[:limit]

    def _send_message(self, params: dict) -> tuple[int, dict]:
        with self.changed:
            if self.failing_sends > 0:
                self.failing_sends -= 1
                return 502, failed(502, "Bad Gateway")
        text = params.get("text", "")
        if not text.strip():
            return 400, failed(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return 400, failed(400, "Bad Request: message is too long")
        with self.changed:
            chat_id = int(params["chat_id"])
            self.sent.append({"chat_id": chat_id, "text": text})
            message = {
                "message_id": self._next_message,
                "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private"},
                "from": BOT_USER,
                "text": text,
            }
            self._next_message += 1
            self.changed.notify_all()
        return 200, ok(message)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                prefix, path = f"/bot{api.token}/", unquote(self.path)
                if not path.startswith(prefix):
                    return self._send(401, failed(401, "Unauthorized"))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._send(*api.call(path[len(prefix) :], parameters(self.headers, body)))

            def do_GET(self) -> None:  # noqa: N802
                """A file's download path, or a method called by GET (the API takes both)."""
                prefix, path = f"/file/bot{api.token}/", unquote(self.path)
                if not path.startswith(prefix):
                    return self.do_POST()
                path = path[len(prefix) :]
                found = [data for p, data in api.files.values() if p == path]
                if not found:
                    return self._send(404, failed(404, "Not Found"))
                self._send(200, found[0])

            def _send(self, status: int, body: dict | bytes) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with suppress(ConnectionError):  # a poll the bot gave up on when stopping
                    self.wfile.write(data)

            def log_message(self, *args) -> None:  # quiet
                pass

        return Handler


def parameters(headers, body: bytes) -> dict:
    """A method's parameters from a JSON or form body (the Bot API takes both; in a form,
    arrays and objects are JSON text)."""
    if not body:
        return {}
    if headers.get("Content-Type", "").startswith("application/json"):
        return json.loads(body)
    return dict(parse_qsl(body.decode(), keep_blank_values=True))


def ok(result) -> dict:
    return {"ok": True, "result": result}


def failed(code: int, description: str) -> dict:
    return {"ok": False, "error_code": code, "description": description}
