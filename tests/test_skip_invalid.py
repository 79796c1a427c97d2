"""Real data as it comes: invalid records skipped on request (never silently, never by
default), speaker prefixes wrapped in markdown read as prefixes, dialogs without a persona
accepted on request, and the eval flags of the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personachat import ConvAIModel
from personachat.cli import build_parser, main
from personachat.config import resolve
from personachat.data.dialogs import DataError
from personachat.data.readers import read_dialogs
from personachat.encoding.inputs import SpecialIds, build_input_from_segments

HEADER = "user 1 personas,user 2 personas,Best Generated Conversation\n"
GOOD = '"i like tea.","i am a nurse.","User 1: hi\nUser 2: hello\nUser 1: tea?\nUser 2: yes"\n'
EMPTY = '"i like dogs.","i swim.",""\n'  # the persona columns filled, no conversation
MARKDOWN = (
    '"i ski.","i bake.","* * User 1: * * hi there\n**User 2:** hello!\n'
    '*User 1:* do you bake?\n* * User 2: * * every day * *"\n'
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def faulty_csv(tmp_path) -> Path:
    # Lines: 1 header, 2-5 GOOD, 6 EMPTY, 7-10 MARKDOWN.
    return write(tmp_path / "train.csv", HEADER + GOOD + EMPTY + MARKDOWN)


def test_markdown_wrapped_speaker_prefixes_are_speaker_prefixes(tmp_path):
    dialogs = read_dialogs(write(tmp_path / "md.csv", HEADER + MARKDOWN))

    user_1, user_2 = dialogs
    assert user_2["utterances"][-1] == {
        "history": ["hi there", "hello!", "do you bake?"],
        "candidates": ["every day"],
    }
    assert user_1["utterances"] == [
        {"history": ["hello!"], "candidates": ["do you bake?"]},
    ]


def test_convert_refuses_an_empty_conversation_by_default(faulty_csv, tmp_path, capsys):
    dst = tmp_path / "out.json"

    assert main(["convert", str(faulty_csv), str(dst)]) == 2

    err = capsys.readouterr().err
    assert f"{faulty_csv}: line 6 (conversation 1)" in err
    assert "empty" in err
    assert "line 7" not in err  # the markdown-wrapped conversation reads fine
    assert not dst.exists()


def test_convert_skip_invalid_keeps_the_rest_and_reports_the_dropped(faulty_csv, tmp_path, capsys):
    dst = tmp_path / "out.json"

    assert main(["convert", str(faulty_csv), str(dst), "--skip-invalid"]) == 0

    out, err = capsys.readouterr()
    assert (
        f"{faulty_csv}: skipping 1 invalid conversation (skip_invalid): kept 2 of 3 "
        "conversations, dropped 1:"
    ) in err
    assert f"  - {faulty_csv}: line 6 (conversation 1)" in err  # its place, as the error says
    assert "Read 4 dialogs" in out
    dialogs = json.loads(dst.read_text(encoding="utf-8"))
    assert [d["personality"] for d in dialogs] == [
        ["i like tea."],
        ["i am a nurse."],
        ["i ski."],
        ["i bake."],
    ]


def test_validate_skip_invalid_lists_what_would_be_dropped(faulty_csv, capsys):
    assert main(["validate", str(faulty_csv)]) == 1
    assert "line 6 (conversation 1)" in capsys.readouterr().out

    assert main(["validate", str(faulty_csv), "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "kept 2 of 3 conversations, dropped 1:" in out
    assert "valid (what --skip-invalid keeps)" in out
    assert "dialogs                  4" in out


def test_skipping_everything_is_still_an_error(tmp_path):
    with pytest.raises(DataError, match="none of its conversations is valid"):
        read_dialogs(write(tmp_path / "bad.csv", HEADER + EMPTY), skip_invalid=True)


def test_skip_invalid_drops_bad_dialogs_of_every_format(tmp_path):
    good = {"personality": ["i ski ."], "utterances": [{"history": ["hi"], "candidates": ["yo"]}]}
    bad = {"personality": ["i ski ."], "utterances": []}
    reports: list[str] = []

    dialogs = read_dialogs(
        write(tmp_path / "d.json", json.dumps([bad, good])),
        skip_invalid=True,
        report=reports.append,
    )

    assert dialogs == [good]
    assert reports[0].startswith(f"{tmp_path / 'd.json'}: skipping 1 invalid dialog")
    assert f'{tmp_path / "d.json"}: dialog 0, field "utterances": empty list' in reports[0]
    plain = "\n".join([json.dumps({"personality": ["a"], "turns": ["hi", "yo"]}), "{broken", "[]"])
    kept = read_dialogs(
        write(tmp_path / "p.jsonl", plain), skip_invalid=True, report=reports.append
    )
    assert len(kept) == 1 and "kept 1 of 3 lines, dropped 2:" in reports[1]
    parlai = "1 your persona: i ski .\n2 hi\tyo\n1 your persona: i bake .\n2 hi\n"
    kept = read_dialogs(write(tmp_path / "c.txt", parlai), skip_invalid=True, report=reports.append)
    assert kept[0]["personality"] == ["i ski ."] and len(kept) == 1
    assert "line 4 (dialog 1): no TAB" in reports[2]


def test_a_missing_persona_is_an_error_naming_the_option_unless_allowed(tmp_path):
    no_persona = [{"personality": [], "turns": ["hi", "hello", "how are you ?", "fine ."]}]
    path = write(tmp_path / "chat.json", json.dumps(no_persona))

    with pytest.raises(DataError, match="allow_empty_personality"):
        read_dialogs(path)
    dialogs = read_dialogs(path, allow_empty_personality=True)
    assert dialogs[0]["personality"] == []
    persona_chat = write(
        tmp_path / "pc.json",
        json.dumps(
            [{"personality": [], "utterances": [{"history": ["hi"], "candidates": ["yo"]}]}]
        ),
    )
    with pytest.raises(DataError, match="allow_empty_personality"):
        read_dialogs(persona_chat)
    assert read_dialogs(persona_chat, allow_empty_personality=True)[0]["personality"] == []
    parlai = write(tmp_path / "none.txt", "1 hi\tyo\n2 how are you ?\tfine .\n")
    with pytest.raises(DataError, match="allow_empty_personality"):
        read_dialogs(parlai)
    assert len(read_dialogs(parlai, allow_empty_personality=True)[0]["utterances"]) == 2


def test_dialogs_without_a_persona_train_and_evaluate(tiny_checkpoint, tmp_path):
    chats = [
        {"turns": ["hi , what do you do ?", f"i am a {job} .", "any pets ?", "i have a cat ."]}
        for job in ("nurse", "pilot", "baker", "teacher")
    ]
    path = write(tmp_path / "chats.jsonl", "\n".join(json.dumps(c) for c in chats))
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={
            "output_dir": str(tmp_path / "out"),
            "allow_empty_personality": True,
            "num_train_epochs": 1,
            "train_batch_size": 2,
            "save_steps": 0,
            "save_model_every_epoch": False,
            "max_length": 4,
            "silent": True,
        },
    )

    steps, _ = model.train_model(str(path), show_running_loss=False, verbose=False)
    results = model.eval_model(str(path), verbose=False, silent=True)

    assert steps > 0
    assert results["num_examples"] == 8 and results["language_model_loss"] > 0
    # one candidate per utterance: distractors from the other dialogs' replies, up to 20 (here
    # the 3 other jobs: "i have a cat ." is every dialog's own reply, never a distractor)
    assert results["eval_num_candidates"] == 4


def test_eval_flags_reach_the_options(tmp_path):
    options = build_parser().parse_args(
        ["eval", "--eval-file", "v.json", "--skip-invalid", "--ablate-persona"]
    )
    _, args = resolve(options)
    assert options.ablate_persona and args.skip_invalid
    train = build_parser().parse_args(["train", "--skip-invalid"])
    assert resolve(train)[1].skip_invalid
    assert not resolve(build_parser().parse_args(["train"]))[1].skip_invalid  # never the default


def test_an_empty_persona_leaves_no_persona_segment():
    special = SpecialIds(bos=0, eos=1, speaker1=2, speaker2=3, pad=4)

    laid_out = build_input_from_segments([], [[10, 11]], [20], special)

    assert laid_out["input_ids"] == [0, 2, 10, 11, 3, 20, 1]
    assert laid_out["token_type_ids"] == [3, 2, 2, 2, 3, 3, 3]
