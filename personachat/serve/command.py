"""``personachat serve --model DIR``: the chat API and page under uvicorn.

The CLI loads the model as for ``interact`` (same ``--config``/``--model``/``--set`` flags),
then calls ``run_serve``. FastAPI and uvicorn are imported only here, when a server starts.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

from personachat.errors import PersonachatError
from personachat.serve.settings import LOOPBACK, ServeError, ServeSettings, is_loopback

API_KEY_ENV = "PERSONACHAT_API_KEY"
KEEP_FREED_MEMORY_ENV = "PERSONACHAT_KEEP_FREED_MEMORY"  # "0": leave glibc's malloc as it is
DB_NAME = "sessions.sqlite3"
HELP = {
    "max_batch_size": "replies decoded together in one model call (1: one at a time)",
    "batch_window_ms": "how long a request waits for others to join its batch",
    "max_in_flight": "requests being answered at once; more get 429",
    "max_message_chars": "longest user message; longer gets 413",
    "max_persona_sentences": "most persona sentences; more gets 413",
    "max_persona_chars": "longest persona sentence; longer gets 413",
    "max_card_chars": "most characters of a character card (macros filled) or of a chat "
    "request's system messages; more is refused",
    "max_history_kept": "messages stored per session; older turns are dropped",
    "max_body_bytes": "largest request body; larger gets 413",
    "max_reply_tokens": "upper bound of a request's max_length",
    "max_temperature": "upper bound of a request's temperature",
    "max_top_k": "upper bound of a request's top_k",
    "max_repetition_penalty": "upper bound of a request's repetition_penalty",
    "max_no_repeat_ngram_size": "upper bound of a request's no_repeat_ngram_size",
    "header_timeout": "seconds a client may take to send a request's headers; then its "
    "connection is closed",
}


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for reuse instead of handing them back to the OS.

    Encoding a batch of prompts makes tensors of several MB. glibc serves blocks that large
    with ``mmap`` and unmaps them when freed, so each batch pays a page fault for every 4 KB
    of its activations again: thousands per batch, 10-30% of a batch's time on a virtual
    machine. Raising the mmap and trim thresholds keeps those blocks in the heap. The cost:
    the server holds on to its peak working set (``PERSONACHAT_KEEP_FREED_MEMORY=0`` keeps
    glibc's defaults). Returns False where the C library has no
    ``mallopt`` (macOS, Windows) or refuses the values; nothing changes then.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 2**30))


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve-only flags (the model flags are shared with ``interact``), then the flags
    serve shares with ``personachat telegram`` (``add_common_arguments``)."""
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0: every interface; set --api-key)",
    )
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    parser.add_argument(
        "--session-namespace",
        default="serve",
        help="whose sessions the routes reach (default: serve, its own); 'telegram' shares "
        "the chats of `personachat telegram` on the same --db with every client",
    )
    parser.add_argument(
        "--api-key",
        help=f"require this key on /v1 routes (default: the "
        f"{API_KEY_ENV} environment variable, else none; "
        "the variable keeps the key out of `ps`)",
    )
    parser.add_argument(
        "--allowed-hosts",
        help="Host names the server answers to, comma-separated, any port ('*': any host); "
        "others get 421 (default: " + ",".join(LOOPBACK) + " when --host is a loopback "
        "address, which stops DNS rebinding; else any)",
    )
    add_common_arguments(parser, HELP, log_level="info")


def add_common_arguments(
    parser: argparse.ArgumentParser, limits: Mapping[str, str], log_level: str
) -> None:
    """The flags of every front end over a ``ChatService`` (``serve``, ``telegram``): the
    session database, the CPU threads, the log level (``log_level`` by default), and one
    flag per ``ServeSettings`` field named in ``limits`` (its help), defaulting to the
    field's default. ``build_settings`` reads the limits back."""
    parser.add_argument(
        "--db",
        help=f"session database, shared by `personachat serve` and `personachat telegram` "
        f"(default: {DB_NAME} in the model folder, or in the current folder for a hub model)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for the decoding steps (default on a CPU: all cores "
        "but one, which stays free for the event loop, JSON and SQLite)",
    )
    parser.add_argument(
        "--prefill-threads",
        type=int,
        default=None,
        help="CPU threads for encoding a batch's prompts, one burst of large "
        "matrix products (default on a CPU: all cores)",
    )
    parser.add_argument(
        "--log-level",
        default=log_level,
        choices=["critical", "error", "warning", "info", "debug"],
    )
    defaults = ServeSettings()
    for f in fields(ServeSettings):
        if f.name in limits:
            default = getattr(defaults, f.name)
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                type=type(default),
                default=default,
                help=f"{limits[f.name]} (default: {default})",
            )


