"""Incremental forward passes for decoding: encode the prompt once, then one token per step.

``generation.generate_replies`` drives one of three decoders through the same two calls,
``prefill`` (the left-padded prompts → hidden state of each row's last token) and ``step``
(one new token per row → its hidden state):

- ``StaticKVDecoder`` (GPT-2 and the Llama family): keys and values go into buffers allocated
  once for the whole reply, and each step is a short, fixed sequence of tensor operations
  over the model's own weights. The decoder owns the buffers, the masks and the prefix cache;
  the family's block adapter (``generation.blocks``: embed, qkv, attend, finish) owns the
  arithmetic. Why not the model's forward with ``past_key_values``: for a small model or a
  small batch, that call's per-step bookkeeping (building a 4-D mask, growing the cache by
  concatenation, output capturing, dropout and checkpointing wrappers) costs more than the
  arithmetic; this decoder does the same arithmetic without it. Its results equal the
  model's own forward pass to float rounding (tested).
- ``CachedDecoder``: the model's own forward with its KV cache (any other cached model).
- ``ReEncodeDecoder``: the whole sequence every step (OpenAI GPT has no KV cache in
  transformers).

Every prompt starts with the same kind of prefix, ``<bos>`` + the persona, at positions
0..P-1: its keys and values depend on nothing after it, and a chat sends the same persona turn
after turn (a server often sends one persona for many users). ``StaticKVDecoder.prefill``
takes each row's prefix length and a ``PrefixCache``: a cached prefix's keys and values are
copied into the buffers instead of computed, and only the rest of each prompt runs through
the layers. The history cannot be kept the same way: the window of recent utterances slides
every turn, which moves every later token to another position.
"""

from __future__ import annotations

import torch

from personachat.generation.blocks import ADAPTERS, tanh_gelu_
from personachat.generation.prefix_cache import PrefixCache, PrefixKV
from personachat.model.families import causal_lm, family, run_body

__all__ = ["CachedDecoder", "Decoder", "PrefixCache", "ReEncodeDecoder", "StaticKVDecoder"]
__all__ += ["make_decoder", "tanh_gelu_"]


