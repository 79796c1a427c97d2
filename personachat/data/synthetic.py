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

Two more kinds build on this one and write natural-cased text (``--kind``, see ``KINDS``):
personas as prose character descriptions (:mod:`personachat.data.synthetic_prose`) and
questions whose answer is in the history, 3-6 messages back
(:mod:`personachat.data.synthetic_history`). Each writes a training file and a held-out probe
set with held-out phrasings and values; the bundled ones are exactly::

    python -m personachat.data.synthetic --out-dir data --kind prose    # prose_{train,valid}.json
    python -m personachat.data.synthetic --out-dir data --kind history  # history_{train,valid}.json

The slots, small talk and openers are tables in ``personachat.data.synthetic_slots``.
Standard library only; the same arguments always give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personachat.args import ArgsError
from personachat.data.synthetic_slots import ACKNOWLEDGEMENTS, PROPER_NOUNS, SLOTS, SMALL_TALK
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


def states(text: str, value: str) -> bool:
    """Whether ``text`` contains ``value`` as whole words, in any case ("tea" is not in
    "teacher"): the test ``personachat.evaluation.persona.mentions`` applies to replies."""
    pattern = rf"(?<!\w){re.escape(value.lower())}(?!\w)"
    return re.search(pattern, text.lower()) is not None


def build_utterances(exchanges: Sequence[tuple[str, list[str], str, dict | None]]) -> list[dict]:
    """Persona-Chat utterances from (partner message, distractors, gold reply, probe) in order:
    each history is the previous one plus the previous gold reply and the partner's message,
    the gold reply is the last candidate, and a probe (when not None) is kept as ``probe``."""
    history: list[str] = []
    utterances: list[dict[str, Any]] = []
    for prompt, distractors, gold, probe in exchanges:
        if utterances:
            history = history + [utterances[-1]["candidates"][-1]]
        history = history + [prompt]
        utterance: dict[str, Any] = {"history": history, "candidates": [*distractors, gold]}
        if probe is not None:
            utterance["probe"] = probe
        utterances.append(utterance)
    return utterances


_SPACED_PUNCTUATION = re.compile(r" +([.,?!:;])")
_LONE_I = re.compile(r"(?<![\w'])i(?=\W|$)")
_SENTENCE_START = re.compile(r"(^|[.?!] +)([a-z])")
_PROPER = re.compile(
    r"(?<!\w)(" + "|".join(sorted(map(re.escape, PROPER_NOUNS), key=len, reverse=True)) + r")(?!\w)"
)


def naturalise(text: str) -> str:
    """Persona-Chat style text in natural casing: "i live in new york , i love it ." →
    "I live in New York, I love it."

    Punctuation loses its leading space, "i" and sentence starts get a capital, and values
    that are proper nouns are capitalised (``PROPER_NOUNS``). Natural text is left as it is,
    so the natural-cased kinds can pass everything they write through it.
    """
    text = _SPACED_PUNCTUATION.sub(r"\1", text)
    text = _LONE_I.sub("I", text)
    text = _PROPER.sub(lambda match: PROPER_NOUNS[match.group(1)], text)
    return _SENTENCE_START.sub(lambda match: match.group(1) + match.group(2).upper(), text)


