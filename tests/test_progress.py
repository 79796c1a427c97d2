"""Status lines for slow CLI work: shown at a terminal for steps past a second, with their
time; nothing in pipes, in CI or with --quiet; ``personachat export`` reports its steps."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import time

import pytest

from personachat import progress
from personachat.progress import reporting, step
from tests.test_export import saved_chat_model


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def not_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")


def test_a_step_past_the_threshold_shows_its_progress_and_time():
    terminal = FakeTerminal()
    with reporting("personachat export", stream=terminal, after=0.05):
        with step("writing weights"):
            time.sleep(0.4)
    text = terminal.getvalue()
    assert "\rpersonachat export: writing weights… 0 s" in text  # redrawn in place
    assert text.count("writing weights…") >= 2
    last = text.split("\r")[-1]
    assert last.startswith("personachat export: writing weights: done in 0.")
    assert last.endswith(" s\x1b[K\n")


def test_a_quick_step_says_nothing():
    terminal = FakeTerminal()
    with reporting("personachat export", stream=terminal, after=1.0):
        with step("writing weights"):
            pass
    assert terminal.getvalue() == ""


def test_a_failed_step_says_when_it_stopped_and_the_error_goes_on():
    terminal = FakeTerminal()
    with pytest.raises(OSError, match="disk"):
        with reporting("personachat export", stream=terminal, after=0.0):
            with step("writing weights"):
                time.sleep(0.1)
                raise OSError("disk full")
    assert "writing weights: stopped after 0." in terminal.getvalue()


def test_a_step_inside_a_step_adds_no_second_line():
    terminal = FakeTerminal()
    with reporting("personachat export", stream=terminal, after=0.0):
        with step("outer"):
            with step("inner"):
                time.sleep(0.1)
    assert "outer: done in" in terminal.getvalue() and "inner" not in terminal.getvalue()


@pytest.mark.parametrize(
    "stream, quiet, env",
    [
        (io.StringIO(), False, {}),  # a pipe or a log file
        (FakeTerminal(), True, {}),  # --quiet
        (FakeTerminal(), False, {"CI": "true"}),
        (FakeTerminal(), False, {"TERM": "dumb"}),
    ],
)
def test_no_status_outside_an_interactive_terminal(stream, quiet, env, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with reporting("personachat export", quiet=quiet, stream=stream, after=0.0) as line:
        with step("writing weights"):
            time.sleep(0.05)
    assert line is None and stream.getvalue() == ""


def test_library_calls_outside_reporting_are_silent(capsys):
    with step("writing weights"):
        time.sleep(0.05)
    assert capsys.readouterr() == ("", "")
    assert progress._current is None


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    return saved_chat_model(tmp_path_factory.mktemp("llama"), "llama")[1]


def export_at(command_tail: list[str], tty: bool, env: dict) -> tuple[int, str]:
    """Run ``personachat export`` with stderr a pseudo-terminal (``tty``) or a pipe."""
    command = [sys.executable, "-m", "personachat.cli", "export", *command_tail]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm", **env}
    env.pop("CI", None)
    if not tty:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stderr
    main_end, child_end = pty.openpty()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=child_end)
    os.close(child_end)
    chunks = []
    while True:
        try:
            chunk = os.read(main_end, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_end)
    return child.wait(timeout=600), b"".join(chunks).decode("utf-8", "replace")


def test_export_at_a_terminal_reports_each_step(saved_llama, tmp_path):
    rc, err = export_at(
        [str(saved_llama), str(tmp_path / "out"), "--gguf"], True, {progress.AFTER_ENV: "0"}
    )
    assert rc == 0, err
    for what in (
        f"loading {saved_llama}: done in",
        "preparing the language model: done in",
        "writing weights: done in",
        "writing the GGUF file and reading it back: done in",
    ):
        assert f"personachat export: {what}" in err


@pytest.mark.parametrize("tty, flags", [(False, []), (True, ["--quiet"])])
def test_export_in_a_pipe_or_quiet_prints_no_status(saved_llama, tmp_path, tty, flags):
    rc, err = export_at(
        [str(saved_llama), str(tmp_path / "out"), *flags], tty, {progress.AFTER_ENV: "0"}
    )
    assert rc == 0, err
    assert "personachat export:" not in err and "\r" not in err.replace("\r\n", "\n")