def build_settings(
    options: argparse.Namespace,
    limits: Iterable[str],
    error: type[PersonachatError] = ServeError,
    **fixed: Any,
) -> ServeSettings:
    """``ServeSettings`` from the flags ``add_common_arguments`` added for ``limits``, plus
    ``fixed`` fields; a value out of range is ``error`` (one line, naming the flag's field)."""
    try:
        return ServeSettings(**fixed, **{name: getattr(options, name) for name in limits})
    except ValueError as err:
        raise error(str(err)) from err


def api_key_from(options: argparse.Namespace) -> str | None:
    """The key of ``--api-key``, else of the environment, else None (no key). An empty key is
    an error: ``--api-key "$KEY"`` with ``KEY`` unset must not turn authentication off."""
    source, key = "--api-key", options.api_key
    if key is None:
        source, key = f"the {API_KEY_ENV} environment variable", os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise ServeError(
            f"{source} is empty (an unset shell variable?): pass a non-empty key, or leave "
            f"{source} out to serve without one"
        )
    return key


def allowed_hosts_from(options: argparse.Namespace) -> str | tuple[str, ...]:
    """``--allowed-hosts``; by default the loopback names on loopback, else any host (the
    names a server on the network is reached by are not known here)."""
    if options.allowed_hosts is not None:
        return options.allowed_hosts
    return (*LOOPBACK, options.host) if is_loopback(options.host) else ("*",)


def settings_from(options: argparse.Namespace) -> ServeSettings:
    """The server's settings: its limits, API key and allowed hosts."""
    return build_settings(
        options, HELP, api_key=api_key_from(options), allowed_hosts=allowed_hosts_from(options)
    )


def default_db(model_name: str) -> Path:
    folder = Path(model_name)
    return (folder if folder.is_dir() else Path.cwd()) / DB_NAME


def check_threads(options: argparse.Namespace) -> None:
    for flag in ("threads", "prefill_threads"):
        value = getattr(options, flag)
        if value is not None and value < 1:
            raise ServeError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")


def open_store(options: argparse.Namespace, model_name: str):
    from personachat.serve.store import SessionStore, StoreError

    try:
        return SessionStore(
            Path(options.db) if options.db else default_db(model_name),
            namespace=getattr(options, "session_namespace", None) or "serve",
        )
    except StoreError as err:
        raise ServeError(str(err)) from err


def share_cpu(model, options: argparse.Namespace) -> None:
    """Set torch's threads for serving on a CPU (the event loop needs a core too)."""
    if model.device.type != "cpu":
        return
    # The decoding thread and the event loop share the cores: torch using every core
    # makes its worker threads fight the loop (and each other) for them.
    import torch

    torch.set_num_threads(options.threads or max(1, (os.cpu_count() or 1) - 1))
    # ... except while a batch's prompts are encoded: one burst of large matrix products
    # (the loop has little to do then), ~1.7x faster on two cores than on one.
    model.prefill_threads = options.prefill_threads or os.cpu_count()
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") != "0":
        keep_freed_memory()


def announce(model, model_name: str, settings: ServeSettings, db: Path, address: tuple) -> None:
    """Where the server listens, and what its user should know before using it."""
    from personachat.model.loading import PERSONAS_FILE

    host, port = address[:2]
    shown = f"[{host}]" if ":" in host else host
    say = partial(print, "personachat serve:", flush=True)
    say(
        f"http://{shown}:{port}/ (chat page), /docs (API); sessions in {db}; batches of up "
        f"to {settings.max_batch_size} on {model.device}"
        + ("; API key required" if settings.api_key else "")
    )
    if not (Path(model_name) / PERSONAS_FILE).is_file():
        say(
            f"note: {model_name} has no {PERSONAS_FILE}, so a session started without a "
            "personality draws one from Persona-Chat (downloaded once); offline, send a "
            "personality"
        )
    if settings.api_key is None and not is_loopback(host):
        say(
            f"warning: listening on {host} without an API key: anyone who can reach this "
            "port can use the model; set --api-key"
        )


def run_serve(model, options: argparse.Namespace, model_name: str) -> int:
    """Serve ``model`` until interrupted; replies still being decoded are finished and stored
    before the server stops."""
    try:
        import uvicorn

        from personachat.serve.app import create_app
        from personachat.serve.server import listen, uvicorn_config
    except ImportError as err:
        raise ServeError(
            f"personachat serve needs FastAPI and uvicorn ({err}); install them "
            "with: pip install 'personachat[serve]'"
        ) from err
    settings = settings_from(options)
    check_threads(options)
    store = open_store(options, model_name)
    try:
        sock = listen(options.host, options.port)
    except ServeError:
        store.close()
        raise
    share_cpu(model, options)
    app = create_app(model, store, settings)
    announce(model, model_name, settings, store.path, sock.getsockname())
    try:
        uvicorn.Server(uvicorn_config(app, settings, options.log_level)).run(sockets=[sock])
    finally:
        store.close()
        sock.close()
    return 0
