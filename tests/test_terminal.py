"""The terminal chat: line editing at a terminal (not in a pipe), threads that leave a core
free, a loading line, and a warm-up so the first reply is as fast as the later ones."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from personachat.args import ArgsError
from personachat.repl import loading, terminal_threads, use_line_editing


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_editing_at_a_terminal_only():
    pytest.importorskip("readline")
    assert use_line_editing(io.StringIO("hi\n")) is False  # a pipe: no terminal codes
    assert use_line_editing(FakeTerminal("hi\n")) is True
    assert "readline" in sys.modules  # input() now edits lines and keeps their history


def test_terminal_threads_leave_a_core_to_the_rest():
    assert terminal_threads(cores=2) == 1  # 2 threads on 2 busy cores: 5-17 s a reply
    assert terminal_threads(cores=1) == 1
    assert terminal_threads(cores=8) == 4
    assert terminal_threads(3, cores=2) == 3  # asked for: as asked
    with pytest.raises(ArgsError, match="--threads must be at least 1, got 0"):
        terminal_threads(0)


def test_loading_says_what_and_how_long():
    out = io.StringIO()
    with loading("Loading tiny", out):
        pass
    first, done = out.getvalue().splitlines()
    assert first == "Loading tiny…" and done.startswith("Loading tiny: done in ")


def test_interact_warms_up_before_the_first_prompt(tiny_checkpoint, monkeypatch, capsys):
    from personachat import ConvAIModel

    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"max_length": 4})
    events = []
    generate = model.generate_replies

    def recorded(conversations, options=None, **kwargs):
        events.append(("generate", options.max_length))
        return generate(conversations, options=options, **kwargs)

    def typed(prompt: str) -> str:
        events.append(("prompt", prompt))
        raise EOFError

    monkeypatch.setattr(model, "generate_replies", recorded)
    monkeypatch.setattr("builtins.input", typed)
    model.interact(personality=["i like tea ."])
    assert events == [("generate", 2), ("prompt", ">>> ")]


def personachat(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "personachat.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=900,  # a loaded machine: minutes to import torch
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_interact_says_it_is_loading_and_takes_threads(tiny_checkpoint):
    model = ["--model", str(tiny_checkpoint), "--set", "max_length=3", "--persona", "i am ."]
    chat = personachat("interact", *model, "--threads", "1", stdin="hi\n")
    assert chat.returncode == 0, chat.stderr
    assert f"Loading {tiny_checkpoint} (threads: 1)…" in chat.stderr
    assert "done in" in chat.stderr
    assert chat.stdout.startswith(">>> ") and "\x1b" not in chat.stdout  # a pipe: no codes
    bad = personachat("interact", *model, "--threads", "0")
    assert bad.returncode == 2 and "--threads must be at least 1, got 0" in bad.stderr
