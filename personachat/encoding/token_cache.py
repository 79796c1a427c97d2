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

What an entry holds (Arrow IPC files, memory-mapped on load; JSON for the manifest; no pickle,
so opening a cache someone else wrote cannot run code):

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
(``encoding.collate``).
"""

from __future__ import annotations

import bisect
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

import numpy as np
import pyarrow as pa
import torch

from personachat.encoding.inputs import (
    LAYOUT_VERSION,
    SpecialIds,
    build_example,
    check_num_candidates,
    example_index,
    example_length,
    history_window,
)
from personachat.errors import PersonachatError

CACHE_SUBDIR = "tokens"
MANIFEST = "manifest.json"
TABLES = ("texts", "dialogs", "utterances", "examples")
TOKENIZE_BATCH = 1000  # strings per datasets.map batch (and per Arrow record batch)

Log = Callable[[str], None]


class TokenCacheError(PersonachatError, RuntimeError):
    """A cache entry cannot be used (incomplete, damaged or from another version)."""


@dataclass(frozen=True)
class EncodingOptions:
    """Every option that changes the examples built from a set of dialogs."""

    num_candidates: int
    max_history: int
    max_tokens: int
    personality_permutations: int = 1
    lowercase: bool = False
    seed: int = 0


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
        _write_tables(tmp, key, dialogs, tokenizer, options, num_proc, silent)
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


# ------------------------------------------------------------------------------ writing
def _write_tables(
    folder: Path,
    key: str,
    dialogs: Sequence[dict],
    tokenizer,
    options: EncodingOptions,
    num_proc: int,
    silent: bool,
) -> None:
    """Everything of one entry, manifest last."""
    n_cand = options.num_candidates
    prepare = str.lower if options.lowercase else None
    rows: dict[str, int] = {}  # distinct (prepared) string -> row of texts.arrow

    def row(text: str) -> int:
        if prepare is not None:
            text = prepare(text)
        found = rows.get(text)
        if found is None:
            found = rows[text] = len(rows)
        return found

    persona, persona_offsets, utterance_counts = [], [0], []
    history, history_offsets, candidates, candidate_offsets = [], [0], [], [0]
    for dialog in dialogs:
        persona.extend(row(s) for s in dialog["personality"])
        persona_offsets.append(len(persona))
        utterance_counts.append(len(dialog["utterances"]))
        for utterance in dialog["utterances"]:
            history.extend(
                row(s) for s in history_window(utterance["history"], options.max_history)
            )
            history_offsets.append(len(history))
            candidates.extend(row(s) for s in utterance["candidates"][-n_cand:])
            candidate_offsets.append(len(candidates))

    token_counts = _tokenize_texts(folder, list(rows), tokenizer, num_proc, silent)
    rows.clear()
    _write_table(
        folder / "dialogs.arrow",
        {
            "persona": _ragged(persona_offsets, persona),
            "utterances": pa.array(utterance_counts, pa.int32()),
        },
    )
    _write_table(
        folder / "utterances.arrow",
        {
            "history": _ragged(history_offsets, history),
            "candidates": _ragged(candidate_offsets, candidates),
        },
    )

    # Examples and their lengths (from token counts: no input is laid out here).
    counts = token_counts.tolist()
    dialog_col, utterance_col, order_values, order_offsets, lengths = [], [], [], [0], []
    first_utterance = np.concatenate([[0], np.cumsum(utterance_counts, dtype=np.int64)]).tolist()
    persona_sizes = np.diff(persona_offsets).tolist()
    for d, u, order in example_index(
        persona_sizes, utterance_counts, options.personality_permutations, options.seed
    ):
        start = persona_offsets[d]
        utt = first_utterance[d] + u
        lengths.append(
            example_length(
                [counts[persona[start + i]] for i in order],
                [counts[r] for r in history[history_offsets[utt] : history_offsets[utt + 1]]],
                [
                    counts[r]
                    for r in candidates[candidate_offsets[utt] : candidate_offsets[utt + 1]]
                ],
                options.max_tokens,
            )
        )
        dialog_col.append(d)
        utterance_col.append(u)
        order_values.extend(order)
        order_offsets.append(len(order_values))
    _write_table(
        folder / "examples.arrow",
        {
            "dialog": pa.array(dialog_col, pa.int32()),
            "utterance": pa.array(utterance_col, pa.int32()),
            "order": _ragged(order_offsets, order_values),
            "length": pa.array(lengths, pa.int32()),
        },
    )

    manifest = {
        "key": key,
        "layout_version": LAYOUT_VERSION,
        "options": asdict(options),
        "tokenizer": type(tokenizer).__name__,
        "counts": {
            "dialogs": len(utterance_counts),
            "utterances": len(history_offsets) - 1,
            "texts": len(token_counts),
            "examples": len(lengths),
        },
        "files": {f"{name}.arrow": (folder / f"{name}.arrow").stat().st_size for name in TABLES},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_bytes(folder / MANIFEST, json.dumps(manifest, indent=2).encode())


def _tokenize_texts(
    folder: Path, texts: list[str], tokenizer, num_proc: int, silent: bool
) -> np.ndarray:
    """Tokenize ``texts`` through ``datasets`` (``num_proc`` worker processes, results
    written to Arrow on disk as they come) and copy them, as int32, into ``texts.arrow``.
    Returns the number of tokens of each text."""
    if not texts:  # nothing to tokenize (no dialogs): an empty table, no datasets run
        _write_table(folder / "texts.arrow", {"input_ids": _ragged([0], [])})
        return np.zeros(0, np.int64)
    import datasets  # here, not at the top: a second to import, and only a cache miss needs it

    encode = batch_encoder(tokenizer, texts[:TOKENIZE_BATCH])

    def tokenize(batch: dict) -> dict:
        return {"input_ids": encode(batch["text"])}

    work = folder / "work"
    work.mkdir()
    num_proc = max(1, min(num_proc, len(texts) // TOKENIZE_BATCH))
    bars_were_on = datasets.is_progress_bar_enabled()
    if silent:
        datasets.disable_progress_bars()
    try:
        tokenized = datasets.Dataset.from_dict({"text": texts}).map(
            tokenize,
            batched=True,
            batch_size=TOKENIZE_BATCH,
            remove_columns=["text"],
            num_proc=num_proc if num_proc > 1 else None,
            features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}),
            cache_file_name=str(work / "tokens.arrow"),
            new_fingerprint=hashlib.sha256(str(folder).encode()).hexdigest()[:16],
            desc="Tokenizing (once: cached)",
        )
        table = tokenized.data.table
        counts = []
        schema = pa.schema([("input_ids", pa.large_list(pa.int32()))])
        with (
            pa.OSFile(str(folder / "texts.arrow"), "wb") as sink,
            pa.ipc.new_file(sink, schema) as writer,
        ):
            for batch in table.to_batches(max_chunksize=64 * TOKENIZE_BATCH):
                ids = batch.column(0).cast(pa.large_list(pa.int32()))
                counts.append(np.diff(_numpy_view(ids.offsets)))
                writer.write_batch(pa.record_batch([ids], schema=schema))
            sink.flush()
            os.fsync(sink.fileno())
        del tokenized, table
    finally:
        if silent and bars_were_on:
            datasets.enable_progress_bars()
        shutil.rmtree(work, ignore_errors=True)
    return np.concatenate(counts) if counts else np.zeros(0, np.int64)


def batch_encoder(tokenizer, probe: list[str]) -> Callable[[list[str]], list[list[int]]]:
    """Token ids of a batch of strings, exactly as ``tokenizer(texts,
    add_special_tokens=False)["input_ids"]`` (what ``encoding.TextEncoder`` uses). A fast
    tokenizer's Rust backend is called directly (``encode_batch_fast``: no offsets, no
    per-encoding conversion in Python, a quarter faster) once it gave the same ids on
    ``probe``; anything else goes through ``tokenizer(...)``."""

    def generic(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return generic

    def fast(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]

    return fast if probe and fast(probe) == generic(probe) else generic


def _ragged(offsets: list[int], values: list[int]) -> pa.Array:
    """A list<int32> column from flat values and row offsets (int64: no 2**31 limit)."""
    return pa.LargeListArray.from_arrays(
        pa.array(offsets, pa.int64()), pa.array(values, pa.int32())
    )


def _write_table(path: Path, columns: dict[str, pa.Array]) -> None:
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        sink.flush()
        os.fsync(sink.fileno())


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------ reading
class RaggedColumn:
    """Row ``i`` of a memory-mapped list<int> column as a Python list, without copying the
    column: numpy views on each Arrow chunk's offsets and values."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self._offsets, self._values, self._starts = [], [], []
        start = 0
        for chunk in column.chunks:
            self._starts.append(start)
            self._offsets.append(_numpy_view(chunk.offsets))
            self._values.append(_numpy_view(chunk.values))
            start += len(chunk)
        self._len = start

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> list[int]:
        c = bisect.bisect_right(self._starts, i) - 1 if len(self._starts) > 1 else 0
        offsets, j = self._offsets[c], i - self._starts[c]
        return self._values[c][offsets[j] : offsets[j + 1]].tolist()


