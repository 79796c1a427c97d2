"""The scratch model's LM pretraining on whole dialogs."""

from __future__ import annotations

import pytest

from personachat.encoding.inputs import SpecialIds
from personachat.model.loading import load_model_and_tokenizer
from personachat.model.pretrain import dialog_sequences, pretrain_language_model
from personachat.model.scratch import ScratchConfig, build_scratch_checkpoint, dialog_texts

from .conftest import make_dialogs


def test_a_dialog_becomes_persona_then_every_turn_with_the_bot_last(tiny_checkpoint):
    model, tokenizer = load_model_and_tokenizer("gpt2", tiny_checkpoint)
    special = SpecialIds.from_tokenizer(tokenizer)
    dialog = make_dialogs(1)[0]
    [sequence] = dialog_sequences([dialog], tokenizer, special, max_tokens=128)

    text = tokenizer.decode(sequence["input_ids"])
    assert text == (
        "<bos>i work as a nurse .i have a cat .<speaker1>hi , what do you do ?"
        "<speaker2>i am a nurse .<speaker1>any pets ?<speaker2>i have a cat .<eos>"
    )
    assert len(sequence["token_type_ids"]) == len(sequence["input_ids"])


def test_pretraining_lowers_the_loss_and_is_recorded_in_the_saved_config(tmp_path):
    dialogs = make_dialogs(12)
    config = ScratchConfig(
        vocab_size=300,
        n_layer=1,
        n_embd=32,
        n_head=2,
        n_positions=128,
        pretrain_steps=40,
        pretrain_batch_size=8,
        pretrain_learning_rate=3e-3,
    )
    folder = build_scratch_checkpoint(
        tmp_path / "m", dialog_texts(dialogs), config, dialogs=dialogs, silent=True
    )
    model, tokenizer = load_model_and_tokenizer("gpt2", folder)
    assert model.config.scratch["pretrain_steps"] == 40

    losses = pretrain_language_model(model, tokenizer, dialogs, steps=10, batch_size=8, silent=True)
    fresh_model, _ = load_model_and_tokenizer(
        "gpt2",
        build_scratch_checkpoint(
            tmp_path / "fresh",
            dialog_texts(dialogs),
            ScratchConfig(vocab_size=300, n_layer=1, n_embd=32, n_head=2, n_positions=128),
        ),
    )
    fresh = pretrain_language_model(
        fresh_model, tokenizer, dialogs, steps=1, batch_size=8, silent=True
    )
    assert sum(losses) / len(losses) < 0.75 * fresh[0]  # it already knows these dialogs


def test_pretraining_without_dialogs_is_refused(tmp_path):
    config = ScratchConfig(vocab_size=300, n_layer=1, n_embd=32, pretrain_steps=5)
    with pytest.raises(ValueError, match="training dialogs"):
        build_scratch_checkpoint(tmp_path / "m", ["some text ."] * 10, config)
