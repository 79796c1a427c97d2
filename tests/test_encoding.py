"""From dialogs to model inputs (personachat.encoding.inputs): the TransferTransfo layout.

Most tests work on plain token-id lists with made-up special ids, the way the pipeline's pure
functions are meant to be used; only the tokenizer tests load the tiny checkpoint.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from personachat.encoding.dataset import (
    PersonaChatDataset,
    collate,
    dataset_from_dialogs,
    encode_dialogs,
)
from personachat.encoding.inputs import (
    IGNORE_INDEX,
    EncodingError,
    SpecialIds,
    TextEncoder,
    build_example,
    build_input_from_segments,
    check_num_candidates,
    persona_orders,
    truncate_to_fit,
)
from personachat.model.scratch import train_tokenizer

from .conftest import make_dialogs

# Special ids far from the ordinary ids used below, so a misplaced one is easy to spot.
BOS, EOS, S1, S2, PAD = 900, 901, 902, 903, 904
SPECIAL = SpecialIds(bos=BOS, eos=EOS, speaker1=S1, speaker2=S2, pad=PAD)

PERSONA = [[1, 2], [3]]
REPLY = [20, 21]


# --- build_input_from_segments --------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "expected_ids", "expected_types"),
    [
        # One user message: it is <speaker1>, the reply <speaker2>.
        (
            [[10, 11]],
            [BOS, 1, 2, 3, S1, 10, 11, S2, 20, 21, EOS],
            [S2, S2, S2, S2, S1, S1, S1, S2, S2, S2, S2],
        ),
        # Two messages: the older one was the bot's own (<speaker2>).
        (
            [[10], [11]],
            [BOS, 1, 2, 3, S2, 10, S1, 11, S2, 20, 21, EOS],
            [S2, S2, S2, S2, S2, S2, S1, S1, S2, S2, S2, S2],
        ),
        # Three messages: user, bot, user, then the bot's reply.
        (
            [[10], [11], [12]],
            [BOS, 1, 2, 3, S1, 10, S2, 11, S1, 12, S2, 20, 21, EOS],
            [S2, S2, S2, S2, S1, S1, S2, S2, S1, S1, S2, S2, S2, S2],
        ),
    ],
    ids=["history-1", "history-2", "history-3"],
)
def test_layout_alternates_speakers_back_from_the_reply(history, expected_ids, expected_types):
    example = build_input_from_segments(PERSONA, history, REPLY, SPECIAL)

    assert example["input_ids"] == expected_ids
    assert example["token_type_ids"] == expected_types
    assert example["mc_token_ids"] == len(expected_ids) - 1


def test_layout_without_history_is_persona_then_reply():
    example = build_input_from_segments(PERSONA, [], REPLY, SPECIAL)

    assert example["input_ids"] == [BOS, 1, 2, 3, S2, 20, 21, EOS]
    assert example["token_type_ids"] == [S2] * 8


def test_only_the_reply_and_eos_are_labelled():
    example = build_input_from_segments(PERSONA, [[10, 11]], REPLY, SPECIAL, lm_labels=True)

    # [BOS 1 2 3 S1 10 11 S2 | 20 21 EOS]: the reply's own <speaker2> is context, not a target.
    assert example["lm_labels"] == [-100] * 8 + [20, 21, EOS]


def test_unlabelled_positions_use_the_index_cross_entropy_ignores():
    assert IGNORE_INDEX == -100


def test_a_distractor_has_no_labels():
    example = build_input_from_segments(PERSONA, [[10, 11]], REPLY, SPECIAL, lm_labels=False)

    assert example["lm_labels"] == [-100] * len(example["input_ids"])


def test_a_prompt_for_generation_ends_with_the_reply_speaker():
    example = build_input_from_segments(PERSONA, [[10]], [], SPECIAL, with_eos=False)

    assert example["input_ids"] == [BOS, 1, 2, 3, S1, 10, S2]
    assert example["token_type_ids"][-1] == S2


# --- build_example --------------------------------------------------------------------------


def test_build_example_keeps_the_last_2_max_history_plus_1_messages():
    history = [[10], [11], [12], [13], [14]]
    example = build_example(
        PERSONA, history, [[30], [31]], SPECIAL, num_candidates=2, max_history=1, max_tokens=512
    )

    for candidate in example["candidates"]:
        ids = candidate["input_ids"]
        assert 10 not in ids and 11 not in ids
        # The kept messages, in order, still alternate so the newest one is the user's.
        assert ids[4:10] == [S1, 12, S2, 13, S1, 14]


def test_build_example_with_max_history_0_keeps_only_the_last_message():
    example = build_example(
        PERSONA,
        [[10], [11], [12]],
        [[30], [31]],
        SPECIAL,
        num_candidates=2,
        max_history=0,
        max_tokens=512,
    )

    assert example["candidates"][0]["input_ids"] == [BOS, 1, 2, 3, S1, 12, S2, 30, EOS]


def test_build_example_uses_the_last_candidates_with_gold_last():
    candidates = [[30], [31], [32], [33]]  # the gold reply is the last one, [33]
    example = build_example(
        PERSONA, [[10]], candidates, SPECIAL, num_candidates=3, max_history=2, max_tokens=512
    )

    replies = [c["input_ids"][-2] for c in example["candidates"]]
    assert replies == [31, 32, 33]
    assert example["mc_label"] == 2
    labelled = [any(x != -100 for x in c["lm_labels"]) for c in example["candidates"]]
    assert labelled == [False, False, True]
    assert example["candidates"][-1]["lm_labels"][-2:] == [33, EOS]


@pytest.mark.parametrize("num_candidates", [1, 2, 5])
def test_mc_label_points_at_the_gold_candidate(num_candidates):
    candidates = [[30 + i] for i in range(5)]
    example = build_example(
        PERSONA, [[10]], candidates, SPECIAL, num_candidates, max_history=2, max_tokens=512
    )

    assert len(example["candidates"]) == num_candidates
    assert example["mc_label"] == num_candidates - 1
    assert example["candidates"][example["mc_label"]]["input_ids"][-2] == 34


# --- truncate_to_fit ------------------------------------------------------------------------


def _input_length(persona, history, reply) -> int:
    return len(build_input_from_segments(persona, history, reply, SPECIAL)["input_ids"])


TRUNCATION_PERSONA = [[1, 2], [3, 4]]
TRUNCATION_HISTORY = [[10, 11], [12, 13]]
# Full input: <bos> 1 2 3 4 <s1> 10 11 <s2> 12 13 <s2> 20 21 <eos> = 15 tokens.


@pytest.mark.parametrize(
    ("max_tokens", "persona", "history", "reply"),
    [
        (15, [[1, 2], [3, 4]], [[10, 11], [12, 13]], [20, 21]),  # fits: unchanged
        (12, [[1, 2], [3, 4]], [[12, 13]], [20, 21]),  # oldest message goes first
        (9, [[1, 2], [3, 4]], [], [20, 21]),  # then the rest of the history
        (7, [[1, 2]], [], [20, 21]),  # then persona sentences from the end
        (5, [], [], [20, 21]),  # the reply is intact while anything else can go
        (4, [], [], [20]),  # last resort: cut the reply, keeping its start
        (3, [], [], []),
    ],
)
def test_truncation_order(max_tokens, persona, history, reply):
    result = truncate_to_fit(TRUNCATION_PERSONA, TRUNCATION_HISTORY, REPLY, max_tokens)

    assert result == (persona, history, reply)
    assert _input_length(*result) <= max_tokens


def test_truncation_does_not_modify_its_arguments():
    persona, history = [[1, 2], [3, 4]], [[10, 11], [12, 13]]
    truncate_to_fit(persona, history, REPLY, 4)

    assert persona == [[1, 2], [3, 4]] and history == [[10, 11], [12, 13]]


token_lists = st.lists(st.lists(st.integers(0, 99), min_size=0, max_size=30), max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    persona=token_lists,
    history=token_lists,
    reply=st.lists(st.integers(0, 99), max_size=60),
    max_tokens=st.integers(0, 200),
)
def test_truncation_always_fits_and_only_drops_what_it_must(persona, history, reply, max_tokens):
    new_persona, new_history, new_reply = truncate_to_fit(persona, history, reply, max_tokens)

    # Pieces are only removed from the documented ends.
    assert list(new_history) == history[len(history) - len(new_history) :]
    assert list(new_persona) == persona[: len(new_persona)]
    assert list(new_reply) == reply[: len(new_reply)]
    if new_persona != persona:
        assert new_history == []
    if list(new_reply) != reply:
        assert new_persona == [] and new_history == []
    # <bos>, the reply's speaker and <eos> are the floor; above it the result always fits.
    if max_tokens >= 3:
        assert _input_length(new_persona, new_history, new_reply) <= max_tokens
    if _input_length(persona, history, reply) <= max_tokens:
        assert (new_persona, new_history, list(new_reply)) == (persona, history, reply)


# --- persona permutations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_sentences", "permutations", "expected_count"),
    [(3, 1, 1), (3, 4, 4), (3, 6, 6), (3, 50, 6), (4, 24, 24), (2, 5, 2), (1, 3, 1), (0, 2, 1)],
)
def test_persona_orders(n_sentences, permutations, expected_count):
    orders = persona_orders(n_sentences, permutations, random.Random(0))

    assert orders[0] == tuple(range(n_sentences))
    assert len(orders) == expected_count == min(permutations, math.factorial(n_sentences))
    assert len(set(orders)) == len(orders)
    assert all(sorted(order) == list(range(n_sentences)) for order in orders)


def _encoded_dialog(n_persona: int, n_utterances: int, first_persona_id: int = 100) -> dict:
    return {
        "personality": [[first_persona_id + i] for i in range(n_persona)],
        "utterances": [
            {"history": [[10 + u]], "candidates": [[30], [31]]} for u in range(n_utterances)
        ],
    }


def test_dataset_has_one_item_per_utterance_and_persona_order():
    dialogs = [
        _encoded_dialog(3, 2, first_persona_id=100),
        _encoded_dialog(3, 4, first_persona_id=200),
    ]
    dataset = PersonaChatDataset(
        dialogs,
        SPECIAL,
        num_candidates=2,
        max_history=2,
        max_tokens=512,
        personality_permutations=3,
    )

    assert len(dataset) == (2 + 4) * 3
    personas = Counter(
        tuple(dataset[i]["candidates"][0]["input_ids"][1:4]) for i in range(len(dataset))
    )
    # Each dialog is seen in 3 persona orders, each order once per utterance.
    assert sorted(personas.values()) == [2, 2, 2, 4, 4, 4]
    assert personas[(100, 101, 102)] == 2 and personas[(200, 201, 202)] == 4


def test_dataset_permutations_are_capped_by_the_possible_orders():
    dataset = PersonaChatDataset(
        [_encoded_dialog(2, 3)],
        SPECIAL,
        num_candidates=2,
        max_history=2,
        max_tokens=512,
        personality_permutations=5,
    )

    assert len(dataset) == 3 * 2  # only 2! orders of two sentences exist


# --- check_num_candidates -------------------------------------------------------------------


def test_too_few_candidates_names_where_and_how_to_fix():
    dialogs = make_dialogs(3)
    dialogs[1]["utterances"][0]["candidates"] = ["only the gold reply ."]

    with pytest.raises(EncodingError) as err:
        check_num_candidates(dialogs, 2, "train.json")

    message = str(err.value)
    assert "train.json" in message
    assert "dialog 1 utterance 0 has 1" in message
    assert "num_candidates to at most 1" in message
    assert "dialog 0" not in message and "dialog 2" not in message


def test_enough_candidates_pass():
    check_num_candidates(make_dialogs(3), 2, "train.json")


# --- collate --------------------------------------------------------------------------------


def _example(*lengths: int) -> dict:
    """An example whose candidates' inputs have the given lengths (gold last)."""
    candidates = []
    for j, n in enumerate(lengths):
        gold = j == len(lengths) - 1
        candidates.append(
            {
                "input_ids": [j + 1] * n,
                "token_type_ids": [S2] * n,
                "mc_token_ids": n - 1,
                "lm_labels": ([-100] * (n - 1) + [7]) if gold else [-100] * n,
            }
        )
    return {"candidates": candidates, "mc_label": len(lengths) - 1}


