"""Training-loop faults of issue 13 end in one line and lose nothing that was saved: a
damaged newest checkpoint on --resume, a diverged run, a second run on the same folder, an
unwritable best_model_dir, a signal during an evaluation, a full disk during a checkpoint.
"""

from __future__ import annotations

import errno
import os
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from personachat import ConvAIModel, cli
from personachat.train import checkpoints, guard, loop
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


def test_weights_gone_nan_at_the_last_step_end_in_an_error_not_a_saved_model(
    tiny_checkpoint, dialogs_file, tmp_path, monkeypatch
):
    # The loss of the last step is still finite, but its update ruined a weight: the run
    # must not "finish" and write that model.
    step = loop.optimizer_step

    def ruin_the_last_update(run, i):
        stats = step(run, i)
        if run.state.global_step == 6:
            with torch.no_grad():
                next(run.model.parameters()).fill_(float("nan"))
        return stats

    monkeypatch.setattr(loop, "optimizer_step", ruin_the_last_update)
    out = tmp_path / "out"
    with pytest.raises(TrainingError) as caught:
        model_for(tiny_checkpoint, out, save_steps=4).train_model(dialogs_file)
    message = str(caught.value)
    assert "\n" not in message
    assert "became non-finite at step 6" in message
    assert f"The last good checkpoint is {out / 'checkpoint-4'} (step 4)" in message
    assert not (out / "model.safetensors").exists()


def test_a_checkpoint_with_nan_weights_is_never_called_the_last_good_one(
    tiny_checkpoint, dialogs_file, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    model_for(tiny_checkpoint, out).train_model(dialogs_file)
    # checkpoint-6 as an older version wrote it from diverged weights.
    path = out / "checkpoint-6" / "model.safetensors"
    weights = load_file(str(path))
    weights = {k: torch.full_like(v, float("nan")) for k, v in weights.items()}
    save_file(weights, str(path))
    run = SimpleNamespace(out=out)
    assert guard.last_good_checkpoint(run) == out / "checkpoint-4"


def test_a_full_disk_during_a_checkpoint_write_is_one_line_with_the_resume_command(
    tiny_checkpoint, dialogs_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    write = checkpoints.write_training_files

    def disk_full_at_step_4(folder, optimizer, scheduler, scaler, training, *rest):
        if training["global_step"] == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "optimizer"))
        write(folder, optimizer, scheduler, scaler, training, *rest)

    monkeypatch.setattr(checkpoints, "write_training_files", disk_full_at_step_4)
    sets = [arg for key, value in ARGS.items() for arg in ("--set", f"{key}={value}")]
    argv = ["train", "--model", str(tiny_checkpoint), "--train-file", str(dialogs_file)]
    argv += ["--output-dir", str(out), "--device", "cpu", *sets]
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"personachat train: error: could not write checkpoint {out}/")
    assert "checkpoint-4 at step 4 (No space left on device)" in line
    assert f"the last complete checkpoint {out / 'checkpoint-2'}" in line
    command = line.split("Resume with: ", 1)[1]
    words = shlex.split(command)
    assert words[0] == "personachat" and words[-1] == "--resume"

    monkeypatch.setattr(checkpoints, "write_training_files", write)
    assert cli.main(words[1:]) == 0  # the printed command, run as is, goes on from step 2
    assert checkpoints.latest_checkpoint(out) == out / "checkpoint-6"
