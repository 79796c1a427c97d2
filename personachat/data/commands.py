"""``personachat convert`` and ``personachat validate``: the data commands of the CLI.

``convert SRC DST`` reads dialogs in any supported format (:mod:`personachat.data.readers`),
optionally samples distractors (:mod:`personachat.data.candidates`) and writes Persona-Chat JSON
atomically: to a temporary file in DST's folder, renamed over DST only once complete, so a
failure never leaves a partial or half-overwritten DST.

``validate FILE`` prints every problem of a file (exit 1), or its counts (exit 0): dialogs,
utterances, candidates per utterance, persona sentences and, with ``--tokenizer``, tokens per
training example laid out as the model sees it (persona, history, gold reply).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from personachat.args import ArgsError, ConvAIArgs
from personachat.data.candidates import add_distractors
from personachat.data.dialogs import DataError
from personachat.data.readers import FORMATS, detect_format, read_dialogs
from personachat.fs import write_file_atomic

__all__ = [
    "DATA_COMMANDS",
    "add_data_commands",
    "corpus_counts",
    "run_data_command",
    "write_json_atomic",
]

DATA_COMMANDS = ("convert", "validate")


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``convert`` and ``validate`` subcommands to the CLI's subparsers."""
    p = sub.add_parser("convert", help="write dialogs of any format as Persona-Chat JSON")
    p.add_argument("src", metavar="SRC", help="dialog file, or hf:NAME for a hub dataset")
    p.add_argument("dst", metavar="DST", help="Persona-Chat JSON file to write")
    p.add_argument(
        "--num-candidates",
        type=int,
        metavar="N",
        help="sample distractors from other dialogs so each utterance has N",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the distractor sampling")
    p.add_argument("--lowercase", action="store_true", help="lowercase all text")
    v = sub.add_parser("validate", help="check a dialog file: every problem, or its counts")
    v.add_argument("file", metavar="FILE", help="dialog file, or hf:NAME for a hub dataset")
    v.add_argument(
        "--tokenizer",
        metavar="MODEL_DIR",
        help="also count tokens per example with this model's tokenizer",
    )
    v.add_argument(
        "--num-candidates",
        type=int,
        metavar="N",
        help="check that distractors can be sampled up to N candidates",
    )
    v.add_argument(
        "--max-history",
        type=int,
        default=ConvAIArgs.max_history,
        help="history turns per example for the token counts (as in training)",
    )
    for parser in (p, v):
        parser.add_argument("--format", choices=FORMATS, help="default: detected")
        parser.add_argument(
            "--split", default="train", help="split of a Persona-Chat dict of splits or hub dataset"
        )
        parser.add_argument(
            "--skip-invalid",
            action="store_true",
            help="leave out invalid conversations/dialogs (each one printed, with the counts "
            "kept and dropped) instead of refusing the file",
        )
        parser.add_argument(
            "--allow-empty-personality",
            action="store_true",
            help="accept dialogs without a persona (plain dialog corpora)",
        )


def run_data_command(options: argparse.Namespace) -> int:
    """Run ``convert`` or ``validate``; returns the exit code."""
    if options.command == "convert":
        return convert(options)
    return validate(options)


# --------------------------------------------------------------------------- convert


def write_json_atomic(path: Path, value: object) -> None:
    """Write ``value`` as UTF-8 JSON (non-ASCII kept as is) to ``path``, all or nothing."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory — give the path of the JSON file to write")
    if not path.parent.is_dir():
        raise DataError(f"{path.parent}: the output folder does not exist — create it first")
    umask = os.umask(0)
    os.umask(umask)
    text = json.dumps(value, ensure_ascii=False) + "\n"
    try:  # a normal file's mode (what open() would give), not mkstemp's private 0600
        write_file_atomic(path, text, mode=0o666 & ~umask)
    except OSError as exc:
        raise DataError(
            f"{path}: cannot write ({exc.strerror or exc}) — nothing was written"
        ) from None


def convert(options: argparse.Namespace) -> int:
    fmt = options.format or detect_format(options.src)
    dialogs = read_dialogs(
        options.src,
        fmt,
        options.split,
        lowercase=options.lowercase,
        skip_invalid=options.skip_invalid,
        allow_empty_personality=options.allow_empty_personality,
    )
    added = 0
    if options.num_candidates is not None:
        dialogs, added = add_distractors(dialogs, options.num_candidates, options.seed)
    write_json_atomic(Path(options.dst), dialogs)
    counts = corpus_counts(dialogs)
    print(
        f"Read {counts['dialogs']} dialogs ({counts['utterances']} utterances) from "
        f"{options.src} as {fmt}."
    )
    if options.num_candidates is not None:
        print(
            f"Added {added} distractor candidates sampled from other dialogs "
            f"(num_candidates={options.num_candidates}, seed={options.seed})."
        )
    print(
        f"Wrote {options.dst}: candidates per utterance {counts['candidates_min']}–"
        f"{counts['candidates_max']}."
    )
    return 0


# --------------------------------------------------------------------------- validate


def corpus_counts(dialogs: list[dict]) -> dict[str, int]:
    """Dialogs, utterances, candidates per utterance and persona sentences of valid dialogs."""
    candidates = [len(u["candidates"]) for d in dialogs for u in d["utterances"]]
    personas = [len(d["personality"]) for d in dialogs]
    return {
        "dialogs": len(dialogs),
        "utterances": len(candidates),
        "candidates_min": min(candidates, default=0),
        "candidates_max": max(candidates, default=0),
        "persona_sentences": sum(personas),
        "persona_min": min(personas, default=0),
        "persona_max": max(personas, default=0),
    }


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list (q in (0, 100])."""
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def _load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    from personachat.encoding.inputs import ATTR_TO_SPECIAL_TOKEN

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise ArgsError(
            f"--tokenizer {model_dir}: cannot load a tokenizer ({exc}) — pass a "
            "model folder with tokenizer files, e.g. one saved by training"
        ) from None
    tokenizer.add_special_tokens(ATTR_TO_SPECIAL_TOKEN)  # no-op for personachat models
    return tokenizer


def token_lengths(dialogs: list[dict], tokenizer, max_history: int) -> list[int]:
    """Tokens of each utterance's gold example (persona, last history, reply), untruncated."""
    from personachat.encoding.inputs import SpecialIds, build_example

    special = SpecialIds.from_tokenizer(tokenizer)
    texts = list(
        dict.fromkeys(
            s
            for d in dialogs
            for s in [
                *d["personality"],
                *(t for u in d["utterances"] for t in [*u["history"], u["candidates"][-1]]),
            ]
        )
    )
    ids = dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True))
    lengths = []
    for d in dialogs:
        persona = [ids[s] for s in d["personality"]]
        for u in d["utterances"]:
            example = build_example(
                persona,
                [ids[h] for h in u["history"]],
                [ids[u["candidates"][-1]]],
                special,
                num_candidates=1,
                max_history=max_history,
                max_tokens=1 << 30,
            )
            lengths.append(len(example["candidates"][0]["input_ids"]))
    return sorted(lengths)


