"""How the API answers: every error as JSON ``{"error": {"code", "message", …}}`` (in OpenAI's
shape on the OpenAI-compatible routes: ``openai_shapes``), and events.

Error bodies may quote what the client sent (an unknown field's name, say), which may hold a
lone surrogate; they are written with ASCII escapes, so quoting bad input can never fail
(Starlette's ``JSONResponse`` writes raw UTF-8 and would raise, turning a 422 into a 500).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from personachat.serve.openai_shapes import (
    is_openai_path,
    openai_error_body,
    openai_status,
    param_name,
)
from personachat.serve.service import store_refusal
from personachat.serve.settings import RequestError, unicode_problem
from personachat.serve.store import StoreError

log = logging.getLogger("personachat.serve")


class ErrorResponse(JSONResponse):
    """A JSON response written in ASCII (``\\uXXXX`` escapes): encodable whatever it quotes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False).encode("ascii")


def error_json(
    error: RequestError, openai: bool = False, headers: dict | None = None
) -> ErrorResponse:
    """``error`` as its response; ``openai``: in OpenAI's shape and status."""
    if error.status == 429:
        headers = {**(headers or {}), "Retry-After": "1"}
    if openai:
        body, status = openai_error_body(error), openai_status(error.status)
        return ErrorResponse(body, status_code=status, headers=headers)
    return ErrorResponse(error.body(), status_code=error.status, headers=headers)


def on_openai_route(request: Request) -> bool:
    return is_openai_path(request.scope["path"])


def sse(event: str, data: dict) -> str:
    """One server-sent event; its JSON in ASCII, as the error bodies (an ``error`` event may
    quote an exception's message)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


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
        elif e["type"] == "string_unicode":  # pydantic's own check, where a length is bounded
            given = e.get("input")
            problem = unicode_problem(given) if isinstance(given, str) else None
            parts.append(f"{where}: {problem or 'not valid Unicode'}")
        else:
            parts.append(f"{where}: {e['msg']}")
    if all(e["type"] in ("invalid_unicode", "string_unicode") for e in errors):
        return "invalid_unicode", "; ".join(parts)
    return "invalid_request", "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can meet, answered as JSON; none stops the server."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError) -> JSONResponse:
        return error_json(err, on_openai_route(request))

    @app.exception_handler(StoreError)
    async def store_error(request: Request, err: StoreError) -> JSONResponse:
        return error_json(store_refusal(err), on_openai_route(request))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = list(err.errors())
        code, message = validation_message(errors)
        if on_openai_route(request):  # OpenAI's shape: a 400 naming the first bad field
            param = param_name(errors[0]["loc"]) if errors else None
            return error_json(RequestError(400, code, message, param=param), openai=True)
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        return ErrorResponse(
            {"error": {"code": code, "message": message, "details": details}}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(err.status_code, "http_error")
        if on_openai_route(request):
            error = RequestError(err.status_code, code, str(err.detail))
            return error_json(error, openai=True, headers=err.headers)
        return ErrorResponse(
            {"error": {"code": code, "message": str(err.detail)}},
            status_code=err.status_code,
            headers=err.headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error")
        if on_openai_route(request):
            message = f"{type(err).__name__}: {err}"
            return error_json(RequestError(500, "internal_error", message), openai=True)
        return ErrorResponse(
            {"error": {"code": "internal_error", "message": f"{type(err).__name__}: {err}"}},
            status_code=500,
        )
