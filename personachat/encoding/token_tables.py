"""The Arrow tables of one token-cache entry, and how they are written.

An entry (see ``token_cache``) holds ``texts.arrow`` (each distinct string's token ids),
``dialogs.arrow``, ``utterances.arrow`` and ``examples.arrow`` (rows of ``texts`` and each
example's length), then ``manifest.json``, written last: an entry without it was never
completed. ``token_dataset`` memory-maps the tables to read them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from personachat.encoding.inputs import (
    LAYOUT_VERSION,
    example_index,
    example_length,
    history_window,
)
from personachat.errors import PersonachatError

if TYPE_CHECKING:
    from personachat.encoding.token_cache import EncodingOptions

MANIFEST = "manifest.json"
TABLES = ("texts", "dialogs", "utterances", "examples")
TOKENIZE_BATCH = 1000  # strings per datasets.map batch (and per Arrow record batch)


class TokenCacheError(PersonachatError, RuntimeError):
    """A cache entry cannot be used (incomplete, damaged or from another version)."""


@dataclass
class _Rows:
    """Dialogs as rows of ``texts.arrow``: flat values and the offsets that cut them."""

    persona: list[int] = field(default_factory=list)
    persona_offsets: list[int] = field(default_factory=lambda: [0])
    utterance_counts: list[int] = field(default_factory=list)
    history: list[int] = field(default_factory=list)
    history_offsets: list[int] = field(default_factory=lambda: [0])
    candidates: list[int] = field(default_factory=list)
    candidate_offsets: list[int] = field(default_factory=lambda: [0])


def write_tables(
    folder: Path,
    key: str,
    dialogs: Sequence[dict],
    tokenizer,
    options: EncodingOptions,
    num_proc: int,
    silent: bool,
) -> None:
    """Everything of one entry, manifest last."""
    texts, rows = _text_rows(dialogs, options)
    token_counts = _tokenize_texts(folder, list(texts), tokenizer, num_proc, silent)
    texts.clear()
    _write_table(
        folder / "dialogs.arrow",
        {
            "persona": _ragged(rows.persona_offsets, rows.persona),
            "utterances": pa.array(rows.utterance_counts, pa.int32()),
        },
    )
    _write_table(
        folder / "utterances.arrow",
        {
            "history": _ragged(rows.history_offsets, rows.history),
            "candidates": _ragged(rows.candidate_offsets, rows.candidates),
        },
    )
    examples = _write_examples(folder, rows, token_counts.tolist(), options)
    manifest = {
        "key": key,
        "layout_version": LAYOUT_VERSION,
        "options": asdict(options),
        "tokenizer": type(tokenizer).__name__,
        "counts": {
            "dialogs": len(rows.utterance_counts),
            "utterances": len(rows.history_offsets) - 1,
            "texts": len(token_counts),
            "examples": examples,
        },
        "files": {f"{name}.arrow": (folder / f"{name}.arrow").stat().st_size for name in TABLES},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_bytes(folder / MANIFEST, json.dumps(manifest, indent=2).encode())


def _text_rows(dialogs: Sequence[dict], options: EncodingOptions) -> tuple[dict[str, int], _Rows]:
    """Each distinct (prepared) string's row in ``texts.arrow``, and the dialogs as rows."""
    n_cand = options.num_candidates
    prepare = str.lower if options.lowercase else None
    texts: dict[str, int] = {}  # distinct (prepared) string -> row of texts.arrow

    def row(text: str) -> int:
        if prepare is not None:
            text = prepare(text)
        found = texts.get(text)
        if found is None:
            found = texts[text] = len(texts)
        return found

    rows = _Rows()
    for dialog in dialogs:
        rows.persona.extend(row(s) for s in dialog["personality"])
        rows.persona_offsets.append(len(rows.persona))
        rows.utterance_counts.append(len(dialog["utterances"]))
        for utterance in dialog["utterances"]:
            window = history_window(utterance["history"], options.max_history)
            rows.history.extend(row(s) for s in window)
            rows.history_offsets.append(len(rows.history))
            rows.candidates.extend(row(s) for s in utterance["candidates"][-n_cand:])
            rows.candidate_offsets.append(len(rows.candidates))
    return texts, rows


def _write_examples(folder: Path, rows: _Rows, counts: list[int], options: EncodingOptions) -> int:
    """``examples.arrow``: each example's dialog, utterance, persona order and input length
    (from token counts: no input is laid out here). Returns the number of examples."""
    dialog_col, utterance_col, order_values, order_offsets, lengths = [], [], [], [0], []
    first_utterance = np.concatenate(
        [[0], np.cumsum(rows.utterance_counts, dtype=np.int64)]
    ).tolist()
    persona_sizes = np.diff(rows.persona_offsets).tolist()
    for d, u, order in example_index(
        persona_sizes, rows.utterance_counts, options.personality_permutations, options.seed
    ):
        start, utt = rows.persona_offsets[d], first_utterance[d] + u
        history = rows.history[rows.history_offsets[utt] : rows.history_offsets[utt + 1]]
        chosen = rows.candidates[rows.candidate_offsets[utt] : rows.candidate_offsets[utt + 1]]
        lengths.append(
            example_length(
                [counts[rows.persona[start + i]] for i in order],
                [counts[r] for r in history],
                [counts[r] for r in chosen],
                options.max_tokens,
                options.overheads,
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
    return len(lengths)


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
                counts.append(np.diff(numpy_view(ids.offsets)))
                writer.write_batch(pa.record_batch([ids], schema=schema))
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


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


_NUMPY_TYPES = {pa.int32(): np.int32, pa.int64(): np.int64}


def numpy_view(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A null-free int32/int64 Arrow array as a numpy array over the same (memory-mapped)
    buffer. (``Array.to_numpy`` would do the same but imports pandas: 0.7 s per process.)"""
    if isinstance(array, pa.ChunkedArray):
        if array.num_chunks != 1:
            return np.concatenate([numpy_view(c) for c in array.chunks] or [np.zeros(0)])
        array = array.chunk(0)
    if array.null_count:
        raise TokenCacheError("unexpected missing values in a table")
    dtype = _NUMPY_TYPES[array.type]
    return np.frombuffer(array.buffers()[1], dtype=dtype)[array.offset : array.offset + len(array)]