def held_out_split(values: Sequence[str], key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split ``values`` into (seen, unseen): ``UNSEEN_FRACTION`` of them (at least one) held
    out, chosen by a shuffle seeded with ``key`` alone, never with a generation seed, so a
    held-out value is the same for every generated file."""
    shuffled = sorted(values)
    random.Random(f"personachat-synthetic:unseen:{key}").shuffle(shuffled)
    held_out = max(1, round(len(shuffled) * UNSEEN_FRACTION))
    return tuple(sorted(shuffled[held_out:])), tuple(sorted(shuffled[:held_out]))


def _partition_values() -> dict[str, dict[str, tuple[str, ...]]]:
    """Split each slot's values into ``seen`` (train, valid) and ``unseen`` ones.

    The partition depends only on the value lists, never on the seed, so "unseen" means the
    same values for every generated file.
    """
    parts = {name: held_out_split(slot.values, name) for name, slot in SLOTS.items()}
    return {
        "seen": {name: seen for name, (seen, _) in parts.items()},
        "unseen": {name: unseen for name, (_, unseen) in parts.items()},
    }


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


def pad_distractors(
    rng: random.Random,
    pools: dict[str, tuple[str, ...]],
    distractors: list[str],
    gold: str,
    num_candidates: int,
) -> list[str]:
    """``distractors`` topped up to ``num_candidates - 1`` with natural-cased replies about a
    random slot (never the gold, never twice): for pools too small for many candidates."""
    padded = list(distractors)
    while len(padded) < num_candidates - 1:
        text = naturalise(_random_slot_reply(rng, pools))
        if text != gold and text not in padded:
            padded.append(text)
    return padded


def natural_probe(
    rng: random.Random,
    fact: Fact,
    pools: dict[str, tuple[str, ...]],
    num_candidates: int,
) -> tuple[str, list[str], str, dict[str, str]]:
    """A question on a persona fact with its replies, natural-cased, for the natural-cased
    kinds: (question, distractors, gold reply, probe). The distractors are as in the
    list-persona dialogs (:func:`_probe_distractors`)."""
    slot, value = fact
    template = rng.choice(SLOTS[slot].replies)
    question = rng.choice(SLOTS[slot].questions)
    gold = fill(template, value)
    wrong = _probe_distractors(rng, pools, slot, value, template, gold, num_candidates - 1)
    probe = {"slot": slot, "value": value}
    return naturalise(question), [naturalise(text) for text in wrong], naturalise(gold), probe


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


KINDS: tuple[str, ...] = ("persona", "prose", "history")
"""What the generator writes: list personas (``persona_<split>.json``, this module), prose
character descriptions (:mod:`.synthetic_prose`) and history recall
(:mod:`.synthetic_history`), the last two as ``<kind>_train.json`` and ``<kind>_valid.json``."""
KIND_SPLITS: tuple[str, ...] = ("train", "valid")
"""The splits of the prose and history kinds: training file and held-out probe set."""


def check_kind_split(split: str) -> None:
    """Refuse a split the prose and history kinds do not have."""
    if split not in KIND_SPLITS:
        raise ArgsError(f"unknown split {split!r}; expected one of {', '.join(KIND_SPLITS)}")


def write_kind(
    out_dir: str | os.PathLike[str],
    kind: str,
    num_train: int | None = None,
    num_valid: int | None = None,
    num_candidates: int = DEFAULT_NUM_CANDIDATES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Path]:
    """Generate the ``train`` and ``valid`` files of ``kind`` ("prose" or "history") and
    write them atomically as ``<out_dir>/<kind>_<split>.json``; a count left None takes the
    kind's default (its module's ``DEFAULT_NUM``). Returns the path of each split."""
    if kind not in KINDS[1:]:
        raise ArgsError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS[1:])}")
    # Imported here, not at the top: the kind modules build on this one.
    module = importlib.import_module(f"personachat.data.synthetic_{kind}")
    generate = getattr(module, f"generate_{kind}_dialogs")
    wanted = {"train": num_train, "valid": num_valid}
    counts = {split: module.DEFAULT_NUM[split] if n is None else n for split, n in wanted.items()}
    _check_counts(counts, num_candidates)  # fail before any file is written
    paths: dict[str, Path] = {}
    for split, count in counts.items():
        paths[split] = Path(out_dir) / f"{kind}_{split}.json"
        write_file_atomic(paths[split], dumps_dialogs(generate(count, split, num_candidates, seed)))
    return paths


def _write(args: argparse.Namespace) -> dict[str, Path]:
    """The files the command line asks for."""
    if args.kind != "persona":
        return write_kind(
            args.out_dir, args.kind, args.num_train, args.num_valid, args.num_candidates, args.seed
        )
    counts = (
        DEFAULT_NUM_TRAIN if args.num_train is None else args.num_train,
        DEFAULT_NUM_VALID if args.num_valid is None else args.num_valid,
        args.num_unseen,
    )
    return write_splits(args.out_dir, *counts, args.num_candidates, args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m personachat.data.synthetic --out-dir data [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m personachat.data.synthetic",
        description="Write synthetic persona dialogs (Persona-Chat JSON): list personas "
        "(train, valid and unseen splits), prose character descriptions or history recall "
        "(train and valid).",
    )
    parser.add_argument("--out-dir", required=True, help="directory for the files")
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="persona",
        help="persona: persona_<split>.json; prose, history: <kind>_train.json and "
        "<kind>_valid.json (default: %(default)s)",
    )
    parser.add_argument("--num-train", type=int, help="default: the kind's own")
    parser.add_argument("--num-valid", type=int, help="default: the kind's own")
    parser.add_argument("--num-unseen", type=int, default=DEFAULT_NUM_UNSEEN, help="persona only")
    parser.add_argument(
        "--num-candidates",
        type=int,
        default=DEFAULT_NUM_CANDIDATES,
        help="candidates per utterance, gold last (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    try:
        paths = _write(args)
    except PersonachatError as err:
        parser.error(str(err))
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
