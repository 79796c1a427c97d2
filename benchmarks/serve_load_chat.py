"""The load of ``serve_load`` on the OpenAI-compatible route, ``POST /v1/chat/completions``.

Each client plays the same conversation as on the session route — the persona (as the
system message), then its messages one after another — but keeps the history itself and
sends all of it with every request, as OpenAI clients do; the server stores nothing. Replies
have exactly the requested number of tokens (``max_tokens`` = ``min_tokens``), so both routes
decode the same amount, with the model's own sampling options.

An answer counts as an error unless it is a 200 ``chat.completion`` whose reply is a string
of exactly that many tokens (``usage.completion_tokens``), ended by ``"length"``.
"""

from __future__ import annotations

import asyncio
import time

from serve_load_common import PERSONAS, Connection, LoadResult, message_text


def chat_problem(status: int, body, reply_tokens: int) -> str | None:
    """What is wrong with a chat-completion answer, or None."""
    if status != 200:
        return f"{status} {body}"
    try:
        choice, usage = body["choices"][0], body["usage"]
        ok = (
            body["object"] == "chat.completion"
            and isinstance(choice["message"]["content"], str)
            and choice["finish_reason"] == "length"
            and usage["completion_tokens"] == reply_tokens
        )
    except (KeyError, IndexError, TypeError):
        ok = False
    return None if ok else f"not the expected chat.completion: {body}"


async def chat_client(
    http: Connection, client: int, messages: int, reply_tokens: int, result: LoadResult
) -> None:
    """One client's conversation: ``messages`` requests, each with the whole history."""
    conversation = [{"role": "system", "content": "\n".join(PERSONAS[client % len(PERSONAS)])}]
    for index in range(messages):
        conversation.append({"role": "user", "content": message_text(client, index)})
        request = {"messages": conversation, "max_tokens": reply_tokens, "min_tokens": reply_tokens}
        started = time.perf_counter()
        try:
            status, body = await http.request("POST", "/v1/chat/completions", request)
        except (OSError, ValueError) as err:
            result.errors.append(f"client {client} request {index}: {err!r}")
            await http.close()
            return
        problem = chat_problem(status, body, reply_tokens)
        if problem:
            result.errors.append(f"client {client} request {index}: {problem}")
            return
        result.latencies.append(time.perf_counter() - started)
        reply = body["choices"][0]["message"]["content"]
        conversation.append({"role": "assistant", "content": reply or "..."})


async def run_chat_load(
    base_url: str,
    clients: int = 32,
    messages: int = 10,
    reply_tokens: int = 20,
    headers: dict | None = None,
) -> LoadResult:
    """``clients`` concurrent conversations x ``messages`` chat-completion requests against a
    running server; ``wall_seconds`` runs from the first request to the last reply."""
    result = LoadResult(clients, messages, 0.0)
    connections = [Connection(base_url, headers) for _ in range(clients)]
    started = time.perf_counter()
    try:
        await asyncio.gather(
            *(
                chat_client(http, c, messages, reply_tokens, result)
                for c, http in enumerate(connections)
            )
        )
        result.wall_seconds = time.perf_counter() - started
    finally:
        for http in connections:
            await http.close()
    return result
