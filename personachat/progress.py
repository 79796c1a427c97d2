"""A status line on stderr for CLI work that takes more than a second.

``personachat export`` spends ~14 s loading, writing weights and converting to GGUF; without a
word the user cannot tell work from a hang. A command wraps its run in ``reporting(...)`` and
its slow parts in ``step("writing weights")``: at a terminal a step that runs past
``PERSONACHAT_PROGRESS_AFTER`` seconds (default 1) shows ``personachat export: writing
weights… 3 s`` updated in place, then its time when it ends. Nothing is written when stderr is
not a terminal (pipes, logs, CI), when ``CI`` is set, for ``TERM=dumb`` or with ``--quiet``;
library code calling ``step`` outside ``reporting`` stays silent.

A step may instead let transformers draw its own progress bars (``bars=True``: loading a
model, GGUF conversion), announced by one line and timed at its end.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

AFTER_ENV = "PERSONACHAT_PROGRESS_AFTER"
DEFAULT_AFTER_S = 1.0
SPINNER = "|/-\\"
CLEAR_TO_END = "\x1b[K"


def wanted(stream: TextIO, quiet: bool = False) -> bool:
    """Whether a status line belongs on ``stream``: a terminal, not ``--quiet``, not CI."""
    if quiet or os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def show_after() -> float:
    """Seconds a step runs before its status line shows (``PERSONACHAT_PROGRESS_AFTER``)."""
    try:
        return max(0.0, float(os.environ.get(AFTER_ENV, DEFAULT_AFTER_S)))
    except ValueError:
        return DEFAULT_AFTER_S


class StatusLine:
    """One status line on a terminal ``stream``, labelled with ``command``."""

    def __init__(self, command: str, stream: TextIO, after: float, interval: float = 0.25):
        self.command, self.stream = command, stream
        self.after, self.interval = after, interval
        self.busy = False  # a step is running: a step inside it adds no second line

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: the work goes on
            pass

    @contextmanager
    def step(self, what: str, bars: bool = False) -> Iterator[None]:
        """Show ``what`` while the block runs (past ``after`` seconds), then its time."""
        if self.busy:
            yield
            return
        self.busy, start = True, time.monotonic()
        shown = threading.Event()
        if bars:
            shown.set()
            self.write(f"{self.command}: {what}…\n")
        stop = threading.Event()
        ticker = threading.Thread(target=self.tick, args=(what, start, stop, shown), daemon=True)
        if not bars:
            ticker.start()
        outcome = "done in"
        try:
            with transformers_bars(bars):
                yield
        except BaseException:
            outcome = "stopped after"
            raise
        finally:
            stop.set()
            if ticker.is_alive():
                ticker.join()
            self.busy = False
            if shown.is_set():
                took = time.monotonic() - start
                self.write(f"\r{self.command}: {what}: {outcome} {took:.1f} s{CLEAR_TO_END}\n")

    def tick(self, what: str, start: float, stop: threading.Event, shown: threading.Event):
        """Redraw ``what`` with its elapsed time until ``stop``, from ``after`` seconds on."""
        if stop.wait(self.after):
            return
        turn = 0
        while True:
            shown.set()
            took = time.monotonic() - start
            spin = SPINNER[turn % len(SPINNER)]
            self.write(f"\r{self.command}: {what}… {took:.0f} s {spin}{CLEAR_TO_END}")
            turn += 1
            if stop.wait(self.interval):
                return


_current: StatusLine | None = None


@contextmanager
def reporting(
    command: str, quiet: bool = False, stream: TextIO | None = None, after: float | None = None
) -> Iterator[StatusLine | None]:
    """Let ``step`` report under ``command`` while the block runs, when ``wanted``."""
    global _current
    stream = stream or sys.stderr
    if not wanted(stream, quiet):
        yield None
        return
    previous = _current
    _current = StatusLine(command, stream, show_after() if after is None else after)
    try:
        yield _current
    finally:
        _current = previous


@contextmanager
def step(what: str, bars: bool = False) -> Iterator[None]:
    """A slow part of the current command (silent outside ``reporting``)."""
    if _current is None:
        yield
        return
    with _current.step(what, bars):
        yield


@contextmanager
def transformers_bars(enabled: bool) -> Iterator[None]:
    """transformers' progress bars on for the block (the CLI hides them otherwise)."""
    if not enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        yield
    finally:
        if not was_enabled:
            hf_logging.disable_progress_bar()
