"""The text rules every entry point shares (``personachat.text``): one check of a list of
strings, used by Persona-Chat validation and by the readers of plain dialogs, so the same
mistake is described the same way whichever format it is written in."""

from __future__ import annotations

from personachat.data.dialogs import validate_dialogs
from personachat.data.readers.plain import dialog_from_object
from personachat.text import describe, did_you_mean, string_list_problems

FIX = "give at least one persona sentence"


def test_a_list_of_strings_with_every_kind_of_mistake_in_it():
    problems = string_list_problems(["ok", 3, "", "\ud800", None], "here", fix=FIX)
    assert problems == [
        "here, item 1: expected a string, got the number 3 — each entry must be text in "
        "double quotes",
        "here, item 2: empty string — remove it or write the text",
        "here, item 3: not valid Unicode: a lone surrogate (\\ud800) at character 0 "
        "(a \\u escape without its pair?) — fix or remove it",
        "here, item 4: expected a string, got null — each entry must be text in double quotes",
    ]


def test_a_value_that_is_no_list_says_how_to_fix_it():
    assert string_list_problems("i like cats.", "here", fix=FIX) == [
        'here: expected a list of strings, got the string "i like cats." — wrap it in a list: [...]'
    ]
    assert string_list_problems(5, "here", fix=FIX) == [
        f"here: expected a list of strings, got the number 5 — {FIX}"
    ]
    assert string_list_problems([], "here", fix=FIX) == [f"here: empty list — {FIX}"]
    assert string_list_problems([], "here", fix=FIX, allow_empty_list=True) == []
    assert string_list_problems(("a", "b"), "here", fix=FIX) == []  # a tuple from Python code


def test_blank_items_count_as_empty_only_where_asked():
    assert string_list_problems(["hi", "  "], "here", fix=FIX) == []
    assert string_list_problems(
        ["hi", "  "], "here", fix=FIX, item="turn", blank_is_empty=True
    ) == ["here, item 1: empty turn — remove it or write the text"]
    assert string_list_problems(["", ""], "here", fix=FIX, allow_empty_items=True) == []


def test_persona_chat_and_plain_dialogs_describe_the_same_mistake_alike():
    """A number among the persona sentences, in either format: one message after the place."""
    persona_chat = {
        "personality": ["i like cats .", 7],
        "utterances": [{"history": ["hi"], "candidates": ["hello"]}],
    }
    plain = {"personality": ["i like cats .", 7], "turns": ["hi", "hello"]}
    [from_persona_chat] = validate_dialogs([persona_chat], "a.json")
    dialog, [from_plain] = dialog_from_object(plain, "b.jsonl: line 1")
    assert dialog is None
    said = 'field "personality", item 1: expected a string, got the number 7'
    assert from_persona_chat.startswith(f"a.json: dialog 0, {said}")
    assert from_plain.startswith(f"b.jsonl: line 1, {said}")
    assert from_persona_chat.split(said)[1] == from_plain.split(said)[1]


def test_a_key_that_looks_like_a_typo_is_named():
    assert did_you_mean("personality", ["persona", "turns"]) == (
        '; found "persona" — rename it to "personality"?'
    )
    assert did_you_mean("personality", ["turns", 5]) == ""


def test_values_are_described_in_jsons_words_and_never_at_length():
    assert [describe(v) for v in (None, True, 3, 2.5, "", [], [1], {}, {"a": 1})] == [
        "null",
        "the boolean true",
        "the number 3",
        "the number 2.5",
        "an empty string",
        "an empty list",
        "a list of 1 item",
        "an empty object",
        "an object",
    ]
    assert describe(10**5000) == "a very large number"
    assert describe("x" * 1000) == f'the string "{"x" * 37}..."'
    assert describe(b"raw") == "a Python bytes"
