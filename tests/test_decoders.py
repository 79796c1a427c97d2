"""The decoders behind generate_replies agree with the model's own forward pass."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2DoubleHeadsModel

from personachat.decoders import CachedDecoder, ReEncodeDecoder, StaticKVDecoder, make_decoder


def gpt2(**overrides) -> GPT2DoubleHeadsModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=64, n_layer=2, n_embd=32, n_head=4,
                        **overrides)
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
    out = model.transformer(input_ids=ids, token_type_ids=types, attention_mask=mask,
                            position_ids=positions)
    return out.last_hidden_state[:, -1]


@pytest.mark.parametrize("config", [
    {},
    {"activation_function": "gelu_pytorch_tanh"},
    {"scale_attn_by_inverse_layer_idx": True},
])
@pytest.mark.parametrize("lengths", [[7], [7, 3, 5]])
@pytest.mark.parametrize("decoder_class", [StaticKVDecoder, CachedDecoder, ReEncodeDecoder])
def test_prefill_and_steps_match_the_full_forward_pass(config, lengths, decoder_class):
    model = gpt2(**config)
    ids, types, mask, positions = left_padded(lengths)
    decoder = (decoder_class(model, ids.shape[1] + 4)
               if decoder_class is StaticKVDecoder else decoder_class(model))
    with torch.no_grad():
        hidden = decoder.prefill(ids, types, mask, positions)
        torch.testing.assert_close(hidden, reference_last_hidden(model, ids, types, mask,
                                                                 positions))
        for _ in range(4):
            new_ids = torch.randint(1, 64, (len(lengths), 1))
            new_types = torch.full_like(new_ids, 5)
            new_positions = positions[:, -1:] + 1
            hidden = decoder.step(new_ids, new_types, new_positions)
            ids, types = torch.cat([ids, new_ids], 1), torch.cat([types, new_types], 1)
            mask = torch.cat([mask, torch.ones_like(new_ids)], 1)
            positions = torch.cat([positions, new_positions], 1)
            torch.testing.assert_close(hidden, reference_last_hidden(model, ids, types, mask,
                                                                     positions))


def test_the_static_decoder_is_chosen_for_gpt2_and_refuses_to_overflow():
    model = gpt2()
    decoder = make_decoder(model, capacity=3)
    assert isinstance(decoder, StaticKVDecoder)
    ids, types, mask, positions = left_padded([3])
    with torch.no_grad():
        decoder.prefill(ids, types, mask, positions)
        with pytest.raises(RuntimeError, match="capacity"):
            decoder.step(ids[:, :1], types[:, :1], positions[:, -1:] + 1)
