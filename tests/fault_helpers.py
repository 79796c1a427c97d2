"""Helpers for the fault tests: the CLI run as a user runs it, and what a one-line error
looks like."""

from __future__ import annotations

import subprocess
import sys

ONE_PERSONA = ["--persona", "i like tea ."]


def personachat(
    *args: str, stdin: bytes = b"", timeout: float = 120
) -> subprocess.CompletedProcess:
    """The CLI as a user runs it; output decoded leniently (replies of a random model)."""
    done = subprocess.run(
        [sys.executable, "-m", "personachat.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    done.stdout = done.stdout.decode("utf-8", "replace")
    done.stderr = done.stderr.decode("utf-8", "replace")
    return done


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2 with one error line naming ``words``, and no traceback. ``interact``'s status
    line ("Loading MODEL (threads: N)…", printed before the model loads) is not an error."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [
        line
        for line in done.stderr.splitlines()
        if line.strip() and not (line.startswith("Loading ") and line.endswith("…"))
    ]
    assert len(lines) == 1 and "error:" in lines[0], done.stderr
    for word in words:
        assert word in lines[0], lines[0]
