"""Reading, validating and downloading Persona-Chat dialogs.

The training data is the Persona-Chat JSON format used by TransferTransfo and by
``simpletransformers.conv_ai``: a list of dialogs, each
``{"personality": [str, ...], "utterances": [{"history": [str, ...], "candidates": [str, ...]}]}``.
The gold reply of an utterance is its *last* candidate; ``history`` starts with the other
speaker and is an empty list for the first turn. The public file is a dict of splits,
``{"train": [...], "valid": [...]}``, of the same dialogs. Extra keys anywhere are allowed and
kept untouched, so callers can carry their own annotations through.

Everything here is standard library only and runs before any tokenizer or model is loaded, so
that a wrong path, a truncated download or a hand-edited file is reported at once, completely
(every problem, not just the first) and in words that say where the problem is and how to fix
it, instead of surfacing later as a ``KeyError`` deep inside training.
"""

from __future__ import annotations

import difflib
import http.client
import json
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from personachat.errors import PersonachatError

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_LISTED_PROBLEMS",
    "PERSONACHAT_URL",
    "DataError",
    "download_personachat",
    "load_dialogs",
    "load_personachat_or_file",
    "personalities",
    "validate_dialogs",
]

logger = logging.getLogger(__name__)

PERSONACHAT_URL = (
    "https://s3.amazonaws.com/datasets.huggingface.co/personachat/personachat_self_original.json"
)

#: Files larger than this are refused before reading: the public Persona-Chat file is about
#: 200 MB, so anything past 1 GiB is almost certainly the wrong file (a model, an archive...).
MAX_FILE_BYTES = 1 << 30

#: ``str(DataError)`` lists at most this many problems, then says how many more there are.
MAX_LISTED_PROBLEMS = 50

_DOWNLOAD_CHUNK = 1 << 20
_SPLITS_EXAMPLE = '{"train": [...], "valid": [...]}'
_DIALOG_EXAMPLE = '{"personality": [...], "utterances": [...]}'
_UTTERANCE_EXAMPLE = '{"history": [...], "candidates": [...]}'


