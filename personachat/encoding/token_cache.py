"""Tokenize once: tokenized dialogs cached on disk as Arrow, keyed by everything they depend on.

The first time a data file is used, its strings are tokenized through ``datasets`` (``num_proc``
worker processes, results streamed to Arrow on disk) and stored under
``<cache_dir>/tokens/<key>/``; every later run with the same dialogs, tokenizer and encoding
options memory-maps those files instead of tokenizing again. The key is a SHA-256 of

- the dialogs' content (every persona sentence, and the history window and candidates that
  the examples use: a changed file is a new key),
- the tokenizer (its full JSON serialisation: vocabulary, merges, added special tokens),
- every option that changes the encoding (``num_candidates``, ``max_history``,
  ``max_tokens``, ``personality_permutations``, lowercasing, the seed of the persona shuffles)
  and the layout version (``encoding.LAYOUT_VERSION``),

so a stale entry can never be read: anything that would change the examples changes the key.
``reprocess=True`` rebuilds an entry anyway.

What an entry holds (Arrow IPC files written by ``token_tables``, memory-mapped on load by
``token_dataset``; JSON for the manifest; no pickle, so opening a cache someone else wrote
cannot run code):

- ``texts.arrow``: one row per distinct string (after lowercasing), its token ids;
- ``dialogs.arrow``: per dialog, its persona sentences (rows of ``texts``) and utterance count;
- ``utterances.arrow``: per utterance, the history window and the chosen candidates (rows of
  ``texts``, gold last);
- ``examples.arrow``: per example, its dialog, utterance, persona order and input length (the
  lengths that length-grouped batching sorts by, computed once here);
- ``manifest.json``: key, options, counts and file sizes, written last.

An entry is written by the one atomic writer (``personachat.fs.write_folder_atomic``): into a
temporary folder beside it, flushed to disk and renamed into place when complete, so a run
killed halfway leaves only a ``.<key>.tmp-*`` folder that is never read (and is removed by the
next build of that key once its writer is gone). An entry another process renamed into place
first is kept, not replaced (the same key is the same content, and it may be in use there
already). Memory stays bounded by the distinct text, not by padding: examples are laid out
one at a time when read (``__getitem__``) and padded one batch at a time
(``encoding.dataset.collate``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from personachat.encoding.inputs import (
    LAYOUT_VERSION,
    TRANSFERTRANSFO,
    Overheads,
    SpecialIds,
    check_num_candidates,
    history_window,
)
from personachat.encoding.token_dataset import CachedPersonaChatDataset, open_cached_dataset
from personachat.encoding.token_tables import MANIFEST, TokenCacheError, write_tables
from personachat.fs import write_folder_atomic

CACHE_SUBDIR = "tokens"
Log = Callable[[str], None]


@dataclass(frozen=True)
class EncodingOptions:
    """Every option that changes the examples built from a set of dialogs."""

    num_candidates: int
    max_history: int
    max_tokens: int
    personality_permutations: int = 1
    lowercase: bool = False
    seed: int = 0
    # What the input format adds around the text (the examples' lengths depend on it).
    overheads: Overheads = TRANSFERTRANSFO
    # The bot's earlier turns in the history are labelled too (whole conversations).
    label_history: bool = False


# ------------------------------------------------------------------------------- the key
def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of what decides the tokenizer's output: for a fast tokenizer its full JSON
    (normalizer, pre-tokenizer, vocabulary, merges, added tokens); for a slow one its class,
    vocabulary, BPE merges and special tokens."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(
            json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode()
        )
        ranks = getattr(tokenizer, "bpe_ranks", None)
        if ranks:
            digest.update(
                json.dumps(
                    sorted((" ".join(k), v) for k, v in ranks.items()), ensure_ascii=False
                ).encode()
            )
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def dialogs_fingerprint(dialogs: Sequence[dict], options: EncodingOptions) -> str:
    """SHA-256 of the text the examples are built from: each dialog's persona, and per
    utterance the history window and the chosen candidates (what lies outside them cannot
    change an example; the window sizes are part of the options, hence of the key)."""
    digest = hashlib.sha256()
    n_cand = options.num_candidates
    for dialog in dialogs:
        part = [
            dialog["personality"],
            [
                [history_window(u["history"], options.max_history), u["candidates"][-n_cand:]]
                for u in dialog["utterances"]
            ],
        ]
        digest.update(json.dumps(part, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()


def cache_key(dialogs: Sequence[dict], tokenizer, options: EncodingOptions) -> str:
    """The entry name for these dialogs, this tokenizer and these options (hex, 32 chars)."""
    parts = {
        "layout_version": LAYOUT_VERSION,
        "options": asdict(options),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "dialogs": dialogs_fingerprint(dialogs, options),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


# ------------------------------------------------------------------------ load or build
def cached_dataset(
    dialogs: Sequence[dict],
    tokenizer,
    special: SpecialIds,
    options: EncodingOptions,
    cache_dir: str | os.PathLike,
    *,
    reprocess: bool = False,
    num_proc: int = 1,
    key: str | None = None,
    source: str = "<data>",
    log: Log | None = None,
) -> CachedPersonaChatDataset:
    """The dataset of ``dialogs``, from the cache when an entry for them exists, else
    tokenized (``num_proc`` processes) and written to the cache first.

    ``reprocess=True`` rebuilds the entry even when one exists. An entry that cannot be read
    (damaged, or written by another version) is rebuilt with a note in the log.
    """
    check_num_candidates(dialogs, options.num_candidates, source)
    root = Path(cache_dir) / CACHE_SUBDIR
    key = key or cache_key(dialogs, tokenizer, options)
    folder = root / key
    if folder.is_dir() and not reprocess:
        try:
            started = time.perf_counter()
            dataset = open_cached_dataset(folder, special, expected_key=key)
            _log(
                log,
                f"{source}: tokenized data read from the cache {folder} "
                f"({len(dataset):,} examples, {time.perf_counter() - started:.1f} s)",
            )
            return dataset
        except TokenCacheError as err:
            _log(log, f"{source}: cache entry {folder} cannot be used ({err}); tokenizing again")
    started = time.perf_counter()
    # Replace an entry only if it was there (and unusable or to be reprocessed) when we
    # looked; one that lands meanwhile came from another process (e.g. another torchrun
    # rank) with the same key, hence the same content, and may be in use there already.
    write_entry(
        root,
        key,
        dialogs,
        tokenizer,
        options,
        num_proc=num_proc,
        silent=log is None,
        replace=folder.is_dir(),
    )
    dataset = open_cached_dataset(folder, special, expected_key=key)
    _log(
        log,
        f"{source}: tokenized {dataset.num_texts:,} distinct strings into "
        f"{len(dataset):,} examples in {time.perf_counter() - started:.1f} s; cached in "
        f"{folder} (reused while the data, tokenizer and options stay the same)",
    )
    return dataset


def write_entry(
    root: Path,
    key: str,
    dialogs: Sequence[dict],
    tokenizer,
    options: EncodingOptions,
    num_proc: int = 1,
    silent: bool = True,
    replace: bool = True,
) -> Path:
    """Tokenize and write one entry to ``root/key`` through the one atomic writer
    (``personachat.fs.write_folder_atomic``). An entry of that key found there is replaced
    if ``replace``, else kept and this one discarded: one that lands while this one is
    written came from another process (e.g. another torchrun rank) with the same key, hence
    the same content, and may be in use there already."""
    return write_folder_atomic(
        root / key,
        partial(
            write_tables,
            key=key,
            dialogs=dialogs,
            tokenizer=tokenizer,
            options=options,
            num_proc=num_proc,
            silent=silent,
        ),
        keep=None if replace else _complete,
    )


def _complete(entry: Path) -> bool:
    """Whether ``entry`` is a whole entry (its manifest is written last)."""
    return (entry / MANIFEST).is_file()


def _log(log: Log | None, message: str) -> None:
    if log is not None:
        log(message)
