"""Training on whole conversations (``train_whole_conversations``): each conversation is one
example whose labels cover every bot turn, as chat models are fine-tuned, instead of one
example per reply that reads the same context again."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from personachat import ConvAIModel
from personachat.encoding.chat_format import ChatFormat
from personachat.encoding.examples import whole_conversations
from personachat.encoding.inputs import IGNORE_INDEX, SpecialIds, build_input_from_segments
from tests.conftest import make_dialogs
from tests.tiny_models import build_tiny_chat_model

TEXTS = [
    "i work as a nurse .",
    "hi , what do you do ?",
    "i am a nurse .",
    "any pets ?",
    "i have a cat .",
]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("whole"), TEXTS)


def labelled_pieces(example: dict) -> list[list[int]]:
    """The runs of consecutive labelled tokens of a built input."""
    pieces, current = [], []
    for label in example["lm_labels"]:
        if label == IGNORE_INDEX:
            if current:
                pieces.append(current)
            current = []
        else:
            current.append(label)
    return pieces + ([current] if current else [])


def test_a_chat_template_input_labels_every_bot_turn_of_the_history_with_its_end_of_turn(
    chat_model,
):
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    chat = ChatFormat.from_tokenizer(tokenizer)
    persona = [tokenizer.encode(TEXTS[0])]
    user1, bot1, user2, bot2 = (tokenizer.encode(t) for t in TEXTS[1:])
    example = chat.build(persona, [user1, bot1, user2], bot2, lm_labels=True, history_labels=True)
    end = chat.end_of_turn
    assert labelled_pieces(example) == [[*bot1, end], [*bot2, end]]
    # the labels sit on the tokens they name: the input holds them at the same places
    for position, label in enumerate(example["lm_labels"]):
        assert label in (IGNORE_INDEX, example["input_ids"][position])

    plain = chat.build(persona, [user1, bot1, user2], bot2, lm_labels=True)
    assert labelled_pieces(plain) == [[*bot2, end]]
    assert plain["input_ids"] == example["input_ids"]


def test_a_transfertransfo_input_labels_the_bots_earlier_turns_after_their_speaker_token(
    tiny_checkpoint,
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    special = SpecialIds.from_tokenizer(tokenizer)
    user1, bot1, user2, bot2 = (tokenizer.encode(t) for t in TEXTS[1:])
    example = build_input_from_segments(
        [tokenizer.encode(TEXTS[0])],
        [user1, bot1, user2],
        bot2,
        special,
        lm_labels=True,
        history_labels=True,
    )
    assert labelled_pieces(example) == [bot1, [*bot2, special.eos]]


def test_whole_conversations_keep_each_dialogs_last_utterance_and_lose_no_reply():
    dialogs = make_dialogs(3)
    whole = whole_conversations(dialogs)
    assert [len(d["utterances"]) for d in whole] == [1, 1, 1]
    last = whole[0]["utterances"][0]
    # the earlier gold reply is in the last utterance's history, where it gets its labels
    assert dialogs[0]["utterances"][0]["candidates"][-1] in last["history"]


def test_a_dialog_whose_history_skips_a_reply_keeps_every_utterance():
    dialog = make_dialogs(1)[0]
    dialog["utterances"][1]["history"][1] = "something else was said ."
    assert whole_conversations([dialog]) == [dialog]


@pytest.mark.parametrize("no_cache", [True, False])
def test_training_on_whole_conversations_reads_one_example_per_conversation(
    tmp_path, chat_model, no_cache
):
    dialogs = make_dialogs(6)
    train_file = tmp_path / "train.json"
    train_file.write_text(json.dumps(dialogs), encoding="utf-8")
    args = {
        "input_format": "chat_template",
        "train_whole_conversations": True,
        "num_candidates": 1,
        "mc_coef": 0.0,
        "max_steps": 2,
        "train_batch_size": 2,
        "no_cache": no_cache,
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "out"),
        "best_model_dir": str(tmp_path / "out" / "best"),
        "save_model_every_epoch": False,
        "save_steps": 0,
        "silent": True,
    }
    bot = ConvAIModel("auto", str(chat_model), use_cuda=False, args=args)
    dataset = bot._dataset(bot._load(train_file, "train", None), "train.json", training=True)
    assert len(dataset) == len(dialogs)
    pieces = labelled_pieces(dataset[0]["candidates"][-1])
    assert len(pieces) == 2  # the first reply (in the history) and the last
    bot.train_model(str(train_file))
    assert (tmp_path / "out" / "model_args.json").is_file()


def test_history_labels_keep_one_example_per_reply_and_label_the_bots_turns_in_its_window(
    tmp_path, chat_model
):
    dialogs = make_dialogs(3)
    args = {
        "input_format": "chat_template",
        "train_history_labels": True,
        "num_candidates": 1,
        "no_cache": True,
        "silent": True,
    }
    bot = ConvAIModel("auto", str(chat_model), use_cuda=False, args=args)
    dataset = bot._dataset(dialogs, "dialogs", training=True)
    assert len(dataset) == sum(len(d["utterances"]) for d in dialogs)  # one per reply
    first, second = (dataset[i]["candidates"][-1] for i in (0, 1))
    assert len(labelled_pieces(first)) == 1  # nothing said by the bot before
    assert len(labelled_pieces(second)) == 2  # its first reply, then the gold one
    evaluation = bot._dataset(dialogs, "dialogs")  # not training: the gold reply alone
    assert len(labelled_pieces(evaluation[1]["candidates"][-1])) == 1
