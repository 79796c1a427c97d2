"""The terminal chat loop users know from simpletransformers' ``interact()``.

``>>> `` prompt, the reply on its own line, an empty line answered with
``Prompt should not be empty!``, and Ctrl-D / Ctrl-C / end of input ending the chat quietly.
A line that is not valid text (bytes that are not UTF-8, typed or pasted) is answered with a
request to type it again, and the chat goes on.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Callable

from personachat.data.dialogs import unicode_problem

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
