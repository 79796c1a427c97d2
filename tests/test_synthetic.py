"""Tests for personachat.data.synthetic, written as usage examples of the generator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from personachat.data import synthetic
from personachat.data.readers import read_dialogs
from personachat.data.synthetic import (
    SPLITS,
    dumps_dialogs,
    fill,
    generate_dialogs,
    naturalise,
    persona_split,
    split_values,
    write_splits,
)
from personachat.data.synthetic_history import RECALLS, generate_history_dialogs, speaker
from personachat.data.synthetic_prose import (
    NAME_QUESTIONS,
    NAME_REPLIES,
    PROSE,
    character_names,
    generate_prose_dialogs,
)
from personachat.data.synthetic_slots import ACKNOWLEDGEMENTS, PROPER_NOUNS, SLOTS, SMALL_TALK
from personachat.evaluation.persona import mentions
from tests.test_synthetic_prose import card_shape

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


# --- helpers -------------------------------------------------------------------------------


def contains_phrase(text: str, phrase: str) -> bool:
    """True when ``phrase`` occurs in ``text`` as whole words ("tea" is not in "teacher")."""
    return re.search(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", text) is not None


def all_text(dialogs: list[dict]) -> str:
    """Every string of a split (persona, history, candidates), one per line."""
    lines: list[str] = []
    for dialog in dialogs:
        lines += dialog["personality"]
        for utterance in dialog["utterances"]:
            lines += utterance["history"] + utterance["candidates"]
    return "\n".join(lines)


# Every persona sentence the generator can write, mapped back to its (slot, value) fact.
SENTENCE_TO_FACT = {
    fill(template, value): (name, value)
    for name, slot in SLOTS.items()
    for value in slot.values
    for template in slot.persona
}


NATURAL_SENTENCE_TO_FACT = {naturalise(s): fact for s, fact in SENTENCE_TO_FACT.items()}


def persona_facts(dialog: dict) -> frozenset[tuple[str, str]]:
    return frozenset(SENTENCE_TO_FACT[sentence] for sentence in dialog["personality"])


def assert_persona_chat_format(dialogs: object, num_candidates: int | None = None) -> None:
    """Check the Persona-Chat layout: types, growing history, gold reply last."""
    assert isinstance(dialogs, list) and dialogs
    for dialog in dialogs:
        assert set(dialog) == {"personality", "utterances"}
        assert all(isinstance(s, str) and s for s in dialog["personality"])
        previous: dict | None = None
        for k, utterance in enumerate(dialog["utterances"]):
            assert set(utterance) <= {"history", "candidates", "probe"}
            history, candidates = utterance["history"], utterance["candidates"]
            assert all(isinstance(s, str) and s for s in history + candidates)
            assert len(history) == 2 * k + 1  # partner speaks first, then turns alternate
            if previous is not None:
                # history = previous history + [previous gold reply, partner's next message]
                assert history[:-1] == previous["history"] + [previous["candidates"][-1]]
            if num_candidates is not None:
                assert len(candidates) == num_candidates
            assert len(set(candidates)) == len(candidates)
            if "probe" in utterance:
                probe = utterance["probe"]
                assert set(probe) in ({"slot", "value"}, {"slot", "value", "from"})
                assert probe.get("from", "history") == "history"
            previous = utterance


@pytest.fixture(scope="module")
def default_splits() -> dict[str, list[dict]]:
    """The three splits exactly as the committed data files hold them."""
    counts = {
        "train": synthetic.DEFAULT_NUM_TRAIN,
        "valid": synthetic.DEFAULT_NUM_VALID,
        "unseen": synthetic.DEFAULT_NUM_UNSEEN,
    }
    return {split: generate_dialogs(count, split) for split, count in counts.items()}


# --- format --------------------------------------------------------------------------------


def test_generated_dialogs_follow_persona_chat_format(default_splits):
    for dialogs in default_splits.values():
        assert_persona_chat_format(dialogs, num_candidates=4)


def test_minimal_example_follows_persona_chat_format():
    dialogs = json.loads((DATA_DIR / "minimal_train.json").read_text(encoding="utf-8"))
    assert len(dialogs) == 2
    assert_persona_chat_format(dialogs, num_candidates=2)


@pytest.mark.parametrize("num_candidates", [1, 2, 7, 20])
def test_num_candidates_sets_candidates_per_utterance(num_candidates):
    dialogs = generate_dialogs(30, "unseen", num_candidates=num_candidates, seed=3)
    assert_persona_chat_format(dialogs, num_candidates=num_candidates)


def test_dialog_shape(default_splits):
    for dialog in default_splits["train"]:
        facts = persona_facts(dialog)
        assert 4 <= len(facts) <= 5
        assert len({slot for slot, _ in facts}) == len(facts)  # one fact per slot
        assert 4 <= len(dialog["utterances"]) <= 7


def test_most_turns_probe_the_persona(default_splits):
    utterances = [u for d in default_splits["train"] for u in d["utterances"]]
    probes = [u for u in utterances if "probe" in u]
    assert len(probes) >= 0.7 * len(utterances)
    assert len(probes) < len(utterances)  # but there is some small talk
    assert {u["probe"]["slot"] for u in probes} == set(SLOTS)


def test_sentences_are_short(default_splits):
    def words(text: str) -> int:
        return sum(1 for token in text.split() if token not in {".", ",", "?", "!"})

    for dialog in default_splits["train"]:
        assert all(words(sentence) <= 10 for sentence in dialog["personality"])
        for utterance in dialog["utterances"]:
            assert all(words(reply) <= 12 for reply in utterance["candidates"])


# --- probes and candidates -----------------------------------------------------------------


def test_probe_value_is_in_persona_and_gold_reply(default_splits):
    for dialogs in default_splits.values():
        for dialog in dialogs:
            facts = persona_facts(dialog)
            for utterance in dialog["utterances"]:
                if "probe" not in utterance:
                    continue
                slot, value = utterance["probe"]["slot"], utterance["probe"]["value"]
                assert (slot, value) in facts
                assert any(contains_phrase(s, value) for s in dialog["personality"])
                assert contains_phrase(utterance["candidates"][-1], value)


def test_distractors_never_equal_gold(default_splits):
    for dialogs in default_splits.values():
        for dialog in dialogs:
            for utterance in dialog["utterances"]:
                *distractors, gold = utterance["candidates"]
                assert gold not in distractors


def test_probe_distractors_reuse_gold_template_with_other_values():
    for dialog in generate_dialogs(50, seed=11):
        for utterance in dialog["utterances"]:
            if "probe" not in utterance:
                continue
            slot, value = utterance["probe"]["slot"], utterance["probe"]["value"]
            *distractors, gold = utterance["candidates"]
            template = next(t for t in SLOTS[slot].replies if fill(t, value) == gold)
            same_shape = {fill(template, other) for other in SLOTS[slot].values} - {gold}
            # Most distractors look like the gold reply but state another value, so the
            # model has to pick the value from the persona, not the sentence shape.
            assert len([d for d in distractors if d in same_shape]) >= len(distractors) - 1


def test_small_talk_has_no_probe_and_a_fitting_reply(default_splits):
    replies = {reply for talk in SMALL_TALK.values() for reply in talk.replies}
    for dialog in default_splits["train"]:
        for utterance in dialog["utterances"]:
            if "probe" not in utterance:
                assert utterance["candidates"][-1] in replies


# --- splits --------------------------------------------------------------------------------


def test_train_and_valid_personas_are_disjoint(default_splits):
    train = {persona_facts(d) for d in default_splits["train"]}
    valid = {persona_facts(d) for d in default_splits["valid"]}
    assert train.isdisjoint(valid)
    # The split of a persona is decided by its fact set alone, whatever the seed.
    assert all(persona_split(facts) == "train" for facts in train)
    assert all(persona_split(facts) == "valid" for facts in valid)


def test_seen_and_unseen_values_partition_each_slot():
    seen, unseen = split_values("train"), split_values("unseen")
    assert split_values("valid") == seen
    for name, slot in SLOTS.items():
        assert set(seen[name]).isdisjoint(unseen[name])
        assert set(seen[name]) | set(unseen[name]) == set(slot.values)
        assert 0.15 <= len(unseen[name]) / len(slot.values) <= 0.25


def test_unseen_probe_values_never_appear_in_train_or_valid(default_splits):
    unseen_values = {
        u["probe"]["value"]
        for d in default_splits["unseen"]
        for u in d["utterances"]
        if "probe" in u
    }
    assert unseen_values <= {v for values in split_values("unseen").values() for v in values}
    for split in ("train", "valid"):
        text = all_text(default_splits[split])
        leaked = sorted(v for v in unseen_values if contains_phrase(text, v))
        assert not leaked, f"unseen values found in {split}: {leaked}"


def test_values_never_hide_inside_other_text():
    """No value occurs inside another value or a fixed sentence, so held-out stays held-out."""
    values = [value for slot in SLOTS.values() for value in slot.values]
    assert len(values) == len(set(values))
    fixed = [
        t.format(v="", av="") for s in SLOTS.values() for t in s.persona + s.questions + s.replies
    ]
    fixed += [t for talk in SMALL_TALK.values() for t in talk.prompts + talk.replies]
    fixed += list(ACKNOWLEDGEMENTS)
    for value in values:
        assert not [t for t in fixed if contains_phrase(t, value)], value
        assert not [v for v in values if v != value and contains_phrase(v, value)], value


def test_slots_are_rich():
    assert len(SLOTS) >= 8
    for slot in SLOTS.values():
        assert len(slot.values) >= 25, slot.name
        assert len(slot.persona) >= 3 and len(slot.questions) >= 3 and len(slot.replies) >= 3
        assert all(v == v.lower() and v.isascii() for v in slot.values)


def test_unknown_split_or_bad_counts_are_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        generate_dialogs(1, split="test")
    with pytest.raises(ValueError, match="num_candidates"):
        generate_dialogs(1, num_candidates=0)
    with pytest.raises(ValueError, match=">= 0"):
        generate_dialogs(-1)


# --- determinism and files -----------------------------------------------------------------


def test_same_seed_same_dialogs_and_different_seed_different_dialogs():
    first = dumps_dialogs(generate_dialogs(20, "valid", seed=5))
    assert dumps_dialogs(generate_dialogs(20, "valid", seed=5)) == first
    assert dumps_dialogs(generate_dialogs(20, "valid", seed=6)) != first


def test_write_splits_is_deterministic_and_atomic(tmp_path):
    paths = write_splits(tmp_path / "a", num_train=5, num_valid=3, num_unseen=2, seed=1)
    again = write_splits(tmp_path / "b", num_train=5, num_valid=3, num_unseen=2, seed=1)
    assert list(paths) == list(SPLITS)
    for split in SPLITS:
        assert paths[split].name == f"persona_{split}.json"
        assert paths[split].read_bytes() == again[split].read_bytes()
    assert len(json.loads(paths["train"].read_text())) == 5
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        p.name for p in paths.values()
    )  # no temp files left behind


def test_cli_writes_the_three_splits(tmp_path, capsys):
    argv = [
        "--out-dir",
        str(tmp_path),
        "--num-train",
        "4",
        "--num-valid",
        "2",
        "--num-unseen",
        "2",
        "--num-candidates",
        "3",
        "--seed",
        "9",
    ]
    assert synthetic.main(argv) == 0
    for split in SPLITS:
        dialogs = json.loads((tmp_path / f"persona_{split}.json").read_text())
        assert_persona_chat_format(dialogs, num_candidates=3)
    assert "persona_train.json" in capsys.readouterr().out


def test_committed_data_matches_generator_defaults(tmp_path):
    """data/persona_*.json are exactly ``python -m personachat.data.synthetic --out-dir data``."""
    paths = write_splits(tmp_path)
    for path in paths.values():
        committed = DATA_DIR / path.name
        assert committed.is_file(), f"missing {committed}; regenerate with the CLI"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} drifted from the generator; rerun "
            "`python -m personachat.data.synthetic --out-dir data`"
        )


# --- the natural-cased kinds: prose personas and history recall ----------------------------

KIND_FILES = ("prose_train", "prose_valid", "history_train", "history_valid")


@pytest.fixture(scope="module")
def kind_files() -> dict[str, list[dict]]:
    """The committed prose and history files, as ``read_dialogs`` reads them."""
    return {name: read_dialogs(DATA_DIR / f"{name}.json") for name in KIND_FILES}


def probes_of(dialogs: list[dict], history: bool) -> list[tuple[dict, dict]]:
    """(dialog, utterance) of each probe, the history probes or the others."""
    return [
        (dialog, utterance)
        for dialog in dialogs
        for utterance in dialog["utterances"]
        if "probe" in utterance and (utterance["probe"].get("from") == "history") == history
    ]


def test_naturalise_writes_natural_casing():
    assert naturalise("i live in new york , i love it .") == "I live in New York, I love it."
    assert naturalise("i am a big edm fan .") == "I am a big EDM fan."
    assert naturalise("mac and cheese , you told me .") == "Mac and cheese, you told me."
    assert naturalise("I said I'd cook. It's fine.") == "I said I'd cook. It's fine."


def test_kind_files_follow_persona_chat_format_and_sizes(kind_files):
    for dialogs in kind_files.values():
        assert_persona_chat_format(dialogs, num_candidates=4)
    assert {len(d) for n, d in kind_files.items() if n.endswith("_train")} == {300}
    # The held-out probe sets hold about a hundred probes each.
    assert 90 <= len(probes_of(kind_files["prose_valid"], history=False)) <= 110
    assert len(probes_of(kind_files["history_valid"], history=True)) == 100


def test_kind_files_are_natural_cased(kind_files):
    for dialogs in kind_files.values():
        text = all_text(dialogs)
        assert not re.search(r" [.,?!]", text), "punctuation spaced as in Persona-Chat"
        assert not re.search(r"(^|[.?!] )[a-z]", text, re.M), "a sentence starts lowercase"
        assert not re.search(r"\bi\b", text)
    # Values stay lowercase in the probes; the text writes proper nouns with capitals.
    cities = 0
    for dialog, utterance in probes_of(kind_files["prose_train"], history=False):
        value = utterance["probe"]["value"]
        assert value == value.lower()
        if utterance["probe"]["slot"] == "city":
            cities += 1
            assert PROPER_NOUNS[value] in " ".join(dialog["personality"])
            assert PROPER_NOUNS[value] in utterance["candidates"][-1]
    assert cities > 20


def third_person_cards(dialogs: list[dict]) -> list[dict]:
    """The dialogs whose card is third-person prose (the training file has other shapes
    too: see ``tests/test_synthetic_prose.py``)."""
    return [d for d in dialogs if card_shape(d["personality"]) == "prose"]


def test_prose_personas_are_third_person_descriptions(kind_files):
    assert len(third_person_cards(kind_files["prose_valid"])) == len(kind_files["prose_valid"])
    for name in ("prose_train", "prose_valid"):
        for dialog in third_person_cards(kind_files[name]):
            prose = " ".join(dialog["personality"])
            assert not re.search(r"\b(I|my|me|I'm|mine)\b", prose, re.IGNORECASE), prose
            assert re.search(r"\b(she|he)\b", prose, re.IGNORECASE), prose
            assert len(re.findall(r"[.!?](?: |$)", prose)) >= 3, "several sentences"


def test_prose_probe_values_sit_mid_sentence_in_the_description(kind_files):
    for name in ("prose_train", "prose_valid"):
        for dialog, utterance in probes_of(third_person_cards(kind_files[name]), history=False):
            probe, prose = utterance["probe"], " ".join(dialog["personality"])
            assert mentions(utterance["candidates"][-1], probe["value"])  # gold states it
            assert not any(mentions(c, probe["value"]) for c in utterance["candidates"][:-1])
            match = re.search(rf"(?<!\w){re.escape(probe['value'])}(?!\w)", prose, re.I)
            assert match, (probe, prose)
            if probe["slot"] == "name":
                continue  # the character's name opens the description
            before = re.split(r"[.!?] ", prose[: match.start()])[-1]
            after = re.split(r"[.!?]", prose[match.end() :])[0]
            assert before.split() and after.split(), (probe["value"], prose)


def test_history_probe_value_is_3_to_6_messages_back_in_the_labelled_speakers_message(
    kind_files,
):
    distances = set()
    for name in ("history_train", "history_valid"):
        for dialog, utterance in probes_of(kind_files[name], history=True):
            probe, history = utterance["probe"], utterance["history"]
            holders = [k for k, message in enumerate(history) if mentions(message, probe["value"])]
            assert len(holders) == 1, (probe, history)  # one message says it: unambiguous
            back = len(history) - 1 - holders[0]
            assert 3 <= back <= 6, (probe, history)
            said_by_bot = back % 2 == 1  # history ends with the user's question
            assert (
                said_by_bot == (speaker(probe["slot"]) == "bot") == probe["slot"].startswith("bot_")
            )
            if probe["slot"] == "first_question":
                assert holders == [0]
            # Only the bot's own persona facts are also in the persona.
            persona_fact = RECALLS[probe["slot"]].persona_slot is not None
            assert mentions(" ".join(dialog["personality"]), probe["value"]) == persona_fact
            assert mentions(utterance["candidates"][-1], probe["value"])
            assert not any(mentions(c, probe["value"]) for c in utterance["candidates"][:-1])
            distances.add(back)
    assert distances == {3, 4, 5, 6}


def test_history_files_ask_every_kind_of_recall(kind_files):
    train = [u["probe"]["slot"] for _, u in probes_of(kind_files["history_train"], True)]
    valid = [u["probe"]["slot"] for _, u in probes_of(kind_files["history_valid"], True)]
    assert set(train) == set(RECALLS)
    assert len(set(valid)) >= len(RECALLS) - 2
    # Half of the held-out probes ask the user's own fact back: the headline figure.
    assert sum(speaker(slot) == "user" and slot != "first_question" for slot in valid) == 50
    # The training file also asks persona facts; the held-out set is history probes only.
    assert probes_of(kind_files["history_train"], history=False)
    assert not probes_of(kind_files["history_valid"], history=False)


def test_history_distractors_confuse_the_users_fact_with_the_bots_own():
    """ "You work as a nurse." is a distractor when the bot is the nurse and the user the
    teacher: hits@1 then needs the history, not the persona."""
    confusable = 0
    for dialog, utterance in probes_of(generate_history_dialogs(60, seed=4), history=True):
        persona = dict(NATURAL_SENTENCE_TO_FACT[s] for s in dialog["personality"])
        slot = utterance["probe"]["slot"]
        own = persona.get(RECALLS[slot].related or "")
        if own is not None:
            confusable += 1
            assert any(mentions(c, own) for c in utterance["candidates"][:-1]), own
            assert not mentions(utterance["candidates"][-1], own)
    assert confusable >= 5


def _probe_values(dialogs: list[dict], history: bool) -> set[str]:
    return {u["probe"]["value"] for _, u in probes_of(dialogs, history)}


def test_held_out_values_never_occur_in_the_training_files(kind_files):
    for kind, history in (("prose", False), ("history", True)):
        valid = _probe_values(kind_files[f"{kind}_valid"], history)
        train_text = all_text(kind_files[f"{kind}_train"])
        train_values = _probe_values(kind_files[f"{kind}_train"], history)
        assert valid and train_values and valid.isdisjoint(train_values)
        leaked = sorted(v for v in valid if mentions(train_text, v))
        assert not leaked, f"{kind}: held-out values in the training file: {leaked}"
    unseen = {v for values in split_values("unseen").values() for v in values}
    for name in ("prose_train", "history_train"):
        text = all_text(kind_files[name])
        assert not sorted(v for v in unseen if mentions(text, v)), name
    prose_valid = kind_files["prose_valid"]
    assert {u["probe"]["value"] for _, u in probes_of(prose_valid, False)} - unseen <= {
        name.lower() for names in character_names("valid").values() for name in names
    }


def test_held_out_phrasings_are_disjoint_from_training(kind_files):
    tables = [PROSE[slot] for slot in PROSE] + [NAME_QUESTIONS, NAME_REPLIES]
    for recall in RECALLS.values():
        tables += [recall.statements, recall.questions, recall.answers, recall.prompts]
    for table in tables:
        assert set(table.train).isdisjoint(table.valid)
        assert table.valid or not table.train
    # No held-out question is ever asked in a training file (prose probes ask the facts
    # with the bundled slots' questions, as every file does; only the name's are held out),
    # and no held-out clause template (its fixed words) describes a training character.
    train_messages = {
        message
        for dialog in kind_files["history_train"] + kind_files["prose_train"]
        for u in dialog["utterances"]
        for message in u["history"]
    }
    for name in ("history_valid", "prose_valid"):
        for _, utterance in probes_of(kind_files[name], name == "history_valid"):
            if utterance["probe"]["slot"] in SLOTS:
                continue
            question = utterance["history"][-1]
            assert question not in train_messages, question
            assert question.split(" ", 1)[-1] not in train_messages, question  # lead-in
    prose_train = " ".join(" ".join(d["personality"]) for d in kind_files["prose_train"])
    for slot, table in PROSE.items():
        for template in table.valid:
            words = max(re.split(r"\{\w+\}", template), key=len).strip()
            assert words not in prose_train, (slot, words)


def test_kind_generators_are_deterministic_and_check_their_arguments():
    for generate in (generate_prose_dialogs, generate_history_dialogs):
        first = dumps_dialogs(generate(8, "valid", seed=2))
        assert dumps_dialogs(generate(8, "valid", seed=2)) == first
        assert dumps_dialogs(generate(8, "valid", seed=3)) != first
        assert_persona_chat_format(generate(5, num_candidates=20, seed=1), num_candidates=20)
        with pytest.raises(ValueError, match="unknown split"):
            generate(1, split="unseen")
        with pytest.raises(ValueError, match=">= 0"):
            generate(-1)
    with pytest.raises(ValueError, match="unknown kind"):
        synthetic.write_kind("unused", "persona")


def test_cli_writes_a_kind(tmp_path, capsys):
    argv = ["--out-dir", str(tmp_path), "--kind", "history", "--num-train", "3"]
    assert synthetic.main([*argv, "--num-valid", "2"]) == 0
    assert len(read_dialogs(tmp_path / "history_train.json")) == 3
    assert len(read_dialogs(tmp_path / "history_valid.json")) == 2
    assert "history_valid.json" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["prose", "history"])
def test_committed_kind_files_match_the_generator(tmp_path, kind):
    """data/<kind>_*.json are exactly ``python -m personachat.data.synthetic --out-dir data
    --kind <kind>``."""
    for path in synthetic.write_kind(tmp_path, kind).values():
        committed = DATA_DIR / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} drifted from the generator; rerun "
            f"`python -m personachat.data.synthetic --out-dir data --kind {kind}`"
        )
