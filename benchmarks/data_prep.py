"""Data preparation: tokenize once and cache (``token_cache``) against the classic way.

A Persona-Chat-sized corpus is generated (17,878 dialogs, 131,438 utterances, 20 candidates
each, persona and utterance lengths like Persona-Chat's; see ``generate_corpus``) with a
GPT-2-like byte-level BPE tokenizer trained on it (GPT-2's own vocabulary cannot be downloaded
here). Then each phase runs in a fresh child process, one after the other, so that its peak
memory is its own (``ru_maxrss`` of the child):

- ``read``:     parse the JSON file only (every other phase but ``old-warm`` starts with it);
- ``cold``:     read + ``token_cache.cached_dataset`` on an empty cache: distinct strings
                tokenized through ``datasets``, Arrow entry written;
- ``warm``:     read + the same call again: key computed, entry memory-mapped;
- ``old-cold``: the classic recipe (simpletransformers / transfer-learning-conv-ai): read +
                tokenize every string of the file, lay out every example, pad all of them to
                the longest input of the dataset, ``torch.save`` the tensors (a pickle);
- ``old-warm``: ``torch.load`` of that file.

Every phase that yields a dataset ends by reading 1,000 of its examples (and the old way's
tensors are read the same way), so lazy work is not hidden. Options follow the classic
recipe: ``num_candidates=2``, ``max_history=2``, inputs cut at 1,024 tokens (GPT-2's
context).

    python benchmarks/data_prep.py                  # everything, about 5 minutes on 2 cores
    python benchmarks/data_prep.py --num-proc 2 --phases cold warm  # 2 datasets workers
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

PERSONA_CHAT_DIALOGS = 17_878
PERSONA_CHAT_UTTERANCES = 131_438
CANDIDATES = 20
PERSONA_POOL = 5_000  # distinct persona sentences (Persona-Chat: ~1,155 personas x ~4.5)
WORD_TYPES = 20_000
VOCAB_SIZE = 50_257  # GPT-2's
OPTIONS = {"num_candidates": 2, "max_history": 2, "max_tokens": 1024}
PHASES = ("read", "cold", "warm", "old-cold", "old-warm")


# ------------------------------------------------------------------------------ the corpus
def make_words(rng: random.Random, n: int) -> list[str]:
    """Pronounceable lowercase words of 1-4 syllables, most frequent first."""
    onsets = [
        "",
        "b",
        "c",
        "d",
        "f",
        "g",
        "h",
        "j",
        "k",
        "l",
        "m",
        "n",
        "p",
        "r",
        "s",
        "t",
        "v",
        "w",
        "y",
        "z",
        "br",
        "ch",
        "cl",
        "dr",
        "fl",
        "gr",
        "pl",
        "sh",
        "st",
        "th",
        "tr",
        "wh",
    ]
    nuclei = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "ng", "st", "ck", "nd"]
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        syllables = 1 + min(3, int(rng.expovariate(1.2)))
        word = "".join(
            rng.choice(onsets) + rng.choice(nuclei) + rng.choice(codas) for _ in range(syllables)
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    words.sort(key=len)  # short words are the frequent ones, as in English
    return words


def generate_corpus(path: Path, seed: int = 0) -> dict:
    """Write a Persona-Chat JSON file (a list of dialogs) of Persona-Chat's size and shape.

    - words: 20,000 types, Zipf-distributed (exponent 1.1) so frequent words become single
      BPE tokens and rare ones split, as with GPT-2 on English;
    - persona: 4 or 5 sentences from a pool of 5,000, each ``normal(7, 2)`` words (at least
      3) plus " ." — about 9 GPT-2 tokens, as in Persona-Chat;
    - utterances: ``lognormal(median 10, sigma 0.45)`` words (2 to 35) plus punctuation;
    - dialogs: 7 or 8 bot turns (17,878 dialogs hold exactly 131,438 utterances); turn k has
      the 2k+1 previous utterances as history, and 20 candidates: 19 distractors drawn from
      the utterances of the whole corpus, then the gold reply last.
    """
    rng = random.Random(seed)
    words = make_words(rng, WORD_TYPES)
    weights = [1 / (r + 1) ** 1.1 for r in range(len(words))]
    cumulative = list(_accumulate(weights))

    def sentence(n: int) -> str:
        return " ".join(rng.choices(words, cum_weights=cumulative, k=n))

    def utterance() -> str:
        n = min(35, max(2, round(rng.lognormvariate(math.log(10), 0.45))))
        return sentence(n) + rng.choice([" .", " ?", " !", " .", " ."])

    persona_pool = [sentence(max(3, round(rng.gauss(7, 2)))) + " ." for _ in range(PERSONA_POOL)]
    extra = PERSONA_CHAT_UTTERANCES - 7 * PERSONA_CHAT_DIALOGS  # dialogs with an 8th turn
    said_per_dialog = []
    for d in range(PERSONA_CHAT_DIALOGS):
        turns = 8 if d < extra else 7
        said_per_dialog.append([utterance() for _ in range(2 * turns)])
    pool = [u for said in said_per_dialog for u in said]
    dialogs = []
    for said in said_per_dialog:
        turns = len(said) // 2
        dialogs.append(
            {
                "personality": rng.sample(persona_pool, rng.choice((4, 5))),
                "utterances": [
                    {
                        "history": said[: 2 * k + 1],
                        "candidates": rng.sample(pool, CANDIDATES - 1) + [said[2 * k + 1]],
                    }
                    for k in range(turns)
                ],
            }
        )
    path.write_text(json.dumps(dialogs), encoding="utf-8")
    return {
        "dialogs": len(dialogs),
        "utterances": sum(len(d["utterances"]) for d in dialogs),
        "bytes": path.stat().st_size,
        "texts": pool[:200_000] + persona_pool,
    }


def _accumulate(values: list[float]):
    total = 0.0
    for v in values:
        total += v
        yield total


def build_tokenizer(texts: list[str], folder: Path) -> None:
    """A GPT-2-sized byte-level BPE tokenizer trained on the corpus, special tokens added,
    saved as ``tokenizer.json`` (what ``AutoTokenizer.from_pretrained`` reads)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from personachat.encoding.inputs import ATTR_TO_SPECIAL_TOKEN
    from personachat.model.scratch import train_tokenizer

    tokenizer = train_tokenizer(texts, VOCAB_SIZE - len(ATTR_TO_SPECIAL_TOKEN) - 1)
    tokenizer.add_special_tokens(ATTR_TO_SPECIAL_TOKEN)
    tokenizer.save_pretrained(folder)


