"""The terminal chat loop users know from simpletransformers' ``interact()``.

``>>> `` prompt, the reply on its own line, an empty line answered with
``Prompt should not be empty!``, and Ctrl-D / Ctrl-C / end of input ending the chat quietly.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable


def run_repl(
    reply_fn: Callable[[str, list[str]], tuple[str, list[str]]],
    input_fn: Callable[[str], str] | None = None,
    print_fn: Callable[..., None] | None = None,
) -> list[str]:
    """Chat until end of input; ``reply_fn(message, history) -> (reply, history)``.

    Returns the conversation history (useful to tests and callers that log it).
    """
    # Looked up at call time so a replaced builtins.input (notebooks, tests) is honoured.
    input_fn = input_fn or builtins.input
    print_fn = print_fn or builtins.print
    history: list[str] = []
    while True:
        try:
            message = input_fn(">>> ")
            while not message.strip():
                print_fn("Prompt should not be empty!")
                message = input_fn(">>> ")
        except (EOFError, KeyboardInterrupt):
            print_fn()
            return history
        reply, history = reply_fn(message, history)
        print_fn(reply)