_NUMPY_TYPES = {pa.int32(): np.int32, pa.int64(): np.int64}


def _numpy_view(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A null-free int32/int64 Arrow array as a numpy array over the same (memory-mapped)
    buffer. (``Array.to_numpy`` would do the same but imports pandas: 0.7 s per process.)"""
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks != 1:
            return np.concatenate([_numpy_view(c) for c in array.chunks] or [np.zeros(0)])
        array = array.chunk(0)
    if array.null_count:
        raise TokenCacheError("unexpected missing values in a table")
    dtype = _NUMPY_TYPES[array.type]
    return np.frombuffer(array.buffers()[1], dtype=dtype)[array.offset : array.offset + len(array)]


class ExampleIndex(Sequence):
    """``(dialog, utterance, persona order)`` per example, read from ``examples.arrow``: the
    same tuples as ``PersonaChatDataset.index`` without holding them all as Python objects."""

    def __init__(self, dialog: np.ndarray, utterance: np.ndarray, order: RaggedColumn) -> None:
        self._dialog, self._utterance, self._order = dialog, utterance, order

    def __len__(self) -> int:
        return len(self._dialog)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} out of range ({len(self)} examples)")
        return int(self._dialog[i]), int(self._utterance[i]), tuple(self._order[i])


class CachedPersonaChatDataset(torch.utils.data.Dataset):
    """A ``PersonaChatDataset`` read from a cache entry: same items, ``index`` and ``lengths``.

    Token ids stay in the memory-mapped Arrow files; an item is laid out when it is read.
    Pickling (DataLoader workers started with ``spawn``) sends only the folder's path.
    """

    def __init__(
        self, folder: str | os.PathLike, special: SpecialIds, expected_key: str | None = None
    ) -> None:
        self.folder = Path(folder)
        self.special = special
        manifest = _read_manifest(self.folder, expected_key)
        options = manifest["options"]
        self.num_candidates = options["num_candidates"]
        self.max_history = options["max_history"]
        self.max_tokens = options["max_tokens"]
        self.cache_key = manifest["key"]
        try:
            tables = {name: _map_table(self.folder / f"{name}.arrow") for name in TABLES}
            self._tokens = RaggedColumn(tables["texts"].column("input_ids"))
            self._persona = RaggedColumn(tables["dialogs"].column("persona"))
            counts = _numpy_view(tables["dialogs"].column("utterances"))
            self._first_utterance = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
            self._history = RaggedColumn(tables["utterances"].column("history"))
            self._candidates = RaggedColumn(tables["utterances"].column("candidates"))
            examples = tables["examples"]
            self.index = ExampleIndex(
                _numpy_view(examples.column("dialog")),
                _numpy_view(examples.column("utterance")),
                RaggedColumn(examples.column("order")),
            )
            self._lengths = _numpy_view(examples.column("length"))
        except (pa.ArrowException, KeyError, OSError, ValueError) as err:
            raise TokenCacheError(f"unreadable table ({err})") from err
        if (
            len(self._lengths) != manifest["counts"]["examples"]
            or len(self._tokens) != manifest["counts"]["texts"]
        ):
            raise TokenCacheError("table sizes differ from the manifest")

    @property
    def num_texts(self) -> int:
        """Distinct strings tokenized for this dataset."""
        return len(self._tokens)

    def __len__(self) -> int:
        return len(self._lengths)

    def __getitem__(self, idx: int) -> dict:
        d, u, order = self.index[idx]
        persona_rows = self._persona[d]
        utt = int(self._first_utterance[d]) + u
        tokens = self._tokens
        return build_example(
            [tokens[persona_rows[i]] for i in order],
            [tokens[r] for r in self._history[utt]],
            [tokens[r] for r in self._candidates[utt]],
            self.special,
            self.num_candidates,
            self.max_history,
            self.max_tokens,
        )

    def example_length(self, idx: int) -> int:
        """Tokens of item ``idx``'s longest candidate input (stored at build time)."""
        return int(self._lengths[idx])

    @property
    def lengths(self) -> list[int]:
        """``example_length`` of every item, what length-grouped batching sorts by."""
        return self._lengths.tolist()

    def __reduce__(self):
        return (CachedPersonaChatDataset, (str(self.folder), self.special, self.cache_key))


def open_cached_dataset(
    folder: str | os.PathLike, special: SpecialIds, expected_key: str | None = None
) -> CachedPersonaChatDataset:
    """Open a complete cache entry (``TokenCacheError`` if it is incomplete or damaged)."""
    return CachedPersonaChatDataset(folder, special, expected_key)


def _read_manifest(folder: Path, expected_key: str | None) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenCacheError(f"no {MANIFEST}: the entry was never completed") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenCacheError(f"{MANIFEST} unreadable ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("layout_version") != LAYOUT_VERSION:
        raise TokenCacheError("written by another version of personachat")
    if expected_key is not None and manifest.get("key") != expected_key:
        raise TokenCacheError("its manifest names another key")
    for name, size in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            raise TokenCacheError(f"{name} is missing or has the wrong size")
    return manifest


def _map_table(path: Path) -> pa.Table:
    """An Arrow IPC file as a table whose buffers point into the memory-mapped file."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _log(log: Log | None, message: str) -> None:
    if log is not None:
        log(message)