# ------------------------------------------------------------------------------ the phases
def run_phase(phase: str, work: Path, num_proc: int) -> dict:
    """One phase, in this (child) process. Returns seconds and memory figures."""
    import torch
    from transformers import AutoTokenizer

    from personachat.encoding.inputs import SpecialIds
    from personachat.encoding.token_cache import EncodingOptions

    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    special = SpecialIds.from_tokenizer(tokenizer)
    options = EncodingOptions(**OPTIONS)
    sample = random.Random(1).sample(range(PERSONA_CHAT_UTTERANCES), 1000)
    result: dict = {"phase": phase, "baseline_mib": maxrss_mib()}
    started = time.perf_counter()

    if phase == "old-warm":
        with peak_rss_above_start() as added:
            tensors = torch.load(work / "old_cache.pt", weights_only=True)
            checksum = tensor_checksum(tensors, sample, special.pad)
        result.update(examples=len(tensors["input_ids"]), pad_to=tensors["input_ids"].shape[-1])
    else:
        with open(work / "corpus.json", encoding="utf-8") as f:
            dialogs = json.load(f)
        result["read_s"] = time.perf_counter() - started
        result["after_read_mib"] = rss_mib()
        with peak_rss_above_start() as added:
            checksum = work_phase(
                phase, dialogs, work, tokenizer, special, options, sample, num_proc, result
            )
    result.update(
        seconds=time.perf_counter() - started,
        peak_mib=maxrss_mib(),
        added_mib=added[0],
        checksum=int(checksum),
    )
    return result


