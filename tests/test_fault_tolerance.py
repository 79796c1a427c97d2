"""Training survives faults: SIGKILL, Ctrl-C, a kill during a checkpoint write, NaN losses, a
full disk, an unwritable folder, and pickle checkpoints are refused.

The interrupted runs are real ``personachat train`` processes; the model has dropout so that a
resumed run only matches an uninterrupted one if the random generators are restored too.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from personachat import ConvAIModel, cli
from personachat.args import ArgsError
from personachat.model.loading import ModelLoadError
from personachat.model.scratch import ScratchConfig, build_scratch_checkpoint
from personachat.train import checkpoints, preflight
from personachat.train.errors import TrainingError, TrainingInterrupted
from personachat.train.reporting import SampleWriter
from personachat.train.setup import TrainingObjective
from personachat.train.state import StopOnSignal

from .conftest import make_dialogs

# 24 utterances in micro-batches of 4, two per step: 3 steps per epoch, 6 in all, a
# checkpoint every 2 steps (mid-epoch, so resuming must skip micro-batches).
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


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny GPT-2 with dropout, the dialogs, and the weights of an uninterrupted run."""
    root = tmp_path_factory.mktemp("faults")
    dialogs = make_dialogs()
    data = root / "dialogs.json"
    data.write_text(json.dumps(dialogs))
    texts = [s for d in dialogs for u in d["utterances"] for s in u["history"] + u["candidates"]]
    model_dir = build_scratch_checkpoint(
        root / "tiny-dropout",
        texts,
        ScratchConfig(vocab_size=300, n_layer=2, n_embd=32, n_head=2, n_positions=128, dropout=0.1),
    )
    # Writing no checkpoints, samples or curves: none of that may change the weights either.
    reference = ConvAIModel(
        "gpt2",
        model_dir,
        use_cuda=False,
        args={**ARGS, "no_save": True, "output_dir": str(root / "ref")},
    )
    reference.train_model(data)
    weights = {k: v.detach().clone() for k, v in reference.model.state_dict().items()}
    return model_dir, data, weights


