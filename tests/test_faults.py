"""Faults a careless user or an attacker brings, each ending in one clear line (issue 13).

Model folders that would load pickles or files outside themselves, broken weights and
configs, data and config paths that are pipes or devices, text that is not valid Unicode, a
REPL fed bytes that are not UTF-8, a killed writer's temporary file, YAML alias bombs and
config sections of the wrong type, a saved model's own options, folders a run cannot write:
each through the command line as a user meets it (real subprocesses and servers), or
through the Python API where that is the front door.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from personachat import ConvAIModel
from personachat.args import ArgsError, ConvAIArgs
from personachat.cli import build_parser, filesystem_error_line
from personachat.config import args_for_model, load_config, resolve
from personachat.errors import PersonachatError
from personachat.model.loading import ModelLoadError, load_model_and_tokenizer

from .conftest import make_dialogs

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
    """Exit 2 with one error line naming ``words``, and no traceback."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def copy_model(tiny_checkpoint: Path, folder: Path) -> Path:
    shutil.copytree(tiny_checkpoint, folder)
    return folder


def tensor_names(folder: Path) -> list[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return list(f.keys())


def index_to(folder: Path, file_name: str, names: list[str]) -> None:
    """A model.safetensors.index.json mapping every tensor to ``file_name``."""
    weight_map = {name: file_name for name in names}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


# ---------------------------------------------------------------- weights: safetensors inside


def test_an_index_naming_a_pickle_is_refused_like_a_pickle_folder(tiny_checkpoint, tmp_path):
    folder = copy_model(tiny_checkpoint, tmp_path / "bin-index")
    names = tensor_names(folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    index_to(folder, "pytorch_model.bin", names)

    done = personachat("interact", "--model", str(folder), "--device", "cpu", *ONE_PERSONA)
    assert_one_line_error(done, "pytorch_model.bin", "trust_remote_pickle")

    # Trusted, a pickle inside the folder loads (as a pickle-only folder does).
    model, _ = load_model_and_tokenizer("gpt2", folder, trust_remote_pickle=True)
    assert model.config.n_embd == 32


def test_an_index_naming_files_outside_the_folder_is_refused_even_when_trusted(
    tiny_checkpoint, tmp_path
):
    folder = copy_model(tiny_checkpoint, tmp_path / "model")
    other = tmp_path / "other"
    other.mkdir()
    names = tensor_names(folder)
    shutil.move(folder / "model.safetensors", other / "weights.safetensors")
    index_to(folder, "../other/weights.safetensors", names)

    done = personachat("interact", "--model", str(folder), "--device", "cpu", *ONE_PERSONA)
    assert_one_line_error(done, "../other/weights.safetensors", "outside the model folder")
    with pytest.raises(ModelLoadError, match="outside the model folder"):
        load_model_and_tokenizer("gpt2", folder, trust_remote_pickle=True)


# ---------------------------------------------------------------- broken model folders


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])


def _absurd_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_embd": 10**9}))