class Decoder:
    """Interface: ``prefill`` once, then ``step`` per generated token; both return the final
    hidden state (after the last LayerNorm) of each row's newest token, shape [batch, width].
    ``prefix_lengths`` and ``cache`` (see ``StaticKVDecoder.prefill``) are a saving a decoder
    may take or leave: only the static decoder keeps persona keys and values."""

    def prefill(
        self,
        input_ids: torch.Tensor,
        token_types: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        prefix_lengths: list[int] | None = None,
        cache: PrefixCache | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def step(self, ids: torch.Tensor, types: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def make_decoder(model, capacity: int) -> Decoder:
    """The fastest decoder that is exact for ``model``; ``capacity``: prompt + reply tokens."""
    lm = causal_lm(model)  # LoRA layers are inside it: the Llama adapter runs them too
    kind = family(lm).decoder
    adapter = ADAPTERS.get(kind)
    if adapter is not None and adapter.takes(lm):
        return StaticKVDecoder(lm, capacity)
    if kind == "reencode":
        return ReEncodeDecoder(model)
    return CachedDecoder(model)


class StaticKVDecoder(Decoder):
    """Decoding over preallocated key/value buffers (see the module docstring); ``blocks`` is
    the family's block adapter (default: the one its ``Family.decoder`` names)."""

    def __init__(self, model, capacity: int, blocks=None) -> None:
        self.blocks = blocks or ADAPTERS[family(model).decoder](model, capacity)
        self.capacity = capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.key_ok: torch.Tensor | None = None  # [batch, 1, 1, capacity]: not padding
        self.all_ok = True  # no padding anywhere: attention needs no mask
        self.length = 0

    def prefill(
        self,
        input_ids,
        token_types,
        mask,
        positions,
        prefix_lengths: list[int] | None = None,
        cache: PrefixCache | None = None,
    ) -> torch.Tensor:
        """Encode the left-padded prompts into the key/value buffers.

        ``prefix_lengths[row]``: how many of the row's first real tokens form its prefix
        (positions 0..P-1). With a ``cache`` those keys and values come from it (computed once
        if missing) and only the last ``max(suffix length)`` columns run through the layers.
        Row ``r`` occupies columns ``[width - L_r, width)``, its prefix the first ``P_r`` of
        them; where a row's suffix is shorter than the longest, its first columns in the
        block are prefix or padding: computed (as queries nobody reads), then the cached
        prefix is written over their keys and values.
        """
        batch, width = input_ids.shape
        device = input_ids.device
        lengths = prefixes = entries = None
        start = 0
        if prefix_lengths is not None and cache is not None:
            lengths = mask.sum(-1).tolist()
            prefixes = self._prefix_keys(input_ids, token_types, lengths, prefix_lengths)
            entries = self._cached_prefixes(prefixes, cache, device)
            start = width - max(
                length - prefix for length, prefix in zip(lengths, prefix_lengths, strict=True)
            )
        attn_mask = self._prefill_mask(mask, start)
        blocks = self.blocks
        x = blocks.embed(input_ids[:, start:], token_types[:, start:], positions[:, start:])
        rotary = blocks.rotary(positions[:, start:])
        self.keys, self.values = [], []
        for layer in range(blocks.layers):
            q, k, v = blocks.qkv(layer, x, rotary)
            key_buf, value_buf = self._buffers(k, v, start, width)
            if entries is not None:  # each prefix over whatever the block computed there
                for row, (length, key) in enumerate(zip(lengths, prefixes, strict=True)):
                    cached_k, cached_v = entries[key][layer]
                    at = width - length
                    key_buf[row, :, at : at + cached_k.shape[1]] = cached_k
                    value_buf[row, :, at : at + cached_v.shape[1]] = cached_v
            self.keys.append(key_buf)
            self.values.append(value_buf)
            attended = blocks.attend(
                layer, q, key_buf[:, :, :width], value_buf[:, :, :width], attn_mask
            )
            x = blocks.finish(layer, x, attended)
        self.length = width
        return blocks.final(x[:, -1])

    def _prefill_mask(self, mask: torch.Tensor, start: int) -> torch.Tensor | None:
        """Record which key columns are real tokens; the prefill's attention mask for the
        queries from column ``start`` on, or None for plain causal attention (no padding,
        every column computed)."""
        batch, width = mask.shape
        self.all_ok = bool(mask.all())  # then the steps need no mask
        self.key_ok = torch.zeros(batch, 1, 1, self.capacity, dtype=torch.bool, device=mask.device)
        self.key_ok[:, 0, 0, :width] = mask.bool()
        if self.all_ok and start == 0:
            return None
        column = torch.arange(width, device=mask.device)
        causal = column.unsqueeze(0) <= column[start:].unsqueeze(1)  # [queries, width]
        # A padding query would see no key at all (NaN); let it see itself. Its output is
        # never read: padding keys are hidden from every real query.
        return (causal & self.key_ok[:, :, :, :width]) | (
            column.unsqueeze(0) == column[start:].unsqueeze(1)
        )

    def _buffers(self, k: torch.Tensor, v: torch.Tensor, start: int, width: int):
        """One layer's key and value buffers for the whole reply, the block's columns
        ``[start, width)`` filled in."""
        key_buf = k.new_empty(k.shape[0], k.shape[1], self.capacity, k.shape[-1])
        value_buf = torch.empty_like(key_buf)
        # Padding is never attended to, but a NaN the allocator left there would still
        # poison the masked sums: zeros before the block, the block's own values in it.
        key_buf[:, :, :start].zero_()
        value_buf[:, :, :start].zero_()
        key_buf[:, :, start:width] = k
        value_buf[:, :, start:width] = v
        return key_buf, value_buf

    @staticmethod
    def _prefix_keys(
        input_ids, token_types, lengths: list[int], prefix_lengths: list[int]
    ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Each row's prefix as (ids, token types): what its cache entry is keyed by."""
        width = input_ids.shape[1]
        ids_rows, types_rows = input_ids.tolist(), token_types.tolist()
        keys = []
        for row, (length, prefix) in enumerate(zip(lengths, prefix_lengths, strict=True)):
            first = width - length
            keys.append(
                (
                    tuple(ids_rows[row][first : first + prefix]),
                    tuple(types_rows[row][first : first + prefix]),
                )
            )
        return keys

    def _cached_prefixes(
        self, keys: list, cache: PrefixCache, device: torch.device
    ) -> dict[tuple, PrefixKV]:
        """The cache entry of every distinct prefix; the missing ones encoded (in one batch)
        and added."""
        cache.check(self.blocks.body)
        entries = {key: cache.get(key) for key in dict.fromkeys(keys)}
        missing = [key for key, entry in entries.items() if entry is None]
        if missing:
            for key, entry in zip(missing, self._encode_prefixes(missing, device), strict=True):
                entries[key] = entry
                cache.put(key, entry)
        return entries

    def _encode_prefixes(
        self, prefixes: list[tuple[tuple[int, ...], tuple[int, ...]]], device: torch.device
    ) -> list[PrefixKV]:
        """Keys and values of each (ids, types) prefix at positions 0..P-1, in one batch.
        Right padding: under the causal mask no real token sees the padding after it."""
        longest = max(len(ids) for ids, _ in prefixes)
        ids = torch.tensor(
            [list(i) + [i[0]] * (longest - len(i)) for i, _ in prefixes], device=device
        )
        types = torch.tensor(
            [list(t) + [t[0]] * (longest - len(t)) for _, t in prefixes], device=device
        )
        positions = torch.arange(longest, device=device).expand_as(ids)
        blocks = self.blocks
        x = blocks.embed(ids, types, positions)
        rotary = blocks.rotary(positions)
        layers = []
        for layer in range(blocks.layers):
            q, k, v = blocks.qkv(layer, x, rotary)
            layers.append((k, v))
            if layer + 1 < blocks.layers:  # the last block's output is not needed
                x = blocks.finish(layer, x, blocks.attend(layer, q, k, v, None))
        return [
            [(k[m, :, : len(ids_)].clone(), v[m, :, : len(ids_)].clone()) for k, v in layers]
            for m, (ids_, _) in enumerate(prefixes)
        ]

    def step(self, ids, types, positions) -> torch.Tensor:
        if self.length >= self.capacity:
            raise RuntimeError("decoder capacity exceeded")  # a bug, not a user error
        at = self.length
        self.key_ok[:, :, :, at] = True
        attn_mask = None if self.all_ok else self.key_ok[:, :, :, : at + 1]
        blocks = self.blocks
        x = blocks.embed(ids, types, positions)
        rotary = blocks.rotary(positions)
        for layer, (key_buf, value_buf) in enumerate(zip(self.keys, self.values, strict=True)):
            q, k, v = blocks.qkv(layer, x, rotary)
            key_buf[:, :, at : at + 1] = k
            value_buf[:, :, at : at + 1] = v
            attended = blocks.attend(
                layer, q, key_buf[:, :, : at + 1], value_buf[:, :, : at + 1], attn_mask, False
            )
            x = blocks.finish(layer, x, attended)
        self.length = at + 1
        return blocks.final(x[:, -1])


class CachedDecoder(Decoder):
    """The model's own forward pass with its KV cache."""

    def __init__(self, model) -> None:
        self.model = model
        self.past = None
        self.mask: torch.Tensor | None = None

    def prefill(
        self, input_ids, token_types, mask, positions, prefix_lengths=None, cache=None
    ) -> torch.Tensor:
        self.mask = mask
        return self._run(input_ids, token_types, positions)

    def step(self, ids, types, positions) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
        return self._run(ids, types, positions)

    def _run(self, ids, types, positions) -> torch.Tensor:
        out = run_body(
            self.model,
            ids,
            types,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.past,
            use_cache=True,
        )
        self.past = out.past_key_values
        return out.last_hidden_state[:, -1]


class ReEncodeDecoder(Decoder):
    """Runs the whole sequence at every step (for models without a KV cache)."""

    def __init__(self, model) -> None:
        self.model = model
        self.seq: dict[str, torch.Tensor] = {}

    def prefill(
        self, input_ids, token_types, mask, positions, prefix_lengths=None, cache=None
    ) -> torch.Tensor:
        self.seq = {
            "input_ids": input_ids,
            "token_type_ids": token_types,
            "attention_mask": mask,
            "position_ids": positions,
        }
        return self._run()

    def step(self, ids, types, positions) -> torch.Tensor:
        new = {
            "input_ids": ids,
            "token_type_ids": types,
            "attention_mask": torch.ones_like(ids),
            "position_ids": positions,
        }
        self.seq = {k: torch.cat([v, new[k]], dim=1) for k, v in self.seq.items()}
        return self._run()

    def _run(self) -> torch.Tensor:
        seq = dict(self.seq)
        ids, types = seq.pop("input_ids"), seq.pop("token_type_ids")
        return run_body(self.model, ids, types, **seq).last_hidden_state[:, -1]
