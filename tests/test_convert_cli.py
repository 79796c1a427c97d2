"""`personachat convert` and `personachat validate`, and training/evaluating on any format.

A few tests run the command line as a user would (subprocesses); the rest call
``personachat.cli.main`` in-process to stay fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from personachat import ConvAIModel
from personachat.cli import build_parser, main
from personachat.config import resolve
from personachat.data.candidates import add_distractors
from personachat.data.commands import write_json_atomic
from personachat.data.dialogs import DataError
from personachat.data.files import load_dialogs
from personachat.data.readers import read_dialogs

from .test_readers import PARLAI_BOTH, PLAIN, SYNTHETIC_CSV


def personachat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "personachat.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


RUSSIAN = [
    {
        "personality": ["я работаю врачом .", "у меня есть кот 🐱 ."],
        "turns": ["привет !", "здравствуй 🙂", "кем ты работаешь ?", "я врач ."],
    },
    {"personality": ["я люблю чай 🍵 ."], "turns": ["что ты пьёшь ?", "чай , конечно ."]},
    {"personality": ["i like jazz ."], "turns": ["hi", "hello , i like jazz 🎷 ."]},
]


# --------------------------------------------------------------------------- as a user runs it


def test_convert_keeps_cyrillic_and_emoji_and_reports_counts(tmp_path):
    src = write(
        tmp_path / "ru.jsonl", "\n".join(json.dumps(d, ensure_ascii=False) for d in RUSSIAN) + "\n"
    )
    dst = tmp_path / "ru.json"

    done = personachat("convert", str(src), str(dst), "--num-candidates", "2", "--seed", "5")

    assert done.returncode == 0, done.stderr
    assert f"Read 3 dialogs (4 utterances) from {src} as plain." in done.stdout
    assert "Added 4 distractor candidates sampled from other dialogs" in done.stdout
    raw = dst.read_text(encoding="utf-8")
    assert "здравствуй 🙂" in raw and "\\u" not in raw  # readable UTF-8, not escapes
    expected, _ = add_distractors(read_dialogs(src), 2, seed=5)
    assert load_dialogs(dst) == expected


def test_convert_never_leaves_a_partial_or_clobbered_output(tmp_path):
    dst = write(tmp_path / "out.json", '["the previous, good output"]')
    bad = write(tmp_path / "bad.jsonl", '{"personality": ["a"], "turns": ["hi", "hel')

    done = personachat("convert", str(bad), str(dst))

    assert done.returncode == 2
    assert done.stderr.startswith("personachat convert: error:")
    assert "line 1, column" in done.stderr and "Traceback" not in done.stderr
    assert dst.read_text(encoding="utf-8") == '["the previous, good output"]'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "out.json"]


def test_validate_lists_every_problem_with_its_location(tmp_path):
    src = write(
        tmp_path / "mine.jsonl",
        "\n".join(
            [
                json.dumps(RUSSIAN[0], ensure_ascii=False),
                '{"personality": ["a"], "turns": [',
                json.dumps({"personality": [], "turns": ["hi", "hello"]}),
                json.dumps({"personality": ["a ."], "turns": ["hi", ""]}),
            ]
        ),
    )

    done = personachat("validate", str(src))

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == f"{src}: 3 problems:"
    assert f"{src}: line 2, column" in lines[1] and "truncated" in lines[1]
    assert f'{src}: line 3, field "personality": empty list' in lines[2]
    assert f'{src}: line 4, field "turns", item 1: empty turn' in lines[3]


# --------------------------------------------------------------------------- in-process


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("valid_both_original.txt", PARLAI_BOTH),
        ("spc.csv", SYNTHETIC_CSV),
        ("mine.json", json.dumps(PLAIN, ensure_ascii=False)),
        ("mine.jsonl", "\n".join(json.dumps(d, ensure_ascii=False) for d in RUSSIAN)),
        (
            "pc.json",
            json.dumps(
                {
                    "train": [
                        {
                            "personality": ["я тут ."],
                            "utterances": [{"history": ["привет"], "candidates": ["нет", "да 👍"]}],
                        }
                    ]
                },
                ensure_ascii=False,
            ),
        ),
    ],
    ids=["parlai", "synthetic-csv", "plain-json", "plain-jsonl", "personachat"],
)
def test_every_format_round_trips_through_convert(tmp_path, capsys, name, text):
    src = write(tmp_path / name, text)
    dst = tmp_path / "out" / "converted.json"
    dst.parent.mkdir()

    assert main(["convert", str(src), str(dst)]) == 0

    assert read_dialogs(dst) == read_dialogs(src)
    assert read_dialogs(dst, format="personachat") == load_dialogs(dst)


def test_convert_lowercases_on_request(tmp_path, capsys):
    src = write(
        tmp_path / "a.jsonl", json.dumps({"personality": ["Я Тут ."], "turns": ["ПРИВЕТ", "Hi 🙂"]})
    )
    assert main(["convert", str(src), str(tmp_path / "b.json"), "--lowercase"]) == 0
    assert load_dialogs(tmp_path / "b.json") == [
        {
            "personality": ["я тут ."],
            "utterances": [{"history": ["привет"], "candidates": ["hi 🙂"]}],
        }
    ]


def test_a_write_that_fails_midway_leaves_nothing_behind(tmp_path):
    dst = write(tmp_path / "out.json", "old")
    with pytest.raises(TypeError):  # json.dump has written '[{"a": 1}, ' when this fails
        write_json_atomic(dst, [{"a": 1}, object()])
    assert dst.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(DataError, match="output folder does not exist"):
        write_json_atomic(tmp_path / "no" / "such.json", [])


def test_validate_prints_counts(tmp_path, capsys):
    src = write(tmp_path / "spc.csv", SYNTHETIC_CSV)

    assert main(["validate", str(src), "--num-candidates", "2"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{src} (synthetic-csv): valid",
        "  dialogs                  2",
        "  utterances               4",
        "  candidates per utterance min 1, max 1",
        "  persona sentences        4 (per dialog min 2, max 2)",
        "  num_candidates=2: 4 distractors would be sampled from other dialogs",
    ]
    assert main(["validate", str(src), "--num-candidates", "9"]) == 1
    assert "lower num_candidates to at most 3" in capsys.readouterr().out


def test_validate_counts_tokens_as_the_model_sees_them(tmp_path, capsys, tiny_checkpoint):
    from transformers import AutoTokenizer

    dialogs = [
        {
            "personality": ["i have a cat ."],
            "utterances": [
                {"history": ["hi , what do you do ?"], "candidates": ["i am a nurse ."]}
            ],
        }
    ]
    src = write(tmp_path / "one.json", json.dumps(dialogs))
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    texts = ["i have a cat .", "hi , what do you do ?", "i am a nurse ."]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    # <bos> persona, <speaker1> message, <speaker2> reply <eos>
    expected = 1 + lengths[0] + 1 + lengths[1] + 1 + lengths[2] + 1

    assert main(["validate", str(src), "--tokenizer", str(tiny_checkpoint)]) == 0

    out = capsys.readouterr().out
    assert (
        f"tokens per example       p50 {expected}, p95 {expected}, max {expected} "
        "(gold reply, max_history=2)"
    ) in out


def test_train_and_eval_take_any_format(tmp_path, tiny_checkpoint, capsys):
    options = build_parser().parse_args(["eval", "--format", "synthetic-csv"])
    assert resolve(options)[1].data_format == "synthetic-csv"

    src = write(tmp_path / "dialogs.data", SYNTHETIC_CSV)  # no telling extension: --format
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={
            "num_candidates": 2,
            "data_format": "synthetic-csv",
            "num_train_epochs": 1,
            "train_batch_size": 2,
            "eval_batch_size": 2,
            "save_model_every_epoch": False,
            "output_dir": str(tmp_path / "out"),
            "max_length": 4,
        },
    )
    model.train_model(src)
    results = model.eval_model(src, verbose=False)

    assert f"{src}: added 4 distractor candidates sampled from other dialogs" in (
        capsys.readouterr().out
    )
    assert 0.0 <= results["hits@1"] <= 1.0
