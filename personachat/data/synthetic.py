"""Deterministic generator of synthetic persona dialogs in Persona-Chat JSON format.

Why this exists: the real Persona-Chat corpus is large and cannot be shipped with the
repository, yet tests, examples and a quick benchmark need persona dialogs. This module builds
them from *slots* (job, pet, city, ...): a persona is 4-5 facts from distinct slots, and the
partner in each dialog mostly *probes* those facts ("what do you do for work ?"), so the gold
reply can only be chosen by reading the persona ("i work as a nurse .").

Because every probe is annotated (``"probe": {"slot": "job", "value": "nurse"}``) the data
doubles as an offline persona benchmark:

* distractor candidates of a probe use the *same reply template* filled with *other values* of
  the same slot, so a model scores well only if it copies the value from the persona;
* the ``unseen`` split uses slot values that never occur in ``train`` or ``valid`` (about 20%
  of each slot's values are held out), so memorising frequent values does not help;
* ``train`` and ``valid`` personas are disjoint: a persona's fact set is hashed into one of the
  two splits, whatever the seed or the number of dialogs.

The format is a JSON list of dialogs::

    {"personality": ["i work as a nurse .", ...],
     "utterances": [{"history": ["hi , how are you ?"],
                     "candidates": ["distractor", ..., "gold reply (always last)"]}, ...]}

``history`` starts with the partner's message and grows by [previous gold reply, next partner
message] each utterance. Probe utterances carry the extra ``probe`` key; readers of
Persona-Chat files ignore unknown keys.

Usage::

    python -m personachat.data.synthetic --out-dir data --num-train 750 --num-valid 100 \\
        --num-unseen 100 --num-candidates 4 --seed 0

The slots, small talk and openers are tables in ``personachat.data.synthetic_slots``.
Standard library only; the same arguments always give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personachat.args import ArgsError
from personachat.data.synthetic_slots import ACKNOWLEDGEMENTS, SLOTS, SMALL_TALK
from personachat.errors import PersonachatError
from personachat.fs import write_file_atomic

SPLITS: tuple[str, ...] = ("train", "valid", "unseen")
"""Names of the splits; ``train`` and ``valid`` share the seen values, ``unseen`` the rest."""

DEFAULT_NUM_TRAIN = 750
DEFAULT_NUM_VALID = 100
DEFAULT_NUM_UNSEEN = 100
DEFAULT_NUM_CANDIDATES = 4
DEFAULT_SEED = 0

UNSEEN_FRACTION = 0.2
"""Share of each slot's values held out for the ``unseen`` split."""

VALID_BUCKETS = 10
"""One persona fact set in ``VALID_BUCKETS`` belongs to ``valid``, the others to ``train``."""

EXCHANGE_WEIGHTS: dict[int, int] = {4: 3, 5: 3, 6: 2, 7: 2}
"""Relative frequency of each dialog length (exchanges); short dialogs keep files small."""
MIN_FACTS, MAX_FACTS = 4, 5
MIN_PROBE_SHARE = 0.7
"""At least this share of each dialog's utterances are probes of a persona fact."""


Fact = tuple[str, str]
"""A persona fact: (slot name, value)."""


def with_article(value: str) -> str:
    """Return ``value`` with its indefinite article: "a nurse", "an actor".

    Values that already start with an article ("a twin brother") are returned unchanged.
    """
    if value.startswith(("a ", "an ")):
        return value
    return ("an " if value[0] in "aeiou" else "a ") + value


def fill(template: str, value: str) -> str:
    """Fill a slot template's ``{v}`` (bare value) and ``{av}`` (value with article)."""
    return template.format(v=value, av=with_article(value))


def _partition_values() -> dict[str, dict[str, tuple[str, ...]]]:
    """Split each slot's values into ``seen`` (train, valid) and ``unseen`` ones.

    The partition depends only on the value lists, never on the seed, so "unseen" means the
    same values for every generated file.
    """
    seen: dict[str, tuple[str, ...]] = {}
    unseen: dict[str, tuple[str, ...]] = {}
    for name, slot in SLOTS.items():
        values = sorted(slot.values)
        random.Random(f"personachat-synthetic:unseen:{name}").shuffle(values)
        held_out = max(1, round(len(values) * UNSEEN_FRACTION))
        unseen[name] = tuple(sorted(values[:held_out]))
        seen[name] = tuple(sorted(values[held_out:]))
    return {"seen": seen, "unseen": unseen}


_PARTITION = _partition_values()


def split_values(split: str) -> dict[str, tuple[str, ...]]:
    """Return, for each slot, the values that personas of ``split`` may use.

    ``train`` and ``valid`` share the seen values; ``unseen`` gets the held-out ones.
    """
    _check_split(split)
    return dict(_PARTITION["unseen" if split == "unseen" else "seen"])


