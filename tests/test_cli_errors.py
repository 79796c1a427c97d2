"""Errors a new user meets first, each saying what is wrong and what to do: a mistyped local
path (no hub request), a config whose model is not trained yet, and the flag to pass when the
Persona-Chat download is not reachable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from personachat.args import ArgsError, ConvAIArgs
from personachat.cli import model_to_load
from personachat.data import download
from personachat.data.dialogs import DataError
from personachat.model.loading import looks_local, missing_folder


def test_paths_that_look_local_are_told_from_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "quick").mkdir(parents=True)
    for local in ("outputs/quik", "./quick", "/abs/model", "~/m", "a/b/c", "C:\\models\\x"):
        assert looks_local(local), local
    for hub in ("gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "openai-community/gpt2"):
        assert not looks_local(hub), hub
    message = missing_folder("outputs/quik")
    assert message.startswith("no such folder: model 'outputs/quik' does not exist here")
    assert "did you mean outputs/quick?" in message and "no hub request" in message


def personachat(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "personachat.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,  # a loaded machine: minutes to import torch
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "0"},
    )


def test_a_mistyped_model_folder_is_no_such_folder_at_once(tmp_path):
    (tmp_path / "outputs" / "quick").mkdir(parents=True)
    done = personachat("interact", "--model", "outputs/quik", "--persona", "hi .", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no such folder: model 'outputs/quik'" in done.stderr
    assert "did you mean outputs/quick?" in done.stderr
    assert "huggingface.co" not in done.stderr  # refused before any hub request


def test_a_config_not_trained_yet_says_train_it_first(tmp_path):
    args = ConvAIArgs(output_dir=str(tmp_path / "outputs" / "quick-gpt2"))
    with pytest.raises(ArgsError) as caught:
        model_to_load(None, None, args, "configs/quick-gpt2.yaml")
    message = str(caught.value)
    assert f"no trained model in {tmp_path / 'outputs' / 'quick-gpt2'} yet" in message
    assert "train it first with `personachat train --config configs/quick-gpt2.yaml`" in message


def test_the_download_advice_names_the_flag_of_the_split(tmp_path, monkeypatch):
    asked = []
    original = download.download_personachat

    def offline(cache_dir, **kwargs):
        asked.append(kwargs["instead"])
        return original(cache_dir, url="http://127.0.0.1:9/personachat.json", timeout=2, **kwargs)

    monkeypatch.setattr(download, "download_personachat", offline)
    with pytest.raises(DataError) as caught:
        download.load_personachat_or_file(None, "valid", tmp_path)
    assert "--eval-file on the command line" in str(caught.value)
    assert "--train-file" not in str(caught.value)
    with pytest.raises(DataError) as caught:
        download.load_personachat_or_file(None, "train", tmp_path)
    assert "--train-file on the command line" in str(caught.value)
