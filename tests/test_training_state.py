"""The loop's state and hooks (issue 25): a checkpoint saves exactly a ``TrainingState`` and
gives it back; the caller's ``TrainingHooks`` are called at their points of a run, and early
stopping is decided once, by the evaluation the hook returns."""

from __future__ import annotations

import json

import torch

from personachat import ConvAIModel
from personachat.train import checkpoints
from personachat.train.loop import train
from personachat.train.state import TrainingHooks, TrainingState

ARGS = {
    "train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "num_train_epochs": 3,
    "learning_rate": 5e-3,
    "manual_seed": 1,
    "logging_steps": 1,
    "max_length": 5,
    "save_model_every_epoch": False,
    "silent": True,
}


def test_a_training_state_survives_its_json_round_trip():
    state = TrainingState(global_step=4, epoch=1, batches_done=2, best_metric=2.5, best_step=3)
    state.record({"global_step": 4, "train_loss": 5.25})
    state.record_curve({"step": 4, "loss": 5.25})
    again = TrainingState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    assert again.position() == (4, 1, 2)


def test_an_older_versions_state_loads_without_the_fields_it_no_longer_knows():
    saved = TrainingState(global_step=7, stopped_early=True).to_dict()
    saved["a_field_of_another_version"] = 1
    state = TrainingState.from_dict(saved)
    assert (state.global_step, state.stopped_early) == (7, True)


def test_a_checkpoint_holds_the_training_state_of_its_step(tiny_checkpoint, dialogs_file, tmp_path):
    out = tmp_path / "out"
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={**ARGS, "output_dir": str(out), "save_steps": 2},
    )
    model.train_model(dialogs_file)
    folder = out / "checkpoint-4"
    saved = json.loads((folder / checkpoints.STATE_FILE).read_text())["training"]
    state = TrainingState.from_dict(saved)
    assert state.to_dict() == saved  # nothing more, nothing less
    # 24 utterances, 4 per micro-batch, 2 per step: 3 steps an epoch. Step 4 is the first
    # step of the second epoch, 2 micro-batches into it.
    assert state.position() == (4, 1, 2)
    assert state.history["global_step"] == [1, 2, 3, 4]
    assert state.train_seconds > 0
    marker = checkpoints.read_marker(folder)
    assert (marker["global_step"], marker["epoch"], marker["batches_done"]) == state.position()


def test_hooks_see_every_step_every_evaluation_and_every_epoch(
    tiny_checkpoint, dialogs_file, tmp_path
):
    args = {
        **ARGS,
        "output_dir": str(tmp_path / "out"),
        "no_save": True,
        "evaluate_during_training": True,
        "evaluate_during_training_steps": 2,
        "evaluate_each_epoch": False,
        "use_early_stopping": True,
        "early_stopping_patience": 2,
    }
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)
    dataset = model._dataset(model._load(dialogs_file, "train", None), "dialogs", training=True)
    steps, evaluations, headings = [], [], []

    def on_evaluate() -> dict:
        evaluations.append(len(steps))
        return {"eval_loss": float(len(evaluations))}  # worse every time: never improves

    hooks = TrainingHooks(
        on_evaluate=on_evaluate,
        on_epoch_end=lambda heading, fresh=False: headings.append((heading, fresh)),
        on_step_end=lambda step, values: steps.append((step, values)),
    )
    global_step, details = train(
        model.model,
        model.tokenizer,
        dataset,
        model.args,
        torch.device("cpu"),
        args["output_dir"],
        hooks,
    )

    # Evaluations at steps 2, 4 and 6; the best is the first, and after two evaluations
    # without improvement (patience 2) training stops at step 6, within the second epoch.
    assert evaluations == [2, 4, 6]
    assert (global_step, details["stopped_early"]) == (6, True)
    assert details["eval_loss"] == [1.0, 2.0, 3.0]
    assert [step for step, _ in steps] == [1, 2, 3, 4, 5, 6]
    # logging_steps=1: the history's training loss is each step's loss, as the hook saw it.
    assert [values["loss"] for _, values in steps] == details["train_loss"]
    assert all(values["lr"] > 0 for _, values in steps)
    assert headings == [("Before training (step 0)", True), ("After epoch 1 (step 3)", False)]
