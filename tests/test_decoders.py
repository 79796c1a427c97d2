"""The decoders behind generate_replies agree with the model's own forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2DoubleHeadsModel

from personachat.generation.decoders import (
    CachedDecoder,
    PrefixCache,
    ReEncodeDecoder,
    StaticKVDecoder,
    make_decoder,
    tanh_gelu_,
)


def gpt2(**overrides) -> GPT2DoubleHeadsModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=64, n_layer=2, n_embd=32, n_head=4, **overrides)
    return GPT2DoubleHeadsModel(config).eval()


def left_padded(lengths: list[int], pad: int = 0):
    """Random prompts of the given lengths, left-padded to the longest."""
    width = max(lengths)
    torch.manual_seed(1)
    ids = torch.randint(1, 64, (len(lengths), width))
    types = torch.randint(1, 64, (len(lengths), width))
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    ids[mask == 0] = pad
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, types, mask, positions


def reference_last_hidden(model, ids, types, mask, positions) -> torch.Tensor:
    """The model's own forward over the whole sequence, no cache: the ground truth."""
    out = model.transformer(
        input_ids=ids, token_type_ids=types, attention_mask=mask, position_ids=positions
    )
    return out.last_hidden_state[:, -1]


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"activation_function": "gelu_pytorch_tanh"},
        {"scale_attn_by_inverse_layer_idx": True},
    ],
)
@pytest.mark.parametrize("lengths", [[7], [7, 3, 5]])
@pytest.mark.parametrize("decoder_class", [StaticKVDecoder, CachedDecoder, ReEncodeDecoder])
def test_prefill_and_steps_match_the_full_forward_pass(config, lengths, decoder_class):
    model = gpt2(**config)
    ids, types, mask, positions = left_padded(lengths)
    decoder = (
        decoder_class(model, ids.shape[1] + 4)
        if decoder_class is StaticKVDecoder
        else decoder_class(model)
    )
    with torch.no_grad():
        hidden = decoder.prefill(ids, types, mask, positions)
        torch.testing.assert_close(
            hidden, reference_last_hidden(model, ids, types, mask, positions)
        )
        for _ in range(4):
            new_ids = torch.randint(1, 64, (len(lengths), 1))
            new_types = torch.full_like(new_ids, 5)
            new_positions = positions[:, -1:] + 1
            hidden = decoder.step(new_ids, new_types, new_positions)
            ids, types = torch.cat([ids, new_ids], 1), torch.cat([types, new_types], 1)
            mask = torch.cat([mask, torch.ones_like(new_ids)], 1)
            positions = torch.cat([positions, new_positions], 1)
            torch.testing.assert_close(
                hidden, reference_last_hidden(model, ids, types, mask, positions)
            )


def test_the_static_decoder_is_chosen_for_gpt2_and_refuses_to_overflow():
    model = gpt2()
    decoder = make_decoder(model, capacity=3)
    assert isinstance(decoder, StaticKVDecoder)
    ids, types, mask, positions = left_padded([3])
    with torch.no_grad():
        decoder.prefill(ids, types, mask, positions)
        with pytest.raises(RuntimeError, match="capacity"):
            decoder.step(ids[:, :1], types[:, :1], positions[:, -1:] + 1)


def with_shared_prefixes(lengths: list[int], prefixes: list[int]):
    """Left-padded prompts whose first ``prefixes[row]`` real tokens are a persona prefix:
    rows with equal prefix lengths share the same prefix tokens (as sessions that share a
    persona do), the prefix has one token type, and the rest of each row differs."""
    ids, types, mask, positions = left_padded(lengths)
    width = ids.shape[1]
    torch.manual_seed(2)
    personas = {n: torch.randint(1, 64, (n,)) for n in set(prefixes)}
    for row, (length, prefix) in enumerate(zip(lengths, prefixes, strict=True)):
        start = width - length
        ids[row, start : start + prefix] = personas[prefix]
        types[row, start : start + prefix] = 7
    return ids, types, mask, positions


@pytest.mark.parametrize(
    ("lengths", "prefixes"),
    [
        ([9], [4]),  # one row, no padding
        ([9, 5, 9, 6], [4, 2, 4, 5]),  # padding, a shared prefix, a one-token suffix
    ],
)
def test_prefill_from_cached_prefixes_matches_the_full_forward_pass(lengths, prefixes):
    model = gpt2()
    ids, types, mask, positions = with_shared_prefixes(lengths, prefixes)
    cache = PrefixCache()
    expected = reference_last_hidden(model, ids, types, mask, positions)
    with torch.no_grad():
        for attempt in ("computes the prefixes", "takes them from the cache"):
            decoder = StaticKVDecoder(model, ids.shape[1] + 3)
            hidden = decoder.prefill(ids, types, mask, positions, prefixes, cache)
            torch.testing.assert_close(hidden, expected, msg=attempt)
        assert len(cache) == len(set(prefixes)) and cache.hits == len(set(prefixes))
        # The decoding steps after a cached prefill see the same keys and values.
        step_ids = torch.randint(1, 64, (len(lengths), 1))
        step_positions = positions[:, -1:] + 1
        hidden = decoder.step(step_ids, torch.full_like(step_ids, 5), step_positions)
    full = (
        torch.cat([ids, step_ids], 1),
        torch.cat([types, torch.full_like(step_ids, 5)], 1),
        torch.cat([mask, torch.ones_like(step_ids)], 1),
        torch.cat([positions, step_positions], 1),
    )
    torch.testing.assert_close(hidden, reference_last_hidden(model, *full))


def test_the_prefix_cache_forgets_everything_when_the_weights_change():
    model = gpt2()
    ids, types, mask, positions = with_shared_prefixes([8, 6], [3, 3])
    cache = PrefixCache()
    with torch.no_grad():
        StaticKVDecoder(model, 10).prefill(ids, types, mask, positions, [3, 3], cache)
        assert len(cache) == 1
        model.transformer.h[0].attn.c_attn.weight.mul_(1.5)  # as an optimizer step would
        hidden = StaticKVDecoder(model, 10).prefill(ids, types, mask, positions, [3, 3], cache)
    assert cache.hits == 0  # recomputed with the new weights, not served stale
    torch.testing.assert_close(hidden, reference_last_hidden(model, ids, types, mask, positions))


def test_the_prefix_cache_drops_the_least_recently_used_entry_beyond_its_size():
    entry = [(torch.zeros(4, 8, 2), torch.zeros(4, 8, 2))]  # 512 bytes
    cache = PrefixCache(max_bytes=1024)
    cache.put(("a",), entry)
    cache.put(("b",), entry)
    assert cache.get(("a",)) is entry  # "a" is now the most recently used
    cache.put(("c",), entry)
    assert cache.get(("b",)) is None and cache.get(("a",)) is entry and len(cache) == 2
    assert cache.bytes == 1024
    cache.put(("huge",), entry * 3)  # larger than the whole cache: not kept
    assert cache.get(("huge",)) is None and len(cache) == 2


@pytest.mark.parametrize("shape", [(3, 8), (300, 512)])  # a decoding step; a batch's prompts
def test_the_in_place_tanh_gelu_equals_torchs(shape):
    x = torch.randn(shape) * 3
    torch.testing.assert_close(
        tanh_gelu_(x.clone()), F.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-5
    )
