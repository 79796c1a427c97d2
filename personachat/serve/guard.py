"""The guard: ASGI middleware that refuses a request before routing or parsing it.

Checked in this order: the Host header against ``--allowed-hosts`` on every route (421), the
API key on ``/v1`` routes (401), then the body size (413). The body is read here (at most
``max_body_bytes``) and handed on whole, so a huge or endless body is refused before any JSON
parsing.

The Host check defends a server on loopback against DNS rebinding: a web page at
``evil.example`` has its name resolve to 127.0.0.1, and the browser then lets its scripts
read this server's answers, because to the browser they come from ``evil.example``. Its
requests carry ``Host: evil.example``, which is not a loopback name.
"""

from __future__ import annotations

import asyncio
import json
import secrets

from personachat.json_limits import JSONLimitError, loads_bounded
from personachat.serve.openai_shapes import is_openai_path, openai_error_body
from personachat.serve.settings import RequestError, ServeSettings, limit_error

Headers = dict[str, bytes]
INLINE_JSON_CHECK = 64 * 1024  # bodies checked on the event loop (about a millisecond)


class Guard:
    """ASGI middleware run before routing (see the module doc)."""

    def __init__(self, app, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send) -> None:
        """Refuse the request (see the module doc), or hand it on with its body read whole."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        refusal = self.host_refusal(headers)
        openai = is_openai_path(scope["path"])  # errors in OpenAI's shape there
        if refusal is not None:
            return await send_error(send, refusal, openai=openai)
        refusal = self.key_refusal(scope["path"], headers)
        if refusal is not None:
            return await send_error(send, refusal, [(b"www-authenticate", b"Bearer")], openai)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        try:
            body = await self.checked_body(headers, receive)
        except RequestError as err:
            return await send_error(send, err, openai=openai)
        if body is None:  # the client left
            return
        await self.app(scope, replayed(body, receive), send)

    async def checked_body(self, headers: Headers, receive) -> bytes | None:
        """The whole body (``read_body``) with its JSON's limits checked (``json_refusal``),
        or None when the client left; a refusal is raised."""
        body = await self.read_body(headers, receive)
        if body is None:
            return None
        if len(body) <= INLINE_JSON_CHECK:
            refusal = json_refusal(headers, body)
        else:  # a large body is parsed in a thread: the event loop serves the others
            refusal = await asyncio.to_thread(json_refusal, headers, body)
        if refusal is not None:
            raise refusal
        return body

    def host_refusal(self, headers: Headers) -> RequestError | None:
        """A 421 when the Host header names a host this server does not answer to."""
        host = headers.get("host")
        host = None if host is None else host.decode("latin-1")
        if self.settings.allows_host(host):
            return None
        allowed = ", ".join(self.settings.allowed_hosts)
        return RequestError(
            421,
            "host_not_allowed",
            f"this server does not answer to the host {host!r} (allowed: {allowed}); open it "
            "by one of those names, or start it with --allowed-hosts NAME[,NAME...] "
            "('*': any host; the check stops web pages renamed to this address, DNS "
            "rebinding, from using it)",
        )

    def key_refusal(self, path: str, headers: Headers) -> RequestError | None:
        """A 401 when ``path`` is a /v1 route and the API key is missing or wrong."""
        if not self.settings.api_key or not (path + "/").startswith("/v1/"):
            return None
        given = headers.get("x-api-key", b"")
        auth = headers.get("authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if secrets.compare_digest(given, self.settings.api_key.encode()):
            return None
        return RequestError(
            401,
            "unauthorized",
            "this server needs an API key: send it as the X-API-Key "
            "header or as Authorization: Bearer KEY",
        )

    async def read_body(self, headers: Headers, receive) -> bytes | None:
        """The whole body, refused (413) as soon as it is larger than the limit; None when
        the client disconnected."""
        limit = self.settings.max_body_bytes
        too_large = limit_error(413, "max_body_bytes", limit, "the request body is too large")
        try:
            if int(headers.get("content-length", b"0")) > limit:
                raise too_large
        except ValueError:
            raise RequestError(400, "bad_request", "Content-Length is not a number") from None
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                raise too_large
        return body


def replayed(body: bytes, receive):
    """An ASGI ``receive`` for the app behind the guard: ``body`` whole, once, then what
    ``receive`` gives (the disconnect, for streaming responses)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def json_refusal(headers: Headers, body: bytes) -> RequestError | None:
    """A 400 naming the field when a JSON body nests too deep or holds a number too long,
    too large for a float, or NaN/Infinity (``json_limits``): refused before FastAPI parses
    it and before any route does arithmetic with it. Malformed JSON is left to FastAPI."""
    kind = headers.get("content-type", b"application/json").split(b";")[0].strip().lower()
    if not body.strip() or not (kind == b"application/json" or kind.endswith(b"+json")):
        return None
    try:
        loads_bounded(body)
    except JSONLimitError as err:
        return RequestError(400, "invalid_json", str(err), field=err.field or None)
    except ValueError:  # malformed JSON or UTF-8: FastAPI's own answer names the place
        pass
    return None


async def send_error(
    send,
    error: RequestError,
    headers: list[tuple[bytes, bytes]] | None = None,
    openai: bool = False,
) -> None:
    """Answer ``error`` as JSON straight from the middleware (no route ran); ``openai``: in
    OpenAI's error shape."""
    body = openai_error_body(error) if openai else error.body()
    content = json.dumps(body).encode()  # ASCII escapes: always encodable
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})
