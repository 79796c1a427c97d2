"""Faults at the front ends (issue 13): config files (alias bombs, sections of the wrong
type, pipes), a saved model's own options under the config and flags (a real server), and
folders a run cannot write, refused before any work; each through the command line as a
user meets it, or in-process where the loader itself is measured."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from personachat import ConvAIModel
from personachat.args import ArgsError, ConvAIArgs
from personachat.cli import build_parser, filesystem_error_line
from personachat.config import args_for_model, load_config, resolve

from .conftest import make_dialogs
from .fault_helpers import assert_one_line_error, personachat

# ---------------------------------------------------------------- config files


def alias_bomb(path: Path) -> Path:
    """A "billion laughs" config: nine levels of nine aliases, 9**9 strings once expanded."""
    lines = ["args:", "  config:", '    a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        aliases = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"    a{level}: &a{level} [{aliases}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_yaml_alias_bomb_is_refused_before_it_grows(tmp_path):
    config = alias_bomb(tmp_path / "bomb.yaml")
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ArgsError, match="more than 10000 values once its aliases"):
        load_config(str(config))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - started < 5 and peak < 20 * 2**20

    done = personachat("eval", "--config", str(config), "--model", str(tmp_path), timeout=60)
    assert_one_line_error(done, "bomb.yaml", "aliases")


def test_aliases_within_the_bound_still_work(tmp_path):
    config = tmp_path / "shared.yaml"
    config.write_text("eval_file: &data dialogs.json\ntrain_file: *data\n")
    assert load_config(str(config)) == {"eval_file": "dialogs.json", "train_file": "dialogs.json"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("args: [1, 2]", "args must be a mapping of options"),
        ("scratch: 5", "scratch must be a mapping"),
        ("model_name: [a]", "model_name must be a model folder or hub id"),
        ("ablation_eval: maybe", "ablation_eval must be true or false, got 'maybe'"),
        ("extra_eval_files: [a.json]", "extra_eval_files must map labels to files"),
        ("args: &x {config: *x}", "refers to itself"),
        ('train_file: "data\\ud800.json"', "not valid Unicode"),
        ("args:\n  learning_rate: .inf", "args: learning_rate must be a finite number >= 0"),
    ],
)
def test_a_config_section_of_the_wrong_type_is_a_one_line_error(text, message, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(text + "\n")
    options = build_parser().parse_args(["eval", "--config", str(config)])
    with pytest.raises(ArgsError, match=message) as err:
        resolve(options)
    assert "\n" not in str(err.value) and str(config) in str(err.value)


def test_a_config_that_is_a_pipe_is_refused_at_once(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    done = personachat("eval", "--config", str(fifo), timeout=60)
    assert_one_line_error(done, "named pipe (FIFO), not a regular file")


# ---------------------------------------------------------------- the model's own options


@pytest.fixture(scope="module")
def greedy_model(tiny_checkpoint, tmp_path_factory) -> Path:
    """A model saved with do_sample false and max_history 1 (and personas)."""
    folder = tmp_path_factory.mktemp("greedy") / "model"
    saved = {"do_sample": False, "max_history": 1, "max_length": 7, "output_dir": "elsewhere"}
    model = ConvAIModel("gpt2", tiny_checkpoint, args=saved, use_cuda=False)
    model._personas = [d["personality"] for d in make_dialogs()]
    model.save_model(folder)
    return folder


def test_the_front_ends_read_the_options_the_model_was_saved_with(greedy_model):
    args = args_for_model(str(greedy_model), {})
    assert (args.do_sample, args.max_history, args.max_length) == (False, 1, 7)
    assert args.output_dir == ConvAIArgs().output_dir  # where this run writes is its own
    args = args_for_model(str(greedy_model), {"do_sample": True, "max_history": 3})
    assert (args.do_sample, args.max_history) == (True, 3)  # config and flags win


def serve_health(model: Path, *flags: str) -> dict:
    """Start ``personachat serve`` on a free port, read /health, stop it."""
    server = subprocess.Popen(
        [sys.executable, "-m", "personachat.cli", "serve", "--model", str(model)]
        + ["--port", "0", "--device", "cpu", "--db", str(model.parent / "s.sqlite3"), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in server.stdout:
            if "http://" in line:
                url = line.split()[2].rstrip("/")
                break
        else:
            raise AssertionError("the server did not start")
        deadline = time.monotonic() + 60
        while True:  # the address is printed just before uvicorn starts answering
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
                    return json.loads(response.read())
            except urllib.error.URLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


def test_serve_uses_the_saved_options_under_the_flags(greedy_model):
    defaults = serve_health(greedy_model)["default_options"]
    assert defaults["do_sample"] is False and defaults["max_length"] == 7
    defaults = serve_health(greedy_model, "--set", "do_sample=true")["default_options"]
    assert defaults["do_sample"] is True and defaults["max_length"] == 7


# ---------------------------------------------------------------- folders a run writes


def test_eval_refuses_an_unwritable_output_folder_before_computing(tiny_checkpoint, tmp_path):
    data = tmp_path / "dialogs.json"
    data.write_text(json.dumps(make_dialogs()))
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where a folder is needed: unwritable even for root
    done = personachat(
        "eval",
        "--model",
        str(tiny_checkpoint),
        "--eval-file",
        str(data),
        "--output-dir",
        str(blocker / "results"),
        "--device",
        "cpu",
    )
    assert_one_line_error(done, "output_dir", "a-file/results", "not writable")
    assert "Evaluation" not in done.stdout


def test_an_unwritable_cache_dir_is_a_one_line_error(tiny_checkpoint, tmp_path):
    data = tmp_path / "dialogs.json"
    data.write_text(json.dumps(make_dialogs()))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = personachat(
        "train",
        "--model",
        str(tiny_checkpoint),
        "--train-file",
        str(data),
        "--output-dir",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--set",
        f"cache_dir={blocker / 'cache'}",
    )
    assert_one_line_error(done, "cache_dir", "not writable")


def test_filesystem_errors_are_one_line_and_others_stay_bugs():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors")
    assert filesystem_error_line(full) == (
        "/data/out/model.safetensors: No space left on device — free some disk space, "
        "or write elsewhere"
    )
    assert filesystem_error_line(OSError(errno.EBADF, "Bad file descriptor")) is None
    assert filesystem_error_line(KeyError("x")) is None