def start_training(model_dir: Path, data: Path, out: Path, pause: float) -> subprocess.Popen:
    """``personachat train`` in a subprocess; every checkpoint save sleeps ``pause`` seconds
    half-way (the test hook), so the test can act while it runs."""
    sets = [arg for key, value in ARGS.items() for arg in ("--set", f"{key}={value}")]
    env = {**os.environ, checkpoints.SAVE_PAUSE_ENV: str(pause)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "personachat.cli",
            "train",
            "--model",
            str(model_dir),
            "--train-file",
            str(data),
            "--output-dir",
            str(out),
            "--device",
            "cpu",
            *sets,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(
                f"training ended first (rc {proc.returncode}):\n"
                f"{proc.stderr.read() if proc.stderr else ''}"
            )
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def assert_same_weights(
    saved: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    resumed_from: Path | None = None,
) -> None:
    """The saved weights equal the reference run's (the file leaves out tied copies); on a
    failure, every tensor that differs and where the run was resumed from."""
    assert saved.keys() <= reference.keys() and len(saved) > 10
    differ = {
        key: float((saved[key] - reference[key]).abs().max())
        for key in saved
        if not torch.allclose(saved[key], reference[key], rtol=1e-5, atol=1e-6)
    }
    where = (
        f" after resuming from {resumed_from.name} {checkpoints.read_marker(resumed_from)}"
        if resumed_from
        else ""
    )
    assert not differ, (
        f"{len(differ)} of {len(saved)} tensors differ{where} (largest difference each): {differ}"
    )


def test_sigkill_after_the_first_checkpoint_then_resume_gives_the_uninterrupted_weights(
    setup, tmp_path
):
    model_dir, data, reference = setup
    out = tmp_path / "out"
    proc = start_training(model_dir, data, out, pause=0.5)
    wait_for(lambda: checkpoints.latest_checkpoint(out) is not None, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    assert not (out / "model.safetensors").exists()  # it never finished

    model = ConvAIModel("gpt2", model_dir, use_cuda=False, args={**ARGS, "output_dir": str(out)})
    step, details = model.train_model(data, resume_from_checkpoint=True)
    assert step == 6
    assert_same_weights(load_file(str(out / "model.safetensors")), reference)
    assert len(details["train_loss"]) == 6  # the history of the first part was kept


def test_ctrl_c_writes_a_checkpoint_and_prints_the_command_that_resumes(setup, tmp_path):
    model_dir, data, reference = setup
    out = tmp_path / "out"
    proc = start_training(model_dir, data, out, pause=0.3)
    wait_for(lambda: checkpoints.latest_checkpoint(out) is not None, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "stopped by SIGINT after step" in stderr
    saved = checkpoints.latest_checkpoint(out)
    assert f"checkpoint saved to {saved}" in stderr

    command = stderr.split("Resume with: ", 1)[1].strip()
    words = shlex.split(command)
    assert words[0] == "personachat" and words[-1] == "--resume"
    assert cli.main(words[1:]) == 0  # the printed command, run as is (in this process)
    assert_same_weights(load_file(str(out / "model.safetensors")), reference, saved)


def test_ctrl_c_while_the_epoch_samples_are_written_resumes_to_the_same_weights(
    setup, tmp_path, monkeypatch
):
    # The signal lands after the epoch's last step, while samples.md is being written: the
    # checkpoint is then at the start of epoch 2 (its random generators saved before that
    # epoch's loader drew its seed), which a resumed run must restore before the draw too.
    model_dir, data, reference = setup
    out = tmp_path / "out"
    write_samples = SampleWriter.__call__

    def ctrl_c_after_epoch_1(self, heading: str, fresh: bool = False) -> None:
        if heading.startswith("After epoch 1"):
            signal.raise_signal(signal.SIGINT)
        write_samples(self, heading, fresh)

    monkeypatch.setattr(SampleWriter, "__call__", ctrl_c_after_epoch_1)
    model = ConvAIModel("gpt2", model_dir, use_cuda=False, args={**ARGS, "output_dir": str(out)})
    with pytest.raises(TrainingInterrupted) as stopped:
        model.train_model(data)
    assert checkpoints.read_marker(stopped.value.checkpoint) == {
        "global_step": 3,
        "epoch": 1,
        "batches_done": 0,
        "resumable": True,
    }

    monkeypatch.setattr(SampleWriter, "__call__", write_samples)
    model = ConvAIModel("gpt2", model_dir, use_cuda=False, args={**ARGS, "output_dir": str(out)})
    assert model.train_model(data, resume_from_checkpoint=True)[0] == 6
    assert_same_weights(
        load_file(str(out / "model.safetensors")), reference, stopped.value.checkpoint
    )


def test_resuming_from_an_end_of_epoch_checkpoint_gives_the_uninterrupted_weights(setup, tmp_path):
    model_dir, data, reference = setup
    out = tmp_path / "out"
    args = {**ARGS, "save_steps": 0, "save_model_every_epoch": True, "output_dir": str(out)}
    ConvAIModel("gpt2", model_dir, use_cuda=False, args=args).train_model(data)
    (out / "model.safetensors").unlink()

    model = ConvAIModel("gpt2", model_dir, use_cuda=False, args=args)
    assert model.train_model(data, resume_from_checkpoint=out / "checkpoint-3-epoch-1")[0] == 6
    assert_same_weights(load_file(str(out / "model.safetensors")), reference)


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_as_the_one_loaded(
    setup, tmp_path
):
    model_dir, data, reference = setup
    out = tmp_path / "out"
    proc = start_training(model_dir, data, out, pause=1.0)
    # checkpoint-2 is complete and checkpoint-4 is half-written (weights, no marker yet).
    wait_for(
        lambda: (
            (out / "checkpoint-2").is_dir()
            and any(out.glob(".checkpoint-4.tmp-*/model.safetensors"))
        ),
        proc,
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()

    assert not (out / "checkpoint-4").exists()
    assert checkpoints.latest_checkpoint(out) == out / "checkpoint-2"
    assert checkpoints.resolve_resume(True, out) == out / "checkpoint-2"
    with pytest.raises(checkpoints.CheckpointError, match="not a complete checkpoint"):
        checkpoints.resolve_resume(next(out.glob(".checkpoint-4.tmp-*")), out)

    model = ConvAIModel("gpt2", model_dir, use_cuda=False, args={**ARGS, "output_dir": str(out)})
    model.train_model(data, resume_from_checkpoint=True)
    assert_same_weights(load_file(str(out / "model.safetensors")), reference)
    assert not list(out.glob(".checkpoint-*"))  # the cut-off save was cleaned away


def test_sigterm_is_turned_into_a_stop_request_and_a_second_one_is_not():
    before = signal.getsignal(signal.SIGTERM)
    # Usually default_int_handler; SIG_IGN when pytest was started in the background.
    before_int = signal.getsignal(signal.SIGINT)
    with StopOnSignal(announce=False) as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes
        assert stop.requested == "SIGTERM"
        # A second one stops at once, saying what was saved (tested in a real process in
        # test_training_faults.py); it is no longer a stop request.
        assert signal.getsignal(signal.SIGTERM) == stop._stop_now
    assert signal.getsignal(signal.SIGTERM) == before
    assert signal.getsignal(signal.SIGINT) is before_int


def test_same_seed_same_data_gives_the_same_loss_sequence(tiny_checkpoint, dialogs_file, tmp_path):
    def losses(name):
        model = ConvAIModel(
            "gpt2",
            tiny_checkpoint,
            use_cuda=False,
            args={
                **ARGS,
                "save_steps": 0,
                "no_save": True,
                "num_train_epochs": 1,
                "output_dir": str(tmp_path / name),
            },
        )
        return model.train_model(dialogs_file)[1]["train_loss"]

    first, second = losses("a"), losses("b")
    assert len(first) == 3
    assert first == second


def test_save_total_limit_keeps_the_newest_checkpoints_and_the_best(
    tiny_checkpoint, dialogs_file, tmp_path
):
    out = tmp_path / "out"
    # "Best" is the highest eval_loss here, so that it is an early checkpoint (the loss falls).
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={
            **ARGS,
            "save_steps": 1,
            "save_total_limit": 2,
            "output_dir": str(out),
            "best_model_dir": str(tmp_path / "best"),
            "evaluate_during_training": True,
            "evaluate_during_training_steps": 2,
            "evaluate_each_epoch": False,
            "early_stopping_metric": "eval_loss",
            "early_stopping_metric_minimize": False,
        },
    )
    _, details = model.train_model(dialogs_file, eval_file=dialogs_file)
    losses = details["eval_loss"]
    best_step = details["eval_global_step"][losses.index(max(losses))]
    assert best_step < 5
    names = {p.name for p in checkpoints.list_checkpoints(out)}
    assert names == {"checkpoint-5", "checkpoint-6", f"checkpoint-{best_step}"}


def test_nan_loss_stops_at_once_and_keeps_the_last_good_checkpoint(
    tiny_checkpoint, dialogs_file, tmp_path
):
    out = tmp_path / "out"
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={
            **ARGS,
            "learning_rate": 1e30,
            "warmup_ratio": 0.0,
            "save_steps": 1,
            "output_dir": str(out),
        },
    )
    with pytest.raises(TrainingError, match=r"at step (\d+)") as caught:
        model.train_model(dialogs_file)
    message = str(caught.value)
    assert "learning_rate" in message and "last good checkpoint" in message
    bad_step = int(message.split("at step ")[1].split()[0])
    last = checkpoints.latest_checkpoint(out)
    assert last == out / f"checkpoint-{bad_step - 1}"
    weights = load_file(str(last / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "model.safetensors").exists()  # no NaN model written as the result
    assert "stopped" in (out / "report.md").read_text()


def test_resuming_takes_a_new_learning_rate_but_refuses_other_batch_settings(
    tiny_checkpoint, dialogs_file, tmp_path
):
    out = tmp_path / "out"
    args = {**ARGS, "num_train_epochs": 1, "save_steps": 1, "output_dir": str(out)}
    ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args).train_model(dialogs_file)
    other = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={**args, "train_batch_size": 2}
    )
    with pytest.raises(TrainingError, match="micro_batch_size: 4 then, 2 now"):
        other.train_model(dialogs_file, resume_from_checkpoint=out / "checkpoint-2")

    calmer = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={**args, "learning_rate": 1e-3}
    )
    assert calmer.train_model(dialogs_file, resume_from_checkpoint=out / "checkpoint-2")[0] == 3
    state = json.loads((out / "checkpoint-3" / "training_state.json").read_text())
    assert state["scheduler"]["base_lrs"] == [1e-3, 1e-3]


