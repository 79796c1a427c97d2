"""Opening a dialog file safely, whatever format it is meant to be in.

Every reader goes through :func:`read_text`, so a wrong path, a directory, a 2 GB file given
by mistake, an archive, a binary file or text in another encoding is reported the same way
for every format, before any parsing, and in words naming the format that was expected.
:func:`head` lets format detection peek at the start of a file without reading all of it.
"""

from __future__ import annotations

from pathlib import Path

from personachat.data.dialogs import DataError
from personachat.data.files import check_bytes, check_file, read_file_text

__all__ = ["check_file", "head", "read_text"]

_HEAD_BYTES = 1 << 16


def head(path: Path, what: str = "a dialog file") -> str:
    """The first 64 KiB of a checked file as text (a multi-byte character cut at the end is
    dropped), for format detection."""
    check_file(path, what)
    try:
        with path.open("rb") as file:
            raw = file.read(_HEAD_BYTES)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    check_bytes(path, raw, what)
    return raw.decode("utf-8", errors="ignore").lstrip("\ufeff")


def read_text(path: Path, what: str) -> str:
    """The whole file as UTF-8 text (a BOM is tolerated); every failure is a DataError.

    An empty (or whitespace-only) file is an error too: no format has an empty valid file.
    """
    text = read_file_text(path, what)
    if not text.strip():
        raise DataError(f"{path}: the file is empty — it should hold {what}")
    return text
