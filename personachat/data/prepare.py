"""The dialogs a model trains or is evaluated on, as the options say.

A file of any supported format (``data.readers``), or the public Persona-Chat data when no
file is given (downloaded once); distractors sampled from other dialogs where an utterance
has fewer than ``num_candidates`` candidates; at most ``limit`` dialogs.
"""

from __future__ import annotations

import os

from personachat.args import ConvAIArgs
from personachat.data.candidates import add_distractors
from personachat.data.download import load_personachat_or_file
from personachat.data.readers import read_dialogs


def prepare_dialogs(
    path: str | os.PathLike | None, split: str, args: ConvAIArgs, limit: int | None = None
) -> list[dict]:
    """Dialogs of ``path`` (None: public Persona-Chat) with enough candidates for
    ``args.num_candidates``, the first ``limit`` of them (None or 0: all)."""
    if path is None:
        dialogs = load_personachat_or_file(None, split, args.cache_dir)
    else:
        dialogs = read_dialogs(
            path,
            format=args.data_format,
            split=split,
            skip_invalid=args.skip_invalid,
            allow_empty_personality=args.allow_empty_personality,
        )
    if any(len(u["candidates"]) < args.num_candidates for d in dialogs for u in d["utterances"]):
        dialogs, added = add_distractors(dialogs, args.num_candidates, seed=args.manual_seed or 0)
        if not args.silent:
            print(
                f"{path}: added {added} distractor candidates sampled from other "
                f"dialogs (num_candidates={args.num_candidates})"
            )
    return dialogs[:limit] if limit else dialogs