def persona_split(facts: Sequence[Fact]) -> str:
    """Return ``"train"`` or ``"valid"``: the split a persona with these facts belongs to.

    A stable hash of the (order-independent) fact set decides, so the two splits can never
    share a persona, whatever the seed or the number of dialogs asked for.
    """
    key = "|".join(sorted(f"{slot}={value}" for slot, value in facts))
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return "valid" if int.from_bytes(digest[:8], "big") % VALID_BUCKETS == 0 else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ArgsError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def _check_counts(counts: dict[str, int], num_candidates: int) -> None:
    for split, count in counts.items():
        if count < 0:
            raise ArgsError(f"number of {split} dialogs must be >= 0, got {count}")
    if num_candidates < 1:
        raise ArgsError(f"num_candidates must be >= 1, got {num_candidates}")


def _sample_facts(rng: random.Random, split: str, pools: dict[str, tuple[str, ...]]) -> list[Fact]:
    """Draw 4-5 facts from distinct slots; train/valid redraw until the hash bucket matches."""
    while True:
        slots = rng.sample(sorted(SLOTS), rng.randint(MIN_FACTS, MAX_FACTS))
        facts = [(slot, rng.choice(pools[slot])) for slot in slots]
        if split == "unseen" or persona_split(facts) == split:
            return facts


def _random_slot_reply(
    rng: random.Random, pools: dict[str, tuple[str, ...]], exclude_slot: str | None = None
) -> str:
    """A reply stating a random value of a random slot (other than ``exclude_slot``)."""
    slot = rng.choice([name for name in sorted(SLOTS) if name != exclude_slot])
    return fill(rng.choice(SLOTS[slot].replies), rng.choice(pools[slot]))


def _probe_distractors(
    rng: random.Random,
    pools: dict[str, tuple[str, ...]],
    slot: str,
    value: str,
    template: str,
    gold: str,
    count: int,
) -> list[str]:
    """Wrong replies to a probe: the gold's template filled with other values of the slot.

    When there are at least two distractors, one may instead be a reply about another slot.
    If the slot's pool runs out, replies about other slots fill the rest.
    """
    distractors: list[str] = []
    if count >= 2 and rng.random() < 0.5:
        distractors.append(_random_slot_reply(rng, pools, exclude_slot=slot))
    others = [other for other in pools[slot] if other != value]
    rng.shuffle(others)
    for other in others:
        if len(distractors) >= count:
            break
        text = fill(template, other)
        if text != gold and text not in distractors:
            distractors.append(text)
    while len(distractors) < count:
        text = _random_slot_reply(rng, pools, exclude_slot=slot)
        if text != gold and text not in distractors:
            distractors.append(text)
    rng.shuffle(distractors)
    return distractors


def _small_talk_distractors(
    rng: random.Random, pools: dict[str, tuple[str, ...]], kind: str, gold: str, count: int
) -> list[str]:
    """Wrong replies to small talk: replies of another kind of small talk, or slot replies."""
    other_replies = sorted(
        reply for name, talk in SMALL_TALK.items() if name != kind for reply in talk.replies
    )
    distractors: list[str] = []
    while len(distractors) < count:
        if rng.random() < 0.5:
            text = rng.choice(other_replies)
        else:
            text = _random_slot_reply(rng, pools)
        if text != gold and text not in distractors:
            distractors.append(text)
    return distractors


def _plan_turns(rng: random.Random, facts: list[Fact]) -> list[str | Fact]:
    """Order a dialog's exchanges: small-talk kinds (str) and probed facts (Fact)."""
    lengths = sorted(EXCHANGE_WEIGHTS)
    num_exchanges = rng.choices(lengths, weights=[EXCHANGE_WEIGHTS[n] for n in lengths])[0]
    max_small = num_exchanges - math.ceil(MIN_PROBE_SHARE * num_exchanges)
    greeting = rng.random() < 0.4
    statement = rng.choice(["good_news", "bad_news"]) if rng.random() < 0.3 else None
    farewell = rng.random() < 0.15
    small = [
        kind
        for kind, wanted in (
            ("greeting", greeting),
            (statement, statement is not None),
            ("farewell", farewell),
        )
        if wanted
    ][:max_small]

    # Probe every fact once in random order, then re-probe facts (never twice in a row).
    num_probes = num_exchanges - len(small)
    probes: list[Fact] = rng.sample(facts, len(facts))[:num_probes]
    while len(probes) < num_probes:
        probes.append(rng.choice([fact for fact in facts if fact != probes[-1]]))

    turns: list[str | Fact] = list(probes)
    if statement in small:
        turns.insert(rng.randint(1, len(turns)), statement)
    if "greeting" in small:
        turns.insert(0, "greeting")
    if "farewell" in small:
        turns.append("farewell")
    return turns


