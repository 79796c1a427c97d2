"""Work from an untrusted source run under a time and output budget.

A chat template comes with the model file: Jinja's sandbox keeps it from reaching ``os`` but
not from working forever (``{% for i in range(99999) %}{% for j in range(99999) %}``) or
writing gigabytes. ``render_bounded`` runs a render with a trace function on the calling
thread that checks the clock at every line of the compiled template (and at every Python
call beneath it) and counts what the template yields; past either budget it raises
``BudgetExceeded`` inside the render, which unwinds it. The tracing slows the render, so it
is meant for the few renders made when a model loads, not for every request.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

from personachat.errors import PersonachatError

T = TypeVar("T")
TEMPLATE_FILE = "<template>"  # the file name of the code Jinja compiles a template to


class BudgetExceeded(PersonachatError, RuntimeError):
    """Work from an untrusted source ran past its time or output budget."""


def render_bounded(render: Callable[[], T], what: str, seconds: float, max_chars: int) -> T:
    """``render()`` (a Jinja template's render, possibly through a library), stopped with
    BudgetExceeded naming ``what`` once it has run ``seconds`` or its template has yielded
    ``max_chars`` characters."""
    deadline = time.monotonic() + seconds
    written = 0

    def check(frame, event: str, arg):
        nonlocal written
        if time.monotonic() > deadline:
            raise BudgetExceeded(
                f"{what} did not finish within {seconds:g} s (a template should render in "
                "milliseconds; this one loops too much)"
            )
        if event == "return" and isinstance(arg, str) and frame.f_code.co_filename == TEMPLATE_FILE:
            written += len(arg)
            if written > max_chars:
                raise BudgetExceeded(
                    f"{what} wrote more than {max_chars:,} characters for a short conversation"
                )
        return check if frame.f_code.co_filename == TEMPLATE_FILE else None

    before = sys.gettrace()
    sys.settrace(check)
    try:
        return render()
    finally:
        sys.settrace(before)
