"""Training options users rely on: evaluation during training, best model, early stopping,
checkpoints, gradient accumulation, and folders saved by simpletransformers."""

from __future__ import annotations

import json

import pytest
import torch

from personachat import ConvAIModel

BASE = {
    "train_batch_size": 4,
    "learning_rate": 5e-3,
    "manual_seed": 1,
    "silent": True,
    "save_model_every_epoch": False,
}


def test_evaluation_during_training_keeps_the_best_model_and_stops_early(
    tiny_checkpoint, dialogs_file, tmp_path
):
    args = {
        **BASE,
        "num_train_epochs": 6,
        "output_dir": str(tmp_path / "out"),
        "best_model_dir": str(tmp_path / "best"),
        "evaluate_during_training": True,
        "evaluate_during_training_steps": 3,
        "use_early_stopping": True,
        "early_stopping_patience": 1,
        "early_stopping_metric": "hits@1",
        "early_stopping_metric_minimize": False,
        "early_stopping_delta": 0.5,
    }
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)
    global_step, details = model.train_model(dialogs_file, eval_file=dialogs_file)

    # hits@1 cannot improve by 0.5 twice, so training stops after the second evaluation.
    assert details["stopped_early"] is True
    assert global_step == 6
    assert len(details["eval_hits@1"]) == 2
    assert (tmp_path / "best" / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "out" / "training_progress_scores.json").read_text())
    assert saved["eval_language_model_loss"] == details["eval_language_model_loss"]


def test_checkpoints_every_epoch_and_every_save_steps(tiny_checkpoint, dialogs_file, tmp_path):
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={
            **BASE,
            "num_train_epochs": 2,
            "save_model_every_epoch": True,
            "save_steps": 4,
            "output_dir": str(tmp_path / "out"),
        },
    )
    model.train_model(dialogs_file)
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint"))
    assert names == [
        "checkpoint-12",
        "checkpoint-12-epoch-2",
        "checkpoint-4",
        "checkpoint-6-epoch-1",
        "checkpoint-8",
    ]
    for name in names:
        assert (out / name / "model.safetensors").is_file()
        assert (out / name / "model_args.json").is_file()


def test_gradient_accumulation_gives_the_same_weights_as_a_bigger_batch(
    tiny_checkpoint, dialogs_file, tmp_path
):
    def final_weights(batch_size, accumulation, out):
        model = ConvAIModel(
            "gpt2",
            tiny_checkpoint,
            use_cuda=False,
            args={
                **BASE,
                "num_train_epochs": 1,
                "train_batch_size": batch_size,
                "gradient_accumulation_steps": accumulation,
                "output_dir": str(tmp_path / out),
                "no_save": True,
            },
        )
        model.train_model(dialogs_file)
        return model.model.transformer.wte.weight.detach().clone(), model

    # The same seed shuffles the same way; every batch has the same number of LM tokens here
    # (each gold reply is one persona value), so mean-of-means equals the big-batch mean.
    big, _ = final_weights(8, 1, "big")
    small, _ = final_weights(4, 2, "small")
    assert torch.allclose(big, small, atol=1e-5)


@pytest.mark.parametrize("max_steps, epochs, expected", [(4, 5, 4), (9, 1, 9), (-1, 2, 12)])
def test_max_steps_overrides_the_number_of_epochs(
    tiny_checkpoint, dialogs_file, tmp_path, max_steps, epochs, expected
):
    # 12 dialogs x 2 utterances in batches of 4: 6 steps an epoch. As in simpletransformers,
    # max_steps > 0 stops there, mid-epoch or after as many epochs as it needs.
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={
            **BASE,
            "num_train_epochs": epochs,
            "max_steps": max_steps,
            "output_dir": str(tmp_path / "out"),
            "no_save": True,
        },
    )
    global_step, _ = model.train_model(dialogs_file)
    assert global_step == expected


def test_a_folder_saved_by_simpletransformers_loads(tiny_checkpoint, tmp_path):
    """simpletransformers saved pytorch_model.bin, vocab.json/merges.txt and its own args."""
    from transformers import GPT2DoubleHeadsModel, GPT2TokenizerFast

    folder = tmp_path / "st_model"
    model = GPT2DoubleHeadsModel.from_pretrained(tiny_checkpoint)
    folder.mkdir()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # the pickle format of old
    tokenizer = GPT2TokenizerFast.from_pretrained(tiny_checkpoint)
    tokenizer.backend_tokenizer.model.save(str(folder))  # vocab.json + merges.txt
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "additional_special_tokens": ["<speaker1>", "<speaker2>"],
            }
        )
    )
    (folder / "model_args.json").write_text(
        json.dumps(
            {
                "model_class": "ConvAIModel",
                "num_train_epochs": 5,
                "train_batch_size": 6,
                "max_history": 3,
                "wandb_project": None,
                "use_multiprocessing": True,
                "process_count": 6,
                "n_gpu": 1,
                "manual_seed": None,
            }
        )
    )
    assert (folder / "pytorch_model.bin").is_file()

    # Its weights are a pickle: loaded only when the caller vouches for the folder.
    loaded = ConvAIModel("gpt2", folder, use_cuda=False, trust_remote_pickle=True)
    assert loaded.args.max_history == 3 and loaded.args.train_batch_size == 6
    reply, _ = loaded.interact_single("hi", [], ["i like tea ."])
    assert isinstance(reply, str)


@pytest.mark.parametrize(
    "bad", [{"train_batch_size": 0}, {"min_length": 30, "max_length": 5}, {"top_p": 2.0}]
)
def test_invalid_option_values_fail_before_any_work(tiny_checkpoint, bad):
    with pytest.raises(ValueError):
        ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=bad)
