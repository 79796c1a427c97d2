"""Plain dialogs: the simplest file a user can write by hand or export from a chat log.

A JSON list, or JSONL (one JSON object per line), of
``{"personality": ["i like tea .", ...], "turns": ["hi !", "hello , i like tea .", ...]}``.
Turns alternate between the partner and the bot, **starting with the partner**; add
``"bot_starts": true`` when the bot speaks first (its opening line is then not learned, see
:mod:`personachat.data.readers.turns`). There are no candidates: each bot reply becomes the only
(gold) candidate of its utterance, and distractors are sampled later.
"""

from __future__ import annotations

import json
from pathlib import Path

from personachat.data.dialogs import DataError
from personachat.data.files import json_error_message
from personachat.data.readers.files import read_text
from personachat.data.readers.records import Reading
from personachat.data.readers.turns import dialog_from_turns
from personachat.json_limits import JSONLimitError, loads_bounded
from personachat.text import describe, did_you_mean, string_list_problems

__all__ = ["WHAT", "dialog_from_object", "plain_records", "read_plain"]

WHAT = 'plain dialogs (a JSON list or JSONL of {"personality": [...], "turns": [...]})'
_EXAMPLE = '{"personality": [...], "turns": [...]}'


# The two fields of a plain dialog: what one item is called, and how to fill an empty list.
_FIELDS = (
    (
        "personality",
        "persona sentence",
        'give at least one persona sentence, e.g. ["i like cats ."] (or set '
        "allow_empty_personality to read dialogs without a persona)",
    ),
    ("turns", "turn", 'list the messages in order, partner first, e.g. ["hi !", "hello !"]'),
)


def dialog_from_object(
    obj: object, where: str, allow_empty_personality: bool = False
) -> tuple[dict | None, list[str]]:
    """Check one plain dialog object and convert it; returns ``(dialog or None, problems)``.

    With ``allow_empty_personality`` the ``personality`` field may be empty or missing."""
    if not isinstance(obj, dict):
        return None, [f"{where}: expected a dialog object like {_EXAMPLE}, got {describe(obj)}"]
    if allow_empty_personality and not obj.get("personality"):
        obj = {**obj, "personality": []}
    problems = _field_problems(obj, where, allow_empty_personality)
    bot_starts = obj.get("bot_starts", False)
    if not isinstance(bot_starts, bool):
        problems.append(
            f'{where}, field "bot_starts": expected true or false, got {describe(bot_starts)}'
        )
    if problems:
        return None, problems
    turns = obj["turns"]
    by_bot = [(k % 2 == 0) == bot_starts for k in range(len(turns))]
    dialog = dialog_from_turns(obj["personality"], turns, by_bot)
    if not dialog["utterances"]:
        need = 3 if bot_starts else 2
        return None, [
            f'{where}, field "turns": no bot reply to learn — turns alternate '
            f"{'bot, partner' if bot_starts else 'partner, bot'}, ..., so a dialog "
            f"needs at least {need} turns{' with bot_starts' if bot_starts else ''}"
        ]
    return dialog, []


def _field_problems(obj: dict, where: str, allow_empty_personality: bool) -> list[str]:
    """Problems with the ``personality`` and ``turns`` fields: missing, or not a non-empty
    list of non-blank strings (an empty persona passes with ``allow_empty_personality``)."""
    problems = []
    for field, item, fix in _FIELDS:
        if field == "personality" and allow_empty_personality and obj[field] == []:
            continue
        if field not in obj:
            problems.append(f'{where}: missing field "{field}"' + _missing_hint(field, obj))
        else:
            problems += string_list_problems(
                obj[field], f'{where}, field "{field}"', fix=fix, item=item, blank_is_empty=True
            )
    return problems


def _missing_hint(field: str, obj: dict) -> str:
    """How to add the missing ``field``: a key of ``obj`` it looks like a typo of, or what
    the field holds (or, for a Persona-Chat dialog, the format to read it with)."""
    if did_you_mean(field, obj):
        return did_you_mean(field, obj)
    if field == "personality":
        return (
            " — add the bot's persona sentences, or set allow_empty_personality to "
            "read dialogs without a persona"
        )
    if field == "turns" and "utterances" in obj:
        return (
            '; this object has "utterances", so it is Persona-Chat data — write such '
            "dialogs as a JSON list and use --format personachat"
        )
    return ""


def _jsonl_objects(path: Path, text: str) -> list[tuple[str, object, str | None]]:
    """(location, object, None) for each non-blank line, or (location, None, problem) for a
    line that is not JSON."""
    objects: list[tuple[str, object, str | None]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            objects.append((where, loads_bounded(line, max_depth=None), None))
        except json.JSONDecodeError as exc:
            cut = (
                " — the line ends before the JSON does (truncated?)"
                if exc.pos >= len(line.rstrip())
                else ""
            )
            problem = (
                f"{where}, column {exc.colno}: not valid JSON "
                f"({exc.msg}){cut}; each line must be one dialog {_EXAMPLE}"
            )
            objects.append((where, None, problem))
        except JSONLimitError as err:  # nested past the parser's limit, a huge number
            objects.append((where, None, f"{where}: {err}; a dialog holds neither"))
    return objects


def read_plain(path: Path, allow_empty_personality: bool = False) -> list[dict]:
    """Read a plain-dialogs JSON or JSONL file; every problem is listed in one DataError."""
    return plain_records(path, allow_empty_personality).strict()


def plain_records(path: Path, allow_empty_personality: bool = False) -> Reading:
    """Every dialog (JSON list) or line (JSONL) of a plain-dialogs file with its problems."""
    text = read_text(path, WHAT)
    stripped = text.lstrip("\ufeff \t\r\n")
    unit = "dialog"
    try:
        data = loads_bounded(text, max_depth=None)
    except json.JSONDecodeError as exc:
        if stripped.startswith("["):  # a JSON list cut short or broken: one precise location
            raise DataError(json_error_message(path, text, exc)) from None
        objects, unit = _jsonl_objects(path, text), "line"
    except JSONLimitError as err:  # nested past the parser's limit, a huge number
        raise DataError(f"{path}: {err}; dialogs hold neither") from None
    else:
        if isinstance(data, list):
            objects = [(f"{path}: dialog {i}", obj, None) for i, obj in enumerate(data)]
        else:  # a single object: one dialog, or a one-line JSONL file
            objects = [(f"{path}: line 1", data, None)]
    reading = Reading(str(path), "plain dialog", unit)
    if not objects:
        reading.fatal.append(f"{path}: no dialogs — add at least one {_EXAMPLE}")
    for where, obj, problem in objects:
        if problem is not None:
            reading.add([], [problem])
            continue
        dialog, found = dialog_from_object(obj, where, allow_empty_personality)
        reading.add([dialog] if dialog is not None else [], found)
    return reading
