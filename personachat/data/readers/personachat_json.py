"""Persona-Chat JSON (a list of dialogs, or ``{"train": [...], "valid": [...]}``), dialog by
dialog, so that invalid dialogs can be refused or skipped (:mod:`.records`).

The file and its top level are checked by :mod:`personachat.data.files` (missing file, broken
JSON with line and column, a missing split); each dialog by
:mod:`personachat.data.dialogs`, with its index and field in every problem.
"""

from __future__ import annotations

from pathlib import Path

from personachat.data.dialogs import DIALOG_EXAMPLE, validate_dialogs
from personachat.data.files import _parse_json, _select_split
from personachat.data.readers.records import Reading, add_checked

__all__ = ["personachat_records"]


def personachat_records(
    path: Path, split: str = "train", allow_empty_personality: bool = False
) -> Reading:
    """Every dialog of ``split`` of a Persona-Chat JSON file with its problems."""
    dialogs, source = _select_split(path, _parse_json(path), split)
    reading = Reading(
        source, "Persona-Chat", "dialog", note="; dialog and utterance numbers count from 0"
    )
    if not isinstance(dialogs, list) or not dialogs:  # not dialogs at all: nothing to skip
        reading.fatal += validate_dialogs(dialogs, source) or [
            f"{source}: no dialogs — add at least one dialog {DIALOG_EXAMPLE}"
        ]
        return reading
    for i, dialog in enumerate(dialogs):
        add_checked(reading, [dialog], f"{source}: dialog {i}", allow_empty_personality)
    return reading
