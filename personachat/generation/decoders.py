"""Incremental forward passes for decoding: encode the prompt once, then one token per step.

``generation.generate_replies`` drives one of three decoders through the same two calls,
``prefill`` (the left-padded prompts → hidden state of each row's last token) and ``step``
(one new token per row → its hidden state):

- ``StaticKVDecoder`` (GPT-2 architecture): keys and values go into buffers allocated once
  for the whole reply, and each step is a short, fixed sequence of tensor operations over the
  model's own weights. Why not ``model.transformer(..., past_key_values=...)``: for a small
  model or a small batch, that call's per-step bookkeeping (building a 4-D mask, growing the
  cache by concatenation, output capturing, dropout and checkpointing wrappers) costs more
  than the arithmetic; this decoder does the same arithmetic without it. Its results equal
  the model's own forward pass to float rounding (tested).
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

import math
from functools import partial

import torch
import torch.nn.functional as F

from personachat.generation.prefix_cache import PrefixCache, PrefixKV
from personachat.model.families import causal_lm, run_body, uses_token_types
from personachat.model.lora import has_lora

TANH_GELU = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}
GELU_K = math.sqrt(2 / math.pi)
SMALL_ACTIVATION = 2**16


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
    from personachat.generation.llama_decoder import LLAMA_LIKE, LlamaStaticDecoder

    lm = causal_lm(model)  # LoRA layers are inside it: the static decoders run them too
    config = lm.config
    # The GPT-2 decoder reads the weight matrices itself: unmerged adapters need the modules.
    plain = not getattr(config, "add_cross_attention", False) and not has_lora(lm)
    if config.model_type == "gpt2" and plain:
        return StaticKVDecoder(lm, capacity)
    if config.model_type in LLAMA_LIKE:
        return LlamaStaticDecoder(lm, capacity)
    if config.model_type == "openai-gpt":
        return ReEncodeDecoder(model)
    return CachedDecoder(model)


class StaticKVDecoder(Decoder):
    """GPT-2 decoding over preallocated key/value buffers (see the module docstring)."""

    def __init__(self, model, capacity: int) -> None:
        body = model.transformer
        self.body = body
        self.blocks = list(body.h)
        self.heads = model.config.n_head
        # GPT-2's "gelu_new" is the tanh approximation of GELU written out in Python ops;
        # torch's fused kernel computes the same function in one (on a GPU; on a CPU the
        # sigmoid form below is faster).
        act = model.config.activation_function
        on_cpu = next(model.parameters()).device.type == "cpu"
        self.act = (
            self.blocks[0].mlp.act
            if act not in TANH_GELU
            else tanh_gelu_
            if on_cpu
            else partial(F.gelu, approximate="tanh")
        )
        self.width = model.config.n_embd
        self.token_types = uses_token_types(model)  # token_types: none adds no speaker rows
        self.capacity = capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.key_ok: torch.Tensor | None = None  # [batch, 1, 1, capacity]: not padding
        self.all_ok = True  # no padding anywhere: attention needs no mask
        self.length = 0

    def _embed(self, ids, types, positions) -> torch.Tensor:
        wte = self.body.wte
        x = wte(ids) + self.body.wpe(positions)
        return x + wte(types) if self.token_types else x

    def _attn_input(self, block, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(block.ln_1, x)

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(self.body.ln_f, x)

    def _attend(self, block, q, k, v, attn_mask, causal: bool | None = None) -> torch.Tensor:
        """Attention of queries ``q`` over keys ``k``; causal (no mask) when ``attn_mask`` is
        None unless ``causal`` says otherwise (a one-token step sees every key)."""
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None if causal is None else causal,
            scale=block.attn.scaling,
        )

    def _split(self, block, hidden: torch.Tensor):
        batch, length, _ = hidden.shape
        attn = block.attn
        qkv = torch.addmm(attn.c_attn.bias, hidden.reshape(-1, self.width), attn.c_attn.weight)
        shape = (batch, length, self.heads, self.width // self.heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in qkv.split(self.width, dim=1))
        return q, k, v

    def _finish_block(self, block, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        attended = attended.transpose(1, 2).reshape(-1, self.width)
        attn = block.attn
        x = x + torch.addmm(attn.c_proj.bias, attended, attn.c_proj.weight).view(x.shape)
        mlp = block.mlp
        h = layer_norm(block.ln_2, x).reshape(-1, self.width)
        h = self.act(torch.addmm(mlp.c_fc.bias, h, mlp.c_fc.weight))
        return x + torch.addmm(mlp.c_proj.bias, h, mlp.c_proj.weight).view(x.shape)

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
        x = self._embed(input_ids[:, start:], token_types[:, start:], positions[:, start:])
        self.keys, self.values = [], []
        for layer, block in enumerate(self.blocks):
            q, k, v = self._split(block, self._attn_input(block, x))
            key_buf, value_buf = self._buffers(k, v, start, width)
            if entries is not None:  # each prefix over whatever the block computed there
                for row, (length, key) in enumerate(zip(lengths, prefixes, strict=True)):
                    cached_k, cached_v = entries[key][layer]
                    at = width - length
                    key_buf[row, :, at : at + cached_k.shape[1]] = cached_k
                    value_buf[row, :, at : at + cached_v.shape[1]] = cached_v
            self.keys.append(key_buf)
            self.values.append(value_buf)
            attended = self._attend(
                block, q, key_buf[:, :, :width], value_buf[:, :, :width], attn_mask
            )
            x = self._finish_block(block, x, attended)
        self.length = width
        return self._final(x[:, -1])

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
        cache.check(self.body)
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
        x = self._embed(ids, types, positions)
        layers = []
        for index, block in enumerate(self.blocks):
            q, k, v = self._split(block, self._attn_input(block, x))
            layers.append((k, v))
            if index + 1 < len(self.blocks):  # the last block's output is not needed
                attended = self._attend(block, q, k, v, None)
                x = self._finish_block(block, x, attended)
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
        x = self._embed(ids, types, positions)
        for block, key_buf, value_buf in zip(self.blocks, self.keys, self.values, strict=True):
            q, k, v = self._split(block, self._attn_input(block, x))
            key_buf[:, :, at : at + 1] = k
            value_buf[:, :, at : at + 1] = v
            attended = self._attend(
                block, q, key_buf[:, :, : at + 1], value_buf[:, :, : at + 1], attn_mask, False
            )
            x = self._finish_block(block, x, attended)
        self.length = at + 1
        return self._final(x[:, -1])


def tanh_gelu_(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation, overwriting ``x``, as x·sigmoid(2k(x + 0.044715x³)) with
    k = √(2/π): the same function, since (1 + tanh z)/2 = sigmoid(2z), equal to
    ``F.gelu(x, approximate="tanh")`` within 3e-7. On a CPU torch's tanh-GELU kernel is slow
    (about 3 ns an element); these five in-place passes take about 60% of its time, which
    counts when a batch of prompts is encoded (the MLP of ~2,000 tokens at once). Below
    ``SMALL_ACTIVATION`` elements (a decoding step) the one fused call costs less."""
    if x.numel() < SMALL_ACTIVATION:
        return F.gelu(x, approximate="tanh")
    inner = x * x
    inner.mul_(2 * GELU_K * 0.044715).add_(2 * GELU_K).mul_(x)
    return x.mul_(inner.sigmoid_())


def layer_norm(module: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


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