def test_collate_pads_each_batch_to_its_own_longest_input():
    short_batch = collate([_example(3, 5), _example(4, 2)], pad_id=PAD)
    long_batch = collate([_example(9, 2), _example(3, 3)], pad_id=PAD)

    assert short_batch["input_ids"].shape == (2, 2, 5)
    assert long_batch["input_ids"].shape == (2, 2, 9)
    for key in ("token_type_ids", "lm_labels"):
        assert short_batch[key].shape == (2, 2, 5)
    assert short_batch["mc_token_ids"].tolist() == [[2, 4], [3, 1]]
    assert short_batch["mc_labels"].tolist() == [1, 1]


def test_collate_pads_inputs_with_pad_and_labels_with_ignore_index():
    batch = collate([_example(2, 4)], pad_id=PAD)

    assert batch["input_ids"][0].tolist() == [[1, 1, PAD, PAD], [2, 2, 2, 2]]
    assert batch["token_type_ids"][0, 0].tolist() == [S2, S2, PAD, PAD]
    assert batch["lm_labels"][0].tolist() == [[-100] * 4, [-100, -100, -100, 7]]


def test_collate_refuses_mixed_candidate_counts():
    with pytest.raises(EncodingError, match="same number of candidates"):
        collate([_example(3, 3), _example(3, 3, 3)], pad_id=PAD)


