"""``personachat train`` under torchrun: two CPU processes (gloo, loopback only) train
exactly like one process that accumulates their two micro-batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from personachat import ConvAIModel
from personachat.cli import main
from personachat.model.scratch import ScratchConfig, build_scratch_checkpoint

from .conftest import make_dialogs

OPTIONS = {
    "learning_rate": 5e-3,
    "manual_seed": 1,
    "num_train_epochs": 2,
    "logging_steps": 1,
    "warmup_ratio": 0.0,
    "save_model_every_epoch": False,
    "save_steps": 0,
    "silent": False,
    "fp16": False,
}


def train_command(
    checkpoint, data, output_dir, batch_size: int, accumulation: int, **extra
) -> list[str]:
    options = {
        **OPTIONS,
        "train_batch_size": batch_size,
        "gradient_accumulation_steps": accumulation,
        "cache_dir": str(Path(output_dir).parent / "cache"),  # cold for the first run
        **extra,
    }
    return [
        "train",
        "--model",
        str(checkpoint),
        "--train-file",
        str(data),
        "--output-dir",
        str(output_dir),
        "--device",
        "cpu",
        *[arg for key, value in options.items() for arg in ("--set", f"{key}={value}")],
    ]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """``personachat <args>`` as two gloo processes on loopback."""
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WORLD_SIZE", None)
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "personachat.cli",
        *args,
    ]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=150)
    # On failure: each rank's error lines (a tail alone shows only torchrun's own traceback).
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error" in line.lower()]
    assert done.returncode == 0, "\n".join(errors)[-4000:]
    return done


def trained(output_dir) -> tuple[list[float], dict[str, torch.Tensor]]:
    scores = json.loads((output_dir / "training_progress_scores.json").read_text())
    return scores["train_loss"], load_file(output_dir / "model.safetensors")


def test_two_processes_match_one_process_on_the_same_global_batch(tiny_checkpoint, tmp_path):
    data = tmp_path / "dialogs.json"
    data.write_text(json.dumps(make_dialogs(16)), encoding="utf-8")  # 32 examples, 4 steps of 8

    done = torchrun(*train_command(tiny_checkpoint, data, tmp_path / "ddp", 4, 1))

    # One process, the same 8 examples per step as 2 processes x 4.
    assert main(train_command(tiny_checkpoint, data, tmp_path / "single", 4, 2)) == 0

    ddp_losses, ddp_weights = trained(tmp_path / "ddp")
    single_losses, single_weights = trained(tmp_path / "single")
    assert len(ddp_losses) == len(single_losses) == 8
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4, abs=1e-5)
    assert ddp_weights.keys() == single_weights.keys()
    # The MC head's bias shifts every candidate's score equally, and softmax ignores shifts:
    # its true gradient is 0 and AdamW turns the rounding noise into lr-sized steps, different
    # for any change of summation order. Every other weight must match.
    del single_weights["multiple_choice_head.summary.bias"]
    for name, weight in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], weight, atol=1e-4, rtol=1e-4, msg=name)
    # Training moved the weights, so the comparison above means something.
    initial = load_file(tiny_checkpoint / "model.safetensors")
    assert not torch.allclose(
        initial["transformer.h.0.mlp.c_fc.weight"],
        single_weights["transformer.h.0.mlp.c_fc.weight"],
        atol=1e-3,
    )
    # Only rank 0 wrote: one "Trained ..." line, one output folder.
    assert done.stdout.count("Trained 8 steps") == 1
    # Rank 0 tokenized the training data; rank 1 waited and read it from the cache.
    assert done.stdout.count("distinct strings into") == 1
    assert done.stdout.count("tokenized data read from the cache") == 1


def test_two_processes_resume_to_the_weights_of_an_uninterrupted_run(tmp_path):
    # Dropout draws from each process's own generator: only if every rank's generators are
    # saved and restored (not only rank 0's) does the resumed run end where the first did.
    dialogs = make_dialogs(16)
    data = tmp_path / "dialogs.json"
    data.write_text(json.dumps(dialogs), encoding="utf-8")
    texts = [s for d in dialogs for u in d["utterances"] for s in u["history"] + u["candidates"]]
    model = build_scratch_checkpoint(
        tmp_path / "tiny-dropout",
        texts,
        ScratchConfig(vocab_size=300, n_layer=2, n_embd=32, n_head=2, n_positions=128, dropout=0.1),
    )
    # 32 examples, 2 processes x 4: 4 steps an epoch, 8 in all; checkpoints every 3 steps;
    # an evaluation after each epoch, each process taking every second example of 14.
    valid = tmp_path / "valid.json"
    valid.write_text(json.dumps(make_dialogs(7)), encoding="utf-8")
    options = {"save_steps": 3, "evaluate_during_training": True}
    torchrun(
        *train_command(model, data, tmp_path / "whole", 4, 1, **options), "--eval-file", str(valid)
    )
    resumed = tmp_path / "resumed"
    done = torchrun(
        *train_command(model, data, resumed, 4, 1, **options),
        "--eval-file",
        str(valid),
        "--resume",
        str(tmp_path / "whole" / "checkpoint-3"),
    )
    assert "Trained 8 steps" in done.stdout

    # The shared evaluation covered every example and equals one process evaluating alone.
    scores = json.loads((tmp_path / "whole" / "training_progress_scores.json").read_text())
    assert scores["eval_num_examples"] == [14, 14]
    alone = ConvAIModel(
        "gpt2", tmp_path / "whole", use_cuda=False, args={"silent": True}
    ).eval_model(str(valid), verbose=False)
    assert scores["eval_loss"][-1] == pytest.approx(alone["eval_loss"], rel=1e-5)
    assert scores["eval_hits@1"][-1] == pytest.approx(alone["hits@1"])

    _, whole = trained(tmp_path / "whole")
    _, again = trained(resumed)
    differ = {
        name: float((again[name] - weight).abs().max())
        for name, weight in whole.items()
        if not torch.allclose(again[name], weight, atol=1e-6, rtol=1e-5)
    }
    assert not differ, f"resumed weights differ: {differ}"
