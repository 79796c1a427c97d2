"""The HTTP API and the chat page: ``create_app(model, store, settings)`` → a FastAPI app.

Routes (every ``/v1`` route needs the API key when one is set)::

    POST   /v1/sessions                      new session (a personality, or none: a random one)
    GET    /v1/sessions/{id}                 persona and history
    PUT    /v1/sessions/{id}                 change the persona (history kept)
    DELETE /v1/sessions/{id}
    POST   /v1/sessions/{id}/messages        {"text": …} → the reply
    POST   /v1/sessions/{id}/messages/stream the same, as server-sent events, token by token
    GET    /health, /docs (OpenAPI), /       (the chat page)

A turn (one message and its reply) runs as its own task, apart from the request that started
it: turns of one session run one after another (each sees the previous reply), turns of
different sessions meet in the batcher, and a client that disconnects mid-reply does not stop
its turn, which is stored whole (``GET`` shows it). Every error is JSON,
``{"error": {"code", "message", …}}``, and never stops the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from personachat.generation.generate import DecodingOptions
from personachat.model.loading import context_size
from personachat.serve.batcher import Batcher
from personachat.serve.settings import (
    RequestError,
    ServeSettings,
    clean_personality,
    clean_text,
    decoding_options,
    limit_error,
    server_defaults,
)
from personachat.serve.store import Message, Session, SessionNotFound, SessionStore, Turn

log = logging.getLogger("personachat.serve")
STATIC = Path(__file__).parent / "static"
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
DRAIN_SECONDS = 60.0  # how long shutdown waits for replies still being decoded


# ---------------------------------------------------------------------- request bodies
class Options(BaseModel):
    """Decoding options of one reply; each within the server's bounds (see /health)."""

    model_config = ConfigDict(extra="forbid")
    max_length: StrictInt | None = Field(None, description="most tokens in the reply")
    min_length: StrictInt | None = Field(None, description="fewest tokens in the reply")
    temperature: float | None = Field(None, strict=True, description="sampling temperature")
    top_p: float | None = Field(None, strict=True, description="nucleus sampling (0: off)")
    top_k: StrictInt | None = Field(None, description="top-k sampling (0: off)")
    do_sample: StrictBool | None = Field(None, description="false: greedy decoding")
    repetition_penalty: float | None = Field(
        None, strict=True, description=">1 discourages the bot's own words"
    )
    no_repeat_ngram_size: StrictInt | None = Field(None, description="ban repeated n-grams")


class PersonaBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    personality: list[StrictStr] | None = Field(
        None,
        description="persona sentences; none or empty: a persona from the model's data",
        examples=[["i work as a nurse .", "i have two cats ."]],
    )


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr = Field(description="the user's message", examples=["hi , what do you do ?"])
    options: Options | None = None
    client_id: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="the client's id for this message: sending it again returns the stored "
        "reply instead of a second turn (safe retries)",
    )


