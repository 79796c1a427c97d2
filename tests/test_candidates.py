"""Sampling distractor candidates from other dialogs (personachat.data.candidates)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personachat.data.candidates import add_distractors, normalise
from personachat.data.dialogs import DataError


def gold_only(*dialog_replies: list[str]) -> list[dict]:
    """One dialog per list of replies; each utterance has only its gold reply."""
    return [
        {
            "personality": [f"persona {d} ."],
            "utterances": [
                {"history": [f"message {d}.{k}"], "candidates": [reply]}
                for k, reply in enumerate(replies)
            ],
        }
        for d, replies in enumerate(dialog_replies)
    ]


def test_distractors_come_from_other_dialogs_and_the_gold_stays_last():
    dialogs = gold_only(
        ["i am a nurse .", "i have a cat ."],
        ["i fly planes ."],
        ["i bake bread .", "i like jazz ."],
    )

    result, generated = add_distractors(dialogs, num_candidates=3, seed=0)

    assert generated == 2 * 5
    for dialog, original in zip(result, dialogs, strict=True):
        own = {u["candidates"][-1] for u in original["utterances"]}
        for utterance, before in zip(dialog["utterances"], original["utterances"], strict=True):
            assert len(utterance["candidates"]) == 3
            assert utterance["candidates"][-1] == before["candidates"][-1]
            assert not own & set(utterance["candidates"][:-1])
    assert dialogs == gold_only(
        ["i am a nurse .", "i have a cat ."],
        ["i fly planes ."],
        ["i bake bread .", "i like jazz ."],
    ), "input not modified"


def test_a_copy_of_the_gold_reply_in_another_dialog_is_never_a_distractor():
    dialogs = gold_only(["Hello !"], ["  hello   ! "], ["i like tea ."], ["i like coffee ."])
    result, _ = add_distractors(dialogs, num_candidates=3, seed=1)
    assert result[0]["utterances"][0]["candidates"][:-1] in (
        ["i like tea .", "i like coffee ."],
        ["i like coffee .", "i like tea ."],
    )


def test_utterances_with_enough_candidates_are_untouched_and_existing_ones_are_kept():
    dialogs = gold_only(["a ."], ["b ."], ["c ."], ["d ."])
    dialogs[0]["utterances"][0]["candidates"] = ["B .", "a ."]  # an existing distractor
    dialogs[1]["utterances"][0]["candidates"] = ["x .", "y .", "b ."]

    result, generated = add_distractors(dialogs, num_candidates=3, seed=0)

    assert result[1] == dialogs[1]
    first = result[0]["utterances"][0]["candidates"]
    assert first[1:] == ["B .", "a ."] and first[0] in ("c .", "d .")  # never "b ." again
    assert generated == 1 + 2 + 2


def test_same_seed_same_distractors_other_seed_other_distractors():
    dialogs = gold_only(*[[f"reply {d}.{k} ." for k in range(3)] for d in range(30)])
    first, _ = add_distractors(dialogs, 5, seed=3)
    again, _ = add_distractors(dialogs, 5, seed=3)
    other, _ = add_distractors(dialogs, 5, seed=4)
    assert first == again
    assert first != other


def test_too_few_distinct_replies_is_a_clear_error():
    dialogs = gold_only(["a ."], ["b ."], ["b ."])
    with pytest.raises(DataError) as err:
        add_distractors(dialogs, num_candidates=3)
    message = str(err.value)
    assert "too few distinct replies" in message
    assert "the corpus has 2 distinct gold replies" in message
    assert "lower num_candidates to at most 2" in message
    assert add_distractors(dialogs, num_candidates=2)[1] == 3


def test_a_single_dialog_has_no_other_dialog_to_sample_from():
    with pytest.raises(DataError, match="lower num_candidates to at most 1"):
        add_distractors(gold_only(["a .", "b ."]), num_candidates=2)


# --------------------------------------------------------------------------- properties

_REPLIES = st.sampled_from(
    [
        "hi .",
        "Hi . ",
        "hello",
        "HELLO",
        "i like tea .",
        "tea",
        "no",
        "yes",
        "ok",
        "привет 🙂",
        "Привет 🙂",
        " ",
        "maybe",
        "sure",
    ]
)
_DIALOGS = st.lists(
    st.lists(st.lists(_REPLIES, min_size=1, max_size=3), min_size=1, max_size=4),
    min_size=1,
    max_size=6,
).map(
    lambda dialogs: [
        {
            "personality": ["p ."],
            "utterances": [{"history": ["m"], "candidates": list(c)} for c in utterances],
        }
        for utterances in dialogs
    ]
)


def _available(dialogs: list[dict], d: int, candidates: list[str]) -> int:
    """Distinct gold replies a utterance of dialog d may use: the oracle for the sampler."""
    pool = {normalise(u["candidates"][-1]) for dialog in dialogs for u in dialog["utterances"]} - {
        ""
    }
    own = {normalise(u["candidates"][-1]) for u in dialogs[d]["utterances"]}
    return len(pool - own - {normalise(c) for c in candidates})


@settings(max_examples=150, deadline=None)
@given(_DIALOGS, st.integers(1, 5), st.integers(0, 2**32))
def test_sampler_properties(dialogs, num_candidates, seed):
    original = copy.deepcopy(dialogs)
    feasible = all(
        len(u["candidates"]) >= num_candidates
        or _available(dialogs, d, u["candidates"]) >= num_candidates - len(u["candidates"])
        for d, dialog in enumerate(dialogs)
        for u in dialog["utterances"]
    )
    try:
        result, generated = add_distractors(dialogs, num_candidates, seed)
    except DataError as err:
        assert not feasible, err
        return
    assert feasible
    assert dialogs == original
    assert (result, generated) == add_distractors(dialogs, num_candidates, seed)

    golds = [{normalise(u["candidates"][-1]) for u in dialog["utterances"]} for dialog in dialogs]
    added_total = 0
    for d, (dialog, before) in enumerate(zip(result, dialogs, strict=True)):
        others = set().union(*(g for e, g in enumerate(golds) if e != d))
        for utterance, old in zip(dialog["utterances"], before["utterances"], strict=True):
            candidates, old_candidates = utterance["candidates"], old["candidates"]
            added = candidates[: len(candidates) - len(old_candidates)]
            assert candidates[len(added) :] == old_candidates  # gold last, others kept
            assert len(candidates) == max(num_candidates, len(old_candidates))
            gold = normalise(old_candidates[-1])
            keys = [normalise(a) for a in added]
            assert gold not in keys
            assert not set(keys) & golds[d]  # never from the same dialog
            assert set(keys) <= others  # always another dialog's gold reply
            assert len(set(keys)) == len(keys)
            assert not set(keys) & {normalise(c) for c in old_candidates}
            added_total += len(added)
    assert generated == added_total
