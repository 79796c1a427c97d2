"""The shapes of the training character cards (``personachat.data.synthetic_cards``), written
as usage examples: what a training card looks like, and what keeps it apart from the
held-out prose file."""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from pathlib import Path

from personachat.data.readers import read_dialogs
from personachat.data.synthetic import dumps_dialogs
from personachat.data.synthetic_cards import (
    CARD_SHAPES,
    FIRST_PERSON,
    PLIST_ITEMS,
    SHEET_LABELS,
    STATEMENTS,
    first_person_card,
    plist_card,
    sheet_card,
    to_second_person,
)
from personachat.data.synthetic_prose import (
    DEFAULT_NUM,
    PROSE,
    generate_prose_dialogs,
    training_card,
)
from personachat.data.synthetic_slots import SLOTS
from personachat.evaluation.persona import mentions

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

PROSE_VALID_SHA256 = "7960d1045d580a3466cf17294a83ac09be4e97416215d63bbbd78cb269b4dca6"
"""data/prose_valid.json as first committed: the held-out set earlier results were measured
on. Training tables may grow; this file must not move (results would stop comparing)."""


def card_shape(personality: list[str]) -> str:
    """The shape of a card, read from its text as a user would tell them apart."""
    first = personality[0]
    if first.startswith("Name: "):
        return "sheet"
    if first.startswith("["):
        return "plist"
    if first.startswith(("You are ", "Your name is ")):
        return "second"
    if re.match(r"(I'm|I am|Hi, my name is|My name is) ", first):
        return "first"
    return "prose"


def card_text(dialog: dict) -> str:
    return "\n".join(dialog["personality"])


def train_dialogs() -> list[dict]:
    return read_dialogs(DATA_DIR / "prose_train.json")


def test_every_training_card_shape_appears_with_prose_the_majority():
    shapes = Counter(card_shape(d["personality"]) for d in train_dialogs())
    assert set(shapes) == set(CARD_SHAPES)
    total = sum(shapes.values())
    assert total == DEFAULT_NUM["train"]
    for shape, weight in CARD_SHAPES.items():
        assert abs(shapes[shape] / total - weight) < 0.06, (shape, shapes)
    assert shapes["prose"] == max(shapes.values())


def test_every_probed_value_is_stated_in_its_card():
    probes = 0
    for dialog in train_dialogs():
        text = card_text(dialog)
        assert "Statement" not in text and "_" not in text, text  # no leaked internals
        if card_shape(dialog["personality"]) != "plist":  # only W++ blocks have braces
            assert not re.search(r"[{}]", text), text
        for utterance in dialog["utterances"]:
            if "probe" in utterance:
                probes += 1
                assert mentions(text, utterance["probe"]["value"]), (utterance["probe"], text)
    assert probes > 1000


def fixed_words(template: str) -> list[str]:
    """The fixed pieces of a template of two words or more ("after a long week")."""
    pieces = (piece.strip(" ,.") for piece in re.split(r"\{\w+\}", template))
    return [piece for piece in pieces if len(piece.split()) >= 2]


def test_no_held_out_template_words_describe_a_training_character():
    train_text = "\n".join(card_text(d) for d in train_dialogs()).lower()
    for slot, table in PROSE.items():
        for template in table.valid:
            for words in fixed_words(template):
                assert words.lower() not in train_text, (slot, words)


def test_held_out_prose_file_is_unchanged_third_person_prose():
    committed = (DATA_DIR / "prose_valid.json").read_bytes()
    assert hashlib.sha256(committed).hexdigest() == PROSE_VALID_SHA256
    generated = dumps_dialogs(generate_prose_dialogs(DEFAULT_NUM["valid"], "valid"))
    assert generated.encode() == committed
    assert {card_shape(d["personality"]) for d in read_dialogs(DATA_DIR / "prose_valid.json")} == {
        "prose"
    }


def test_a_first_person_card_and_its_system_prompt_twin():
    facts = [("job", "nurse"), ("pet", "parrot"), ("city", "new york")]
    mine = " ".join(first_person_card(random.Random(1), "Mara", "f", facts, second=False))
    yours = " ".join(first_person_card(random.Random(1), "Mara", "f", facts, second=True))
    assert re.match(r"(I'm|Hi, my name is|My name is) Mara\.", mine), mine
    assert re.match(r"(You are|You are playing|Your name is) Mara\.", yours), yours
    assert "New York" in mine and "New York" in yours
    assert not re.search(r"\b(I|my|me)\b", yours), yours
    assert not re.search(r"\b(she|her)\b", mine + yours, re.I)
    assert to_second_person("I am a nurse and my dog follows me.") == (
        "You are a nurse and your dog follows you."
    )


def test_an_age_may_introduce_the_system_prompt():
    facts = [("age", "34"), ("job", "nurse"), ("hobby", "knitting")]
    intros = {
        first_person_card(random.Random(seed), "Mara", "f", facts, second=True)[0].split(".")[0]
        for seed in range(20)
    }
    assert "You are Mara, a 34-year-old woman" in intros
    assert len(intros) >= 3


def test_a_character_sheet_has_one_labelled_line_per_fact():
    facts = [("job", "software engineer"), ("city", "new york"), ("age", "41")]
    sheet = sheet_card(random.Random(0), "Omar", "m", facts, ["calm", "curious"])
    assert sheet[0] == "Name: Omar"
    assert "Personality: calm, curious" in sheet
    lines = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in sheet}
    for slot, value in facts:
        (label,) = [label for label in SHEET_LABELS[slot] if label in lines]
        assert lines[label].lower() == value
    assert lines[next(label for label in SHEET_LABELS["city"] if label in lines)] == "New York"


def test_a_plist_or_w_plus_plus_card_is_one_bracketed_line():
    facts = [("job", "nurse"), ("hobby", "knitting")]
    shapes = set()
    for seed in range(10):
        (card,) = plist_card(random.Random(seed), "Mara", facts, ["shy", "warm"])
        assert card.startswith("[") and card.endswith("]")
        assert "nurse" in card and "knitting" in card
        shapes.add("plist" if card.startswith("[Mara: ") else "w++")
        if card.startswith('[character("Mara")'):
            assert 'Personality("shy" + "warm")' in card
    assert shapes == {"plist", "w++"}


def test_training_cards_reach_every_template():
    """Every training template can be drawn: none is dead text in the tables."""
    seen: dict[str, set[str]] = {"prose": set(), "statement": set(), "first": set()}
    rng = random.Random(0)
    for _ in range(1000):
        slots = rng.sample(sorted(SLOTS), 5)
        facts = [(slot, "zzvalue") for slot in slots]
        _, card = training_card(rng, "Mara", "f", facts)
        text = " ".join(card).lower()
        for slot in slots:
            for kind, table in (
                ("prose", PROSE[slot].train),
                ("statement", STATEMENTS[slot]),
                ("first", FIRST_PERSON[slot]),
            ):
                for template in table:
                    words = fixed_words(template)
                    if words and all(piece.lower() in text for piece in words):
                        seen[kind].add(template)
    assert seen["prose"] == {t for table in PROSE.values() for t in table.train if fixed_words(t)}
    assert seen["statement"] == {t for table in STATEMENTS.values() for t in table}
    assert seen["first"] == {t for table in FIRST_PERSON.values() for t in table}
    assert set(PLIST_ITEMS) == set(SHEET_LABELS) == set(STATEMENTS) == set(SLOTS)