def work_phase(
    phase: str,
    dialogs: list,
    work: Path,
    tokenizer,
    special,
    options,
    sample: list[int],
    num_proc: int,
    result: dict,
) -> int:
    """The part of a phase after reading the JSON; returns its checksum."""
    import torch

    from personachat.encoding.token_cache import cached_dataset

    if phase == "read":
        checksum = len(dialogs)
    elif phase in ("cold", "warm"):
        dataset = cached_dataset(
            dialogs, tokenizer, special, options, work / "cache", num_proc=num_proc
        )
        lengths = dataset.lengths
        checksum = sum(sum(c["input_ids"]) for i in sample for c in dataset[i]["candidates"])
        result.update(
            examples=len(dataset),
            texts=dataset.num_texts,
            longest=max(lengths),
            mean_length=sum(lengths) / len(lengths),
            cache_bytes=sum(p.stat().st_size for p in (work / "cache").rglob("*") if p.is_file()),
        )
    else:  # old-cold
        tensors = classic_tensors(dialogs, tokenizer, special, options)
        torch.save(tensors, work / "old_cache.pt")
        checksum = tensor_checksum(tensors, sample, special.pad)
        result.update(
            examples=len(tensors["input_ids"]),
            pad_to=tensors["input_ids"].shape[-1],
            cache_bytes=(work / "old_cache.pt").stat().st_size,
            padding=float((tensors["input_ids"] == special.pad).float().mean()),
        )
    return checksum


@contextmanager
def peak_rss_above_start(every_s: float = 0.005):
    """Yields a one-item list that ends up holding the peak resident memory (MiB) above its
    level on entry, sampled from /proc every 5 ms: what the code inside added at its worst."""
    start = rss_mib()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            peak[0] = max(peak[0], rss_mib())

    thread = threading.Thread(target=sample, daemon=True)
    added = [0.0]
    thread.start()
    try:
        yield added
    finally:
        done.set()
        thread.join()
        added[0] = max(peak[0], rss_mib()) - start


def classic_tensors(dialogs: list[dict], tokenizer, special, options) -> dict:
    """The classic recipe: tokenize every string of the data (nested lists, as
    simpletransformers' ``tokenize`` did, batched here so the tokenizer is not the
    handicap), lay out every example, pad every input to the dataset's longest, make tensors."""
    import torch

    from personachat.encoding.inputs import IGNORE_INDEX, build_example

    texts = [s for d in dialogs for s in _strings(d)]
    ids = iter(tokenizer(texts, add_special_tokens=False)["input_ids"])
    del texts
    encoded = [
        {
            "personality": [next(ids) for _ in d["personality"]],
            "utterances": [
                {
                    "history": [next(ids) for _ in u["history"]],
                    "candidates": [next(ids) for _ in u["candidates"]],
                }
                for u in d["utterances"]
            ],
        }
        for d in dialogs
    ]
    examples = [
        build_example(
            d["personality"],
            u["history"],
            u["candidates"],
            special,
            options.num_candidates,
            options.max_history,
            options.max_tokens,
        )
        for d in encoded
        for u in d["utterances"]
    ]
    del encoded
    longest = max(len(c["input_ids"]) for ex in examples for c in ex["candidates"])

    def padded(key: str, value: int) -> torch.Tensor:
        return torch.tensor(
            [
                [c[key] + [value] * (longest - len(c[key])) for c in ex["candidates"]]
                for ex in examples
            ],
            dtype=torch.long,
        )

    return {
        "input_ids": padded("input_ids", special.pad),
        "token_type_ids": padded("token_type_ids", special.pad),
        "lm_labels": padded("lm_labels", IGNORE_INDEX),
        "mc_token_ids": torch.tensor(
            [[c["mc_token_ids"] for c in ex["candidates"]] for ex in examples]
        ),
        "mc_labels": torch.tensor([ex["mc_label"] for ex in examples]),
    }


def tensor_checksum(tensors: dict, sample: list[int], pad: int) -> int:
    """Sum of the sampled examples' token ids, padding left out: equal across phases when
    they hold the same examples."""
    ids = tensors["input_ids"][sample]
    return int(ids[ids != pad].sum())