def _make_dialog(
    rng: random.Random, split: str, pools: dict[str, tuple[str, ...]], num_candidates: int
) -> dict[str, Any]:
    """Build one dialog: a persona and its utterances with candidates (gold last)."""
    facts = _sample_facts(rng, split, pools)
    personality = [fill(rng.choice(SLOTS[slot].persona), value) for slot, value in facts]

    history: list[str] = []
    utterances: list[dict[str, Any]] = []
    for turn in _plan_turns(rng, facts):
        utterance: dict[str, Any] = {}
        if isinstance(turn, str):
            talk = SMALL_TALK[turn]
            prompt = rng.choice(talk.prompts)
            gold = rng.choice(talk.replies)
            distractors = _small_talk_distractors(rng, pools, turn, gold, num_candidates - 1)
        else:
            slot, value = turn
            prompt = rng.choice(SLOTS[slot].questions)
            if history and rng.random() < 0.3:
                prompt = f"{rng.choice(ACKNOWLEDGEMENTS)} {prompt}"
            template = rng.choice(SLOTS[slot].replies)
            gold = fill(template, value)
            distractors = _probe_distractors(
                rng, pools, slot, value, template, gold, num_candidates - 1
            )
            utterance["probe"] = {"slot": slot, "value": value}
        if utterances:
            history = history + [utterances[-1]["candidates"][-1]]
        history = history + [prompt]
        utterance = {"history": history, "candidates": [*distractors, gold], **utterance}
        utterances.append(utterance)
    return {"personality": personality, "utterances": utterances}


def generate_dialogs(
    num_dialogs: int,
    split: str = "train",
    num_candidates: int = DEFAULT_NUM_CANDIDATES,
    seed: int = DEFAULT_SEED,
) -> list[dict[str, Any]]:
    """Generate ``num_dialogs`` Persona-Chat dialogs for ``split`` ("train", "valid", "unseen").

    Every utterance has ``num_candidates`` candidates with the gold reply last; probe
    utterances also have ``"probe": {"slot": ..., "value": ...}``. The result depends only on
    the arguments: the same arguments give the same dialogs, in any process.
    """
    _check_split(split)
    _check_counts({split: num_dialogs}, num_candidates)
    rng = random.Random(f"personachat-synthetic:{split}:{seed}")
    pools = split_values(split)
    return [_make_dialog(rng, split, pools, num_candidates) for _ in range(num_dialogs)]


def dumps_dialogs(dialogs: Sequence[dict[str, Any]]) -> str:
    """Serialise dialogs as compact JSON, one dialog per line (small files, readable diffs)."""
    if not dialogs:
        return "[]\n"
    lines = (json.dumps(dialog, separators=(",", ":"), ensure_ascii=True) for dialog in dialogs)
    return "[\n" + ",\n".join(lines) + "\n]\n"


def split_path(out_dir: str | os.PathLike[str], split: str) -> Path:
    """Return the file a split is written to: ``<out_dir>/persona_<split>.json``."""
    _check_split(split)
    return Path(out_dir) / f"persona_{split}.json"


def write_splits(
    out_dir: str | os.PathLike[str],
    num_train: int = DEFAULT_NUM_TRAIN,
    num_valid: int = DEFAULT_NUM_VALID,
    num_unseen: int = DEFAULT_NUM_UNSEEN,
    num_candidates: int = DEFAULT_NUM_CANDIDATES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Path]:
    """Generate the three splits and write them atomically into ``out_dir`` (created if needed).

    Returns the written path of each split, keyed by split name.
    """
    counts = {"train": num_train, "valid": num_valid, "unseen": num_unseen}
    _check_counts(counts, num_candidates)  # fail before any file is written
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split in SPLITS:
        dialogs = generate_dialogs(counts[split], split, num_candidates, seed)
        paths[split] = split_path(out_dir, split)
        write_file_atomic(paths[split], dumps_dialogs(dialogs))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m personachat.data.synthetic --out-dir data [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m personachat.data.synthetic",
        description="Write synthetic persona dialogs (Persona-Chat JSON) for the train, valid "
        "and unseen splits.",
    )
    parser.add_argument("--out-dir", required=True, help="directory for persona_<split>.json")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-valid", type=int, default=DEFAULT_NUM_VALID)
    parser.add_argument("--num-unseen", type=int, default=DEFAULT_NUM_UNSEEN)
    parser.add_argument(
        "--num-candidates",
        type=int,
        default=DEFAULT_NUM_CANDIDATES,
        help="candidates per utterance, gold last (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    try:
        paths = write_splits(
            args.out_dir,
            args.num_train,
            args.num_valid,
            args.num_unseen,
            args.num_candidates,
            args.seed,
        )
    except PersonachatError as err:
        parser.error(str(err))
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
