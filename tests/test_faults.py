"""Faults a careless user or an attacker brings, each ending in one clear line (issue 13).

Model folders that would load pickles or files outside themselves, broken weights and
configs, data paths that are pipes or devices, text that is not valid Unicode, a REPL fed
bytes that are not UTF-8, a killed writer's temporary file: each through the command line as
a user meets it (real subprocesses), or through the Python API where that is the front door.
Config files, a saved model's own options and unwritable folders: test_faults_frontends.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from personachat import ConvAIModel
from personachat.errors import PersonachatError
from personachat.model.loading import ModelLoadError, load_model_and_tokenizer

from .conftest import make_dialogs
from .fault_helpers import ONE_PERSONA, assert_one_line_error, personachat


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
