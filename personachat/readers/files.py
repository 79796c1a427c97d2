"""Opening a dialog file safely, whatever format it is meant to be in.

Every reader goes through :func:`read_text`, so a wrong path, a directory, a 2 GB file given
by mistake, an archive, a binary file or text in another encoding is reported the same way
for every format, before any parsing, and in words naming the format that was expected.
:func:`head` lets format detection peek at the start of a file without reading all of it.
"""

from __future__ import annotations

from pathlib import Path

from .. import data
from ..data import DataError, _missing_file_message

__all__ = ["check_file", "head", "read_text"]

_HEAD_BYTES = 1 << 16


def check_file(path: Path, what: str) -> int:
    """Raise DataError unless ``path`` is a readable regular file within the size limit.

    ``what`` names the expected content ("a ParlAI text file") for the messages. Returns the
    size in bytes. The size limit is ``personachat.data.MAX_FILE_BYTES``, read at call time.
    """
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(_missing_file_message(path)) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot access the file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file — pass {what} itself")
    limit = data.MAX_FILE_BYTES
    if info.st_size > limit:
        raise DataError(
            f"{path}: the file is {info.st_size / 1e9:.1f} GB, more than the "
            f"{limit / 1e9:.1f} GB limit for dialog files — this looks like the wrong file "
            f"(a model, an archive?); pass {what}, or split the data into smaller files"
        )
    return info.st_size


def _check_bytes(path: Path, raw: bytes, what: str) -> None:
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


def head(path: Path, what: str = "a dialog file") -> str:
    """The first 64 KiB of a checked file as text (a multi-byte character cut at the end is
    dropped), for format detection."""
    check_file(path, what)
    try:
        with path.open("rb") as file:
            raw = file.read(_HEAD_BYTES)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    _check_bytes(path, raw, what)
    return raw.decode("utf-8", errors="ignore").lstrip("\ufeff")


def read_text(path: Path, what: str) -> str:
    """The whole file as UTF-8 text (a BOM is tolerated); every failure is a DataError.

    An empty (or whitespace-only) file is an error too: no format has an empty valid file.
    """
    check_file(path, what)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    _check_bytes(path, raw, what)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}) — if this is text in another encoding, re-save it as UTF-8; "
            f"otherwise this is not {what}"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty — it should hold {what}")
    return text
