"""Reading a token-cache entry: its memory-mapped tables as a dataset of examples.

``CachedPersonaChatDataset`` yields the same items, ``index`` and ``lengths`` as
``encoding.dataset.PersonaChatDataset`` while the token ids stay in the Arrow files
(``token_tables``); nothing is unpickled, so opening someone else's cache cannot run code.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from personachat.encoding.inputs import LAYOUT_VERSION, SpecialIds, build_example
from personachat.encoding.token_tables import MANIFEST, TABLES, TokenCacheError, numpy_view


class RaggedColumn:
    """Row ``i`` of a memory-mapped list<int> column as a Python list, without copying the
    column: numpy views on each Arrow chunk's offsets and values."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self._offsets, self._values, self._starts = [], [], []
        start = 0
        for chunk in column.chunks:
            self._starts.append(start)
            self._offsets.append(numpy_view(chunk.offsets))
            self._values.append(numpy_view(chunk.values))
            start += len(chunk)
        self._len = start

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> list[int]:
        c = bisect.bisect_right(self._starts, i) - 1 if len(self._starts) > 1 else 0
        offsets, j = self._offsets[c], i - self._starts[c]
        return self._values[c][offsets[j] : offsets[j + 1]].tolist()


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
        self.label_history = options.get("label_history", False)
        self.cache_key = manifest["key"]
        try:
            tables = {name: _map_table(self.folder / f"{name}.arrow") for name in TABLES}
            self._tokens = RaggedColumn(tables["texts"].column("input_ids"))
            self._persona = RaggedColumn(tables["dialogs"].column("persona"))
            counts = numpy_view(tables["dialogs"].column("utterances"))
            self._first_utterance = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
            self._history = RaggedColumn(tables["utterances"].column("history"))
            self._candidates = RaggedColumn(tables["utterances"].column("candidates"))
            examples = tables["examples"]
            self.index = ExampleIndex(
                numpy_view(examples.column("dialog")),
                numpy_view(examples.column("utterance")),
                RaggedColumn(examples.column("order")),
            )
            self._lengths = numpy_view(examples.column("length"))
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
            self.label_history,
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
