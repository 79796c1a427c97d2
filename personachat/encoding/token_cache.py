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

An entry is written into a temporary folder and renamed into place when complete, so a run
killed halfway leaves only a ``.tmp-*`` folder that is never read (and is removed by the next
build once its process is gone). Memory stays bounded by the distinct text, not by padding:
examples are laid out one at a time when read (``__getitem__``) and padded one batch at a time
(``encoding.dataset.collate``).

The entry's folder is not written with ``personachat.fs.write_folder_atomic``: its temporary
folder's name carries the host and process id (so a later build removes the leftovers of
killed ones), and an entry another process renamed into place first is kept, not replaced
(the same key is the same content, and it may be in use there already).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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
    """Tokenize and write one entry atomically: into ``root/.tmp-…``, then renamed to
    ``root/key``. An entry of that key found there is replaced if ``replace``, else kept
    (and this one discarded)."""
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temporaries(root)
    tmp = root / f".tmp-{key}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_tables(tmp, key, dialogs, tokenizer, options, num_proc, silent)
        return _move_into_place(tmp, root / key, replace)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, final: Path, replace: bool = True) -> Path:
    """Rename a complete entry into place, setting aside (then deleting) one already there
    when ``replace``; without it an entry already there is kept. If another process renames
    the same key into place at the same moment, whichever landed is kept: the same key
    means the same content."""
    if not replace and (final / MANIFEST).is_file():
        return final
    old = None
    if final.exists():  # reprocess, or a damaged entry: set the old one aside first
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(final, old)
        except OSError:
            old = None
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / MANIFEST).is_file():
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_abandoned_temporaries(root: Path) -> None:
    """Delete ``.tmp-*`` folders of builds killed on this host (their process is gone) and
    ``.old-*`` folders (replaced entries). The ``.tmp-*`` folders of running builds, or of
    other hosts on a shared disk, are left alone unless they are more than a day old."""
    host = socket.gethostname()
    for path in root.glob(".*-*"):
        if not path.is_dir() or not path.name.startswith((".tmp-", ".old-")):
            continue
        stale = time.time() - path.stat().st_mtime > 86_400
        if path.name.startswith(".tmp-"):
            parts = path.name.split("-")
            same_host = len(parts) >= 5 and "-".join(parts[2:-2]) == host
            if same_host and parts[-2].isdigit() and not _process_alive(int(parts[-2])):
                stale = True
        else:
            stale = True
        if stale:
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _log(log: Log | None, message: str) -> None:
    if log is not None:
        log(message)