def test_the_resume_command_drops_an_earlier_resume_path():
    argv = [
        "train",
        "--config",
        "my config.yaml",
        "--resume",
        "out/checkpoint-5",
        "--set",
        "num_train_epochs=2",
    ]
    assert cli.resume_command(argv) == (
        "personachat train --config 'my config.yaml' --set num_train_epochs=2 --resume"
    )


def test_under_torchrun_the_resume_command_is_a_torchrun_command():
    argv = ["train", "--config", "configs/gpt2-personachat.yaml"]
    one_node = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}
    assert cli.resume_command(argv, one_node) == (
        "torchrun --nproc_per_node 4 -m personachat.cli train "
        "--config configs/gpt2-personachat.yaml --resume"
    )
    two_nodes = {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}
    assert cli.resume_command(argv, two_nodes).startswith(
        "torchrun --nnodes 2 --nproc_per_node 4 -m personachat.cli train"
    )
    assert cli.resume_command(argv, {}) == (
        "personachat train --config configs/gpt2-personachat.yaml --resume"
    )


def test_an_unwritable_output_dir_fails_before_training(tiny_checkpoint, dialogs_file, tmp_path):
    # Tests run as root, which may write anywhere chmod forbids: a folder under a regular
    # file cannot be created by anyone.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    model = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={**ARGS, "output_dir": str(blocker / "out")}
    )
    with pytest.raises(TrainingError, match="not writable.*choose another output_dir"):
        model.train_model(dialogs_file)