class DataError(PersonachatError, ValueError):
    """Raised for unusable input data.

    ``problems`` holds every problem found, each a self-contained sentence saying what is
    wrong, where (file, line/column or dialog index and field) and how to fix it. ``str()``
    lists them (at most :data:`MAX_LISTED_PROBLEMS`, then "... and N more"), so one run shows
    the user everything to fix rather than one error per attempt.

    It subclasses ``ValueError`` so code that already catches ``ValueError`` keeps working.
    """

    problems: list[str]

    def __init__(self, problems: str | Iterable[str], header: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else [str(p) for p in problems]
        self.header = header
        # Both go into args so the exception pickles (e.g. across DataLoader workers) intact.
        super().__init__(self.problems, header)

    def __str__(self) -> str:
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        hidden = len(self.problems) - len(shown)
        if self.header is None and len(self.problems) == 1:
            return self.problems[0]
        lines = [self.header or f"{len(self.problems)} problems found in the data:"]
        lines.extend(f"  - {problem}" for problem in shown)
        if hidden:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation


def _describe(value: object) -> str:
    """A short, never-raising description of a value for error messages (JSON vocabulary)."""
    try:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return f"the boolean {'true' if value else 'false'}"
        if isinstance(value, int):
            if value.bit_length() > 64:
                return "a very large number"
            return f"the number {value}"
        if isinstance(value, float):
            return f"the number {value!r}"
        if isinstance(value, str):
            if not value:
                return "an empty string"
            text = value if len(value) <= 40 else value[:37] + "..."
            return f"the string {json.dumps(text, ensure_ascii=False)}"
        if isinstance(value, (list, tuple)):
            n = len(value)
            return "an empty list" if n == 0 else f"a list of {n} item{'s' if n != 1 else ''}"
        if isinstance(value, dict):
            return "an empty object" if not value else "an object"
        return f"a Python {type(value).__name__}"
    except Exception:  # a hostile __len__/__repr__ must not break error reporting
        return "an unprintable value"


def _did_you_mean(wanted: str, keys: Iterable[object]) -> str:
    """' (found "persona" — rename it to "personality"?)' when a key looks like a typo."""
    names = [k for k in keys if isinstance(k, str)]
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    if not close:
        return ""
    return f'; found "{close[0]}" — rename it to "{wanted}"?'


def _check_string_list(
    value: object, where: str, *, fix: str, allow_empty_list: bool, allow_empty_strings: bool
) -> list[str]:
    """Problems with a field that must be a list of strings (personality/history/candidates)."""
    if not isinstance(value, (list, tuple)):
        hint = " — wrap it in a list: [...]" if isinstance(value, str) else f" — {fix}"
        return [f"{where}: expected a list of strings, got {_describe(value)}{hint}"]
    if not value and not allow_empty_list:
        return [f"{where}: empty list — {fix}"]
    problems = []
    for k, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(
                f"{where}, item {k}: expected a string, got {_describe(item)} — "
                "each entry must be text in double quotes"
            )
        elif not item and not allow_empty_strings:
            problems.append(f"{where}, item {k}: empty string — remove it or write the text")
    return problems


def _check_utterance(utterance: object, where: str) -> list[str]:
    if not isinstance(utterance, dict):
        return [
            f"{where}: expected an object like {_UTTERANCE_EXAMPLE}, got {_describe(utterance)}"
        ]
    problems = []
    if "history" not in utterance:
        problems.append(
            f'{where}: missing field "history" — add "history": the list of previous turns, '
            "starting with the other speaker ([] for the first turn)"
            + _did_you_mean("history", utterance)
        )
    else:
        problems += _check_string_list(
            utterance["history"],
            f'{where}, field "history"',
            fix="it must list the previous turns as strings ([] for the first turn)",
            allow_empty_list=True,
            allow_empty_strings=True,
        )
    if "candidates" not in utterance:
        problems.append(
            f'{where}: missing field "candidates" — add "candidates": a list of possible '
            "replies with the gold (true) reply last" + _did_you_mean("candidates", utterance)
        )
    else:
        problems += _check_string_list(
            utterance["candidates"],
            f'{where}, field "candidates"',
            fix="each utterance needs at least one candidate (the gold reply last)",
            allow_empty_list=False,
            allow_empty_strings=False,
        )
    return problems


def _check_dialog(dialog: object, where: str) -> list[str]:
    if not isinstance(dialog, dict):
        return [
            f"{where}: expected an object like {_DIALOG_EXAMPLE}, got {_describe(dialog)} — "
            "each entry of the top-level list must be one dialog"
        ]
    problems = []
    if "personality" not in dialog:
        problems.append(
            f'{where}: missing field "personality" — add "personality": a list of persona '
            'sentences such as ["i like cats."]' + _did_you_mean("personality", dialog)
        )
    else:
        problems += _check_string_list(
            dialog["personality"],
            f'{where}, field "personality"',
            fix='give at least one persona sentence, e.g. ["i like cats."]',
            allow_empty_list=False,
            allow_empty_strings=False,
        )
    if "utterances" not in dialog:
        problems.append(
            f'{where}: missing field "utterances" — add "utterances": a list of '
            f"{_UTTERANCE_EXAMPLE} objects" + _did_you_mean("utterances", dialog)
        )
        return problems
    utterances = dialog["utterances"]
    if not isinstance(utterances, (list, tuple)):
        problems.append(
            f'{where}, field "utterances": expected a list of {_UTTERANCE_EXAMPLE} objects, '
            f"got {_describe(utterances)}"
        )
    elif not utterances:
        problems.append(
            f'{where}, field "utterances": empty list — a dialog needs at least one utterance '
            f"{_UTTERANCE_EXAMPLE}; remove the dialog or add its turns"
        )
    else:
        for j, utterance in enumerate(utterances):
            problems += _check_utterance(utterance, f"{where}, utterance {j}")
    return problems


def validate_dialogs(dialogs: object, source: str = "<data>") -> list[str]:
    """Return every problem found in ``dialogs`` (an empty list means valid).

    Never raises, whatever it is given (this is what lets :func:`load_dialogs` report all
    problems at once). Each problem starts with ``source`` and a location such as
    ``dialog 3, utterance 1, field "candidates"`` (indices count from 0, as in
    ``dialogs[3]["utterances"][1]``), then says how to fix it. Extra keys are not problems.
    """
    try:
        if isinstance(dialogs, dict):
            hint = (
                " — this looks like a file of splits; load one split with "
                "load_dialogs(path, split=...)"
                if dialogs and all(isinstance(v, list) for v in dialogs.values())
                else ""
            )
            return [
                f"{source}: top level: expected a list of dialogs {_DIALOG_EXAMPLE}, "
                f"got {_describe(dialogs)}{hint}"
            ]
        if not isinstance(dialogs, (list, tuple)):
            return [
                f"{source}: top level: expected a list of dialogs {_DIALOG_EXAMPLE}, "
                f"got {_describe(dialogs)}"
            ]
        if not dialogs:
            return [
                f"{source}: no dialogs (empty list) — add at least one dialog {_DIALOG_EXAMPLE}"
            ]
        problems: list[str] = []
        for i, dialog in enumerate(dialogs):
            problems += _check_dialog(dialog, f"{source}: dialog {i}")
        return problems
    except Exception as exc:  # pragma: no cover - defensive: the contract is "never raises"
        return [f"{source}: could not be checked ({type(exc).__name__}: {exc})"]


# --------------------------------------------------------------------------- reading


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
    """Raise DataError unless ``path`` is a readable regular file within the size limit.

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


def _json_error_message(path: Path, text: str, exc: json.JSONDecodeError) -> str:
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
            "list of dialogs [...] or an object of splits " + _SPLITS_EXAMPLE
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
    text = read_file_text(file, "a Persona-Chat JSON file")
    if not text.strip():
        raise DataError(
            f"{file}: the file is empty — it should hold a JSON list of dialogs "
            f"{_DIALOG_EXAMPLE} (an interrupted download? then delete it and download again)"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(_json_error_message(file, text, exc)) from None
    except RecursionError:
        raise DataError(
            f"{file}: the JSON is nested too deeply to be Persona-Chat data — this looks like "
            "the wrong file"
        ) from None

    source = str(file)
    if isinstance(data, dict):
        if split in data:
            dialogs = data[split]
            source = f'{file} (split "{split}")'
        elif "personality" in data or "utterances" in data:
            raise DataError(
                f"{file}: top level is a single dialog object — wrap it in a list: "
                f"[{_DIALOG_EXAMPLE}]"
            )
        else:
            names = [str(k) for k in data]
            message = f'{file}: has no split "{split}"'
            if names:
                message += "; the splits in the file are " + ", ".join(f'"{n}"' for n in names[:20])
                close = difflib.get_close_matches(split, names, n=1, cutoff=0.5)
                if close:
                    message += f' — did you mean split="{close[0]}"?'
                else:
                    message += " — pass one of those as the split"
            else:
                message += (
                    " (the top-level object is empty) — the file should hold a list of "
                    f"dialogs or an object of splits {_SPLITS_EXAMPLE}"
                )
            raise DataError(message)
    elif isinstance(data, list):
        dialogs = data
    else:
        raise DataError(
            f"{file}: top level is {_describe(data)} — expected a list of dialogs "
            f"[{_DIALOG_EXAMPLE}, ...] or an object of splits {_SPLITS_EXAMPLE}"
        )

    problems = validate_dialogs(dialogs, source)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        raise DataError(
            problems,
            f"{source} is not valid Persona-Chat data ({count}; dialog and utterance numbers "
            "count from 0):",
        )
    return dialogs


# --------------------------------------------------------------------------- download


def _download_failed(url: str, target: Path, reason: str) -> DataError:
    return DataError(
        f"could not download Persona-Chat from {url}: {reason}. If this machine is offline or "
        "the address is blocked, either pass your own Persona-Chat JSON file (train_file=... "
        "in Python, --train-file on the command line), or download that URL on another "
        f"machine and put the file at {target} — it is then used without any network access."
    )


def download_personachat(
    cache_dir: str | os.PathLike, url: str = PERSONACHAT_URL, timeout: float = 60
) -> Path:
    """Return the path of the public Persona-Chat JSON in ``cache_dir``, downloading it once.

    A non-empty file already at ``cache_dir/<file name from the URL>`` is reused without any
    network access, which is also how offline users provide it by hand. The download goes to
    a temporary file in ``cache_dir`` that is moved into place with ``os.replace`` only when
    complete, so an interrupted download never leaves a truncated file that later looks valid.
    Any network or HTTP failure raises :class:`DataError` saying how to proceed without it.
    """
    cache = Path(cache_dir)
    name = Path(urllib.parse.urlparse(url).path).name or "personachat.json"
    target = cache / name
    if target.is_dir():
        raise DataError(
            f"{target}: is a directory, but the Persona-Chat download should be saved there as "
            "a file — remove or rename that directory, or use another cache_dir"
        )
    try:
        if target.is_file() and target.stat().st_size > 0:
            return target
    except OSError:
        pass
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{cache}: cannot create the cache directory for the Persona-Chat download "
            f"({exc.strerror or exc}) — choose a writable cache_dir"
        ) from None

    logger.info("Downloading Persona-Chat (about 200 MB) from %s to %s", url, target)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _download_failed(url, target, f"HTTP error {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _download_failed(url, target, f"{exc.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _download_failed(url, target, f"{type(exc).__name__}: {exc}") from None

    tmp_name = ""
    try:
        with response:
            expected = response.headers.get("Content-Length")
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=cache)
            total = 0
            first = b""
            with os.fdopen(fd, "wb") as out:
                while True:
                    try:
                        chunk = response.read(_DOWNLOAD_CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _download_failed(
                            url, target, f"the connection failed after {total} bytes ({exc!r})"
                        ) from None
                    if not chunk:
                        break
                    if not first.strip():
                        first = (first + chunk)[:64]
                    total += len(chunk)
                    if total > MAX_FILE_BYTES:
                        raise _download_failed(
                            url, target, f"the server sent more than {MAX_FILE_BYTES} bytes"
                        )
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise DataError(
                            f"{cache}: cannot write the Persona-Chat download "
                            f"({exc.strerror or exc}) — free some disk space or choose another "
                            "cache_dir"
                        ) from None
            if expected is not None and expected.isdigit() and int(expected) != total:
                raise _download_failed(
                    url, target, f"the download stopped after {total} of {expected} bytes"
                )
            if total == 0:
                raise _download_failed(url, target, "the server sent an empty file")
            if not first.lstrip().startswith((b"[", b"{")):
                raise _download_failed(
                    url,
                    target,
                    "the server sent something that is not JSON (a proxy or login page?), "
                    f"starting with {first.strip()[:40]!r}",
                )
        os.replace(tmp_name, target)
        tmp_name = ""
    except OSError as exc:
        raise DataError(
            f"{cache}: cannot save the Persona-Chat download ({exc.strerror or exc}) — choose "
            "a writable cache_dir with free space"
        ) from None
    finally:
        if tmp_name:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return target


def load_personachat_or_file(
    path: str | os.PathLike | None, split: str, cache_dir: str | os.PathLike
) -> list[dict]:
    """Load ``split`` of the user's file, or of the public Persona-Chat data when ``path`` is None.

    This mirrors ``simpletransformers``' ``train_file=None`` behaviour: no file means "use
    Persona-Chat", downloaded once into ``cache_dir`` (see :func:`download_personachat`).
    """
    if path is not None:
        return load_dialogs(path, split)
    file = download_personachat(cache_dir)
    try:
        return load_dialogs(file, split)
    except DataError as exc:
        raise DataError(
            [
                *exc.problems,
                f"{file} is the cached Persona-Chat download — delete it to download it again",
            ],
            exc.header,
        ) from None


# --------------------------------------------------------------------------- helpers


def personalities(dialogs: list[dict]) -> list[list[str]]:
    """Distinct personas (each a list of sentences) of validated dialogs, in first-seen order.

    Used by the interactive chat to pick a random persona without tokenizing the dataset.
    Two personas are the same when they have the same sentences in the same order.
    """
    seen: set[tuple[str, ...]] = set()
    result: list[list[str]] = []
    for dialog in dialogs:
        key = tuple(dialog["personality"])
        if key not in seen:
            seen.add(key)
            result.append(list(key))
    return result
