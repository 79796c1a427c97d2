"""Static key/value decoding for the Llama family (Llama, Qwen2, Mistral, SmolLM2).

The same buffers, persona prefix cache and masking as GPT-2's ``StaticKVDecoder``; what
differs is the block: RMSNorm before attention and MLP, rotary position embeddings applied to
queries and keys, grouped-query attention (keys and values are stored with their own, smaller
head count and SDPA shares them across query heads), and a SwiGLU MLP. Token types, for a model
trained with them, are added as embedding rows as in training (``families.run_body``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from personachat.generation.decoders import StaticKVDecoder
from personachat.model.families import causal_lm, uses_token_types

LLAMA_LIKE = frozenset({"llama", "qwen2", "mistral"})


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class LlamaStaticDecoder(StaticKVDecoder):
    """``StaticKVDecoder`` over a Llama-architecture body."""

    def __init__(self, model, capacity: int) -> None:
        lm = causal_lm(model)
        config = lm.config
        self.body = lm.get_decoder()
        self.blocks = list(self.body.layers)
        self.heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.width = config.hidden_size
        self.token_types = uses_token_types(lm)
        self.capacity = capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.key_ok: torch.Tensor | None = None
        self.all_ok = True
        self.length = 0
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def _embed(self, ids, types, positions) -> torch.Tensor:
        embed = self.body.embed_tokens
        x = embed(ids) + embed(types) if self.token_types else embed(ids)
        cos, sin = self.body.rotary_emb(x, positions)  # [batch, length, head_dim]
        self._rope = (cos.unsqueeze(1), sin.unsqueeze(1))
        return x

    def _attn_input(self, block, x: torch.Tensor) -> torch.Tensor:
        return block.input_layernorm(x)

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.norm(x)

    def _split(self, block, hidden: torch.Tensor):
        batch, length, _ = hidden.shape
        attn = block.self_attn
        q = attn.q_proj(hidden).view(batch, length, -1, self.head_dim).transpose(1, 2)
        k = attn.k_proj(hidden).view(batch, length, -1, self.head_dim).transpose(1, 2)
        v = attn.v_proj(hidden).view(batch, length, -1, self.head_dim).transpose(1, 2)
        cos, sin = self._rope
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def _attend(self, block, q, k, v, attn_mask, causal: bool | None = None) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None if causal is None else causal,
            scale=block.self_attn.scaling,
            enable_gqa=k.shape[1] != q.shape[1],
        )

    def _finish_block(self, block, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = attended.shape
        attended = attended.transpose(1, 2).reshape(batch, length, -1)
        x = x + block.self_attn.o_proj(attended)
        return x + block.mlp(block.post_attention_layernorm(x))