def _large_config(folder: Path) -> None:
    """Sizes that build (1e10 parameters on the meta device) but would allocate 40 GB."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_embd": 4096, "n_layer": 48}))


BROKEN_FOLDERS = {
    "truncated weights": (_truncate, "not a complete safetensors file"),
    "random weights": (
        lambda f: (f / "model.safetensors").write_bytes(os.urandom(4096)),
        "not a complete safetensors file",
    ),
    "empty weights": (
        lambda f: (f / "model.safetensors").write_bytes(b""),
        "not a complete safetensors file",
    ),
    "no config.json": (lambda f: (f / "config.json").unlink(), "has no config.json"),
    "config.json as a pipe": (
        lambda f: ((f / "config.json").unlink(), os.mkfifo(f / "config.json")),
        "named pipe",
    ),
    "tokenizer.json as a pipe": (
        lambda f: ((f / "tokenizer.json").unlink(), os.mkfifo(f / "tokenizer.json")),
        "regular files only",
    ),
    "model_args.json as a pipe": (lambda f: os.mkfifo(f / "model_args.json"), "named pipe"),
    "absurd sizes": (_absurd_config, "cannot be built"),
    "sizes far beyond the weights": (_large_config, "parameters, but the weights"),
    "personas.json not a list": (
        lambda f: (f / "personas.json").write_text('{"persona": ["i like tea ."]}'),
        "must be a JSON list of personas",
    ),
    "personas.json with a lone surrogate": (
        lambda f: (f / "personas.json").write_text('[["i like \\ud800 tea ."]]'),
        "not valid Unicode",
    ),
}


@pytest.mark.parametrize("fault", BROKEN_FOLDERS)
def test_a_broken_model_folder_is_a_one_line_error(fault, tiny_checkpoint, tmp_path):
    folder = copy_model(tiny_checkpoint, tmp_path / "model")
    breaks, message = BROKEN_FOLDERS[fault]
    breaks(folder)
    started = time.perf_counter()
    with pytest.raises(PersonachatError, match=message):
        ConvAIModel("gpt2", folder, use_cuda=False)
    assert time.perf_counter() - started < 30  # refused, not allocated or read without end


def test_the_cli_refuses_a_truncated_model_in_one_line(tiny_checkpoint, tmp_path):
    folder = copy_model(tiny_checkpoint, tmp_path / "model")
    _truncate(folder)
    done = personachat("interact", "--model", str(folder), "--device", "cpu", *ONE_PERSONA)
    assert_one_line_error(done, "model.safetensors", "truncated")


def test_saved_weights_are_readable_by_others(tiny_checkpoint, tmp_path):
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False)
    folder = model.save_model(tmp_path / "saved")
    for name in ("model.safetensors", "config.json", "model_args.json", "personas.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


# ---------------------------------------------------------------- data files and their text


def test_a_fifo_as_data_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "dialogs.json"
    os.mkfifo(fifo)  # nobody ever writes to it: opening it to read would block forever
    started = time.perf_counter()
    done = personachat("validate", str(fifo), timeout=60)
    assert done.returncode == 1
    assert "named pipe (FIFO), not a regular file" in done.stdout
    assert time.perf_counter() - started < 60


def test_a_character_device_as_data_file_is_refused(tmp_path):
    done = personachat("validate", "/dev/zero", timeout=60)  # would read without end
    assert done.returncode == 1
    assert "character device, not a regular file" in done.stdout


def surrogate_dialogs(path: Path) -> Path:
    """Persona-Chat JSON whose dialog 3 has a lone-surrogate escape (valid JSON)."""
    dialogs = make_dialogs()
    text = json.dumps(dialogs).replace('"any pets ?"', '"any pets \\ud800?"', 1)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_lone_surrogate_in_data_is_invalid_with_its_place(tiny_checkpoint, tmp_path):
    data = surrogate_dialogs(tmp_path / "dialogs.json")
    done = personachat("validate", str(data))
    assert done.returncode == 1
    assert 'dialog 0, utterance 1, field "history", item 2: not valid Unicode' in done.stdout

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
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "not valid Unicode" in done.stderr and "dialog 0, utterance 1" in done.stderr


# ---------------------------------------------------------------- the terminal chat


@pytest.mark.parametrize("stdin_errors", ["surrogateescape", "strict"])
def test_invalid_utf8_in_the_repl_asks_to_retype_and_the_chat_goes_on(
    stdin_errors, tiny_checkpoint
):
    env = {**os.environ, "PYTHONIOENCODING": f"utf-8:{stdin_errors}"}
    done = subprocess.run(
        [sys.executable, "-m", "personachat.cli", "interact", "--model", str(tiny_checkpoint)]
        + ["--device", "cpu", *ONE_PERSONA],
        input=b"hi\n\xff\xfe bad bytes\nbye\n",
        capture_output=True,
        timeout=120,
        env=env,
    )
    out = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    assert out.count("please type it again") == 1
    assert out.count(">>> ") == 4  # hi, the bad line, bye, then the end of input


# ---------------------------------------------------------------- a killed writer


def test_a_killed_convert_leaves_no_temporary_behind(tmp_path):
    source = tmp_path / "dialogs.json"
    source.write_text(json.dumps(make_dialogs()))
    target = tmp_path / "out.json"
    # convert, stopped for good in the middle of writing its output (fsync never returns)
    code = (
        "import os, sys, time\n"
        "os.fsync = lambda fd: (print('writing', flush=True), time.sleep(600))\n"
        "from personachat.cli import main\n"
        f"main(['convert', {str(source)!r}, {str(target)!r}])\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        temporaries = [p.name for p in tmp_path.glob(".out.json.*.tmp")]
        assert len(temporaries) == 1
        busy = personachat("convert", str(source), str(target))  # a live writer's is kept
        assert busy.returncode == 0 and (tmp_path / temporaries[0]).exists()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert (tmp_path / temporaries[0]).exists()  # what SIGKILL leaves

    done = personachat("convert", str(source), str(target))
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob(".out.json.*"))
    assert len(json.loads(target.read_text())) == len(make_dialogs())


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
