"""Training-loop faults of issue 13 end in one line and lose nothing that was saved: a
damaged newest checkpoint on --resume, a diverged run, a second run on the same folder, an
unwritable best_model_dir, a signal during an evaluation, a full disk during a checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from personachat import ConvAIModel, cli
from personachat.train import checkpoints, guard, loop
from personachat.train.errors import TrainingError, TrainingInterrupted

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
    assert "checkpoint-4 at step 4 (No space left on device writing " in line
    assert "free there now" in line  # how much space is left
    assert f"the last complete checkpoint {out / 'checkpoint-2'}" in line
    command = line.split("Resume with: ", 1)[1]
    words = shlex.split(command)
    assert words[0] == "personachat" and words[-1] == "--resume"

    monkeypatch.setattr(checkpoints, "write_training_files", write)
    assert cli.main(words[1:]) == 0  # the printed command, run as is, goes on from step 2
    assert checkpoints.latest_checkpoint(out) == out / "checkpoint-6"


def train_process(model_dir: Path, data: Path, out: Path, *extra: str, pause: float = 0):
    """``personachat train`` in a subprocess; every checkpoint save sleeps ``pause`` seconds
    half-way (the test hook), so the test can act while it runs."""
    sets = [arg for key, value in ARGS.items() for arg in ("--set", f"{key}={value}")]
    command = [sys.executable, "-m", "personachat.cli", "train", "--model", str(model_dir)]
    command += ["--train-file", str(data), "--output-dir", str(out), "--device", "cpu"]
    return subprocess.Popen(
        [*command, *sets, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, checkpoints.SAVE_PAUSE_ENV: str(pause)},
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"training ended first:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_second_run_on_the_same_folder_is_refused_until_the_first_is_killed(
    tiny_checkpoint, dialogs_file, tmp_path
):
    out = tmp_path / "out"
    first = train_process(tiny_checkpoint, dialogs_file, out, pause=30)
    wait_for(lambda: any(out.glob(".checkpoint-2.tmp-*/model.safetensors")), first)

    second = train_process(tiny_checkpoint, dialogs_file, out, "--overwrite-output-dir")
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 2
    assert stderr.strip() == (
        f"personachat train: error: output_dir {out} is in use by another training run "
        f"(process {first.pid}, holding .personachat.lock); wait for it to end or stop it, "
        "or choose another output_dir. Nothing was changed."
    )

    first.kill()  # the kernel drops the lock with the process
    first.communicate()
    model = model_for(tiny_checkpoint, out, overwrite_output_dir=True)
    assert model.train_model(dialogs_file)[0] == 6


def test_an_unwritable_best_model_dir_fails_before_any_data_is_read(
    tiny_checkpoint, dialogs_file, tmp_path, monkeypatch
):
    blocker = tmp_path / "a-file"  # no one can create a folder under a regular file
    blocker.write_text("not a folder")
    model = model_for(
        tiny_checkpoint,
        tmp_path / "out",
        evaluate_during_training=True,
        best_model_dir=str(blocker / "best"),
    )
    monkeypatch.setattr(ConvAIModel, "_load", lambda *a: pytest.fail("data was read"))
    with pytest.raises(TrainingError) as caught:
        model.train_model(dialogs_file, eval_file=dialogs_file)
    assert str(caught.value).startswith(f"best_model_dir '{blocker / 'best'}' is not writable")
    assert "save_best_model=False" in str(caught.value)


def test_sigterm_during_an_evaluation_stops_it_at_the_next_batch_then_checkpoints(
    tiny_checkpoint, dialogs_file, tmp_path, monkeypatch
):
    from personachat.evaluation import evaluate

    seen = []
    sums = evaluate.evaluation_sums

    def sigterm_at_the_first_batch(model, batches, *args, **kwargs):
        def counted():
            for batch in batches:
                seen.append(batch)
                if len(seen) == 1:
                    signal.raise_signal(signal.SIGTERM)
                yield batch

        return sums(model, counted(), *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluation_sums", sigterm_at_the_first_batch)
    out = tmp_path / "out"
    model = model_for(
        tiny_checkpoint,
        out,
        evaluate_during_training=True,
        evaluate_during_training_steps=2,
        eval_batch_size=1,
        save_best_model=False,
    )
    with pytest.raises(TrainingInterrupted) as stopped:
        model.train_model(dialogs_file, eval_file=dialogs_file)
    assert len(seen) == 1  # of 12 batches: the rest were never evaluated
    assert stopped.value.signal_name == "SIGTERM" and stopped.value.step == 2
    assert checkpoints.latest_checkpoint(out) == out / "checkpoint-2"
    state = json.loads((out / "checkpoint-2" / checkpoints.STATE_FILE).read_text())
    assert "eval_global_step" not in state["training"]["history"]  # nothing half-recorded


def test_a_second_sigterm_stops_at_once_saying_what_was_saved(
    tiny_checkpoint, dialogs_file, tmp_path
):
    out = tmp_path / "out"
    proc = train_process(tiny_checkpoint, dialogs_file, out, pause=30)
    # checkpoint-2 is complete; checkpoint-4 is being written (30 s pause in the save).
    wait_for(lambda: any(out.glob(".checkpoint-4.tmp-*/model.safetensors")), proc)
    proc.send_signal(signal.SIGTERM)  # a stop request: the save goes on
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # stop at once
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - started < 20  # not after the 30 s save
    assert proc.returncode == -signal.SIGTERM
    assert stderr.strip().splitlines()[-1] == (
        f"SIGTERM again: stopping at once without a checkpoint. Saved: {out / 'checkpoint-2'} "
        "(step 2), which --resume (resume_from_checkpoint=True) goes on from. Not saved: the "
        "training after step 2 (now at step 4)."
    )
    assert checkpoints.resolve_resume(True, out) == out / "checkpoint-2"
