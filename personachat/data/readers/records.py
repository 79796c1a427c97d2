"""What a reader found, record by record, so that invalid records can be refused or skipped.

A *record* is the unit a format is written in: a conversation of a Synthetic-Persona-Chat
CSV (two dialogs), a dialog of Persona-Chat JSON or ParlAI text, a line of JSONL. Readers add
each record with its dialogs and its problems (each a sentence naming the place and the fix);
problems that belong to no record (an empty file, a CSV whose quoting breaks) make the whole
file unusable.

By default every problem is an error (:meth:`Reading.strict`: one DataError listing them
all). With ``skip_invalid`` (:meth:`Reading.skipping`) the records with problems are left
out, and each problem is printed, exactly as the error would list it, with the counts kept
and dropped: skipping is never silent and never the default.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from personachat.data.dialogs import DataError, dialog_problems

__all__ = ["Reading", "add_checked", "print_to_stderr"]


def print_to_stderr(text: str) -> None:
    print(text, file=sys.stderr)


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}{'s' * (count != 1)}"


@dataclass
class Reading:
    """The records of one source. ``what`` names the format in messages ("ParlAI/ConvAI2"),
    ``unit`` a record ("conversation", "dialog", "line"). ``fatal`` holds the problems of
    no record."""

    source: str
    what: str
    unit: str = "dialog"
    records: list[tuple[list[dict], list[str]]] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    note: str = ""  # said after the count of problems ("dialog numbers count from 0")

    def add(self, dialogs: list[dict], problems: list[str]) -> None:
        """One record: its dialogs (none when it could not be read) and its problems."""
        self.records.append((list(dialogs), list(problems)))

    @property
    def problems(self) -> list[str]:
        """Every problem, in file order (problems of no record first)."""
        return [*self.fatal, *(p for _, found in self.records for p in found)]

    @property
    def kept(self) -> list[dict]:
        """The dialogs of the records without problems, in file order."""
        return [d for dialogs, found in self.records if not found for d in dialogs]

    @property
    def dropped(self) -> int:
        return sum(1 for _, found in self.records if found)

    def _error(self, problems: list[str], why: str = "") -> DataError:
        return DataError(
            problems,
            f"{self.source} is not valid {self.what} data{why} "
            f"({_plural(len(problems), 'problem')}{self.note}):",
        )

    def strict(self) -> list[dict]:
        """Every dialog, or a DataError listing every problem."""
        if self.problems:
            raise self._error(self.problems)
        return self.kept

    def skipping(self, report: Callable[[str], None] = print_to_stderr) -> list[dict]:
        """The dialogs of the valid records; each problem and the counts go to ``report``.

        Problems of no record still raise (nothing can be read past them), as does a file
        in which no record is valid."""
        if self.fatal:
            raise self._error(self.fatal, " even when skipping invalid records")
        kept = self.kept
        if not kept:
            raise self._error(self.problems, f": none of its {self.unit}s is valid")
        if self.dropped:
            total = len(self.records)
            lines = [
                f"{self.source}: skipping {_plural(self.dropped, f'invalid {self.unit}')} "
                f"(skip_invalid): kept {total - self.dropped} of {_plural(total, self.unit)}, "
                f"dropped {self.dropped}:",
                *(f"  - {problem}" for problem in self.problems),
            ]
            report("\n".join(lines))
        return kept

    def dialogs(
        self, skip_invalid: bool = False, report: Callable[[str], None] = print_to_stderr
    ) -> list[dict]:
        """:meth:`skipping` with ``skip_invalid``, else :meth:`strict`."""
        return self.skipping(report) if skip_invalid else self.strict()


def add_checked(
    reading: Reading, dialogs: list[dict], where: str, allow_empty_personality: bool
) -> None:
    """Add a record of Persona-Chat dialogs, with the problems validation finds in them
    (``where`` names the record; several dialogs are told apart by their index)."""
    problems = []
    for k, dialog in enumerate(dialogs):
        place = where if len(dialogs) == 1 else f"{where}, dialog {k}"
        problems += dialog_problems(dialog, place, allow_empty_personality)
    reading.add(dialogs, problems)
