"""OpenAI's error shape, for the OpenAI-compatible routes (``/v1/chat/completions``,
``/v1/completions``, ``/v1/models``): ``{"error": {"message", "type", "param", "code"}}``.

The session routes keep their own shape (``{"error": {"code", "message", …}}``); a refusal on
an OpenAI route, wherever it is made (the guard, FastAPI's validation, the route), is written
in OpenAI's instead, so OpenAI clients raise their usual exceptions and find ``param``. A
refusal of what the request says is a 400 there, as OpenAI's API answers it (the session
routes answer 422 or 413): the openai client raises ``BadRequestError`` for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from personachat.serve.settings import RequestError

OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models")
# Codes the session routes use that OpenAI spells otherwise.
OPENAI_CODES = {"unauthorized": "invalid_api_key"}


def is_openai_path(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI-compatible routes."""
    return path.rstrip("/") in OPENAI_ROUTES or path.startswith("/v1/models/")


def openai_status(status: int) -> int:
    """The status of a refusal on an OpenAI route: 422 (the input's content) becomes 400."""
    return 400 if status == 422 else status


def error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error_body(error: RequestError) -> dict:
    """``error`` in OpenAI's shape; ``param`` is the request field it names, if any (the
    ``param``, ``field`` or ``option`` a ``RequestError`` carries)."""
    extra = error.extra
    param = extra.get("param", extra.get("field", extra.get("option")))
    return {
        "error": {
            "message": error.message,
            "type": error_type(openai_status(error.status)),
            "param": param,
            "code": OPENAI_CODES.get(error.code, error.code),
        }
    }


def param_name(loc: Sequence[str | int]) -> str | None:
    """A validation error's location as a parameter name: ``("body", "messages", 0,
    "role")`` → ``messages[0].role``; None for the body as a whole."""
    name = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or None


def bad_request(param: str | None, code: str, message: str) -> RequestError:
    """A 400 naming the request field ``param`` (OpenAI's ``param``)."""
    return RequestError(400, code, message, param=param)
