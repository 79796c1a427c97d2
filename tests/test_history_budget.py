"""The history a reply reads: for chat-template models the whole conversation within a token
budget (oldest messages dropped first, the persona never cut for it); for the TransferTransfo
layout simpletransformers' ``max_history`` window, unchanged."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from personachat import ConvAIModel
from personachat.encoding.chat_format import ChatFormat
from personachat.encoding.inputs import (
    TRANSFERTRANSFO,
    Overheads,
    history_within_budget,
    reply_history,
)
from personachat.generation.generate import build_prompt
from tests.tiny_models import build_tiny_chat_model

PERSONA = ["i work as a nurse .", "i have a dog named max ."]
TEXTS = [
    *PERSONA,
    "hi , how are you ?",
    "my cat is called tom .",
    "what is my cat called ?",
    "i am fine , thanks .",
]


def messages(*lengths: int) -> list[list[int]]:
    """Messages of the given token counts, each token naming its message (1, 2, 3 …)."""
    return [[i + 1] * n for i, n in enumerate(lengths)]


def test_the_newest_messages_within_the_budget_are_kept_oldest_dropped_first():
    history = messages(5, 5, 5, 5, 5)  # 5 tokens + 1 speaker token each
    assert history_within_budget(history, TRANSFERTRANSFO, 18) == history[-3:]
    assert history_within_budget(history, TRANSFERTRANSFO, 17) == history[-2:]
    assert history_within_budget(history, TRANSFERTRANSFO, 1000) == history


def test_turn_overheads_count_by_role_counting_back_from_the_message_answered():
    overheads = Overheads(fixed=0, user_turn=3, assistant_turn=1)
    history = messages(4, 4, 4)  # user, bot, user (the last is the user's)
    # newest user 4+3=7, bot 4+1=5, oldest user 4+3=7
    assert history_within_budget(history, overheads, 12) == history[-2:]
    assert history_within_budget(history, overheads, 18) == history[-2:]
    assert history_within_budget(history, overheads, 19) == history


def test_the_message_being_answered_is_kept_even_alone_over_the_budget():
    history = messages(3, 50)
    assert history_within_budget(history, TRANSFERTRANSFO, 10) == [history[-1]]


def test_a_message_is_kept_whole_or_not_at_all():
    history = messages(2, 9, 2)
    kept = history_within_budget(history, TRANSFERTRANSFO, 8)
    assert kept == [history[-1]]  # the 9-token message did not fit: it and older go


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    folder = build_tiny_chat_model(tmp_path_factory.mktemp("chat"), TEXTS)
    return folder


def test_a_chat_template_reply_reads_past_max_history_within_the_token_budget(chat_model):
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    chat = ChatFormat.from_tokenizer(tokenizer)
    history = messages(3, 3, 3, 3, 3, 3, 3, 3, 3)  # nine messages, far past max_history=1
    assert reply_history(history, chat, max_history=1, max_history_tokens=0) == history
    budget = 3 * (3 + chat.overheads.user_turn) + 1
    kept = reply_history(history, chat, max_history=1, max_history_tokens=budget)
    assert kept == history[-len(kept) :] and 2 <= len(kept) < len(history)


def test_transfertransfo_keeps_simpletransformers_window_then_the_budget():
    from personachat.encoding.inputs import SpecialIds

    special = SpecialIds(bos=0, eos=1, speaker1=2, speaker2=3, pad=4)
    history = messages(3, 3, 3, 3, 3, 3, 3)
    assert reply_history(history, special, max_history=1, max_history_tokens=0) == history[-3:]
    assert reply_history(history, special, max_history=1, max_history_tokens=8) == history[-2:]


def test_a_long_conversation_never_cuts_the_persona(chat_model):
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    chat = ChatFormat.from_tokenizer(tokenizer)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    persona = [encode(s) for s in PERSONA]
    history = [encode(TEXTS[2 + i % 4]) for i in range(41)]

    prompt = build_prompt(persona, history, chat, 1, 10_000, max_history_tokens=60)

    ids = prompt["input_ids"]
    system = [*chat.system.prefix, *chat.persona_ids(persona), *chat.system.suffix]
    assert ids[: len(system)] == system  # every persona sentence is there
    assert len(ids) - len(system) - len(chat.assistant.prefix) <= 60
    newest = history[-1]
    end = len(ids) - len(chat.assistant.prefix) - len(chat.user.suffix)
    assert ids[end - len(newest) : end] == newest  # the message answered is last


def test_a_chat_models_reply_reads_a_fact_eight_exchanges_back(chat_model, monkeypatch):
    """max_history=1 alone would keep three messages; the token budget keeps them all."""
    import personachat.generation.generate as generate

    prompts = []
    original = generate.build_prompt_and_prefix

    def recording(*args, **kwargs):
        prompt, prefix = original(*args, **kwargs)
        prompts.append(prompt["input_ids"])
        return prompt, prefix

    monkeypatch.setattr(generate, "build_prompt_and_prefix", recording)
    args = {"max_history": 1, "max_length": 3, "do_sample": False, "input_format": "chat_template"}
    bot = ConvAIModel("llama", chat_model, use_cuda=False, args=args)
    history: list[str] = []
    for message in ["my cat is called tom .", *["hi , how are you ?"] * 7]:
        _, history = bot.interact_single(message, history, PERSONA)

    first = bot._encode("my cat is called tom .")
    last = prompts[-1]
    assert any(last[i : i + len(first)] == first for i in range(len(last)))

    bot.args.max_history_tokens = 20  # a small budget: the first message is out of view
    bot.interact_single("what is my cat called ?", history, PERSONA)
    assert not any(prompts[-1][i : i + len(first)] == first for i in range(len(prompts[-1])))
