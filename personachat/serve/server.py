"""uvicorn, with the listening socket made here and what its HTTP/1.1 protocol lacks.

- **TCP_NODELAY on every connection.** uvicorn writes a response in two pieces (headers, then
  body). Without TCP_NODELAY the second waits until the client acknowledges the first, and
  the client delays that by up to ~40 ms: every request after the first on a kept-alive
  connection took ~44 ms instead of ~1 ms (``benchmarks/keepalive_latency.py``). asyncio
  sets the option only on sockets whose ``proto`` is TCP, which a socket made with
  ``socket(AF_INET, SOCK_STREAM)`` is not (its ``proto`` is 0); it is set here on the
  listening socket (Linux passes it to the accepted ones) and on each connection.
- **A header-read timeout.** uvicorn's keep-alive timeout covers the wait *between* requests;
  nothing limits how long a client may take to send a request's headers, so slow clients
  (slowloris) could hold connections open indefinitely. A connection whose request headers
  are not complete within ``header_timeout`` seconds of its first byte (or of the connection
  opening) is closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from personachat.serve.settings import ServeError, ServeSettings

log = logging.getLogger("personachat.serve")


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port is a one-line error."""
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port} is not a port: pass one from 1 to 65535 (0: any)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port} ({err.strerror}); pick another --port or --host"
        ) from err
    sock.set_inheritable(True)
    return sock


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with TCP_NODELAY and a header-read timeout (see the module doc).

    The timer runs while the connection waits for a request's headers: from the connection's
    start, and again from the first bytes of each next request on a kept-alive connection.
    """

    header_timeout: float = ServeSettings.header_timeout
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        set_nodelay(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """Run the timer while a request's headers are incomplete, stop it once they are."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._stop_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info(
                "closed the connection of %s: no complete request headers within %g s "
                "(--header-timeout)",
                "{}:{}".format(*self.client) if self.client else "a client",
                self.header_timeout,
            )
            self.transport.close()


def uvicorn_config(app, settings: ServeSettings, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration of ``app``: the guarded protocol and a graceful shutdown."""
    protocol = type(
        "GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": settings.header_timeout}
    )
    return uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=30, http=protocol)
