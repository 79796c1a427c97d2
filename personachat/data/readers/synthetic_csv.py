"""Synthetic-Persona-Chat CSV (Google Research, CC-BY 4.0): LLM-generated persona conversations.

Columns ``user 1 personas`` and ``user 2 personas`` hold one persona sentence per line;
``Best Generated Conversation`` holds the conversation, one message per line, each starting
``User 1:`` or ``User 2:``. Each conversation gives **two** dialogs, one per speaker as the bot
(User 1's first, then User 2's), each with the bot's persona only and the bot's replies as
utterances (see :mod:`personachat.data.readers.turns` for how an opening line is handled).

The generated text is not always tidy, so the reader follows fixed rules (measured on the
1,000 validation conversations):

- Speaker prefixes wrapped in markdown emphasis are speaker prefixes: ``*User 1:* hi``,
  ``**User 1:** hi``, ``* * User 1: * * hi``, ``* User 1: hi *`` and ``**User 1**: hi``.
- Stage directions — lines in brackets or parentheses (``[A few minutes later]``), wrapped in
  ``*...*`` or ``_..._``, or made only of ``* - _ = ~ # .`` (``* * *``) — are dropped.
- Any other line without a speaker prefix continues the previous message (a recipe spread
  over lines, "7pm"); lines before the first speaker line cannot be attributed and are
  dropped (logged).
- Consecutive messages of one speaker are joined into one turn, so turns alternate.

A conversation in which no line starts with ``User 1:``/``User 2:``, or only one of the two
speaks, is an error: the speakers cannot be told apart. So is an empty conversation, and an
empty persona column unless ``allow_empty_personality``. With ``skip_invalid`` such
conversations are left out (see :mod:`personachat.data.readers.records`).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable
from pathlib import Path

from personachat.data.dialogs import DataError
from personachat.data.readers.files import read_text
from personachat.data.readers.records import Reading
from personachat.data.readers.turns import dialog_from_turns

__all__ = ["COLUMNS", "WHAT", "dialogs_from_row", "read_synthetic_csv", "synthetic_csv_records"]

logger = logging.getLogger(__name__)

PERSONA_1, PERSONA_2, CONVERSATION = COLUMNS = (
    "user 1 personas",
    "user 2 personas",
    "Best Generated Conversation",
)
WHAT = (
    'a Synthetic-Persona-Chat CSV (columns "user 1 personas", "user 2 personas", '
    '"Best Generated Conversation")'
)

# Emphasis around the prefix may hold spaces ("* * User 1: * *"); what follows the colon
# loses the closing emphasis when the prefix had an opening one.
_SPEAKER = re.compile(
    r"\s*((?:[*_]\s*)*)user\s*([12])\s*(?:[*_]\s*)*:(.*)", re.IGNORECASE | re.DOTALL
)
_STAGE = re.compile(r"\s*(?:[\[(].*|\*.*\*|_.*_|[*\-_=~#.\s]*)", re.DOTALL)


def _column_key(name: str) -> str:
    return " ".join(name.split()).lower()


def persona_sentences(cell: str) -> list[str]:
    """One persona sentence per non-blank line of a persona cell."""
    return [line.strip() for line in cell.splitlines() if line.strip()]


def parse_conversation(text: str) -> tuple[list[int], list[str], int, int | None]:
    """Split a conversation cell into alternating turns by the rules in the module docstring.

    Returns ``(speakers, texts, dropped, first_line)``: the speaker (1 or 2) and text of each
    turn, how many unattributable lines were dropped, and the 0-based index of the first
    non-blank line (None for a blank cell) for error messages.
    """
    turns: list[list] = []  # [speaker, [parts]]
    dropped, first_line = 0, None
    for k, line in enumerate(text.replace("\r\n", "\n").split("\n")):
        if not line.strip():
            continue
        if first_line is None:
            first_line = k
        match = _SPEAKER.fullmatch(line)
        if match:
            decorated, speaker, said = match.groups()
            said = said.strip(" \t*_") if decorated else said.strip()
            turns.append([int(speaker), [said] if said else []])
        elif _STAGE.fullmatch(line):
            continue
        elif turns:
            turns[-1][1].append(line.strip())
        else:
            dropped += 1
    speakers: list[int] = []
    texts: list[str] = []
    for speaker, parts in turns:
        said = " ".join(parts)
        if not said:
            continue
        if speakers and speakers[-1] == speaker:
            texts[-1] += " " + said
        else:
            speakers.append(speaker)
            texts.append(said)
    return speakers, texts, dropped, first_line


def dialogs_from_row(
    persona_1: str,
    persona_2: str,
    conversation: str,
    where: str,
    line: Callable[[int], str],
    allow_empty_personality: bool = False,
) -> tuple[list[dict], list[str], int]:
    """The two dialogs (User 1 as the bot, then User 2) of one conversation.

    ``where`` locates the conversation in messages; ``line(k)`` names line ``k`` of the
    conversation cell ("line 57" in a file). Returns ``(dialogs, problems, dropped lines)``.
    """
    problems = []
    personas = {1: persona_sentences(persona_1), 2: persona_sentences(persona_2)}
    for speaker, column in ((1, PERSONA_1), (2, PERSONA_2)):
        if not personas[speaker] and not allow_empty_personality:
            problems.append(
                f'{where}, column "{column}": empty — each speaker needs at least '
                "one persona sentence, one per line (or set allow_empty_personality "
                "to read dialogs without a persona)"
            )
    speakers, texts, dropped, first = parse_conversation(conversation)
    if first is None:
        problems.append(
            f'{where}, column "{CONVERSATION}": empty — write the conversation, '
            'one message per line starting "User 1:" or "User 2:"'
        )
    elif len(set(speakers)) < 2:
        found = (
            f"only User {speakers[0]} speaks"
            if speakers
            else ('no line starts with "User 1:" or "User 2:"')
        )
        problems.append(
            f"{where}, {line(first)}: {found}, so the speakers cannot be told "
            'apart — start each message with "User 1: " or "User 2: "'
        )
    if problems:
        return [], problems, dropped
    dialogs = []
    for bot in (1, 2):
        dialog = dialog_from_turns(personas[bot], texts, [s == bot for s in speakers])
        if dialog["utterances"]:
            dialogs.append(dialog)
        else:
            problems.append(
                f"{where}: User {bot} only opens the conversation and never "
                f"answers User {3 - bot}, so there is nothing to learn for User "
                f"{bot} as the bot — add turns or remove the conversation"
            )
    return dialogs, problems, dropped


def _header(path: Path, header: list[str]) -> dict[str, int]:
    """Column name → index; a DataError naming missing and found columns."""
    index = {_column_key(name): i for i, name in reversed(list(enumerate(header)))}
    missing = [name for name in COLUMNS if _column_key(name) not in index]
    if missing:
        found = ", ".join(f'"{name}"' for name in header[:20]) or "none"
        raise DataError(
            f"{path}: line 1: missing column{'s' * (len(missing) > 1)} "
            + ", ".join(f'"{name}"' for name in missing)
            + f" — found columns {found}; a Synthetic-Persona-Chat CSV has a header row with "
            + ", ".join(f'"{name}"' for name in COLUMNS)
        )
    return {name: index[_column_key(name)] for name in COLUMNS}


def read_synthetic_csv(path: Path, allow_empty_personality: bool = False) -> list[dict]:
    """Read a Synthetic-Persona-Chat CSV; every problem is listed in one DataError."""
    return synthetic_csv_records(path, allow_empty_personality).strict()


def synthetic_csv_records(path: Path, allow_empty_personality: bool = False) -> Reading:
    """Every conversation of a Synthetic-Persona-Chat CSV with its dialogs and problems."""
    text = read_text(path, WHAT)
    reader = csv.reader(io.StringIO(text, newline=""))
    reading = Reading(str(path), "Synthetic-Persona-Chat", "conversation")
    dropped = 0
    try:
        columns = _header(path, next(reader, []))
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            if any(cell.strip() for cell in row):
                where = f"{path}: line {start} (conversation {len(reading.records)})"
                dialogs, problems, lost = _conversation(
                    row, columns, start, where, allow_empty_personality
                )
                reading.add(dialogs, problems)
                dropped += lost
    except csv.Error as exc:
        reading.fatal.append(
            f"{path}: line {reader.line_num}: not valid CSV ({exc}) — check the "
            "quotes around multi-line cells"
        )
    if not reading.records and not reading.fatal:
        reading.fatal.append(f"{path}: no conversations after the header row")
    if dropped:
        logger.warning(
            '%s: ignored %d line(s) that come before the first "User 1:"/'
            '"User 2:" line of their conversation',
            path,
            dropped,
        )
    return reading


def _conversation(
    row: list[str], columns: dict[str, int], start: int, where: str, allow_empty: bool
) -> tuple[list[dict], list[str], int]:
    """``dialogs_from_row`` of one CSV row starting at line ``start``."""
    needed = max(columns.values()) + 1
    if len(row) < needed:
        return (
            [],
            [
                f"{where}: {len(row)} field{'s' * (len(row) != 1)}, expected "
                f"{needed} — a quote or comma is missing or the row is cut short"
            ],
            0,
        )
    conv_column = columns[CONVERSATION]
    first = start + sum(cell.count("\n") for cell in row[:conv_column])
    return dialogs_from_row(
        row[columns[PERSONA_1]],
        row[columns[PERSONA_2]],
        row[conv_column],
        where,
        lambda k: f"line {first + k}",
        allow_empty,
    )
