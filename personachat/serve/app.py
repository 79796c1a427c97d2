"""The HTTP API and the chat page: ``create_app(model, store, settings)`` → a FastAPI app.

Routes (every ``/v1`` route needs the API key when one is set)::

    POST   /v1/sessions                      new session (a personality or a character card,
                                             or none: a random persona)
    GET    /v1/sessions/{id}                 persona and history
    PUT    /v1/sessions/{id}                 change the persona (history kept)
    DELETE /v1/sessions/{id}
    DELETE /v1/sessions/{id}/messages/last   take back the last turn (regenerate, edit)
    POST   /v1/sessions/{id}/messages        {"text": …} → the reply
    POST   /v1/sessions/{id}/messages/stream the same, as server-sent events, token by token
    POST   /v1/chat/completions              OpenAI-compatible chat, stateless (openai_api)
    GET    /v1/models                        the served model, OpenAI-compatible
    GET    /health, /docs (OpenAPI), /       (the chat page)

The routes are thin: ``service.ChatService`` does the work, ``bodies`` describes what they
accept, ``guard`` refuses requests before routing, ``responses`` writes errors. Every error is
JSON, ``{"error": {"code", "message", …}}`` (on the OpenAI-compatible routes OpenAI's
``{"error": {"message", "type", "param", "code"}}``), and never stops the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, Response, Security
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi.staticfiles import StaticFiles

from personachat.serve.bodies import MessageBody, Options, PersonaBody
from personachat.serve.guard import Guard
from personachat.serve.openai_api import ChatCompletions, openai_routes
from personachat.serve.responses import install_error_handlers, sse
from personachat.serve.service import ChatService
from personachat.serve.settings import ServeSettings
from personachat.serve.store import SessionStore

STATIC = Path(__file__).parent / "static"
DESCRIPTION = (
    "Chat with a persona bot: sessions stored in SQLite, replies decoded in batches across "
    'sessions. Errors are `{"error": {"code", "message", …}}`.'
)


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

    app = FastAPI(title="personachat", lifespan=lifespan, description=DESCRIPTION)
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(Guard, settings=settings)
    app.include_router(session_routes(service))
    app.include_router(message_routes(service))
    model_name = Path(str(model.args.model_name)).name
    app.include_router(openai_routes(ChatCompletions(service, model_name), v1_router()))
    add_page_routes(app, service, model_name=model_name)
    return app


def v1_router() -> APIRouter:
    # Documents the key in /docs ("Authorize"); the Guard middleware enforces it.
    api_key = APIKeyHeader(
        name="X-API-Key",
        auto_error=False,
        description="needed when the server was started with --api-key",
    )
    bearer = HTTPBearer(auto_error=False, description="the same key, as OpenAI clients send it")
    return APIRouter(prefix="/v1", dependencies=[Security(api_key), Security(bearer)])


def session_routes(service: ChatService) -> APIRouter:
    v1 = v1_router()

    @v1.post("/sessions", status_code=201, summary="Start a session")
    async def create_session(body: PersonaBody | None = None) -> dict:
        body = body or PersonaBody()
        return await service.create(body.personality, body.card)

    @v1.get("/sessions/{session_id}", summary="Persona and history of a session")
    async def get_session(session_id: str) -> dict:
        return await service.get(session_id)

    @v1.put("/sessions/{session_id}", summary="Change the persona (the history is kept)")
    async def put_session(session_id: str, body: PersonaBody) -> dict:
        return await service.set_personality(session_id, body.personality, body.card)

    @v1.delete(
        "/sessions/{session_id}/messages/last",
        summary="Take back the last turn (to regenerate or edit it)",
        description="Removes the last user message and the bot's reply to it; returns the "
        "session and the removed message's `text`. 409 when the session does not end with a "
        "turn.",
    )
    async def undo_turn(session_id: str) -> dict:
        return await service.undo_turn(session_id)

    @v1.delete("/sessions/{session_id}", status_code=204, summary="Delete a session")
    async def delete_session(session_id: str) -> Response:
        await service.delete(session_id)
        return Response(status_code=204)

    return v1


def message_routes(service: ChatService) -> APIRouter:
    v1 = v1_router()

    @v1.post("/sessions/{session_id}/messages", summary="Send a message, get the reply")
    async def post_message(session_id: str, body: MessageBody) -> JSONResponse:
        task = await service.start_turn(session_id, body.text, body.client_id, body.decoding())
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
        # Errors here (a refused message) are plain JSON, before the stream starts.
        await service.start_turn(session_id, body.text, body.client_id, body.decoding(), events)

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

    return v1


def add_page_routes(app: FastAPI, service: ChatService, model_name: str) -> None:
    """/health, the chat page and its static files."""

    @app.get("/health", summary="Liveness, batching figures and the server's limits")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": model_name,
            "in_flight": service.in_flight,
            "batching": service.batcher.stats.to_json(),
            "limits": service.settings.public(),
            "api_key_required": service.settings.api_key is not None,
            "default_options": {k: getattr(service.defaults, k) for k in Options.model_fields},
        }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