def test_too_little_free_disk_fails_before_training(
    tiny_checkpoint, dialogs_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(preflight, "free_bytes", lambda path: 1024)
    model = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={**ARGS, "output_dir": str(tmp_path / "out")}
    )
    with pytest.raises(TrainingError, match="MB free.*one checkpoint needs about"):
        model.train_model(dialogs_file)
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_cuda_out_of_memory_suggests_auto_batch_size(
    tiny_checkpoint, dialogs_file, tmp_path, monkeypatch
):
    def out_of_memory(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(TrainingObjective, "forward", out_of_memory)
    model = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={**ARGS, "output_dir": str(tmp_path / "out")}
    )
    with pytest.raises(TrainingError, match="train_batch_size='auto'.*smaller"):
        model.train_model(dialogs_file)


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_checkpoint, dialogs_file, tmp_path):
    model = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={**ARGS, "output_dir": str(tmp_path / "out")}
    )
    with pytest.raises(TrainingError, match="no complete, resumable checkpoint"):
        model.train_model(dialogs_file, resume_from_checkpoint=True)


def pickle_only_folder(tiny_checkpoint: Path, folder: Path) -> Path:
    """A model folder as old simpletransformers wrote it: weights in a pickle."""
    from transformers import GPT2DoubleHeadsModel

    model = GPT2DoubleHeadsModel.from_pretrained(tiny_checkpoint)
    folder.mkdir()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_checkpoint / name).read_bytes())
    return folder


def test_a_pickle_checkpoint_is_refused_unless_trusted(tiny_checkpoint, tmp_path):
    folder = pickle_only_folder(tiny_checkpoint, tmp_path / "old")
    assert (folder / "pytorch_model.bin").is_file()
    assert not (folder / "model.safetensors").exists()
    # A folder cannot vouch for itself through its own model_args.json.
    (folder / "model_args.json").write_text(json.dumps({"trust_remote_pickle": True}))

    with pytest.raises(ModelLoadError, match="trust_remote_pickle=True"):
        ConvAIModel("gpt2", folder, use_cuda=False)
    trusted = ConvAIModel("gpt2", folder, use_cuda=False, trust_remote_pickle=True)
    trusted.save_model(tmp_path / "converted")
    ConvAIModel("gpt2", tmp_path / "converted", use_cuda=False)  # safetensors now: no flag


def test_a_broken_args_file_names_the_file(tiny_checkpoint, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for path in tiny_checkpoint.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "model_args.json").write_text(json.dumps({"train_batch_size": -3}))
    with pytest.raises(ArgsError, match=r"model_args\.json: train_batch_size must be"):
        ConvAIModel("gpt2", folder, use_cuda=False)
