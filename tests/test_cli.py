"""The personachat command line, run as a user would: real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from personachat.cli_reports import DEMO_MESSAGES

from .conftest import make_dialogs


def personachat(*args: str, stdin: str = "", cwd: Path | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "personachat.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    """A model trained by `personachat train` once for this module."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "dialogs.json"
    data.write_text(json.dumps(make_dialogs()))
    out = root / "model"
    done = personachat(
        "train",
        "--model",
        str(tiny_checkpoint),
        "--train-file",
        str(data),
        "--eval-file",
        str(data),
        "--output-dir",
        str(out),
        "--set",
        "num_train_epochs=1",
        "--set",
        "train_batch_size=4",
        "--set",
        "save_model_every_epoch=false",
        "--set",
        "max_length=6",
    )
    assert done.returncode == 0, done.stderr
    return done, out, data


def test_train_prints_metrics_and_a_persona_conversation(trained):
    done, out, _ = trained
    assert "perplexity per word" in done.stdout and "language_model_loss" in done.stdout
    assert "Persona: i work as a nurse . i have a cat ." in done.stdout
    assert done.stdout.count("  bot:  ") == len(DEMO_MESSAGES)  # the scripted demo chat
    assert (out / "model.safetensors").is_file()


def test_eval_and_interact_use_the_trained_model(trained):
    _, out, data = trained
    done = personachat("eval", "--model", str(out), "--eval-file", str(data))
    assert done.returncode == 0, done.stderr
    assert "hits@1" in done.stdout

    chat = personachat(
        "interact",
        "--model",
        str(out),
        "--persona",
        "i like tea .",
        "--set",
        "max_length=5",
        stdin="hello\n\nbye\n",
    )
    assert chat.returncode == 0, chat.stderr
    assert "Prompt should not be empty!" in chat.stdout
    assert chat.stdout.count(">>> ") == 4
    assert "Traceback" not in chat.stderr


def test_after_train_a_config_with_a_base_model_talks_to_the_trained_one(
    trained, tiny_checkpoint, tmp_path, capsys
):
    from personachat.args import ConvAIArgs
    from personachat.cli import model_to_load

    _, out, _ = trained
    base = str(tiny_checkpoint)
    # The config names the model training starts from (as configs/quick.yaml: smollm2).
    assert model_to_load(None, base, ConvAIArgs(output_dir=str(out))) == str(out)
    assert model_to_load("other", base, ConvAIArgs(output_dir=str(out))) == "other"
    assert model_to_load(None, base, ConvAIArgs(output_dir=str(tmp_path))) == base
    assert f"No trained model in {tmp_path} yet" in capsys.readouterr().err

    config = tmp_path / "base.yaml"
    config.write_text(
        yaml.safe_dump({"model_type": "gpt2", "model_name": base, "args": {"output_dir": str(out)}})
    )
    chat = personachat("interact", "--config", str(config), "--set", "max_length=5", stdin="hi\n")
    assert chat.returncode == 0, chat.stderr
    assert "No trained model" not in chat.stderr and chat.stdout.count(">>> ") == 2


def test_bad_data_is_a_one_line_error_not_a_traceback(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"personality": ["i am tall ."], "utterances": [{"history": []}]}]')
    done = personachat(
        "train",
        "--model",
        str(tiny_checkpoint),
        "--train-file",
        str(bad),
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "dialog 0" in done.stderr and "candidates" in done.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_option_names_the_closest(tiny_checkpoint, tmp_path):
    done = personachat("train", "--model", str(tiny_checkpoint), "--set", "learnig_rate=1")
    assert done.returncode == 2
    assert "learning_rate" in done.stderr


def test_missing_train_file_names_the_path(tiny_checkpoint, tmp_path):
    done = personachat(
        "train",
        "--model",
        str(tiny_checkpoint),
        "--train-file",
        str(tmp_path / "nope.json"),
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert done.returncode == 2
    assert "nope.json" in done.stderr


def test_a_config_without_a_model_builds_one_from_scratch(tmp_path):
    data = tmp_path / "dialogs.json"
    data.write_text(json.dumps(make_dialogs()))
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_type": "gpt2",
                "model_name": None,
                "train_file": str(data),
                "eval_file": str(data),
                "scratch": {
                    "vocab_size": 300,
                    "n_layer": 1,
                    "n_embd": 32,
                    "n_head": 2,
                    "n_positions": 128,
                },
                "args": {
                    "output_dir": str(tmp_path / "out"),
                    "cache_dir": str(tmp_path / "cache"),
                    "num_train_epochs": 1,
                    "save_model_every_epoch": False,
                    "max_length": 5,
                },
            }
        )
    )
    done = personachat("train", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "Building a small GPT-2" in done.stdout
    assert len(list((tmp_path / "cache").glob("scratch-gpt2-*"))) == 1
    # eval with the same config finds the trained model in output_dir.
    evaluated = personachat("eval", "--config", str(config))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "perplexity" in evaluated.stdout


def test_the_shipped_configs_are_valid():
    from personachat.args import make_args
    from personachat.config import load_config

    for path in Path(__file__).resolve().parents[1].glob("configs/*.yaml"):
        config = load_config(str(path))
        make_args(config.get("args"))  # raises on any unknown or invalid option


def test_extra_eval_files_must_map_labels_to_files(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("extra_eval_files: [data/persona_unseen.json]\n", encoding="utf-8")
    from personachat.cli import main

    assert main(["train", "--config", str(config)]) == 2
    assert "extra_eval_files must map labels to files" in capsys.readouterr().err


def test_a_bug_shows_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    from personachat import __version__, cli

    def broken(options):
        raise KeyError("personality")  # an internal bug, not the user's mistake

    monkeypatch.setattr(cli, "run", broken)
    assert cli.main(["eval", "--model", "whatever"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'personality'" in err
    assert f"bug in personachat {__version__}" in err and "please report it" in err


def test_a_user_error_is_one_line_without_a_traceback(monkeypatch, capsys):
    from personachat import cli
    from personachat.data.dialogs import DataError

    def bad_data(options):
        raise DataError('data.json: dialog 0: missing field "personality"')

    monkeypatch.setattr(cli, "run", bad_data)
    assert cli.main(["eval", "--model", "whatever"]) == 2
    err = capsys.readouterr().err
    assert err == 'personachat eval: error: data.json: dialog 0: missing field "personality"\n'