# --- TextEncoder and tokenization -----------------------------------------------------------


class CountingTokenizer:
    """Wraps a real tokenizer and records every string it is asked to tokenize."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.seen: list[str] = []

    def __call__(self, texts, **kwargs):
        batch = [texts] if isinstance(texts, str) else list(texts)
        self.seen += batch
        return self.tokenizer(texts, **kwargs)


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return AutoTokenizer.from_pretrained(tiny_checkpoint)


def test_each_distinct_string_is_tokenized_once(tokenizer):
    counting = CountingTokenizer(tokenizer)
    encoder = TextEncoder(counting)
    dialogs = make_dialogs(6)  # persona sentences and history lines repeat across dialogs

    encoded = encode_dialogs(dialogs, encoder)
    encoder("i have a cat .")
    encoder("hi , what do you do ?")

    distinct = {s for d in dialogs for s in d["personality"]} | {
        s for d in dialogs for u in d["utterances"] for s in u["history"] + u["candidates"]
    }
    assert Counter(counting.seen) == Counter(distinct)
    first = encoded[0]["utterances"][1]
    assert (
        first["history"][0]
        == tokenizer("hi , what do you do ?", add_special_tokens=False)["input_ids"]
    )
    assert first["candidates"][-1] == encoder("i have a cat .")


def test_lowercase_encoder_lowercases_before_tokenizing(tokenizer):
    encoder = TextEncoder(tokenizer, lowercase=True)

    assert (
        encoder("I Have A CAT .")
        == tokenizer("i have a cat .", add_special_tokens=False)["input_ids"]
    )
    assert TextEncoder(tokenizer)("I Have A CAT .") != encoder("I Have A CAT .")


def test_special_ids_come_from_the_tokenizer(tokenizer):
    special = SpecialIds.from_tokenizer(tokenizer)

    assert special == SpecialIds(
        *tokenizer.convert_tokens_to_ids(["<bos>", "<eos>", "<speaker1>", "<speaker2>", "<pad>"])
    )
    assert special.stop_ids == {
        special.bos,
        special.eos,
        special.speaker1,
        special.speaker2,
        special.pad,
    }


def test_a_tokenizer_without_the_special_tokens_is_refused_with_the_fix():
    bare = train_tokenizer(["i have a cat ."], vocab_size=280)

    with pytest.raises(EncodingError, match=r"add_special_tokens_\(model, tokenizer\)") as err:
        SpecialIds.from_tokenizer(bare)
    assert "<speaker1>" in str(err.value)


def test_dataset_from_dialogs_checks_candidates_before_tokenizing(tokenizer):
    special = SpecialIds.from_tokenizer(tokenizer)
    dataset = dataset_from_dialogs(
        make_dialogs(3), tokenizer, special, num_candidates=2, max_history=2, max_tokens=128
    )

    assert len(dataset) == 3 * 2
    with pytest.raises(EncodingError, match="num_candidates=3"):
        dataset_from_dialogs(
            make_dialogs(3),
            tokenizer,
            special,
            num_candidates=3,
            max_history=2,
            max_tokens=128,
            source="dialogs.json",
        )


def test_a_bounded_text_encoder_forgets_the_oldest_strings_first(tiny_checkpoint):
    from personachat.model.loading import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer("gpt2", tiny_checkpoint)
    encoder = TextEncoder(tokenizer, max_entries=3)
    texts = [f"i have {n} cats ." for n in range(6)]
    ids = [encoder(t) for t in texts]
    assert list(encoder._cache) == texts[-3:]
    assert encoder(texts[0]) == ids[0]  # forgotten strings are simply tokenized again
    encoder.prime(texts)  # the new strings of a batch are never the ones dropped
    assert list(encoder._cache) == texts[1:4]
    assert encoder(texts[5]) == ids[5]
