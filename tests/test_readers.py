"""Reading every dialog format into Persona-Chat dialogs (personachat.data.readers).

Each test writes its own small files; the shared Synthetic-Persona-Chat file is read where it
exists (the tests that need it skip otherwise).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from personachat.data.dialogs import DataError, validate_dialogs
from personachat.data.readers import FORMATS, detect_format, read_dialogs
from personachat.data.readers.hf import dialogs_from_rows
from personachat.data.readers.synthetic_csv import parse_conversation

from .conftest import SYNTHETIC_PERSONA_CHAT, make_dialogs

PARLAI_BOTH = (
    "1 your persona: i like to ski .\n"
    "2 your persona: i have a cat .\n"
    "3 partner's persona: i am a nurse .\n"
    "4 hi , how are you ?\tgreat , just back from skiing .\t\ti am a pilot .|great , just back "
    "from skiing .|i love pizza .\n"
    "5 any pets ?\ta cat .\t\ta dog .|a cat .\n"
    "1 your persona: я люблю чай 🍵 .\n"
    "2 __SILENCE__\tпривет !\t\tпока .|привет !\n"
)

SYNTHETIC_CSV = (
    "user 1 personas,user 2 personas,Best Generated Conversation\n"
    '"I love to bake.\nI have a dog.","I am a student.\nI like chess.","User 1: Hi!\n'
    "User 2: Hello!\n*User 1:* What do you do?\n[A few minutes later]\nUser 2: I study.\n"
    'Mostly maths.\nUser 2: And chess.\nUser 1: Nice!"\n'
)

PLAIN = [
    {
        "personality": ["я работаю врачом .", "у меня есть кот 🐱 ."],
        "turns": ["привет !", "здравствуй 🙂", "кем ты работаешь ?", "я врач ."],
    },
    {
        "personality": ["i like tea ."],
        "turns": ["hello !", "hi , i like tea .", "bye"],
        "bot_starts": True,
    },
]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path, **kwargs) -> list[str]:
    with pytest.raises(DataError) as err:
        read_dialogs(path, **kwargs)
    return err.value.problems


# --------------------------------------------------------------------------- ParlAI


def test_parlai_both_keeps_the_bots_persona_and_puts_the_gold_reply_last(tmp_path):
    dialogs = read_dialogs(write(tmp_path / "valid_both_original.txt", PARLAI_BOTH))

    assert dialogs == [
        {
            "personality": ["i like to ski .", "i have a cat ."],
            "utterances": [
                {
                    "history": ["hi , how are you ?"],
                    "candidates": [
                        "i am a pilot .",
                        "i love pizza .",
                        "great , just back from skiing .",
                    ],
                },
                {
                    "history": [
                        "hi , how are you ?",
                        "great , just back from skiing .",
                        "any pets ?",
                    ],
                    "candidates": ["a dog .", "a cat ."],
                },
            ],
        },
        {
            "personality": ["я люблю чай 🍵 ."],
            "utterances": [{"history": ["__SILENCE__"], "candidates": ["пока .", "привет !"]}],
        },
    ]


def test_parlai_self_variant_and_a_reply_missing_from_the_candidates(tmp_path):
    text = "1 your persona: i like tea .\n2 hi\thello !\t\tbye .|no .\n"
    dialogs = read_dialogs(write(tmp_path / "train_self_original.txt", text))
    assert dialogs[0]["utterances"][0]["candidates"] == ["bye .", "no .", "hello !"]


def test_parlai_problems_are_all_listed_with_lines_and_dialogs(tmp_path):
    text = (
        "1 your persona: i like tea .\n2 hi hello no tab\n"
        "1 partner's persona: i am tall .\n2 hi\thello\n"
        "oops\n"
    )
    problems = problems_of(write(tmp_path / "bad.txt", text))
    assert any("line 2 (dialog 0)" in p and "no TAB" in p for p in problems)
    assert any("line 3 (dialog 1)" in p and 'no "your persona:" lines' in p for p in problems)
    assert any("line 5" in p and "line number" in p for p in problems)
    assert len(problems) == 3


# --------------------------------------------------------------------------- Synthetic CSV


def test_synthetic_csv_gives_one_dialog_per_speaker(tmp_path):
    dialogs = read_dialogs(write(tmp_path / "spc.csv", SYNTHETIC_CSV))

    # User 1 spoke first: its opening "Hi!" is not learned and histories start at User 2.
    assert dialogs[0] == {
        "personality": ["I love to bake.", "I have a dog."],
        "utterances": [
            {"history": ["Hello!"], "candidates": ["What do you do?"]},
            {
                "history": ["Hello!", "What do you do?", "I study. Mostly maths. And chess."],
                "candidates": ["Nice!"],
            },
        ],
    }
    assert dialogs[1] == {
        "personality": ["I am a student.", "I like chess."],
        "utterances": [
            {"history": ["Hi!"], "candidates": ["Hello!"]},
            {
                "history": ["Hi!", "Hello!", "What do you do?"],
                "candidates": ["I study. Mostly maths. And chess."],
            },
        ],
    }


def test_conversation_rules_for_untidy_generated_text():
    speakers, texts, dropped, first = parse_conversation(
        "\nPreamble nobody said.\n* User 1: Hi! *\n**User 2**: Hey\n* * *\n(They walk.)\n"
        "User 2: again\nUser 1:\nUser 1: ok"
    )
    assert speakers == [1, 2, 1]
    assert texts == ["Hi!", "Hey again", "ok"]
    assert (dropped, first) == (1, 1)


def test_csv_with_wrong_columns_names_missing_and_found_columns(tmp_path):
    path = write(tmp_path / "spc.csv", "persona,user 2 personas,conversation\na,b,c\n")
    [problem] = problems_of(path)
    assert "line 1" in problem
    assert '"user 1 personas", "Best Generated Conversation"' in problem
    assert 'found columns "persona", "user 2 personas", "conversation"' in problem


def test_csv_problems_have_lines_and_columns(tmp_path):
    text = (
        "user 1 personas,user 2 personas,Best Generated Conversation\n"
        '"a.\nb.",,"User 1: hi\nUser 2: hello"\n'
        '"a.","b.","hi\nhello\nhow are you"\n'
        '"a.","b.","User 1: hi\nUser 1: anyone?"\n'
    )
    problems = problems_of(write(tmp_path / "spc.csv", text))
    assert problems[0].endswith(
        "empty — each speaker needs at least one persona sentence, one per line (or set "
        "allow_empty_personality to read dialogs without a persona)"
    )
    assert 'line 2 (conversation 0), column "user 2 personas"' in problems[0]
    assert "line 5 (conversation 1), line 5: no line starts with" in problems[1]
    assert "cannot be told apart" in problems[1]
    assert "line 8 (conversation 2), line 8: only User 1 speaks" in problems[2]
    assert len(problems) == 3


@pytest.mark.skipif(not SYNTHETIC_PERSONA_CHAT.is_file(), reason="shared data not present")
def test_the_shared_synthetic_persona_chat_file():
    with SYNTHETIC_PERSONA_CHAT.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1000  # conversations

    dialogs = read_dialogs(SYNTHETIC_PERSONA_CHAT)

    assert len(dialogs) == 2000  # one per speaker as the bot
    assert sum(len(d["utterances"]) for d in dialogs) == 26734
    assert dialogs[0]["personality"] == rows[0]["user 1 personas"].split("\n")
    assert dialogs[1]["personality"] == rows[0]["user 2 personas"].split("\n")
    assert {len(u["candidates"]) for d in dialogs for u in d["utterances"]} == {1}
    assert detect_format(SYNTHETIC_PERSONA_CHAT) == "synthetic-csv"


# --------------------------------------------------------------------------- plain


def test_plain_json_list_partner_first_and_bot_starts(tmp_path):
    dialogs = read_dialogs(write(tmp_path / "mine.json", json.dumps(PLAIN, ensure_ascii=False)))
    assert dialogs == [
        {
            "personality": PLAIN[0]["personality"],
            "utterances": [
                {"history": ["привет !"], "candidates": ["здравствуй 🙂"]},
                {
                    "history": ["привет !", "здравствуй 🙂", "кем ты работаешь ?"],
                    "candidates": ["я врач ."],
                },
            ],
        },
        {
            "personality": ["i like tea ."],
            "utterances": [{"history": ["hi , i like tea ."], "candidates": ["bye"]}],
        },
    ]


def test_plain_jsonl_reads_the_same_as_the_json_list(tmp_path):
    lines = "\n".join(json.dumps(d, ensure_ascii=False) for d in PLAIN) + "\n"
    from_jsonl = read_dialogs(write(tmp_path / "mine.jsonl", lines))
    from_list = read_dialogs(write(tmp_path / "mine.json", json.dumps(PLAIN)))
    assert from_jsonl == from_list


def test_plain_problems_are_all_listed_with_lines_and_fields(tmp_path):
    lines = [
        json.dumps(PLAIN[1]),
        '{"personality": ["a"], "turns": ["hi", "hello"',  # truncated
        json.dumps({"personality": [], "turns": ["hi", "hello"]}),
        json.dumps({"persona": ["a"], "turns": []}),
        json.dumps({"personality": ["a"], "turns": ["hi", " "]}),
        json.dumps({"personality": ["a"], "turns": ["hi"]}),
    ]
    problems = problems_of(write(tmp_path / "mine.jsonl", "\n".join(lines)))
    assert problems == [
        f"{tmp_path / 'mine.jsonl'}: line 2, column 47: not valid JSON (Expecting ',' "
        "delimiter) — the line ends before the JSON does (truncated?); each line must be one "
        'dialog {"personality": [...], "turns": [...]}',
        f'{tmp_path / "mine.jsonl"}: line 3, field "personality": empty list — give at least '
        'one persona sentence, e.g. ["i like cats ."] (or set allow_empty_personality to '
        "read dialogs without a persona)",
        f'{tmp_path / "mine.jsonl"}: line 4: missing field "personality"; found "persona" — '
        'rename it to "personality"?',
        f'{tmp_path / "mine.jsonl"}: line 4, field "turns": empty list — list the messages in '
        'order, partner first, e.g. ["hi !", "hello !"]',
        f'{tmp_path / "mine.jsonl"}: line 5, field "turns", item 1: empty turn — remove it or '
        "write the text",
        f'{tmp_path / "mine.jsonl"}: line 6, field "turns": no bot reply to learn — turns '
        "alternate partner, bot, ..., so a dialog needs at least 2 turns",
    ]


def test_truncated_json_list_says_where_and_that_it_is_truncated(tmp_path):
    text = json.dumps(PLAIN)[:-40]
    [problem] = problems_of(write(tmp_path / "mine.json", text), format="plain")
    assert "line 1, column" in problem and "truncated" in problem


# --------------------------------------------------------------------------- Persona-Chat, options


def test_personachat_json_is_delegated_with_its_split(tmp_path):
    dialogs = make_dialogs(3)
    path = write(tmp_path / "pc.json", json.dumps({"train": dialogs, "valid": dialogs[:1]}))
    assert read_dialogs(path) == dialogs
    assert read_dialogs(path, split="valid") == dialogs[:1]


def test_lowercase_is_an_option_not_forced(tmp_path):
    path = write(tmp_path / "mine.json", json.dumps(PLAIN, ensure_ascii=False))
    assert read_dialogs(path)[0]["utterances"][0]["history"] == ["привет !"]
    kept = read_dialogs(path)[1]["utterances"][0]["history"]
    lowered = read_dialogs(
        write(
            tmp_path / "up.json",
            json.dumps([{"personality": ["I Like TEA ."], "turns": ["Hi ПРИВЕТ", "Hello"]}]),
        ),
        lowercase=True,
    )
    assert kept == ["hi , i like tea ."]
    assert lowered == [
        {
            "personality": ["i like tea ."],
            "utterances": [{"history": ["hi привет"], "candidates": ["hello"]}],
        }
    ]


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.json", json.dumps(make_dialogs(1)), "personachat"),
        ("a.json", json.dumps(PLAIN), "plain"),
        ("a.data", json.dumps(PLAIN[0]) + "\n", "plain"),
        ("a.jsonl", json.dumps(make_dialogs(1)[0]) + "\n", "plain"),
        ("a.dat", PARLAI_BOTH, "parlai"),
        ("a.dat", SYNTHETIC_CSV, "synthetic-csv"),
        ("a.txt", "not parlai at all", "parlai"),  # the extension decides; the reader explains
    ],
    ids=["personachat", "plain-list", "plain-object", "jsonl", "parlai", "csv", "txt"],
)
def test_format_detection_by_content_then_extension(tmp_path, name, text, expected):
    assert detect_format(write(tmp_path / name, text)) == expected
    assert detect_format("hf:bavard/personachat_truecased") == "hf"


def test_unknown_format_lists_the_formats(tmp_path):
    [problem] = problems_of(write(tmp_path / "notes.md", "# my notes\nhello"))
    assert "cannot tell the dialog format (it starts with '# my notes')" in problem
    assert all(name in problem for name in FORMATS)
    [problem] = problems_of(tmp_path / "notes.md", format="yaml")
    assert "unknown format 'yaml' — the formats are personachat, parlai" in problem


@pytest.mark.parametrize("fmt", [None, *[f for f in FORMATS if f != "hf"]])
def test_binary_and_huge_files_are_refused_before_reading(tmp_path, fmt):
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    [problem] = problems_of(binary, format=fmt)
    assert "binary file" in problem

    huge = tmp_path / "huge.csv"
    with huge.open("wb") as file:  # sparse: 2 GB on paper, no disk used
        file.truncate(2 * 1024**3)
    [problem] = problems_of(huge, format=fmt)
    assert "2.1 GB" in problem and "limit" in problem


def test_empty_and_missing_files(tmp_path):
    [problem] = problems_of(write(tmp_path / "a.csv", "\n \n"))
    assert "the file is empty" in problem
    [problem] = problems_of(tmp_path / "missing.csv")
    assert "file does not exist" in problem


# --------------------------------------------------------------------------- Hugging Face


def test_hub_dataset_offline_tells_the_user_to_pass_a_file(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    # Both libraries read the variables once, at import (transformers imported them already).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    [problem] = problems_of("hf:nobody/no-such-dialogs")
    assert problem.startswith("hf:nobody/no-such-dialogs: could not load the dataset")
    assert "pass the local file instead" in problem


def test_hub_rows_map_through_the_same_readers():
    utterance_rows = [
        {"personality": ["a ."], "history": ["hi"], "candidates": ["x", "y"], "conv_id": 0},
        {"personality": ["a ."], "history": ["hi", "y", "ok"], "candidates": ["z"], "conv_id": 0},
        {"personality": ["b ."], "history": ["yo"], "candidates": ["w"], "conv_id": 1},
    ]
    dialogs = dialogs_from_rows(utterance_rows, list(utterance_rows[0]), "hf:x")
    assert [len(d["utterances"]) for d in dialogs] == [2, 1]

    struct_of_lists = [
        {"personality": ["a ."], "utterances": {"history": [["hi"]], "candidates": [["x", "y"]]}}
    ]
    assert dialogs_from_rows(struct_of_lists, ["personality", "utterances"], "hf:x") == [
        {"personality": ["a ."], "utterances": [{"history": ["hi"], "candidates": ["x", "y"]}]}
    ]

    spc = [
        {
            "user 1 personas": "a.",
            "user 2 personas": "b.",
            "Best Generated Conversation": "User 1: hi\nUser 2: hello\nUser 1: bye",
        }
    ]
    assert len(dialogs_from_rows(spc, list(spc[0]), "hf:x")) == 2

    with pytest.raises(DataError, match="match no known dialog layout"):
        dialogs_from_rows([{"text": "hi"}], ["text"], "hf:x")


# --------------------------------------------------------------------------- properties

_FRAGMENTS = st.sampled_from(
    [
        "1 your persona: i like tea .",
        "2 hi\thello\t\tx|hello",
        "1 ",
        "3 \t",
        "User 1: hi",
        "User 2: hello",
        "*User 1:* hey",
        "[later]",
        "user 1 personas,user 2 personas,Best Generated Conversation",
        '"',
        ",",
        "{",
        "}",
        "[",
        "]",
        '"turns"',
        '"utterances"',
        '{"personality": ["a"], "turns": ["x", "y"]}',
        "\t",
        "|",
        "",
        "😀",
        "привет",
        "\r",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.binary(max_size=300).map(lambda b: ("bytes", b)),
        st.text(max_size=200).map(lambda t: ("text", t)),
        st.lists(_FRAGMENTS, max_size=12).map(lambda f: ("text", "\n".join(f))),
    ),
    st.sampled_from([".json", ".jsonl", ".csv", ".txt", ".dat"]),
    st.sampled_from([None, "personachat", "parlai", "synthetic-csv", "plain"]),
)
def test_readers_never_crash_on_random_input(tmp_path, content, extension, fmt):
    kind, value = content
    path = tmp_path / f"random{extension}"
    if kind == "bytes":
        path.write_bytes(value)
    else:
        path.write_text(value, encoding="utf-8", errors="surrogatepass")  # invalid UTF-8 too
    try:
        dialogs = read_dialogs(path, format=fmt)
    except DataError as err:
        assert err.problems and all(isinstance(p, str) and p for p in err.problems)
        return
    assert validate_dialogs(dialogs) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["User 1:", "User 2:", "* User 1:", "", "[x]"]),
            st.text(alphabet="ab *\t", max_size=4),
        ),
        max_size=10,
    )
)
def test_parsed_conversations_alternate_and_keep_no_blank_turns(lines):
    speakers, texts, _, _ = parse_conversation("\n".join(p + t for p, t in lines))
    assert len(speakers) == len(texts)
    assert all(a != b for a, b in zip(speakers, speakers[1:], strict=False))
    assert all(t.strip() for t in texts)