# ---------------------------------------------------------------------- the service
class KeyedLocks:
    """One asyncio lock per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, list] = {}  # key -> [lock, users]

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]


class TurnWriter:
    """Stores finished turns; those that finish together go in one transaction.

    The turns of a batch all finish at the same moment; stored one by one, each would wait
    for the disk syncs of the others (about 3 ms each), and the clients of a batch of 32
    would come back 0.1 s apart instead of together.
    """

    def __init__(self, store: SessionStore, keep: int) -> None:
        self.store, self.keep = store, keep
        self._pending: list[tuple[Turn, asyncio.Future]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="personachat-turn-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def write(self, turn: Turn) -> tuple[Message, Message]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((turn, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            group, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(
                    self.store.append_turns, [turn for turn, _ in group], self.keep
                )
            except Exception as err:  # the database failed: every waiting turn learns why
                results = [err] * len(group)
            for (_, future), result in zip(group, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class ChatService:
    """Sessions, turns and limits; the routes below are thin wrappers around it."""

    def __init__(self, model, store: SessionStore, settings: ServeSettings) -> None:
        room = context_size(model.model) - 16  # a reply must leave room for the conversation
        if settings.max_reply_tokens > room:
            log.warning(
                "max_reply_tokens lowered to %d: the model's context is %d tokens",
                max(1, room),
                room + 16,
            )
            settings = replace(settings, max_reply_tokens=max(1, room))
        self.model, self.store, self.settings = model, store, settings
        self.defaults = server_defaults(DecodingOptions.from_args(model.args), settings)
        self.batcher = Batcher(
            model.generate_replies, settings.max_batch_size, settings.batch_window_ms / 1000
        )
        self.writer = TurnWriter(store, settings.max_history_kept)
        self.locks = KeyedLocks()
        self.turns: set[asyncio.Task] = set()
        self.in_flight = 0

    # ---------------------------------------------------------------- sessions
    async def personality(self, sentences: list[str] | None) -> list[str]:
        if sentences:
            return clean_personality(sentences, self.settings)
        try:  # may read Persona-Chat from disk or the network: not on the event loop
            return await asyncio.to_thread(self.model.random_personality)
        except Exception as err:
            raise RequestError(
                422,
                "no_personas",
                "this model has no personas saved beside it (personas.json) and "
                f"none could be loaded ({err}); send a personality",
            ) from err

    async def create(self, sentences: list[str] | None) -> dict:
        personality = await self.personality(sentences)
        session = await asyncio.to_thread(self.store.create, secrets.token_urlsafe(24), personality)
        return session.to_json()

    async def get(self, session_id: str) -> dict:
        return self._read(session_id).to_json()

    async def set_personality(self, session_id: str, sentences: list[str] | None) -> dict:
        self._read(session_id, 0)  # 404 before drawing a persona
        personality = await self.personality(sentences)
        return (await self._write(self.store.set_personality, session_id, personality)).to_json()

    async def delete(self, session_id: str) -> None:
        await self._write(self.store.delete, session_id)

    def _read(self, session_id: str, last: int | None = None) -> Session:
        """A session (with its ``last`` messages); an unknown or malformed id is a 404.
        Read on the event loop: WAL reads never wait for the writer and take microseconds."""
        if not SESSION_ID.fullmatch(session_id):
            raise not_found(session_id)
        try:
            return self.store.get(session_id, last)
        except SessionNotFound:
            raise not_found(session_id) from None

    async def _write(self, fn: Callable, session_id: str, *args: Any) -> Any:
        """A store write in a thread (it waits for the disk); an unknown id is a 404."""
        if not SESSION_ID.fullmatch(session_id):
            raise not_found(session_id)
        try:
            return await asyncio.to_thread(fn, session_id, *args)
        except SessionNotFound:
            raise not_found(session_id) from None

    # ---------------------------------------------------------------- turns
    async def start_turn(
        self, session_id: str, body: MessageBody, events: asyncio.Queue | None = None
    ) -> asyncio.Task:
        """Check the request, then run its turn as a task of its own (see the module doc)."""
        text = clean_text(body.text, self.settings)
        options = decoding_options(
            body.options.model_dump(exclude_none=True) if body.options else None,
            self.defaults,
            self.settings,
        )
        self._read(session_id, 0)
        if self.in_flight >= self.settings.max_in_flight:
            raise limit_error(
                429,
                "max_in_flight",
                self.settings.max_in_flight,
                "too many requests are being answered; retry in a moment",
            )
        self.in_flight += 1
        task = asyncio.create_task(self._turn(session_id, text, options, body.client_id, events))
        self.turns.add(task)
        task.add_done_callback(self._turn_done)
        return task

    def _turn_done(self, task: asyncio.Task) -> None:
        self.turns.discard(task)
        self.in_flight -= 1
        if not task.cancelled():
            task.exception()  # retrieved here: its client may be gone

    async def _turn(
        self,
        session_id: str,
        text: str,
        options: DecodingOptions,
        client_id: str | None,
        events: asyncio.Queue | None,
    ) -> dict:
        try:
            result = await self._reply(session_id, text, options, client_id, events)
        except RequestError as err:
            if events is not None:
                events.put_nowait(("error", err.body()))
            raise
        except Exception as err:
            log.exception("reply failed")
            err = RequestError(500, "generation_failed", f"the model failed to reply: {err}")
            if events is not None:
                events.put_nowait(("error", err.body()))
            raise err from None
        if events is not None:
            events.put_nowait(("done", result))
        return result

    async def _reply(
        self,
        session_id: str,
        text: str,
        options: DecodingOptions,
        client_id: str | None,
        events: asyncio.Queue | None,
    ) -> dict:
        async with self.locks.hold(session_id):
            if client_id is not None:
                stored = self.store.find_turn(session_id, client_id)
                if stored is not None:
                    return turn_json(*stored, options, replayed=True)
            # Only the turns the model reads (max_history) are fetched, not the whole history.
            session = self._read(session_id, 2 * options.max_history)
            history = [m.text for m in session.messages] + [text]
            on_token = None
            if events is not None:
                on_token = token_forwarder(asyncio.get_running_loop(), events)
            reply = await self.batcher.reply(session.personality, history, options, on_token)
            try:
                user, bot = await self.writer.write(Turn(session_id, text, reply, client_id))
            except SessionNotFound:  # deleted while the reply was being decoded
                raise not_found(session_id) from None
            except sqlite3.IntegrityError:
                raise RequestError(
                    409,
                    "duplicate_client_id",
                    "a message with this client_id is already stored in this "
                    "session; send a new client_id for a new message",
                ) from None
            return turn_json(user, bot, options, replayed=False)

    async def drain(self) -> None:
        """Let the turns being answered finish (and be stored) before the server stops."""
        if self.turns:
            log.info("waiting for %d replies to finish", len(self.turns))
            await asyncio.wait(set(self.turns), timeout=DRAIN_SECONDS)


def turn_json(user, bot, options: DecodingOptions, replayed: bool) -> dict:
    return {
        "reply": bot.text,
        "messages": [user.to_json(), bot.to_json()],
        "options": {k: getattr(options, k) for k in Options.model_fields},
        "replayed": replayed,
    }


def token_forwarder(
    loop: asyncio.AbstractEventLoop, events: asyncio.Queue
) -> Callable[[str], None]:
    """An ``on_token(text_so_far)`` for the decoding thread that queues ``token`` events
    (the new text and the whole text so far) on the event loop."""
    sent = ""

    def on_token(text: str) -> None:
        nonlocal sent
        delta = text[len(sent) :] if text.startswith(sent) else text
        if text != sent:
            sent = text
            loop.call_soon_threadsafe(events.put_nowait, ("token", {"delta": delta, "text": text}))

    return on_token


def not_found(session_id: str) -> RequestError:
    return RequestError(
        404,
        "session_not_found",
        "no session with this id (it never existed or was deleted); "
        "create one with POST /v1/sessions",
    )


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


# ---------------------------------------------------------------------- the guard
class Guard:
    """ASGI middleware run before routing: the API key on /v1 routes (401), then the body
    size (413). The body is read here (at most ``max_body_bytes``) and handed on whole, so a
    huge or endless body is refused before any JSON parsing."""

    def __init__(self, app, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        if self.settings.api_key and (scope["path"] + "/").startswith("/v1/"):
            given = headers.get("x-api-key", b"")
            auth = headers.get("authorization", b"")
            if auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            if not secrets.compare_digest(given, self.settings.api_key.encode()):
                error = RequestError(
                    401,
                    "unauthorized",
                    "this server needs an API key: send it as the X-API-Key "
                    "header or as Authorization: Bearer KEY",
                )
                return await send_json(
                    send, error.status, error.body(), [(b"www-authenticate", b"Bearer")]
                )
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.settings.max_body_bytes
        too_large = limit_error(413, "max_body_bytes", limit, "the request body is too large")
        try:
            if int(headers.get("content-length", b"0")) > limit:
                return await send_json(send, 413, too_large.body())
        except ValueError:
            error = RequestError(400, "bad_request", "Content-Length is not a number")
            return await send_json(send, 400, error.body())
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await send_json(send, 413, too_large.body())
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then: the disconnect, for streaming responses

        await self.app(scope, replay, send)


async def send_json(
    send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    content = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


# ---------------------------------------------------------------------- errors
def validation_message(errors: list[dict]) -> tuple[str, str]:
    """(code, message) for FastAPI's validation errors, in words a client can act on."""
    if any(e["type"] == "json_invalid" for e in errors):
        detail = next(e for e in errors if e["type"] == "json_invalid").get("ctx", {})
        return (
            "malformed_json",
            f"the body is not valid JSON ({detail.get('error', 'parse error')})",
        )
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e["loc"] if p != "body") or "body"
        if e["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        elif e["type"] == "missing":
            parts.append(f"{where}: required")
        else:
            parts.append(f"{where}: {e['msg']}")
    return "invalid_request", "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, err: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status == 429 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = list(err.errors())
        code, message = validation_message(errors)
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        return JSONResponse(
            {"error": {"code": code, "message": message, "details": details}}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return JSONResponse(
            {
                "error": {
                    "code": codes.get(err.status_code, "http_error"),
                    "message": str(err.detail),
                }
            },
            status_code=err.status_code,
            headers=err.headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(
            {"error": {"code": "internal_error", "message": f"{type(err).__name__}: {err}"}},
            status_code=500,
        )


# ---------------------------------------------------------------------- the app
def create_app(model, store: SessionStore, settings: ServeSettings | None = None) -> FastAPI:
    """The app for a loaded ``ConvAIModel`` and a session store; run it with uvicorn."""
    settings = settings or ServeSettings()
    service = ChatService(model, store, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.batcher.start()
        service.writer.start()
        yield
        await service.drain()
        await service.batcher.stop()
        await service.writer.stop()

    app = FastAPI(
        title="personachat",
        lifespan=lifespan,
        description="Chat with a persona bot: sessions stored in SQLite, replies "
        "decoded in batches across sessions. Errors are "
        '`{"error": {"code", "message", …}}`.',
    )
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(Guard, settings=settings)
    # Documents the key in /docs ("Authorize"); the Guard middleware enforces it.
    api_key = APIKeyHeader(
        name="X-API-Key",
        auto_error=False,
        description="needed when the server was started with --api-key",
    )
    v1 = APIRouter(prefix="/v1", dependencies=[Security(api_key)])

    @v1.post("/sessions", status_code=201, summary="Start a session")
    async def create_session(body: PersonaBody | None = None) -> dict:
        return await service.create(body.personality if body else None)

    @v1.get("/sessions/{session_id}", summary="Persona and history of a session")
    async def get_session(session_id: str) -> dict:
        return await service.get(session_id)

    @v1.put("/sessions/{session_id}", summary="Change the persona (the history is kept)")
    async def put_session(session_id: str, body: PersonaBody) -> dict:
        return await service.set_personality(session_id, body.personality)

    @v1.delete("/sessions/{session_id}", status_code=204, summary="Delete a session")
    async def delete_session(session_id: str) -> Response:
        await service.delete(session_id)
        return Response(status_code=204)

    @v1.post("/sessions/{session_id}/messages", summary="Send a message, get the reply")
    async def post_message(session_id: str, body: MessageBody) -> JSONResponse:
        task = await service.start_turn(session_id, body)
        return JSONResponse(await asyncio.shield(task))  # a disconnect does not cancel it

    @v1.post(
        "/sessions/{session_id}/messages/stream",
        response_class=StreamingResponse,
        summary="Send a message, get the reply as server-sent events",
        description="Events: `start`, then `token` (`delta`: the new text, `text`: the "
        "reply so far) as the reply grows, then `done` (as the non-streaming "
        "route's body) or `error`.",
    )
    async def stream_message(session_id: str, body: MessageBody) -> StreamingResponse:
        events: asyncio.Queue = asyncio.Queue()
        await service.start_turn(session_id, body, events)  # errors here are plain JSON

        async def stream() -> AsyncIterator[str]:
            yield sse("start", {"session_id": session_id})
            while True:
                event, data = await events.get()
                yield sse(event, data)
                if event in ("done", "error"):
                    return

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    app.include_router(v1)

    @app.get("/health", summary="Liveness, batching figures and the server's limits")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": Path(str(model.args.model_name)).name,
            "in_flight": service.in_flight,
            "batching": service.batcher.stats.to_json(),
            "limits": service.settings.public(),
            "api_key_required": settings.api_key is not None,
            "default_options": {k: getattr(service.defaults, k) for k in Options.model_fields},
        }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
