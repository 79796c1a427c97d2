"""Distractor candidates for dialogs that have too few.

The multiple-choice head learns to pick the gold reply among ``num_candidates`` candidates,
but users' dialogs rarely come with wrong answers. As in Persona-Chat itself, distractors are
replies taken from *other* dialogs: fluent, on-topic for a chit-chat, and almost never a
correct answer to this turn.

Rules (each is a property test in ``tests/test_candidates.py``):

- only utterances with fewer than ``num_candidates`` candidates get new ones; the gold reply
  stays last and existing candidates keep their order;
- a distractor is the gold reply of another dialog, never text equal — after ``strip`` and
  ``lower`` (and collapsing inner whitespace) — to any gold reply of the same dialog (so
  never the gold reply itself) or to a candidate the utterance already has, and never twice
  in one utterance;
- sampling is seeded: the same dialogs, ``num_candidates`` and ``seed`` give the same output.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from personachat.data.dialogs import DataError

__all__ = ["add_distractors", "normalise"]


def normalise(text: str) -> str:
    """The form in which two replies count as the same: lowercased, whitespace collapsed."""
    return " ".join(text.split()).lower()


def _gold_pool(dialogs: Sequence[dict]) -> tuple[list[str], dict[str, int], list[set[int]]]:
    """Distinct gold replies (first spelling kept), their ids, and each dialog's own ids."""
    texts: list[str] = []
    ids: dict[str, int] = {}
    own: list[set[int]] = []
    for dialog in dialogs:
        mine = set()
        for utterance in dialog["utterances"]:
            gold = utterance["candidates"][-1]
            key = normalise(gold)
            if not key:
                continue
            if key not in ids:
                ids[key] = len(texts)
                texts.append(gold)
            mine.add(ids[key])
        own.append(mine)
    return texts, ids, own


def _sample(rng: random.Random, pool_size: int, excluded: set[int], needed: int) -> list[int]:
    """``needed`` distinct ids in ``range(pool_size)`` outside ``excluded`` (enough exist)."""
    chosen: list[int] = []
    taken: set[int] = set()
    # Rejection sampling is fast when most of the pool is allowed (the usual case) ...
    for _ in range(4 * needed + 32):
        if len(chosen) == needed:
            return chosen
        i = rng.randrange(pool_size)
        if i not in excluded and i not in taken:
            chosen.append(i)
            taken.add(i)
    # ... and this bounds the time when it is not (tiny corpora, huge dialogs).
    rest = [i for i in range(pool_size) if i not in excluded and i not in taken]
    return chosen + rng.sample(rest, needed - len(chosen))


def add_distractors(
    dialogs: Sequence[dict], num_candidates: int, seed: int = 0
) -> tuple[list[dict], int]:
    """Give every utterance at least ``num_candidates`` candidates (rules in the module doc).

    Returns ``(dialogs, generated)``: new dialog dicts (the input is not modified; extra keys
    are kept) and how many distractors were added. Raises DataError when the corpus has too
    few distinct replies outside some dialog to fill its utterances.
    """
    if not isinstance(num_candidates, int) or num_candidates < 1:
        raise DataError(f"num_candidates must be a positive integer, got {num_candidates!r}")
    texts, ids, own = _gold_pool(dialogs)
    rng = random.Random(seed)
    result: list[dict] = []
    generated = 0
    short: list[tuple[int, int, int, int]] = []  # dialog, utterance, needed, available
    capacity = num_candidates
    for d, dialog in enumerate(dialogs):
        utterances = []
        for u, utterance in enumerate(dialog["utterances"]):
            candidates = list(utterance["candidates"])
            needed = num_candidates - len(candidates)
            if needed <= 0:
                utterances.append(utterance)
                continue
            excluded = own[d] | {ids[k] for k in map(normalise, candidates) if k in ids}
            available = len(texts) - len(excluded)
            if available < needed:
                short.append((d, u, needed, available))
                capacity = min(capacity, len(candidates) + available)
                utterances.append(utterance)
                continue
            picked = [texts[i] for i in _sample(rng, len(texts), excluded, needed)]
            generated += len(picked)
            utterances.append({**utterance, "candidates": [*picked, *candidates]})
        result.append({**dialog, "utterances": utterances})
    if short:
        d, u, needed, available = short[0]
        raise DataError(
            f"too few distinct replies to sample distractors from: num_candidates="
            f"{num_candidates} needs more distractors than the other dialogs offer for "
            f"{len(short)} utterance(s) (first: dialog {d}, utterance {u} needs {needed}, "
            f"{available} available; the corpus has {len(texts)} distinct gold replies) — "
            f"lower num_candidates to at most {capacity}, or add more dialogs"
        )
    return result, generated
