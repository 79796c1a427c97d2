"""Keys and values of prompt prefixes (``<bos>`` + persona), kept between decoding calls.

A chat sends the same persona turn after turn, and a server often one persona for many users:
``decoders.StaticKVDecoder.prefill`` copies a cached prefix's keys and values into its
buffers instead of computing them again.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [heads, P, dim]


class PrefixCache:
    """Keys and values of prompt prefixes, kept between decoding calls (least recently used
    first out once ``max_bytes`` is passed).

    The entries belong to one set of weights: ``check(model)`` empties the cache when the
    model's parameters changed since (an optimizer step, a loaded state dict, another model),
    so a model that is still training never decodes with stale keys.
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[tuple, PrefixKV] = OrderedDict()
        self._weights: tuple | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, model: torch.nn.Module) -> None:
        """Forget every entry if ``model``'s weights are not the ones they were computed with.
        In-place updates bump a tensor's version counter; a replaced tensor has a new address.
        """
        weights = (id(model), *((p.data_ptr(), p._version) for p in model.parameters()))
        if weights != self._weights:
            self.clear()
            self._weights = weights

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def get(self, key: tuple) -> PrefixKV | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple, entry: PrefixKV) -> None:
        size = sum(k.nbytes + v.nbytes for k, v in entry)
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = entry
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= sum(k.nbytes + v.nbytes for k, v in old)
