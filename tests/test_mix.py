"""Training mixes (personachat.data.mix) and the bundled Synthetic-Persona-Chat split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personachat.data import mix
from personachat.data.dialogs import DataError
from personachat.data.mix import MixError, mix_dialogs, parse_source, write_mix
from personachat.data.readers import read_dialogs
from personachat.data.synthetic import dumps_dialogs, generate_dialogs

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SPC_DIR = DATA_DIR / "synthetic-persona-chat"
SHARED_SPC = DATA_DIR.parents[1] / "shared" / "data" / "synthetic-persona-chat" / "valid.csv"


def quiet(message: str) -> None:
    """A ``report`` that keeps the readers' notes out of the test output."""


def key(dialog: dict) -> str:
    """A dialog as one comparable string."""
    return json.dumps(dialog, sort_keys=True)


@pytest.fixture
def two_files(tmp_path) -> tuple[Path, Path]:
    """Two small Persona-Chat JSON files: 30 valid dialogs and 12 unseen ones."""
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(dumps_dialogs(generate_dialogs(30, "valid", seed=1)), encoding="utf-8")
    second.write_text(dumps_dialogs(generate_dialogs(12, "unseen", seed=1)), encoding="utf-8")
    return first, second


# --- the bundled Synthetic-Persona-Chat split -----------------------------------------------


def test_bundled_spc_split_reads_as_two_dialogs_per_conversation():
    train = read_dialogs(SPC_DIR / "train.csv", report=quiet)
    heldout = read_dialogs(SPC_DIR / "heldout.csv", report=quiet)
    assert (len(train), len(heldout)) == (1800, 200)  # conversations 0-899 and 900-999
    assert (SPC_DIR / "README.md").read_text(encoding="utf-8").count("CC-BY 4.0") >= 1


@pytest.mark.skipif(not SHARED_SPC.is_file(), reason="the shared Synthetic-Persona-Chat CSV")
def test_bundled_spc_split_is_the_original_file_byte_for_byte():
    original = SHARED_SPC.read_bytes()
    header = original[: original.index(b"\r\n") + 2]
    train, heldout = (SPC_DIR / "train.csv").read_bytes(), (SPC_DIR / "heldout.csv").read_bytes()
    assert train.startswith(header) and heldout.startswith(header)
    assert train + heldout[len(header) :] == original


# --- mixing ---------------------------------------------------------------------------------


def test_mix_draws_the_counts_asked_and_none_takes_all(two_files):
    first, second = two_files
    dialogs = mix_dialogs({first: 10, second: None}, seed=0)
    from_first = {key(d) for d in read_dialogs(first)}
    assert len(dialogs) == 22
    assert sum(key(d) in from_first for d in dialogs) == 10
    assert len({key(d) for d in dialogs}) == 22  # drawn without replacement
    assert mix_dialogs({first: 0, second: 3}, seed=0).__len__() == 3


def test_mix_reads_the_spc_csv_beside_json():
    dialogs = mix_dialogs(
        {SPC_DIR / "heldout.csv": 40, DATA_DIR / "history_valid.json": 10}, seed=0, report=quiet
    )
    assert len(dialogs) == 50
    with_history_probes = [d for d in dialogs if "probe" in d["utterances"][-1]]
    assert 0 < len(with_history_probes) <= 10


def test_mix_is_deterministic_by_seed_and_shuffles_sources_together(two_files):
    first, second = two_files
    sources = {first: 20, second: 12}
    mixed = mix_dialogs(sources, seed=3)
    assert [key(d) for d in mix_dialogs(sources, seed=3)] == [key(d) for d in mixed]
    assert [key(d) for d in mix_dialogs(sources, seed=4)] != [key(d) for d in mixed]
    from_second = {key(d) for d in read_dialogs(second)}
    positions = [k for k, d in enumerate(mixed) if key(d) in from_second]
    assert positions != list(range(20, 32)) and positions != list(range(12))  # interleaved
    # Changing one file's count leaves what is drawn from the others as it was.
    again = mix_dialogs({first: 20, second: 5}, seed=3)
    assert {key(d) for d in again} - from_second == {key(d) for d in mixed} - from_second


def test_heldout_conversations_never_enter_a_mix_of_train_csv():
    sources = {SPC_DIR / "train.csv": None, DATA_DIR / "persona_train.json": 50}
    dialogs = mix_dialogs(sources, seed=0, report=quiet)
    assert len(dialogs) == 1800 + 50

    def replies(dialog: dict) -> tuple[str, ...]:
        return tuple(u["candidates"][-1] for u in dialog["utterances"])

    mixed = {replies(d) for d in dialogs}
    heldout = read_dialogs(SPC_DIR / "heldout.csv", report=quiet)
    assert not [d for d in heldout if replies(d) in mixed]
    assert not {key(d) for d in heldout} & {key(d) for d in dialogs}


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (-1, r"a\.json: the count must be >= 0, got -1"),
        (2.5, r"a\.json: the count must be a whole number .* got 2\.5"),
        (True, r"a\.json: the count must be a whole number .* got True"),
        ("5", r"a\.json: the count must be a whole number .* got '5'"),
        (31, r"a\.json: asked for 31 dialogs but the file has 30 — lower the count"),
    ],
)
def test_mix_refuses_bad_counts_naming_the_file(two_files, count, message):
    with pytest.raises(MixError, match=message):
        mix_dialogs({two_files[0]: count}, seed=0)


def test_mix_refuses_no_sources_a_file_twice_and_unreadable_files(two_files, tmp_path):
    first, _ = two_files
    with pytest.raises(MixError, match="no sources to mix"):
        mix_dialogs({}, seed=0)
    twice = {str(first): 1, f"{first.parent}/./{first.name}": 2}
    with pytest.raises(MixError, match="listed twice"):
        mix_dialogs(twice, seed=0)
    with pytest.raises(DataError, match=r"missing\.json.*does not exist"):
        mix_dialogs({first: 1, tmp_path / "missing.json": 1}, seed=0)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"personality": ["i am here ."]}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json.*utterances"):
        mix_dialogs({broken: None}, seed=0)


def test_write_mix_writes_a_file_training_reads_and_nothing_on_error(two_files, tmp_path):
    first, second = two_files
    out = tmp_path / "mixes" / "mix.json"
    dialogs = write_mix(out, {first: 4, second: 2}, seed=1)
    assert read_dialogs(out) == dialogs == mix_dialogs({first: 4, second: 2}, seed=1)
    assert sorted(p.name for p in out.parent.iterdir()) == ["mix.json"]  # no temporaries
    with pytest.raises(MixError):
        write_mix(tmp_path / "other.json", {first: 99}, seed=1)
    assert not (tmp_path / "other.json").exists()


def test_command_line_writes_the_mix(two_files, tmp_path, capsys):
    first, second = two_files
    out = tmp_path / "mix.json"
    assert mix.main(["--out", str(out), "--seed", "2", f"{first}=5", str(second)]) == 0
    assert len(read_dialogs(out)) == 17
    assert "17 dialogs from 2 files (seed 2)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mix.main(["--out", str(out), f"{first}=many"])
    assert "must be a whole number" in capsys.readouterr().err


def test_parse_source():
    assert parse_source("data/a.json=12") == ("data/a.json", 12)
    assert parse_source("data/a.json") == ("data/a.json", None)
    with pytest.raises(MixError, match="no file before"):
        parse_source("=3")
