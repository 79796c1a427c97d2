"""The terminal chat loop users know from simpletransformers' ``interact()``.

``>>> `` prompt, the reply on its own line, an empty line answered with
``Prompt should not be empty!``, and Ctrl-D / Ctrl-C / end of input ending the chat quietly.
A line that is not valid text (bytes that are not UTF-8, typed or pasted) is answered with a
request to type it again, and the chat goes on. At a terminal, lines are edited with
readline (arrow keys, Ctrl-A/E, history with up/down), where Python has it.

Also the terminal's share of the machine (``terminal_threads``: torch threads that leave a
core to the rest, as ``serve`` does) and the "loading…" lines of slow steps (``loading``).
"""

from __future__ import annotations

import builtins
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from personachat.args import ArgsError
from personachat.text import unicode_problem

RETYPE = "That line is not valid text (not UTF-8?); please type it again."


def run_repl(
    reply_fn: Callable[[str, list[str]], tuple[str, list[str]]],
    input_fn: Callable[[str], str] | None = None,
    print_fn: Callable[..., None] | None = None,
    opening: str | None = None,
) -> list[str]:
    """Chat until end of input; ``reply_fn(message, history) -> (reply, history)``.

    ``opening``: the bot's first line (a character card's first message), printed before the
    first prompt and kept as the first entry of the history, so the model sees it said.
    Returns the conversation history (useful to tests and callers that log it).
    """
    if input_fn is None:
        keep_undecodable_lines_apart()
        use_line_editing()
    # Looked up at call time so a replaced builtins.input (notebooks, tests) is honoured.
    input_fn = input_fn or builtins.input
    print_fn = print_fn or builtins.print
    history: list[str] = []
    if opening:
        print_fn(opening)
        history.append(opening)
    while True:
        try:
            message = read_message(input_fn, print_fn)
        except (EOFError, KeyboardInterrupt):
            print_fn()
            return history
        reply, history = reply_fn(message, history)
        print_fn(reply)


def keep_undecodable_lines_apart() -> None:
    """Have stdin pass undecodable bytes on as lone surrogates (``surrogateescape``), which
    ``read_message`` refuses line by line. A strict stdin raises for its whole read-ahead
    buffer instead, losing the good lines piped in around a bad one."""
    try:
        sys.stdin.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, OSError):
        pass  # not a text stream of its own (a notebook's, a test's): left as it is


def read_message(input_fn: Callable[[str], str], print_fn: Callable[..., None]) -> str:
    """The next non-empty line of valid text; asks again for anything else. Undecodable
    bytes arrive as ``UnicodeDecodeError`` (strict stdin) or as lone surrogates (stdin's
    ``surrogateescape`` in a C or UTF-8 locale), never as a message to the tokenizer."""
    while True:
        try:
            message = input_fn(">>> ")
        except UnicodeDecodeError:
            print_fn(RETYPE)
            continue
        if not message.strip():
            print_fn("Prompt should not be empty!")
        elif unicode_problem(message):
            print_fn(RETYPE)
        else:
            return message


def use_line_editing(stdin=None) -> bool:
    """Give ``input()`` readline's line editing and history when stdin is a terminal (not
    when it is a pipe: readline would write terminal codes into the output). Returns whether
    it did; False where Python has no readline (Windows without pyreadline)."""
    stdin = stdin or sys.stdin
    try:
        if not stdin.isatty():
            return False
        import readline
    except (ImportError, AttributeError, ValueError, OSError):
        return False
    readline.set_history_length(1000)
    return True


def terminal_threads(requested: int | None = None, cores: int | None = None) -> int:
    """Torch threads for a chat in the terminal: ``requested``, else the cores this process
    may use less one (at least 1, at most 4). A reply is many small decoding steps that gain
    little past a few threads, and on a busy machine threads that wait for each other's
    cores cost seconds a reply (5-17 s measured on two busy cores with 2 threads, 0.6-1.1 s
    with 1)."""
    if requested is not None:
        if requested < 1:
            raise ArgsError(f"--threads must be at least 1, got {requested}")
        return requested
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cores = cores or os.cpu_count() or 1
    return max(1, min(4, cores - 1))


@contextmanager
def loading(what: str, stream=None) -> Iterator[None]:
    """Say ``what…`` before a slow step and how long it took after (on stderr by default:
    the chat's own output stays clean for pipes)."""
    stream = stream or sys.stderr
    print(f"{what}…", file=stream, flush=True)
    start = time.perf_counter()
    yield
    print(f"{what}: done in {time.perf_counter() - start:.1f} s", file=stream, flush=True)


@contextmanager
def terminal_loading(model_name: str, threads: int | None = None) -> Iterator[None]:
    """Loading a model for a chat in the terminal: torch's threads set (``terminal_threads``),
    a "Loading…" line, and transformers' progress bars (GGUF conversion, weights) when stderr
    is a terminal."""
    import torch

    torch.set_num_threads(terminal_threads(threads))
    if sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()
    with loading(f"Loading {model_name} (threads: {torch.get_num_threads()})"):
        yield
