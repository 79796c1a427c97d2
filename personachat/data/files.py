"""Reading a dialog file from disk: checks every reader shares, and Persona-Chat JSON.

A wrong path, a directory, a named pipe or device, an archive, UTF-16, binary content or a
file far too big is refused before anything is parsed, each with a message naming the file and the fix; broken
JSON is reported by line and column with a hint (truncated? JSON Lines? a missing comma?).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

from personachat.data.dialogs import (
    DIALOG_EXAMPLE,
    SPLITS_EXAMPLE,
    DataError,
    validate_dialogs,
)
from personachat.fs import file_kind
from personachat.json_limits import JSONLimitError, loads_bounded
from personachat.text import describe

#: Files larger than this are refused before reading: the public Persona-Chat file is about
#: 200 MB, so anything past 1 GiB is almost certainly the wrong file (a model, an archive...).
MAX_FILE_BYTES = 1 << 30


def _missing_file_message(path: Path) -> str:
    shown = str(path)
    if not path.is_absolute():
        shown += f" (resolved against the current directory to {path.absolute()})"
    message = f"{shown}: file does not exist — check the path"
    parent = path.parent if str(path.parent) else Path(".")
    try:
        if parent.is_dir():
            names = sorted(os.listdir(parent))
            close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.75)
            if close:
                message += "; did you mean " + ", ".join(str(parent / c) for c in close) + "?"
        else:
            message += f"; its directory {parent} does not exist either"
    except OSError:
        pass
    return message


def check_file(path: Path, what: str) -> int:
    """Raise DataError unless ``path`` is a readable regular file within the size limit (a
    named pipe or a device is refused before it is opened).

    Shared by every reader. ``what`` names the expected content ("a ParlAI text file") for
    the messages. Returns the size in bytes; the limit is :data:`MAX_FILE_BYTES`, read at call
    time.
    """
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(_missing_file_message(path)) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot access the file ({exc.strerror or exc})") from None
    if path.is_dir():
        message = f"{path}: is a directory, not a file — pass {what} itself"
        try:
            found = sorted(p.name for p in path.iterdir() if p.is_file())[:5]
        except OSError:
            found = []
        if found:
            message += "; it contains " + ", ".join(found)
        raise DataError(message)
    kind = file_kind(path)
    if kind is not None:  # read whole, a pipe would block forever and a device never end
        raise DataError(
            f"{path}: is {kind}, not a regular file — save the data to a file and pass "
            f"{what} itself"
        )
    if info.st_size > MAX_FILE_BYTES:
        raise DataError(
            f"{path}: the file is {info.st_size / 1e9:.1f} GB, more than the "
            f"{MAX_FILE_BYTES / 1e9:.1f} GB limit for dialog files (the public Persona-Chat "
            f"file is about 0.2 GB) — this looks like the wrong file (a model, an archive?); "
            f"pass {what}, or split the data into smaller files"
        )
    return info.st_size


def check_bytes(path: Path, raw: bytes, what: str) -> None:
    """Refuse archives, UTF-16 and binary content by their first bytes."""
    not_text = f"this is not {what}"
    if raw.startswith(b"\x1f\x8b"):
        raise DataError(f"{path}: is gzip-compressed — {not_text}; decompress it first (gunzip)")
    if raw.startswith(b"PK\x03\x04"):
        raise DataError(f"{path}: is a zip archive — {not_text}; extract the dialog file from it")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: is UTF-16 text — re-save it as UTF-8")
    if b"\x00" in raw[:8192]:
        raise DataError(f"{path}: is a binary file (it contains NUL bytes) — {not_text}")


def read_file_text(path: Path, what: str) -> str:
    """The whole file as UTF-8 text (a BOM, as some Windows editors write, is tolerated);
    every way that can fail becomes a DataError naming the file."""
    check_file(path, what)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    check_bytes(path, raw, what)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}) — if this is text in another encoding, re-save it as UTF-8; "
            f"otherwise this is not {what}"
        ) from None


def json_error_message(path: Path, text: str, exc: json.JSONDecodeError) -> str:
    # json counts lines by "\n" only; splitlines() would also split on \r, \x1c... and drop a
    # final empty line, so a file cut right after a newline would index past the end.
    lines = text.split("\n")
    line_text = lines[exc.lineno - 1].rstrip("\r") if exc.lineno <= len(lines) else ""
    start = max(0, exc.colno - 1 - 30)
    snippet = line_text[start : exc.colno - 1 + 30].strip()
    if exc.pos >= len(text.rstrip()):
        hint = (
            "the file ends in the middle of the JSON, so it looks truncated (an interrupted "
            "download or copy?) — download or copy it again"
        )
    elif exc.msg == "Extra data":
        hint = (
            "there is more than one JSON value (JSON Lines?) — the file must be a single JSON "
            "list of dialogs [...] or an object of splits " + SPLITS_EXAMPLE
        )
    else:
        hint = "fix the JSON syntax there (a missing comma or quote, a trailing comma?)"
    near = f" near {json.dumps(snippet, ensure_ascii=False)}" if snippet else ""
    return f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}{near} — {hint}"


def load_dialogs(path: str | os.PathLike, split: str = "train") -> list[dict]:
    """Read a Persona-Chat JSON file, validate it and return its dialogs.

    The file holds either a list of dialogs (``split`` is then ignored) or a dict of splits
    such as ``{"train": [...], "valid": [...]}``, from which ``split`` is taken. Raises
    :class:`DataError` listing every problem (missing file, bad JSON with line and column,
    wrong structure with dialog/utterance index and field) before anything is returned.
    """
    if not os.fspath(path):
        raise DataError(
            "empty path '' — pass the path of a Persona-Chat JSON file, or None to download "
            "the public Persona-Chat data"
        )
    file = Path(path)
    dialogs, source = _select_split(file, _parse_json(file), split)
    problems = validate_dialogs(dialogs, source)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        raise DataError(
            problems,
            f"{source} is not valid Persona-Chat data ({count}; dialog and utterance numbers "
            "count from 0):",
        )
    return dialogs


def _parse_json(file: Path) -> object:
    """The JSON value of ``file``; an empty, broken or absurdly nested file is a DataError."""
    text = read_file_text(file, "a Persona-Chat JSON file")
    if not text.strip():
        raise DataError(
            f"{file}: the file is empty — it should hold a JSON list of dialogs "
            f"{DIALOG_EXAMPLE} (an interrupted download? then delete it and download again)"
        )
    try:
        return loads_bounded(text, max_depth=None)
    except json.JSONDecodeError as exc:
        raise DataError(json_error_message(file, text, exc)) from None
    except JSONLimitError as err:  # nested past the parser's limit, a 5,000-digit number
        raise DataError(
            f"{file}: {err} — this cannot be Persona-Chat data; is it the wrong file?"
        ) from None


def _select_split(file: Path, data: object, split: str) -> tuple[object, str]:
    """The dialogs of ``split`` (a list of dialogs is taken whole) and the source name that
    problems are reported under."""
    if isinstance(data, list):
        return data, str(file)
    if not isinstance(data, dict):
        raise DataError(
            f"{file}: top level is {describe(data)} — expected a list of dialogs "
            f"[{DIALOG_EXAMPLE}, ...] or an object of splits {SPLITS_EXAMPLE}"
        )
    if split in data:
        return data[split], f'{file} (split "{split}")'
    if "personality" in data or "utterances" in data:
        raise DataError(
            f"{file}: top level is a single dialog object — wrap it in a list: [{DIALOG_EXAMPLE}]"
        )
    raise DataError(_missing_split_message(file, [str(k) for k in data], split))


def _missing_split_message(file: Path, names: list[str], split: str) -> str:
    message = f'{file}: has no split "{split}"'
    if not names:
        return message + (
            " (the top-level object is empty) — the file should hold a list of "
            f"dialogs or an object of splits {SPLITS_EXAMPLE}"
        )
    message += "; the splits in the file are " + ", ".join(f'"{n}"' for n in names[:20])
    close = difflib.get_close_matches(split, names, n=1, cutoff=0.5)
    if close:
        return message + f' — did you mean split="{close[0]}"?'
    return message + " — pass one of those as the split"
