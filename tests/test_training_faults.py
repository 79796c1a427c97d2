"""Training-loop faults of issue 13 end in one line and lose nothing that was saved: a
damaged newest checkpoint on --resume, a diverged run, a second run on the same folder, an
unwritable best_model_dir, a signal during an evaluation, a full disk during a checkpoint.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from personachat import ConvAIModel
from personachat.train import checkpoints
from personachat.train.errors import TrainingError

ARGS = {
    "train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "num_train_epochs": 2,
    "learning_rate": 5e-3,
    "manual_seed": 1,
    "save_steps": 2,
    "logging_steps": 1,
    "save_model_every_epoch": False,
    "max_length": 5,
    "silent": True,
}


def model_for(checkpoint: Path, out: Path, **args) -> ConvAIModel:
    return ConvAIModel(
        "gpt2", checkpoint, use_cuda=False, args={**ARGS, "output_dir": str(out), **args}
    )


def test_resume_skips_a_truncated_newest_checkpoint_and_says_which(
    tiny_checkpoint, dialogs_file, tmp_path, capsys
):
    out = tmp_path / "out"
    model_for(tiny_checkpoint, out).train_model(dialogs_file)
    newest = checkpoints.latest_checkpoint(out)
    assert newest == out / "checkpoint-6"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a disk that filled up, say
    capsys.readouterr()

    model = model_for(tiny_checkpoint, out, overwrite_output_dir=True)
    step, _ = model.train_model(dialogs_file, resume_from_checkpoint=True)
    assert step == 6
    lines = [line for line in capsys.readouterr().err.splitlines() if "skipping" in line]
    assert lines == [
        f"resume: skipping {newest} (model.safetensors cannot be read: Error while "
        "deserializing header: incomplete metadata, file not fully covered); trying the one "
        "before it"
    ]
    # It went on from checkpoint-4; the damaged checkpoint-6 was replaced by a readable one.
    assert checkpoints.unreadable(newest) is None
    assert all(
        torch.isfinite(t).all() for t in load_file(str(newest / "model.safetensors")).values()
    )


def test_resume_with_every_checkpoint_damaged_is_one_error(tiny_checkpoint, dialogs_file, tmp_path):
    out = tmp_path / "out"
    model_for(tiny_checkpoint, out, save_total_limit=1).train_model(dialogs_file)
    (only,) = checkpoints.list_checkpoints(out)
    (only / checkpoints.OPTIMIZER_FILE).write_bytes(b"\x00" * 16)
    with pytest.raises(TrainingError, match=r"no complete, resumable checkpoint.*1 damaged"):
        model_for(tiny_checkpoint, out).train_model(dialogs_file, resume_from_checkpoint=True)
