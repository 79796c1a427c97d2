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

from personachat.data.dialogs import DataError, _describe, _did_you_mean
from personachat.data.files import json_error_message
from personachat.data.readers.files import read_text
from personachat.data.readers.turns import dialog_from_turns, string_list_problems

__all__ = ["WHAT", "dialog_from_object", "read_plain"]

WHAT = 'plain dialogs (a JSON list or JSONL of {"personality": [...], "turns": [...]})'
_EXAMPLE = '{"personality": [...], "turns": [...]}'


def dialog_from_object(obj: object, where: str) -> tuple[dict | None, list[str]]:
    """Check one plain dialog object and convert it; returns ``(dialog or None, problems)``."""
    if not isinstance(obj, dict):
        return None, [f"{where}: expected a dialog object like {_EXAMPLE}, got {_describe(obj)}"]
    problems = []
    for field, what, fix in (
        (
            "personality",
            "persona sentence",
            'give at least one persona sentence, e.g. ["i like cats ."]',
        ),
        ("turns", "turn", 'list the messages in order, partner first, e.g. ["hi !", "hello !"]'),
    ):
        if field not in obj:
            hint = ""
            if field == "turns" and "utterances" in obj:
                hint = (
                    '; this object has "utterances", so it is Persona-Chat data — write such '
                    "dialogs as a JSON list and use --format personachat"
                )
            problems.append(
                f'{where}: missing field "{field}"' + (_did_you_mean(field, obj) or hint)
            )
        else:
            problems += string_list_problems(obj[field], f'{where}, field "{field}"', what, fix)
    bot_starts = obj.get("bot_starts", False)
    if not isinstance(bot_starts, bool):
        problems.append(
            f'{where}, field "bot_starts": expected true or false, got {_describe(bot_starts)}'
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


def _jsonl_objects(path: Path, text: str) -> tuple[list[tuple[str, object]], list[str]]:
    """(location, object) for each non-blank line, and a problem for each line that is not JSON."""
    objects, problems = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            objects.append((f"{path}: line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            cut = (
                " — the line ends before the JSON does (truncated?)"
                if exc.pos >= len(line.rstrip())
                else ""
            )
            problems.append(
                f"{path}: line {n}, column {exc.colno}: not valid JSON "
                f"({exc.msg}){cut}; each line must be one dialog {_EXAMPLE}"
            )
        except RecursionError:
            problems.append(f"{path}: line {n}: JSON nested too deeply to be a dialog")
    return objects, problems


def read_plain(path: Path) -> list[dict]:
    """Read a plain-dialogs JSON or JSONL file; every problem is listed in one DataError."""
    text = read_text(path, WHAT)
    stripped = text.lstrip("\ufeff \t\r\n")
    problems: list[str] = []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if stripped.startswith("["):  # a JSON list cut short or broken: one precise location
            raise DataError(json_error_message(path, text, exc)) from None
        objects, problems = _jsonl_objects(path, text)
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be dialogs") from None
    else:
        if isinstance(data, list):
            objects = [(f"{path}: dialog {i}", obj) for i, obj in enumerate(data)]
        else:  # a single object: one dialog, or a one-line JSONL file
            objects = [(f"{path}: line 1", data)]
    if not objects and not problems:
        problems.append(f"{path}: no dialogs — add at least one {_EXAMPLE}")
    dialogs = []
    for where, obj in objects:
        dialog, found = dialog_from_object(obj, where)
        problems += found
        if dialog is not None:
            dialogs.append(dialog)
    if problems:
        raise DataError(
            problems,
            f"{path} is not valid plain dialog data "
            f"({len(problems)} problem{'s' * (len(problems) != 1)}):",
        )
    return dialogs