def validate(options: argparse.Namespace) -> int:
    try:
        fmt = options.format or detect_format(options.file)
        dialogs = read_dialogs(
            options.file,
            fmt,
            options.split,
            skip_invalid=options.skip_invalid,
            allow_empty_personality=options.allow_empty_personality,
            report=print,
        )
    except DataError as err:
        print(f"{options.file}: {len(err.problems)} problem{'s' * (len(err.problems) != 1)}:")
        for problem in err.problems:
            print(f"  - {problem}")
        return 1
    counts = corpus_counts(dialogs)
    skipping = " (what --skip-invalid keeps)" if options.skip_invalid else ""
    print(f"{options.file} ({fmt}): valid{skipping}")
    print(f"  dialogs                  {counts['dialogs']}")
    print(f"  utterances               {counts['utterances']}")
    print(
        f"  candidates per utterance min {counts['candidates_min']}, max {counts['candidates_max']}"
    )
    print(
        f"  persona sentences        {counts['persona_sentences']} (per dialog min "
        f"{counts['persona_min']}, max {counts['persona_max']})"
    )
    if options.num_candidates is not None:
        try:
            _, added = add_distractors(dialogs, options.num_candidates)
        except DataError as err:
            print(f"{options.file}: 1 problem:\n  - {err}")
            return 1
        print(
            f"  num_candidates={options.num_candidates}: {added} distractors would be "
            "sampled from other dialogs"
        )
    if options.tokenizer:
        lengths = token_lengths(dialogs, _load_tokenizer(options.tokenizer), options.max_history)
        print(
            f"  tokens per example       p50 {percentile(lengths, 50)}, p95 "
            f"{percentile(lengths, 95)}, max {lengths[-1]} (gold reply, "
            f"max_history={options.max_history})"
        )
    return 0
