"""Every dialog source a user brings, read into one in-memory type: Persona-Chat dialogs.

``read_dialogs(path)`` returns ``[{"personality": [...], "utterances": [{"history": [...],
"candidates": [...]}]}]`` (gold reply last), validated, whatever the source:

============== =================================================== ===============================
format         what                                                module
============== =================================================== ===============================
personachat    Persona-Chat JSON (a list, or ``{"train", "valid"}``) :mod:`.personachat_json`
parlai         ParlAI / ConvAI2 text, ``self`` and ``both`` personas  :mod:`.parlai`
synthetic-csv  Synthetic-Persona-Chat CSV, two dialogs per row       :mod:`.synthetic_csv`
plain          ``{"personality", "turns"}`` as a JSON list or JSONL  :mod:`.plain`
hf             ``hf:NAME``, a Hugging Face hub dataset              :mod:`.hf`
============== =================================================== ===============================

Formats without candidates give one candidate (the gold reply) per utterance; add
distractors with :func:`personachat.data.candidates.add_distractors`. Without ``format`` the
format is detected from the content, the extension breaking ties (see :func:`detect_format`).

Every reader reports what it found record by record (:mod:`.records`): by default any problem
refuses the file, listing every problem; with ``skip_invalid`` the invalid records are left
out and reported with the counts kept and dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from personachat.data.dialogs import DataError, validate_dialogs
from personachat.data.readers.files import head
from personachat.data.readers.hf import load_hf_records
from personachat.data.readers.parlai import parlai_records
from personachat.data.readers.personachat_json import personachat_records
from personachat.data.readers.plain import plain_records
from personachat.data.readers.records import Reading, print_to_stderr
from personachat.data.readers.synthetic_csv import synthetic_csv_records

__all__ = [
    "FORMATS",
    "DataError",
    "Reading",
    "detect_format",
    "lowercase_dialogs",
    "read_dialogs",
    "read_records",
]

FORMATS = ("personachat", "parlai", "synthetic-csv", "plain", "hf")
_HF_PREFIX = "hf:"
_BY_EXTENSION = {
    ".json": "personachat",
    ".jsonl": "plain",
    ".ndjson": "plain",
    ".csv": "synthetic-csv",
    ".txt": "parlai",
}
_PARLAI_LINE = re.compile(r"[0-9]{1,9} ")


def _unknown_format(path: Path, why: str) -> DataError:
    return DataError(
        f"{path}: cannot tell the dialog format ({why}) — pass format= (--format on the command "
        f"line) as one of {', '.join(FORMATS)}; personachat: Persona-Chat JSON, parlai: "
        "ParlAI/ConvAI2 text, synthetic-csv: Synthetic-Persona-Chat CSV, plain: JSON/JSONL of "
        '{"personality": [...], "turns": [...]}, hf: hf:NAME on the Hugging Face hub'
    )


def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path``, from what the file starts with, then its extension.

    JSON whose first dialog has ``"turns"`` (and not ``"utterances"``) is plain; other JSON is
    Persona-Chat, except that ``.jsonl`` is always plain. A first line ``N text`` is ParlAI;
    a header naming ``Best Generated Conversation`` is Synthetic-Persona-Chat. Otherwise the
    extension decides (.json, .jsonl, .csv, .txt), so that the reader for the format the user
    meant reports what is wrong; with no known extension either, a DataError lists the formats.
    """
    text = os.fspath(path)
    if text.startswith(_HF_PREFIX):
        return "hf"
    file = Path(text)
    extension = file.suffix.lower()
    start = head(file).lstrip()
    if start.startswith(("[", "{")):
        if extension in (".jsonl", ".ndjson"):
            return "plain"
        turns, utterances = start.find('"turns"'), start.find('"utterances"')
        if turns != -1 and (utterances == -1 or turns < utterances):
            return "plain"
        return "personachat"
    first_line = start.split("\n", 1)[0]
    if _PARLAI_LINE.match(first_line):
        return "parlai"
    if "best generated conversation" in first_line.lower():
        return "synthetic-csv"
    if extension in _BY_EXTENSION:
        return _BY_EXTENSION[extension]
    shown = first_line[:40] + ("..." if len(first_line) > 40 else "")
    why = f"it starts with {shown!r}" if start else "the file is empty"
    raise _unknown_format(file, why)


def lowercase_dialogs(dialogs: list[dict]) -> list[dict]:
    """Lowercase every persona sentence, history message and candidate (other keys kept)."""
    return [
        {
            **dialog,
            "personality": [s.lower() for s in dialog["personality"]],
            "utterances": [
                {
                    **u,
                    "history": [h.lower() for h in u["history"]],
                    "candidates": [c.lower() for c in u["candidates"]],
                }
                for u in dialog["utterances"]
            ],
        }
        for dialog in dialogs
    ]


def read_dialogs(
    path: str | os.PathLike,
    format: str | None = None,
    split: str = "train",
    lowercase: bool = False,
    *,
    skip_invalid: bool = False,
    allow_empty_personality: bool = False,
    report: Callable[[str], None] = print_to_stderr,
) -> list[dict]:
    """Read dialogs in any supported format as validated Persona-Chat dialogs.

    Args:
        path: a file, or ``hf:NAME`` for a Hugging Face hub dataset.
        format: one of :data:`FORMATS`; None detects it (:func:`detect_format`).
        split: the split of a Persona-Chat JSON dict of splits or of a hub dataset
            ("valid" also finds "validation"); ignored by the other formats.
        lowercase: lowercase all text (Persona-Chat is lowercase; your data need not be).
        skip_invalid: leave out the invalid records (conversations, dialogs, lines) instead
            of refusing the file; each problem and the counts kept and dropped go to
            ``report`` (standard error by default). A file none of whose records is valid,
            or whose structure is broken, is still an error.
        allow_empty_personality: accept dialogs without a persona (``"personality": []``).

    Raises DataError listing every problem found, with file, line or dialog index and field.
    """
    reading = read_records(path, format, split, allow_empty_personality)
    dialogs = reading.dialogs(skip_invalid, report)
    problems = validate_dialogs(dialogs, reading.source, allow_empty_personality)
    if problems:  # the readers check as they go; this guards against a reader's oversight
        raise DataError(
            problems, f"{reading.source}: read as {reading.what} but not valid dialogs:"
        )
    return lowercase_dialogs(dialogs) if lowercase else dialogs


def read_records(
    path: str | os.PathLike,
    format: str | None = None,
    split: str = "train",
    allow_empty_personality: bool = False,
) -> Reading:
    """Every record of ``path`` with its dialogs and problems (see :func:`read_dialogs`)."""
    text = os.fspath(path)
    if not text:
        raise DataError("empty path '' — pass the path of a dialog file or hf:NAME")
    if format is None:
        format = detect_format(text)
    elif format not in FORMATS:
        raise DataError(f"unknown format {format!r} — the formats are {', '.join(FORMATS)}")
    if format == "hf":
        return load_hf_records(text.removeprefix(_HF_PREFIX), split, allow_empty_personality)
    if format == "personachat":
        return personachat_records(Path(text), split, allow_empty_personality)
    reader = {
        "parlai": parlai_records,
        "synthetic-csv": synthetic_csv_records,
        "plain": plain_records,
    }[format]
    return reader(Path(text), allow_empty_personality)
