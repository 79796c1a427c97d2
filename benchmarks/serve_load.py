"""Load test of ``personachat serve`` on loopback: batched serving against one at a time, and
the OpenAI-compatible route against the session route.

The script builds a small random-weight GPT-2 (or takes ``--model DIR``), starts the real
server (``personachat serve`` in a subprocess, port chosen by the OS) twice — with batches of
up to ``--max-batch-size`` replies, then with ``--max-batch-size 1`` — and each time runs
``--clients`` concurrent clients, each in its own session, sending ``--messages`` messages one
after another. It checks that no request failed and that every session's stored history is
complete and in order (each user message once, followed by the reply that client received).
On the batched server the same clients then hold the same conversations through
``POST /v1/chat/completions`` (``serve_load_chat``: stateless, each request carries the
history). It prints p50/p95 latency and replies/s of each run, and two ratios: batched
against one at a time, and chat completions against sessions.

Replies are forced to exactly ``--reply-tokens`` tokens (``min_length = max_length``), so
both servers decode the same amount; a random model would otherwise stop at random lengths.

    python benchmarks/serve_load.py                        # 32 clients x 10 messages
    python benchmarks/serve_load.py --clients 8 --messages 3 --model outputs/quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from serve_load_chat import run_chat_load
from serve_load_common import PARTNER_LINES, PERSONAS, Connection, LoadResult, message_text

from personachat.serve.settings import ServeSettings


async def create_session(http: Connection, client: int, result: LoadResult) -> str | None:
    """A session with one of the personas; None (and an error noted) if that failed."""
    try:
        status, body = await http.request(
            "POST", "/v1/sessions", {"personality": PERSONAS[client % len(PERSONAS)]}
        )
    except (OSError, ValueError) as err:
        result.errors.append(f"client {client}: create: {err!r}")
        return None
    if status != 201:
        result.errors.append(f"client {client}: create: {status} {body}")
        return None
    return body["id"]


async def chat(
    http: Connection,
    session_id: str,
    client: int,
    messages: int,
    options: dict | None,
    result: LoadResult,
) -> list[str]:
    """Send the messages one after another; return the replies received."""
    replies = []
    for index in range(messages):
        message = {"text": message_text(client, index)}
        if options:
            message["options"] = options
        started = time.perf_counter()
        try:
            status, body = await http.request(
                "POST", f"/v1/sessions/{session_id}/messages", message
            )
        except (OSError, ValueError) as err:
            result.errors.append(f"client {client} message {index}: {err!r}")
            await http.close()
            continue
        if status != 200:
            result.errors.append(f"client {client} message {index}: {status} {body}")
            continue
        result.latencies.append(time.perf_counter() - started)
        replies.append(body["reply"])
    return replies


def history_problems(client: int, session: dict, replies: list[str], messages: int) -> list[str]:
    """Differences between a session's stored history and what its client sent and got."""
    expected = []
    for index, reply in enumerate(replies):
        expected += [("user", message_text(client, index)), ("bot", reply)]
    stored = [(m["role"], m["text"]) for m in session["messages"]]
    problems = []
    if stored != expected or len(replies) != messages:
        problems.append(
            f"client {client}: history has {len(stored)} messages, expected "
            f"{2 * messages} alternating user/bot in the order sent"
        )
    seqs = [m["seq"] for m in session["messages"]]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"client {client}: message numbers {seqs} are not 1..{len(seqs)}")
    return problems


async def run_load(
    base_url: str,
    clients: int = 32,
    messages: int = 10,
    options: dict | None = None,
    headers: dict | None = None,
) -> LoadResult:
    """``clients`` concurrent sessions x ``messages`` messages against a running server,
    then a check of every session's stored history.

    Every client creates its session first; the clock (``wall_seconds``, hence replies/s)
    runs from the moment they all start sending messages until the last reply, so it times
    replies, not session creation or the history check.
    """
    result = LoadResult(clients, messages, 0.0)
    connections = [Connection(base_url, headers) for _ in range(clients)]
    try:
        sessions = await asyncio.gather(
            *(create_session(http, c, result) for c, http in enumerate(connections))
        )
        started = time.perf_counter()
        replies = await asyncio.gather(
            *(
                chat(http, session_id, c, messages, options, result)
                if session_id
                else asyncio.sleep(0, result=[])
                for c, (http, session_id) in enumerate(zip(connections, sessions, strict=True))
            )
        )
        result.wall_seconds = time.perf_counter() - started
    finally:
        for http in connections:
            await http.close()
    http = Connection(base_url, headers)
    try:
        for client, (session_id, received) in enumerate(zip(sessions, replies, strict=True)):
            if session_id is None:
                continue
            status, session = await http.request("GET", f"/v1/sessions/{session_id}")
            if status != 200:
                result.history_errors.append(f"client {client}: GET {status} {session}")
                continue
            result.history_errors += history_problems(client, session, received, messages)
    finally:
        await http.close()
    return result


# ---------------------------------------------------------------------- the server
def build_model(folder: Path, n_layer: int, n_embd: int) -> Path:
    """A random-weight GPT-2 with a tokenizer trained on the chat lines, plus personas.json
    (what ``POST /v1/sessions`` without a persona draws from)."""
    from personachat.model.scratch import ScratchConfig, build_scratch_checkpoint

    texts = PARTNER_LINES + [s for p in PERSONAS for s in p]
    build_scratch_checkpoint(
        folder,
        texts,
        ScratchConfig(vocab_size=1000, n_layer=n_layer, n_embd=n_embd, n_head=4, n_positions=256),
    )
    (folder / "personas.json").write_text(json.dumps(PERSONAS), encoding="utf-8")
    return folder


