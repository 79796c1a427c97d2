"""What the serving benchmarks share: the simulated users' lines and personas, the result of a
load run, and a minimal HTTP/1.1 keep-alive JSON client."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PARTNER_LINES = [
    "hi , how are you today ?",
    "what do you do for a living ?",
    "do you have any pets ?",
    "where do you live ?",
    "what food do you like ?",
    "that sounds fun . anything else ?",
    "i love hiking on weekends .",
    "what music do you listen to ?",
    "do you have kids ?",
    "nice talking to you !",
]
PERSONAS = [
    ["i work as a nurse .", "i have two cats .", "i love sushi ."],
    ["i am a pilot .", "i live in paris .", "my dog is called max ."],
    ["i bake bread every morning .", "i have three kids .", "i play the guitar ."],
    ["i am a teacher .", "i like rock music .", "i run marathons ."],
]


@dataclass
class LoadResult:
    """What one load run measured and found."""

    clients: int
    messages: int
    wall_seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    history_errors: list[str] = field(default_factory=list)

    @property
    def replies(self) -> int:
        return len(self.latencies)

    @property
    def replies_per_second(self) -> float:
        return self.replies / self.wall_seconds if self.wall_seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def message_text(client: int, index: int) -> str:
    """A partner line, tagged so a message that lands in the wrong session is noticed."""
    return f"{PARTNER_LINES[index % len(PARTNER_LINES)]} #{client}.{index}"


class Connection:
    """A minimal HTTP/1.1 keep-alive JSON client, one per simulated user.

    The load generator shares the machine's cores with the server; httpx spends ~2.5 ms of CPU
    per request, which would be charged to the server being measured. This costs a fraction
    of that. Only what the server sends is handled: Content-Length bodies, JSON or nothing.
    """

    def __init__(self, base_url: str, headers: dict | None = None) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname, url.port or 80
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"{self.extra}\r\n"
        )
        self.writer.write(head.encode() + data)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            await self.close()
            raise ConnectionError("the server closed the connection")
        status, length, close = int(status_line.split()[1]), 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        content = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, json.loads(content) if content else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None
