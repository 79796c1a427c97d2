"""Training mixes: dialogs drawn from several files, shuffled together, written as one file.

A model that only ever sees persona probes learns to state facts and nothing else; one that
holds a conversation trains on a *mix*: real multi-turn conversations (the bundled
Synthetic-Persona-Chat ``data/synthetic-persona-chat/train.csv``), the persona probes
(``data/persona_train.json``), prose character descriptions (``data/prose_train.json``) and
history recall (``data/history_train.json``). A mix is a mapping from file to how many of its
dialogs to draw (None: all of them)::

    sources = {
        "data/synthetic-persona-chat/train.csv": 600,
        "data/persona_train.json": 200,
        "data/prose_train.json": 100,
        "data/history_train.json": None,
    }
    dialogs = mix_dialogs(sources, seed=0)
    write_mix("outputs/mix.json", sources, seed=0)  # Persona-Chat JSON any command reads

or on the command line ``python -m personachat.data.mix --out outputs/mix.json
data/synthetic-persona-chat/train.csv=600 data/persona_train.json=200 ...``.

Any format :func:`personachat.data.readers.read_dialogs` reads is a source (the CSV gives two
dialogs per conversation, one per speaker as the bot). Dialogs keep their text and candidates
as they are: files without distractors (the CSV) get them where training asks for more
candidates (``prepare_dialogs``). The draw is deterministic: each file's dialogs are sampled
with a generator seeded by ``seed`` and the file's path, then all are shuffled with one
seeded by ``seed``, so the same sources and seed give the same mix in any process, and
changing one count leaves the draws from the other files as they were.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from personachat.data.dialogs import DataError
from personachat.data.readers import read_dialogs
from personachat.data.readers.records import print_to_stderr
from personachat.data.synthetic import dumps_dialogs
from personachat.errors import PersonachatError
from personachat.fs import write_file_atomic

__all__ = ["MixError", "draw", "mix_dialogs", "parse_source", "write_mix"]

Sources = Mapping[str | os.PathLike, int | None]
"""File → how many of its dialogs to draw (None: all)."""


class MixError(DataError):
    """A mix that cannot be drawn: no sources, a bad count, a file listed twice."""


def _check_count(path: str, count: object) -> int | None:
    """The count of ``path`` if it is None or a whole number >= 0, else a MixError."""
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int):
        raise MixError(
            f"{path}: the count must be a whole number of dialogs or None (all of them), got "
            f"{count!r}"
        )
    if count < 0:
        raise MixError(f"{path}: the count must be >= 0, got {count}")
    return count


def _check_sources(sources: Sources) -> dict[str, int | None]:
    """The sources as {path: count}, every count checked, no file listed twice."""
    if not sources:
        raise MixError(
            "no sources to mix — pass {file: number of dialogs (None: all)}, e.g. "
            '{"data/synthetic-persona-chat/train.csv": 600, "data/persona_train.json": 200}'
        )
    checked: dict[str, int | None] = {}
    seen: dict[Path, str] = {}
    for source, count in sources.items():
        path = os.fspath(source)
        same = seen.setdefault(Path(path).resolve(), path)
        if same != path or path in checked:
            raise MixError(
                f"{path}: listed twice (also as {same}) — its dialogs would be drawn twice; "
                "give it once, with the total count"
            )
        checked[path] = _check_count(path, count)
    return checked


def draw(
    dialogs: Sequence[dict[str, Any]], count: int | None, seed: int, path: str
) -> list[dict[str, Any]]:
    """``count`` of ``dialogs`` (None: all), sampled without replacement by a generator seeded
    with ``seed`` and ``path``, in the file's order; a MixError if the file has fewer."""
    if count is None:
        return list(dialogs)
    if count > len(dialogs):
        raise MixError(
            f"{path}: asked for {count} dialogs but the file has {len(dialogs)} — lower the "
            "count, or give None to take all of them"
        )
    return [dialogs[k] for k in drawn_indices(len(dialogs), count, seed, path)]


def drawn_indices(total: int, count: int, seed: int, path: str) -> list[int]:
    """Which of a file's ``total`` dialogs :func:`draw` takes (in the file's order): what a
    measurement needs to keep the dialogs a mix trained on out of its own sets."""
    rng = random.Random(f"personachat-mix:{seed}:{path}")
    return sorted(rng.sample(range(total), count))


def mix_dialogs(
    sources: Sources,
    seed: int = 0,
    *,
    skip_invalid: bool = False,
    report: Callable[[str], None] = print_to_stderr,
) -> list[dict[str, Any]]:
    """Draw ``count`` dialogs from each source file (None: all) and shuffle them together.

    Each file is read with :func:`~personachat.data.readers.read_dialogs` (any format it
    reads; ``skip_invalid`` and ``report`` as there). The result depends only on the sources
    and ``seed`` (see the module docstring). Raises :class:`MixError` for no sources, a
    count that is not None or a whole number >= 0, a count above a file's dialogs or a file
    listed twice, and ``DataError`` (naming the file) for a file that cannot be read.
    """
    counts = _check_sources(sources)
    mixed: list[dict[str, Any]] = []
    for path, count in counts.items():
        dialogs = read_dialogs(path, skip_invalid=skip_invalid, report=report)
        mixed += draw(dialogs, count, seed, path)
    random.Random(f"personachat-mix:{seed}").shuffle(mixed)
    return mixed


def write_mix(
    path: str | os.PathLike,
    sources: Sources,
    seed: int = 0,
    *,
    skip_invalid: bool = False,
    report: Callable[[str], None] = print_to_stderr,
) -> list[dict[str, Any]]:
    """Draw the mix (:func:`mix_dialogs`) and write it atomically to ``path`` as a
    Persona-Chat JSON list (one dialog per line) that ``train_file`` can name. Nothing is
    written when the mix cannot be drawn. Returns the dialogs written."""
    dialogs = mix_dialogs(sources, seed, skip_invalid=skip_invalid, report=report)
    write_file_atomic(path, dumps_dialogs(dialogs))
    return dialogs


def parse_source(text: str) -> tuple[str, int | None]:
    """``PATH=COUNT`` or ``PATH`` (all dialogs) from the command line as (path, count)."""
    path, sep, count = text.rpartition("=")
    if not sep:
        return text, None
    if not path:
        raise MixError(f"{text!r}: no file before '=' — write PATH=COUNT")
    try:
        return path, int(count)
    except ValueError:
        raise MixError(
            f"{text!r}: the count after '=' must be a whole number — write PATH=COUNT, or PATH "
            "alone for all of its dialogs"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m personachat.data.mix --out FILE PATH[=COUNT] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m personachat.data.mix",
        description="Draw dialogs from several files (any format personachat reads), shuffle "
        "them together and write one Persona-Chat JSON file to train on.",
    )
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("sources", nargs="+", metavar="PATH[=COUNT]", help="COUNT: default all")
    args = parser.parse_args(argv)
    try:
        sources: dict[str, int | None] = {}
        for text in args.sources:
            path, count = parse_source(text)
            if path in sources:
                raise MixError(f"{path}: listed twice — give it once, with the total count")
            sources[path] = count
        dialogs = write_mix(args.out, sources, args.seed)
    except PersonachatError as err:
        parser.error(str(err))
    print(f"{args.out}: {len(dialogs)} dialogs from {len(sources)} files (seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
