"""ParlAI / ConvAI2 text files (``train_self_original.txt``, ``valid_both_revised.txt``, ...).

ParlAI's dialog format numbers every line of a dialog from 1; the number restarting (1, or any
number not larger than the previous one) starts the next dialog::

    1 your persona: i like to ski .
    2 your persona: i have a cat .
    3 hi , how are you ?<TAB>great , just back from skiing .<TAB><TAB>i am a nurse .|great , just back from skiing .
    4 do you have pets ?<TAB>a cat .<TAB><TAB>i love pizza .|a cat .

A turn line is the partner's message, the bot's reply (the gold label), a reward field
(empty) and the candidates separated by ``|``. The label is among the candidates in ConvAI2
files; it is moved last (its copy removed), as Persona-Chat JSON wants. In the ``both``
variants ``partner's persona:`` lines describe the other speaker: they are left out, the bot's
persona is its ``your persona:`` lines only. A first message ``__SILENCE__`` (the bot speaks
first) is kept as the partner's message, as ParlAI does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from personachat.data.readers.files import read_text
from personachat.data.readers.records import Reading

__all__ = ["WHAT", "parlai_records", "read_parlai"]

WHAT = 'a ParlAI/ConvAI2 text file (lines "N your persona: ..." and "N message<TAB>reply...")'
_LINE = re.compile(r"([0-9]{1,9}) (.*)", re.DOTALL)
_YOUR_PERSONA = "your persona:"
_PARTNER_PERSONA = ("partner's persona:", "their persona:")


@dataclass
class _Dialog:
    """A dialog being read: where it starts and what it has so far."""

    index: int
    line: int
    persona: list[str] = field(default_factory=list)
    utterances: list[dict] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    broken: bool = False  # a turn could not be read: later histories would be wrong


def _snippet(text: str) -> str:
    text = text if len(text) <= 40 else text[:37] + "..."
    return repr(text)


def _finish(
    dialog: _Dialog | None, path: Path, reading: Reading, allow_empty_personality: bool
) -> None:
    """Add the dialog being read to ``reading``, with its problems."""
    if dialog is None:
        return
    where = f"{path}: line {dialog.line} (dialog {dialog.index})"
    problems = dialog.problems
    if dialog.broken:
        pass  # its turn problem is reported; nothing more can be said about it
    elif not dialog.persona and not allow_empty_personality:
        problems.append(
            f'{where}: no "your persona:" lines — the bot needs a persona; ConvAI2 '
            'files with "none" in the name have none: use a "self" or "both" file, or set '
            "allow_empty_personality to read dialogs without a persona"
        )
    elif not dialog.utterances:
        problems.append(
            f"{where}: no turns — add the dialog's "
            '"N message<TAB>reply" lines or remove its persona lines'
        )
    dialog_ = {"personality": dialog.persona, "utterances": dialog.utterances}
    reading.add([] if problems else [dialog_], problems)


def _turn(body: str, where: str, dialog: _Dialog) -> list[str]:
    """Add one ``message<TAB>reply<TAB>reward<TAB>candidates`` line to the dialog."""
    fields = body.split("\t")
    message = fields[0].strip()
    reply = fields[1].split("|")[0].strip() if len(fields) > 1 else ""
    if len(fields) < 2:
        return [
            f"{where}: no TAB after the message, so the bot's reply is missing — a turn "
            'line is "N message<TAB>reply<TAB><TAB>cand1|cand2|..." (TAB characters, '
            f"not spaces); found {_snippet(body)}"
        ]
    problems = []
    if not message:
        problems.append(
            f"{where}: empty message before the TAB — write __SILENCE__ when the bot speaks first"
        )
    if not reply:
        problems.append(
            f"{where}: empty reply after the first TAB — the bot's reply (the "
            "gold label) is required"
        )
    if problems:
        return problems
    candidates = fields[3].split("|") if len(fields) > 3 else []
    candidates = [c.strip() for c in candidates if c.strip() and c.strip() != reply]
    dialog.utterances.append(
        {"history": [*dialog.history, message], "candidates": [*candidates, reply]}
    )
    dialog.history += [message, reply]
    return []


def read_parlai(path: Path, allow_empty_personality: bool = False) -> list[dict]:
    """Read a ParlAI/ConvAI2 text file; every problem is listed in one DataError."""
    return parlai_records(path, allow_empty_personality).strict()


def _unnumbered(line: str, where: str) -> str:
    hint = (
        " — this is ParlAI's key:value format (text:...<TAB>labels:...); convert "
        "it to the numbered format"
        if line.startswith("text:")
        else ""
    )
    return (
        f'{where}: expected "N your persona: ..." or "N message<TAB>reply'
        f'<TAB><TAB>candidates", starting with the line number; found '
        f"{_snippet(line)}{hint}"
    )


def parlai_records(path: Path, allow_empty_personality: bool = False) -> Reading:
    """Every dialog of a ParlAI/ConvAI2 text file with its problems (a line that is not
    numbered belongs to the dialog it is in, or stands alone before the first one)."""
    text = read_text(path, WHAT)
    reading = Reading(str(path), "ParlAI/ConvAI2", "dialog")
    dialog: _Dialog | None = None
    previous, count = 0, 0
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            problem = _unnumbered(line, f"{path}: line {n}")
            if dialog is None:
                reading.add([], [problem])
            else:
                dialog.problems.append(problem)
            continue
        number, body = int(match.group(1)), match.group(2)
        if dialog is None or number <= previous:
            _finish(dialog, path, reading, allow_empty_personality)
            dialog = _Dialog(index=count, line=n)
            count += 1
        previous = number
        _line(body, f"{path}: line {n} (dialog {dialog.index})", dialog)
    _finish(dialog, path, reading, allow_empty_personality)
    return reading


def _line(body: str, where: str, dialog: _Dialog) -> None:
    """Add a numbered line (persona sentence or turn) to the dialog being read."""
    lowered = body.lstrip().lower()
    if lowered.startswith(_YOUR_PERSONA):
        sentence = body.lstrip()[len(_YOUR_PERSONA) :].strip()
        if sentence:
            dialog.persona.append(sentence)
        else:
            dialog.problems.append(
                f'{where}: empty "your persona:" line — write the sentence or remove the line'
            )
    elif not lowered.startswith(_PARTNER_PERSONA):
        found = _turn(body, where, dialog)
        if found:
            dialog.problems += found
            dialog.broken = True  # later histories would be wrong; report, don't keep