def start_server(
    model: Path, db: Path, *flags: str, env: dict | None = None, timeout: float = 120.0
) -> tuple[subprocess.Popen, str]:
    """``personachat serve`` on a free loopback port; returns (process, base URL)."""
    command = [
        sys.executable,
        "-m",
        "personachat.cli",
        "serve",
        "--model",
        str(model),
        "--db",
        str(db),
        "--port",
        "0",
        "--device",
        "cpu",
        "--log-level",
        "warning",
        *flags,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if found:
            url = f"http://127.0.0.1:{found.group(1)}"
            # Keep reading its output, so a chatty server never blocks on a full pipe.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            wait_healthy(url, deadline)
            return process, url
    process.kill()
    raise RuntimeError("the server did not start:\n" + "".join(lines))


def wait_healthy(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}/health did not answer")


def stop_server(process: subprocess.Popen) -> int:
    """SIGTERM (the server finishes the replies it is decoding), then wait."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def measure(
    model: Path, workdir: Path, label: str, max_batch_size: int, args, routes: tuple[str, ...]
) -> list[dict]:
    """One server (batches of up to ``max_batch_size``) and a load run per route in
    ``routes`` ("sessions", "chat completions"), one after the other."""
    db = workdir / f"{label.replace(' ', '_')}.sqlite3"
    extra = ["--threads", str(args.threads)] if args.threads else []
    if args.prefill_threads:
        extra += ["--prefill-threads", str(args.prefill_threads)]
    process, url = start_server(
        model,
        db,
        "--max-batch-size",
        str(max_batch_size),
        "--batch-window-ms",
        str(args.window_ms),
        *extra,
    )
    try:
        return [measure_route(url, label, max_batch_size, route, args) for route in routes]
    finally:
        stop_server(process)


def measure_route(url: str, label: str, max_batch_size: int, route: str, args) -> dict:
    """A warm-up, then the load of ``args.clients`` x ``args.messages`` on ``route``."""

    def load(clients: int, messages: int) -> LoadResult:
        if route == "chat completions":
            return asyncio.run(run_chat_load(url, clients, messages, args.reply_tokens))
        options = {"max_length": args.reply_tokens, "min_length": args.reply_tokens}
        return asyncio.run(run_load(url, clients, messages, options))

    load(2, 2)  # warm-up
    before = httpx.get(url + "/health").json()["batching"]
    result = load(args.clients, args.messages)
    after = httpx.get(url + "/health").json()["batching"]
    batches = after["batches"] - before["batches"]
    return {
        "label": f"{label}, {route}",
        "route": route,
        "max_batch_size": max_batch_size,
        "result": result,
        "mean_batch": (after["replies"] - before["replies"]) / batches if batches else 0.0,
    }


def print_table(runs: list[dict]) -> None:
    """The runs as a Markdown table, with the two ratios: batched sessions against one at a
    time, and chat completions against sessions on the same batched server."""
    print(
        "\n| serving | max batch | mean batch | replies | errors | history | p50 latency "
        "| p95 latency | replies/s |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for run in runs:
        r: LoadResult = run["result"]
        history = "complete, in order" if not r.history_errors else "PROBLEMS"
        if run["route"] == "chat completions":
            history = "none stored (stateless)"
        print(
            f"| {run['label']} | {run['max_batch_size']} | {run['mean_batch']:.1f} | "
            f"{r.replies} | {len(r.errors)} | {history} | "
            f"{r.percentile(0.5) * 1000:.0f} ms | {r.percentile(0.95) * 1000:.0f} ms | "
            f"{r.replies_per_second:.1f} |"
        )
    rate = {run["label"]: run["result"].replies_per_second for run in runs}
    ratios = [
        ("batched / one at a time (sessions)", "batched, sessions", "one at a time, sessions"),
        ("chat completions / sessions (batched)", "batched, chat completions", "batched, sessions"),
    ]
    for title, top, bottom in ratios:
        print(f"| **{title}** | | | | | | | | **{rate[top] / max(rate[bottom], 1e-9):.2f}x** |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--messages", type=int, default=10, help="per client, one at a time")
    parser.add_argument("--reply-tokens", type=int, default=20)
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=ServeSettings.max_batch_size,
        help="of the batched server (default: the server's own default)",
    )
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument("--model", help="model folder (default: a random 4x128 GPT-2)")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="the server's decoding threads (default: its own, all cores but one)",
    )
    parser.add_argument(
        "--prefill-threads",
        type=int,
        default=None,
        help="the server's prompt-encoding threads (default: its own, all cores)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        workdir = Path(tmp)
        model = (
            Path(args.model)
            if args.model
            else build_model(workdir / "model", args.n_layer, args.n_embd)
        )
        runs = [
            *measure(
                model,
                workdir,
                "batched",
                args.max_batch_size,
                args,
                ("sessions", "chat completions"),
            ),
            *measure(model, workdir, "one at a time", 1, args, ("sessions",)),
        ]

    import torch

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}; model: {args.model or f'random {args.n_layer}x{args.n_embd}'}"
        f"; {args.clients} clients x {args.messages} messages, replies of "
        f"{args.reply_tokens} tokens, window {args.window_ms:g} ms"
    )
    print_table(runs)
    failed = False
    for run in runs:
        for problem in (run["result"].errors + run["result"].history_errors)[:10]:
            print(f"{run['label']}: {problem}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