def _strings(dialog: dict):
    yield from dialog["personality"]
    for u in dialog["utterances"]:
        yield from u["history"]
        yield from u["candidates"]


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------------------------ the report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the corpus, tokenizer and caches go (default: a temp dir)",
    )
    parser.add_argument(
        "--num-proc",
        type=int,
        default=1,
        help="datasets worker processes for the cold tokenization",
    )
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        default=list(PHASES),
        help="phases to run (default: all; the table needs all five)",
    )
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    options = parser.parse_args()

    if options.phase:  # child
        print(json.dumps(run_phase(options.phase, options.work_dir, options.num_proc)))
        return

    work = options.work_dir or Path(tempfile.mkdtemp(prefix="data_prep-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        corpus = generate_corpus(work / "corpus.json")
        build_tokenizer(corpus.pop("texts"), work / "tokenizer")
        print(
            f"corpus: {corpus['dialogs']:,} dialogs, {corpus['utterances']:,} utterances x "
            f"{CANDIDATES} candidates, {corpus['bytes'] / 2**20:.0f} MiB of JSON; tokenizer "
            f"trained ({VOCAB_SIZE:,} tokens) in {time.perf_counter() - started:.0f} s"
        )
        shutil.rmtree(work / "cache", ignore_errors=True)
        results = {}
        for phase in options.phases:
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--phase",
                    phase,
                    "--work-dir",
                    str(work),
                    "--num-proc",
                    str(options.num_proc),
                ],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            )
            if proc.returncode != 0:
                sys.exit(f"phase {phase} failed:\n{proc.stderr[-3000:]}")
            results[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
            (work / "results.json").write_text(json.dumps(results, indent=1))
            print(
                f"  {phase}: {results[phase]['seconds']:.1f} s, peak "
                f"{results[phase]['peak_mib']:,.0f} MiB",
                flush=True,
            )
        if set(results) == set(PHASES):
            report(results, options)
    finally:
        if not options.keep and options.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def report(results: dict, options: argparse.Namespace) -> None:
    import torch

    read = results["read"]
    print(
        f"\nevery phase starts at about {read['baseline_mib']:,.0f} MiB (python, torch, "
        "transformers imported)"
    )
    cold, warm = results["cold"], results["warm"]
    old, old_warm = results["old-cold"], results["old-warm"]
    if not (cold["checksum"] == warm["checksum"] == old["checksum"] == old_warm["checksum"]):
        print("WARNING: the phases disagree on the sampled examples")
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, torch {torch.__version__}; "
        f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"examples {cold['examples']:,}; distinct strings tokenized {cold['texts']:,}; "
        f"input length mean {cold['mean_length']:.0f}, longest {cold['longest']}; the old "
        f"way pads all to {old['pad_to']} ({old['padding']:.0%} padding)\n"
    )
    print(
        "| phase | seconds | of which reading the JSON | peak memory (process) | "
        "added by the phase's own work | on disk |"
    )
    print("|---|---:|---:|---:|---:|---:|")

    def row(name: str, r: dict) -> None:
        reading = f"{r['read_s']:.1f}" if "read_s" in r else "-"
        disk = f"{r['cache_bytes'] / 2**20:,.0f} MiB" if "cache_bytes" in r else "-"
        added = f"{max(0.0, r['added_mib']):,.0f} MiB" if r["phase"] != "read" else "-"
        print(
            f"| {name} | {r['seconds']:.1f} | {reading} | {r['peak_mib']:,.0f} MiB | "
            f"{added} | {disk} |"
        )

    row("read the JSON only", read)
    row("**cold**: tokenize + cache (`token_cache`)", cold)
    row("**warm**: from the cache (`token_cache`)", warm)
    row("old way, cold: tokenize all, pad all, `torch.save`", old)
    row("old way, warm: `torch.load`", old_warm)
    print(
        f"\nold cold / new cold: {old['seconds'] / cold['seconds']:.1f}x time, "
        f"{old['peak_mib'] / cold['peak_mib']:.1f}x peak memory "
        f"({old['added_mib'] / max(cold['added_mib'], 1):.0f}x the memory added); "
        f"new warm: {warm['seconds'] - warm['read_s']:.1f} s after reading the JSON; "
        f"old warm / new warm peak memory: {old_warm['peak_mib'] / warm['peak_mib']:.1f}x; "
        f"num_proc={options.num_proc}"
    )


if __name__ == "__main__":
    main()
