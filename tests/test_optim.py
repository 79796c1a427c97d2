"""The optimizer and scheduler options do what they say, and a resumed run goes on with the
optimizer state and learning rate an uninterrupted one would have."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers.optimization import Adafactor

from personachat import ConvAIModel
from personachat.args import SCHEDULERS, ArgsError, make_args
from personachat.train.errors import TrainingError
from personachat.train.optim import make_optimizer, make_scheduler

BASE = {
    "train_batch_size": 4,
    "learning_rate": 5e-3,
    "manual_seed": 1,
    "silent": True,
    "save_model_every_epoch": False,
    "num_train_epochs": 2,
    "warmup_ratio": 0.0,
    "logging_steps": 1,
}


def learning_rates(steps: int = 10, **options) -> list[float]:
    """The learning rate of each of ``steps`` optimizer steps under ``options``."""
    args = make_args({"learning_rate": 1.0, "warmup_steps": 2, **options})
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, args, torch.device("cpu"))
    scheduler = make_scheduler(optimizer, args, total_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return rates


def test_unknown_optimizer_or_scheduler_names_the_valid_ones():
    with pytest.raises(ArgsError, match="optimizer 'SGD' is not known.*AdamW, Adafactor"):
        make_args({"optimizer": "SGD"})
    with pytest.raises(ArgsError, match="cosine_schedule_with_warmup, cosine_with_hard"):
        make_args({"scheduler": "cosine"})


def test_every_scheduler_has_its_shape():
    constant = learning_rates(scheduler="constant_schedule")
    assert constant == [1.0] * 10
    warm = learning_rates(scheduler="constant_schedule_with_warmup")
    assert warm[:3] == [0.0, 0.5, 1.0] and warm[-1] == 1.0
    linear = learning_rates(scheduler="linear_schedule_with_warmup")
    assert linear[:2] == [0.5, 1.0] and linear[-1] == pytest.approx(1 / 8)
    cosine = learning_rates(scheduler="cosine_schedule_with_warmup")
    assert cosine[2] == 1.0 and cosine[6] == pytest.approx(0.5) and cosine[-1] < 0.05
    restarts = learning_rates(
        scheduler="cosine_with_hard_restarts_schedule_with_warmup", cosine_schedule_num_cycles=2
    )
    assert restarts[5] < 0.2 and restarts[6] == 1.0  # the second cycle starts again at the top
    polynomial = learning_rates(
        steps=12,
        scheduler="polynomial_decay_schedule_with_warmup",
        polynomial_decay_schedule_lr_end=0.1,
        polynomial_decay_schedule_power=2.0,
    )
    assert polynomial[2] == 1.0 and polynomial[-1] == pytest.approx(0.1 + 0.9 * (1 / 10) ** 2)
    assert set(SCHEDULERS) >= {"reduce_on_plateau", "constant_schedule"}


def test_polynomial_decay_must_end_below_the_learning_rate():
    with pytest.raises(ArgsError, match="polynomial_decay_schedule_lr_end .* must be smaller"):
        learning_rates(
            scheduler="polynomial_decay_schedule_with_warmup", polynomial_decay_schedule_lr_end=2
        )


def test_adafactor_takes_simpletransformers_options():
    model = torch.nn.Linear(2, 2)
    fixed = make_args(
        {
            "optimizer": "Adafactor",
            "adafactor_relative_step": False,
            "adafactor_warmup_init": False,
            "adafactor_beta1": 0.9,
            "adafactor_clip_threshold": 0.5,
            "adafactor_eps": ["1e-29", 1e-3],  # a list, as YAML gives it (1e-29 as a string)
        }
    )
    optimizer = make_optimizer(model, fixed, torch.device("cpu"))
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, Adafactor)
    assert group["lr"] == fixed.learning_rate and group["beta1"] == 0.9
    assert group["clip_threshold"] == 0.5 and group["eps"] == (1e-29, 1e-3)
    # The simpletransformers defaults: Adafactor's own relative step, no learning rate.
    relative = make_args({"optimizer": "Adafactor"})
    assert make_optimizer(model, relative, torch.device("cpu")).defaults["lr"] is None
    rates = learning_rates(optimizer="Adafactor", scheduler="cosine_schedule_with_warmup")
    assert rates[2] > rates[1] > 0  # warmup_init: the relative step grows step by step
    with pytest.raises(ArgsError, match="adafactor_warmup_init=True needs"):
        make_args({"optimizer": "Adafactor", "adafactor_relative_step": False})


def train_then_resume(checkpoint, data, out, options, resume_at: str, **files):
    """The final weights of a run, and of the same run resumed from its ``resume_at``."""
    args = {**BASE, "save_steps": 3, "output_dir": str(out), **options}
    model = ConvAIModel("gpt2", checkpoint, use_cuda=False, args=args)
    _, details = model.train_model(data, **files)
    whole = load_file(out / "model.safetensors")
    (out / "model.safetensors").unlink()
    again = ConvAIModel("gpt2", checkpoint, use_cuda=False, args=args)
    again.train_model(data, resume_from_checkpoint=out / resume_at, **files)
    return whole, load_file(out / "model.safetensors"), details


def assert_same(resumed: dict, whole: dict) -> None:
    differ = [k for k in whole if not torch.allclose(resumed[k], whole[k], atol=1e-6, rtol=1e-5)]
    assert not differ, f"resumed weights differ: {differ}"


def test_adafactor_with_a_cosine_schedule_resumes_exactly(tiny_checkpoint, dialogs_file, tmp_path):
    options = {
        "optimizer": "Adafactor",
        "adafactor_relative_step": False,
        "adafactor_warmup_init": False,
        "adafactor_beta1": 0.9,
        "scheduler": "cosine_schedule_with_warmup",
        "warmup_steps": 2,
    }
    out = tmp_path / "out"
    whole, resumed, _ = train_then_resume(
        tiny_checkpoint, dialogs_file, out, options, "checkpoint-3"
    )
    assert_same(resumed, whole)
    state = json.loads((out / "checkpoint-9" / "training_state.json").read_text())
    assert "clip_threshold" in state["optimizer"]["param_groups"][0]  # Adafactor's state
    step_9 = 0.5 * (1 + math.cos(math.pi * (9 - 2) / (12 - 2)))
    assert state["scheduler"]["_last_lr"][0] == pytest.approx(5e-3 * step_9)


def test_reduce_on_plateau_halves_the_learning_rate_and_resumes_with_it(
    tiny_checkpoint, dialogs_file, tmp_path, monkeypatch
):
    # An evaluation whose loss rises every time: each one after the first is a plateau.
    losses = iter(range(1, 100))
    monkeypatch.setattr(
        ConvAIModel, "_evaluate", lambda self, *a, **k: {"eval_loss": float(next(losses))}
    )
    options = {
        "scheduler": "reduce_on_plateau",
        "plateau_patience": 2,
        "evaluate_during_training": True,
        "evaluate_during_training_steps": 2,
        "evaluate_each_epoch": False,
        "best_model_dir": str(tmp_path / "best"),
    }
    # checkpoint-6 is written after the evaluation of step 6 (the one that halves the rate).
    whole, resumed, details = train_then_resume(
        tiny_checkpoint,
        dialogs_file,
        tmp_path / "out",
        options,
        "checkpoint-6",
        eval_file=dialogs_file,
    )
    assert_same(resumed, whole)
    # Evaluations at steps 2, 4, ..., 12: halved after the 3rd (step 6) and the 5th (step 10).
    scores = json.loads((tmp_path / "out" / "training_progress_scores.json").read_text())
    assert scores["eval_loss"][:2] == [1.0, 2.0]
    saved = json.loads((tmp_path / "out" / "checkpoint-12" / "training_state.json").read_text())
    curves = saved["training"]["curves"]
    rates = dict(zip(curves["step"], curves["lr"], strict=True))
    assert rates[6] == 5e-3 and rates[7] == 2.5e-3 and rates[11] == 1.25e-3


def test_reduce_on_plateau_needs_evaluation_during_training(
    tiny_checkpoint, dialogs_file, tmp_path
):
    args = {**BASE, "scheduler": "reduce_on_plateau", "output_dir": str(tmp_path / "out")}
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)
    with pytest.raises(TrainingError, match="evaluate_during_training=True"):
        model.train_model(dialogs_file)
