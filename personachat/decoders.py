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
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

TANH_GELU = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}


class Decoder:
    """Interface: ``prefill`` once, then ``step`` per generated token; both return the final
    hidden state (after the last LayerNorm) of each row's newest token, shape [batch, width]."""

    def prefill(self, input_ids: torch.Tensor, token_types: torch.Tensor,
                mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, ids: torch.Tensor, types: torch.Tensor,
             positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def make_decoder(model, capacity: int) -> Decoder:
    """The fastest decoder that is exact for ``model``; ``capacity``: prompt + reply tokens."""
    config = model.config
    if config.model_type == "gpt2" and not getattr(config, "add_cross_attention", False):
        return StaticKVDecoder(model, capacity)
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
        # torch's fused kernel computes the same function in one.
        act = model.config.activation_function
        self.act = (partial(F.gelu, approximate="tanh") if act in TANH_GELU
                    else self.blocks[0].mlp.act)
        self.width = model.config.n_embd
        self.capacity = capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.key_ok: torch.Tensor | None = None  # [batch, 1, 1, capacity]: not padding
        self.all_ok = True  # no padding anywhere: attention needs no mask
        self.length = 0

    def _embed(self, ids, types, positions) -> torch.Tensor:
        wte = self.body.wte
        return wte(ids) + self.body.wpe(positions) + wte(types)

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

    def prefill(self, input_ids, token_types, mask, positions) -> torch.Tensor:
        batch, length = input_ids.shape
        device = input_ids.device
        self.all_ok = bool(mask.all())
        self.key_ok = torch.zeros(batch, 1, 1, self.capacity, dtype=torch.bool, device=device)
        self.key_ok[:, 0, 0, :length] = mask.bool()
        attn_mask = None
        if not self.all_ok:
            causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
            # A padding query would see no key at all (NaN); let it see itself. Its output is
            # never read: padding keys are hidden from every real query.
            attn_mask = (causal & self.key_ok[:, :, :, :length]) | torch.eye(
                length, dtype=torch.bool, device=device)
        x = self._embed(input_ids, token_types, positions)
        self.keys, self.values = [], []
        for block in self.blocks:
            q, k, v = self._split(block, layer_norm(block.ln_1, x))
            key_buf = k.new_empty(batch, self.heads, self.capacity, k.shape[-1])
            value_buf = torch.empty_like(key_buf)
            key_buf[:, :, :length] = k
            value_buf[:, :, :length] = v
            self.keys.append(key_buf)
            self.values.append(value_buf)
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                scale=block.attn.scaling)
            x = self._finish_block(block, x, attended)
        self.length = length
        return layer_norm(self.body.ln_f, x[:, -1])

    def step(self, ids, types, positions) -> torch.Tensor:
        if self.length >= self.capacity:
            raise RuntimeError("decoder capacity exceeded")  # a bug, not a user error
        at = self.length
        self.key_ok[:, :, :, at] = True
        attn_mask = None if self.all_ok else self.key_ok[:, :, :, :at + 1]
        x = self._embed(ids, types, positions)
        for block, key_buf, value_buf in zip(self.blocks, self.keys, self.values, strict=True):
            q, k, v = self._split(block, layer_norm(block.ln_1, x))
            key_buf[:, :, at:at + 1] = k
            value_buf[:, :, at:at + 1] = v
            attended = F.scaled_dot_product_attention(
                q, key_buf[:, :, :at + 1], value_buf[:, :, :at + 1], attn_mask=attn_mask,
                scale=block.attn.scaling)
            x = self._finish_block(block, x, attended)
        self.length = at + 1
        return layer_norm(self.body.ln_f, x[:, -1])


def layer_norm(module: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


class CachedDecoder(Decoder):
    """The model's own forward pass with its KV cache."""

    def __init__(self, model) -> None:
        self.body = model.transformer
        self.past = None
        self.mask: torch.Tensor | None = None

    def prefill(self, input_ids, token_types, mask, positions) -> torch.Tensor:
        self.mask = mask
        return self._run(input_ids, token_types, positions)

    def step(self, ids, types, positions) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=1)
        return self._run(ids, types, positions)

    def _run(self, ids, types, positions) -> torch.Tensor:
        out = self.body(input_ids=ids, token_type_ids=types, attention_mask=self.mask,
                        position_ids=positions, past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.last_hidden_state[:, -1]


class ReEncodeDecoder(Decoder):
    """Runs the whole sequence at every step (for models without a KV cache)."""

    def __init__(self, model) -> None:
        self.body = model.transformer
        self.seq: dict[str, torch.Tensor] = {}

    def prefill(self, input_ids, token_types, mask, positions) -> torch.Tensor:
        self.seq = {"input_ids": input_ids, "token_type_ids": token_types,
                    "attention_mask": mask, "position_ids": positions}
        return self._run()

    def step(self, ids, types, positions) -> torch.Tensor:
        new = {"input_ids": ids, "token_type_ids": types, "attention_mask": torch.ones_like(ids),
               "position_ids": positions}
        self.seq = {k: torch.cat([v, new[k]], dim=1) for k, v in self.seq.items()}
        return self._run()

    def _run(self) -> torch.Tensor:
        return self.body(**self.seq).last_hidden_state[:, -1]
