"""Request latency on one kept-alive connection to ``personachat serve`` (loopback).

Without TCP_NODELAY on the server's accepted sockets, a response written in two pieces
(uvicorn sends the headers, then the body) holds its second piece back until the client
acknowledges the first, and the client delays that acknowledgement by up to ~40 ms: every
request after the first on a kept-alive connection then takes ~40 ms instead of ~1 ms.

The script starts the real server (the CLI, in a subprocess, with a small random model) and
times ``--requests`` requests of each kind on one connection:

- ``raw GET /health``: a raw socket (TCP_NODELAY on the client, each request in one write),
  so only the server's side shows;
- ``raw POST /v1/sessions``: the same, with a JSON body;
- ``httpx GET /health``: an ordinary client (``httpx.Client``) reusing its connection.

    python benchmarks/keepalive_latency.py --requests 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from serve_load import build_model, start_server, stop_server


def read_response(sock: socket.socket, buffer: bytes) -> bytes:
    """Read one HTTP/1.1 response with a Content-Length; return what follows it."""
    while b"\r\n\r\n" not in buffer:
        buffer += recv(sock)
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += recv(sock)
    return rest[length:]


def recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection")
    return data


def time_raw(url: str, request: bytes, count: int) -> list[float]:
    """Seconds per request, ``count`` requests on one kept-alive raw connection."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer, times = b"", []
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(request)
            buffer = read_response(sock, buffer)
            times.append(time.perf_counter() - started)
    return times


def time_httpx(url: str, count: int) -> list[float]:
    times = []
    with httpx.Client(base_url=url) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.get("/health").raise_for_status()
            times.append(time.perf_counter() - started)
    return times


def requests_for(url: str) -> dict[str, bytes]:
    host = urlsplit(url).netloc.encode()
    body = json.dumps({"personality": ["i am a pilot ."]}).encode()
    return {
        "raw GET /health": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
        "raw POST /v1/sessions": b"POST /v1/sessions HTTP/1.1\r\nHost: "
        + host
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body,
    }


def summary(label: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times[1:])  # the first request opens the connection
    p95 = ms[int(0.95 * (len(ms) - 1))]
    slow = sum(t > 30 for t in ms)
    return (
        f"| {label} | {len(ms)} | {statistics.median(ms):.2f} | {p95:.2f} | "
        f"{statistics.mean(ms):.2f} | {slow} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per kind of request")
    parser.add_argument("--model", help="model folder (default: a random 2x64 GPT-2)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="keepalive_") as tmp:
        workdir = Path(tmp)
        model = Path(args.model) if args.model else build_model(workdir / "model", 2, 64)
        process, url = start_server(model, workdir / "sessions.sqlite3")
        try:
            rows = [
                summary(label, time_raw(url, request, args.requests + 1))
                for label, request in requests_for(url).items()
            ]
            rows.append(summary("httpx GET /health", time_httpx(url, args.requests + 1)))
        finally:
            stop_server(process)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}; one kept-alive connection on loopback"
    )
    print("\n| request | n | p50 ms | p95 ms | mean ms | over 30 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
