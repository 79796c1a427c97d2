"""What one model family's transformer block looks like to the static decoder.

``decoders.StaticKVDecoder`` owns the key/value buffers, the masks and the persona prefix
cache; to run a block it asks the family's adapter five things, in this order:

- ``embed(ids, types, positions)``: the input of the first block ([batch, length, width]);
- ``rotary(positions)``: what ``qkv`` needs to place the tokens (None for GPT-2, whose
  positions are embedded; rotary tables for the Llama family);
- ``qkv(layer, x, rotary)``: the block's queries, keys and values [batch, heads, length, dim]
  from the residual stream ``x`` (the norm before attention included);
- ``attend(layer, q, k, v, mask, causal)``: attention over the keys the decoder holds;
- ``finish(layer, x, attended)``: the output projection, the MLP and both residual adds;

and ``final(x)`` after the last block. ``ADAPTERS`` maps ``Family.decoder`` to the adapter.

Why the Llama adapter does not call the model's modules: a decoding step is ~30 small
products, and the modules around them (RMSNorm as casts, a power, a mean and a reciprocal
square root; rotary embeddings recomputed per step and applied through ``rotate_half`` and a
concatenation; separate query, key, value, gate and up products) cost more Python and more
tiny tensor operations than the products take. The adapter keeps the same arithmetic with
``F.rms_norm``, rotary tables computed once per decoder, and the query/key/value and gate/up
weights concatenated once per model (``fused_layers``), so each is one product.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn

from personachat.generation.quantize import Fp32KernelLinear, QuantizedLinear
from personachat.model.families import body, causal_lm, uses_token_types
from personachat.model.lora import has_lora

TANH_GELU = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}
GELU_K = math.sqrt(2 / math.pi)
SMALL_ACTIVATION = 2**16


def attention(q, k, v, mask, causal: bool | None, scale: float) -> torch.Tensor:
    """SDPA of queries ``q`` over keys ``k``; causal (no mask) when ``mask`` is None unless
    ``causal`` says otherwise (a one-token step sees every key). Keys and values may have
    fewer heads than the queries (grouped-query attention): SDPA shares them."""
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        is_causal=mask is None if causal is None else causal,
        scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
    )


class GPT2Blocks:
    """GPT-2: LayerNorm before attention and MLP, learned positions, one ``c_attn`` product for
    queries, keys and values (``Conv1D``: the weights are stored transposed, hence ``addmm``)."""

    def __init__(self, model, capacity: int) -> None:
        lm = causal_lm(model)
        self.body = body(lm)
        self.blocks = list(self.body.h)
        self.heads = lm.config.n_head
        self.width = lm.config.n_embd
        self.token_types = uses_token_types(lm)  # token_types: none adds no speaker rows
        # GPT-2's "gelu_new" is the tanh approximation of GELU written out in Python ops;
        # torch's fused kernel computes the same function in one (on a GPU; on a CPU the
        # sigmoid form below is faster).
        act = lm.config.activation_function
        on_cpu = next(lm.parameters()).device.type == "cpu"
        self.act = (
            self.blocks[0].mlp.act
            if act not in TANH_GELU
            else tanh_gelu_
            if on_cpu
            else partial(F.gelu, approximate="tanh")
        )

    @staticmethod
    def takes(model) -> bool:
        """Whether this adapter is exact for ``model``: it reads the weight matrices itself, so
        unmerged LoRA adapters (and cross-attention) need the model's own modules."""
        lm = causal_lm(model)
        return not getattr(lm.config, "add_cross_attention", False) and not has_lora(lm)

    @property
    def layers(self) -> int:
        return len(self.blocks)

    def embed(self, ids, types, positions) -> torch.Tensor:
        wte = self.body.wte
        x = wte(ids) + self.body.wpe(positions)
        return x + wte(types) if self.token_types else x

    def rotary(self, positions) -> None:
        return None  # positions are embedded

    def qkv(self, layer: int, x: torch.Tensor, rotary: None):
        block = self.blocks[layer]
        batch, length, _ = x.shape
        hidden = layer_norm(block.ln_1, x).reshape(-1, self.width)
        attn = block.attn
        qkv = torch.addmm(attn.c_attn.bias, hidden, attn.c_attn.weight)
        shape = (batch, length, self.heads, self.width // self.heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in qkv.split(self.width, dim=1))
        return q, k, v

    def attend(self, layer: int, q, k, v, mask, causal: bool | None = None) -> torch.Tensor:
        return attention(q, k, v, mask, causal, self.blocks[layer].attn.scaling)

    def finish(self, layer: int, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        block = self.blocks[layer]
        attended = attended.transpose(1, 2).reshape(-1, self.width)
        attn = block.attn
        x = x + torch.addmm(attn.c_proj.bias, attended, attn.c_proj.weight).view(x.shape)
        mlp = block.mlp
        h = layer_norm(block.ln_2, x).reshape(-1, self.width)
        h = self.act(torch.addmm(mlp.c_fc.bias, h, mlp.c_fc.weight))
        return x + torch.addmm(mlp.c_proj.bias, h, mlp.c_proj.weight).view(x.shape)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(self.body.ln_f, x)


@dataclass(frozen=True)
class LlamaLayer:
    """One Llama block's weights as the adapter runs them: ``qkv`` and ``gate_up`` each one
    product (see ``projection``)."""

    input_norm: torch.Tensor
    qkv: Callable[[torch.Tensor], torch.Tensor]
    output: Callable[[torch.Tensor], torch.Tensor]
    post_norm: torch.Tensor
    gate_up: Callable[[torch.Tensor], torch.Tensor]
    down: Callable[[torch.Tensor], torch.Tensor]
    act: Callable[[torch.Tensor], torch.Tensor]
    eps: float
    scaling: float


class LlamaBlocks:
    """The Llama family (Llama, Qwen2, Mistral, SmolLM2): RMSNorm before attention and MLP,
    rotary position embeddings on queries and keys, grouped-query attention (keys and values
    stored with their own, smaller head count) and a SwiGLU MLP. Token types, for a model
    trained with them, are added as embedding rows as in training (``families.run_body``)."""

    def __init__(self, model, capacity: int) -> None:
        lm = causal_lm(model)
        config = lm.config
        self.body = body(lm)
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.intermediate = config.intermediate_size
        self.token_types = uses_token_types(lm)
        self.blocks = fused_layers(self.body)
        self.cos, self.sin = rotary_tables(self.body, capacity)

    @staticmethod
    def takes(model) -> bool:
        return True  # it calls LoRA layers (unmerged adapters) as modules

    @property
    def layers(self) -> int:
        return len(self.blocks)

    def embed(self, ids, types, positions) -> torch.Tensor:
        embed = self.body.embed_tokens
        return embed(ids) + embed(types) if self.token_types else embed(ids)

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin of each token's position, [batch, length, 1, head_dim]."""
        return self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)

    def qkv(self, layer: int, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]):
        block = self.blocks[layer]
        batch, length, _ = x.shape
        out = block.qkv(rms_norm(x, block.input_norm, block.eps))
        split = (self.heads + self.kv_heads) * self.head_dim
        qk = out[..., :split].view(batch, length, -1, self.head_dim)
        v = out[..., split:].view(batch, length, -1, self.head_dim)
        # Rotary embedding of queries and keys at once: x·cos + rotate_half(x)·sin, where
        # rotate_half(x) = (-x₂, x₁) is the halves swapped (a roll) times the sign in ``sin``.
        cos, sin = rotary
        qk = qk * cos + torch.roll(qk, self.head_dim // 2, -1).mul_(sin)
        q = qk[:, :, : self.heads].transpose(1, 2)
        return q, qk[:, :, self.heads :].transpose(1, 2), v.transpose(1, 2)

    def attend(self, layer: int, q, k, v, mask, causal: bool | None = None) -> torch.Tensor:
        return attention(q, k, v, mask, causal, self.blocks[layer].scaling)

    def finish(self, layer: int, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        block = self.blocks[layer]
        batch, _, length, _ = attended.shape
        x = x + block.output(attended.transpose(1, 2).reshape(batch, length, -1))
        gate, up = block.gate_up(rms_norm(x, block.post_norm, block.eps)).split(
            self.intermediate, -1
        )
        return x + block.down(block.act(gate).mul_(up))

    def final(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.body.norm
        return rms_norm(x, norm.weight, norm.variance_epsilon)


ADAPTERS = {"gpt2": GPT2Blocks, "llama": LlamaBlocks}


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm in one kernel: normalised in float32, then cast back and scaled by the
    weight (in the model's dtype, as ``LlamaRMSNorm`` does)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return F.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype) * weight


def rotary_tables(body_module, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin [capacity, head_dim] of positions 0..capacity-1, from the model's
    own rotary module (so its scaling rules apply); sin's first half negated, which turns
    ``rotate_half`` into a roll."""
    weight = body_module.embed_tokens.weight
    positions = torch.arange(capacity, device=weight.device).unsqueeze(0)
    cos, sin = body_module.rotary_emb(weight[:1].unsqueeze(0), positions)
    sin = sin[0].clone()
    sin[:, : sin.shape[-1] // 2].neg_()
    return cos[0], sin


_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fused_layers(body_module: nn.Module) -> list[LlamaLayer]:
    """The body's blocks as ``LlamaLayer``s, made once per set of weights: kept while the
    body's parameters and buffers stay the same tensors at the same versions (an optimizer
    step or a loaded state dict makes them again)."""
    try:
        weights = tuple(
            (t.data_ptr(), t._version)
            for t in chain(body_module.parameters(), body_module.buffers())
        )
    except RuntimeError:  # inference tensors keep no versions: nothing to check, so no reuse
        weights = None
    kept = _FUSED.get(body_module)
    if weights is not None and kept is not None and kept[0] == weights:
        return kept[1]
    with torch.inference_mode(False), torch.no_grad():
        layers = [llama_layer(block) for block in body_module.layers]
    if weights is not None:
        _FUSED[body_module] = (weights, layers)
    return layers


def llama_layer(block: nn.Module) -> LlamaLayer:
    attn, mlp = block.self_attn, block.mlp
    return LlamaLayer(
        input_norm=block.input_layernorm.weight,
        qkv=projection([attn.q_proj, attn.k_proj, attn.v_proj]),
        output=projection([attn.o_proj]),
        post_norm=block.post_attention_layernorm.weight,
        gate_up=projection([mlp.gate_proj, mlp.up_proj]),
        down=projection([mlp.down_proj]),
        act=mlp.act_fn,
        eps=block.input_layernorm.variance_epsilon,
        scaling=attn.scaling,
    )


def projection(modules: list[nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The linear layers ``modules`` over the same input as one product, their outputs side
    by side: plain ``nn.Linear`` layers through one concatenated weight matrix, quantized ones
    through one stacked quantized layer (int8, fp16); anything else (int4, LoRA's layers)
    called one by one."""
    if all(type(m) is nn.Linear for m in modules):
        weight = torch.cat([m.weight for m in modules]) if len(modules) > 1 else modules[0].weight
        biases = [m.bias for m in modules]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat(
                [
                    m.weight.new_zeros(m.out_features) if b is None else b
                    for m, b in zip(modules, biases, strict=True)
                ]
            )
        return partial(F.linear, weight=weight, bias=bias)
    if len(modules) == 1:
        return modules[0]
    kind = type(modules[0])
    if (
        issubclass(kind, (QuantizedLinear, Fp32KernelLinear))
        and kind.can_stack
        and {type(m) for m in modules} == {kind}
    ):
        return kind.stacked(modules)
    return lambda x: torch.cat([m(x) for m in modules], -1)


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
