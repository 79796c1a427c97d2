"""The one atomic writer: every saved folder reaches the disk (files and folders fsynced)
before it is called saved, and a full disk is one error naming the path and the space."""

from __future__ import annotations

import errno
import multiprocessing
import os
from pathlib import Path

import pytest

from personachat import ConvAIModel
from personachat.fs import DiskFullError, remove_folder, write_file_atomic, write_folder_atomic


@pytest.fixture()
def synced(monkeypatch) -> list[Path]:
    """The paths os.fsync is called on, in order (read back from the descriptors)."""
    paths: list[Path] = []
    real = os.fsync

    def recording_fsync(fd: int) -> None:
        paths.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return paths


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="Linux /proc only")


def fill_two_files(tmp: Path) -> None:
    (tmp / "config.json").write_text("{}")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "weights.bin").write_bytes(b"\0" * 1000)


@needs_proc
def test_every_file_and_folder_of_a_saved_folder_is_fsynced(tmp_path, synced):
    write_folder_atomic(tmp_path / "model", fill_two_files)

    names = {path.name for path in synced}
    assert {"config.json", "weights.bin", "sub"} <= names  # files and their folder
    assert synced[-1] == tmp_path  # the rename itself, after everything in it


@needs_proc
def test_a_merged_save_syncs_the_folder_it_moved_files_into(tmp_path, synced):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "report.md").write_text("kept")
    write_folder_atomic(tmp_path / "model", fill_two_files, merge=True)

    assert tmp_path / "model" in synced and synced[-1] == tmp_path
    assert (tmp_path / "model" / "report.md").read_text() == "kept"


@needs_proc
def test_the_final_model_is_fsynced_before_it_is_called_saved(tiny_checkpoint, tmp_path, synced):
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"silent": True})
    saved = model.save_model(tmp_path / "final")

    names = {path.name for path in synced}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    assert saved.parent in synced  # the folder that holds the renamed model


def test_a_full_disk_names_the_path_and_how_much_and_keeps_the_old_folder(tmp_path):
    target = tmp_path / "model"
    write_folder_atomic(target, lambda tmp: (tmp / "old.txt").write_text("old"))

    def fills_the_disk(tmp: Path) -> None:
        (tmp / "part.bin").write_bytes(b"\0" * 5000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "model.safetensors"))

    with pytest.raises(DiskFullError) as full:
        write_folder_atomic(target, fills_the_disk)
    message = str(full.value)
    assert message.startswith("No space left on device writing ")
    assert "model.safetensors" in message and f"(for {target})" in message
    assert "4.9 KB written before the disk filled" in message
    assert "free there now" in message and "\n" not in message
    assert (target / "old.txt").read_text() == "old"  # nothing replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left


def test_a_library_error_about_a_full_disk_is_named_too(tmp_path):
    def safetensors_style(tmp: Path) -> None:  # safetensors raises its own error type
        raise RuntimeError(
            "Error while serializing: IoError(No space left on device (os error 28))"
        )

    with pytest.raises(DiskFullError, match="No space left on device writing"):
        write_folder_atomic(tmp_path / "model", safetensors_style)
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors pass through as they are
        write_folder_atomic(
            tmp_path / "model", lambda tmp: (_ for _ in ()).throw(RuntimeError("unrelated"))
        )


def test_a_full_disk_during_a_file_write_names_the_file(tmp_path, monkeypatch):
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError, match="eval_results.json"):
        write_file_atomic(tmp_path / "eval_results.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_midway_leaves_the_old_folder_whole_and_no_temporary(tmp_path):
    target = tmp_path / "model"
    write_folder_atomic(target, fill_two_files)

    def fails_after_one_file(tmp: Path) -> None:
        (tmp / "config.json").write_text('{"new": true}')
        raise KeyboardInterrupt  # Ctrl-C in the middle of a save

    with pytest.raises(KeyboardInterrupt):
        write_folder_atomic(target, fails_after_one_file)
    assert (target / "config.json").read_text() == "{}"
    assert (target / "sub" / "weights.bin").stat().st_size == 1000
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def _write_and_die(target: str) -> None:
    """In a child: start writing ``target``, then die (as if killed) before it is in place."""

    def die(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"half")
        os._exit(9)

    write_folder_atomic(target, die)


def test_the_temporary_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model"
    child = multiprocessing.get_context("fork").Process(target=_write_and_die, args=(target,))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    [leftover] = tmp_path.iterdir()
    assert leftover.name.startswith(".model.tmp-") and not target.exists()

    write_folder_atomic(target, fill_two_files)

    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "model"

    def write_another_meanwhile(tmp: Path) -> None:
        write_folder_atomic(target, fill_two_files)  # its clean-up must spare ``tmp``
        assert tmp.is_dir()
        (tmp / "config.json").write_text('{"second": true}')

    write_folder_atomic(target, write_another_meanwhile)

    assert (target / "config.json").read_text() == '{"second": true}'


def test_keep_leaves_an_entry_another_writer_landed_first(tmp_path):
    """A cache entry: the same name is the same content, and the first may be in use."""
    target = tmp_path / "entry"

    def another_writer_lands_first(tmp: Path) -> None:
        write_folder_atomic(target, lambda other: (other / "manifest.json").write_text("1"))
        (tmp / "manifest.json").write_text("2")

    complete = lambda entry: (entry / "manifest.json").is_file()  # noqa: E731
    write_folder_atomic(target, another_writer_lands_first, keep=complete)
    assert (target / "manifest.json").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]

    write_folder_atomic(target, another_writer_lands_first)  # without keep: replaced
    assert (target / "manifest.json").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_a_removed_folder_is_gone_and_leaves_nothing(tmp_path):
    write_folder_atomic(tmp_path / "checkpoint-2", fill_two_files)
    remove_folder(tmp_path / "checkpoint-2")
    assert list(tmp_path.iterdir()) == []
