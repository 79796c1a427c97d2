"""Shared fixtures: tiny GPT-2-architecture checkpoints built here, never downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from personachat.args import CACHE_DIR_ENV
from personachat.model.scratch import ScratchConfig, build_scratch_checkpoint

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SYNTHETIC_PERSONA_CHAT = SHARED_DATA / "synthetic-persona-chat" / "valid.csv"

PERSONA = ["i have a cat named tom .", "i work as a nurse .", "i love pizza ."]


@pytest.fixture(scope="session", autouse=True)
def token_cache_outside_the_repo(tmp_path_factory):
    """Tests that leave cache_dir at its default tokenize into a temporary folder (subprocesses
    inherit it), not into the checkout's cache_dir/."""
    before = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(tmp_path_factory.mktemp("cache_dir"))
    yield
    if before is None:
        os.environ.pop(CACHE_DIR_ENV, None)
    else:
        os.environ[CACHE_DIR_ENV] = before


def make_dialogs(n: int = 12) -> list[dict]:
    """Small Persona-Chat dialogs in the documented format (gold reply last)."""
    jobs = ["nurse", "pilot", "baker", "teacher", "farmer", "doctor"]
    dialogs = []
    for i in range(n):
        job = jobs[i % len(jobs)]
        other = jobs[(i + 1) % len(jobs)]
        persona = [f"i work as a {job} .", "i have a cat ."]
        dialogs.append(
            {
                "personality": persona,
                "utterances": [
                    {
                        "history": ["hi , what do you do ?"],
                        "candidates": [f"i am a {other} .", f"i am a {job} ."],
                    },
                    {
                        "history": ["hi , what do you do ?", f"i am a {job} .", "any pets ?"],
                        "candidates": ["i have a dog .", "i have a cat ."],
                    },
                ],
            }
        )
    return dialogs


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight GPT2DoubleHeadsModel + BPE tokenizer saved as a normal model folder."""
    folder = tmp_path_factory.mktemp("tiny") / "gpt2-tiny"
    texts = [
        s for d in make_dialogs() for u in d["utterances"] for s in u["history"] + u["candidates"]
    ] + PERSONA
    build_scratch_checkpoint(
        folder,
        texts,
        ScratchConfig(vocab_size=400, n_layer=2, n_embd=32, n_head=2, n_positions=128),
    )
    return folder


@pytest.fixture()
def dialogs_file(tmp_path) -> Path:
    path = tmp_path / "dialogs.json"
    path.write_text(json.dumps(make_dialogs()), encoding="utf-8")
    return path
