"""GGUF exports llama.cpp loads: a pre-tokenizer name llama.cpp knows that splits text as the
tokenizer does, Q8_0 blocks byte for byte as ggml writes them, a 4-bit export of a fine-tune
that would give back the base model refused with the measurement; and, where llama.cpp is
installed, llama.cpp itself replying as personachat does."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from safetensors import safe_open

from personachat import ConvAIModel
from personachat.cli import main
from personachat.model.export import ExportError, export_folder, export_model
from personachat.model.gguf_export import (
    LLAMACPP_PRE_NAMES,
    GGUFExportError,
    llamacpp_pre_tokenizer,
    permute_rotary_rows,
    pre_tokenizer_name,
    verify_gguf,
)
from personachat.model.gguf_quants import Q4_1, Q8_0, dequantize, quantize
from personachat.model.lora import with_lora
from tests.test_export import GREEDY, assert_decodes_like_personachat, saved_chat_model
from tests.test_gguf_files import rewritten

DIGITS = "in 2024 i ran 10,000 m ; it's 3.5 km !"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return saved_chat_model(tmp_path_factory.mktemp("llama"), "llama")


def gguf_text(path, key: str) -> str:
    field = GGUFReader(path).fields[key]
    return str(field.contents())


def test_the_exported_pre_tokenizer_is_a_name_llama_cpp_knows(llama, tmp_path):
    ours, saved = llama

    export_folder(saved, tmp_path / "out", gguf=True)

    name = gguf_text(tmp_path / "out" / "out.gguf", "tokenizer.ggml.pre")
    assert name == "gpt-2" and name in LLAMACPP_PRE_NAMES  # "gpt2" made llama.cpp refuse it
    split = llamacpp_pre_tokenizer(name).pre_tokenize_str(DIGITS)
    assert split == ours.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(DIGITS)
    eot = int(
        GGUFReader(tmp_path / "out" / "out.gguf").fields["tokenizer.ggml.eot_token_id"].contents()
    )
    assert ours.tokenizer.convert_ids_to_tokens(eot) == "<|im_end|>"


def test_smollm_s_digit_splitting_is_written_as_smollm():
    from tokenizers import pre_tokenizers

    smollm = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(False)]
    )
    spec = json.loads(smollm.__getstate__())

    assert pre_tokenizer_name(spec) == "smollm"
    assert llamacpp_pre_tokenizer("smollm").pre_tokenize_str(DIGITS) == smollm.pre_tokenize_str(
        DIGITS
    )
    assert pre_tokenizer_name(json.loads(pre_tokenizers.ByteLevel(False).__getstate__())) == "gpt-2"
    with pytest.raises(GGUFExportError, match="splits it another way"):
        pre_tokenizer_name(json.loads(pre_tokenizers.Whitespace().__getstate__()))


def test_a_file_naming_a_pre_tokenizer_llama_cpp_refuses_fails_the_check(llama, tmp_path):
    ours, saved = llama
    export_folder(saved, tmp_path / "out", gguf=True)
    path = tmp_path / "out" / "out.gguf"
    bad = rewritten(path, tmp_path / "bad.gguf", {"tokenizer.ggml.pre": "gpt2"})

    with pytest.raises(GGUFExportError, match="'gpt2' is not a pre-tokenizer llama.cpp knows"):
        verify_gguf(bad, ours.model, ours.tokenizer, [])


@pytest.mark.parametrize("kind", [Q8_0, Q4_1])
def test_blocks_are_byte_for_byte_ggml_s(kind):
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((16, 96)) * 0.05).astype(np.float32)
    weight[1] = 0.0  # a zero block: scale 0
    weight[2, :32] = np.linspace(-1, 1, 32)  # values on rounding ties
    weight[3] = 0.25  # a constant block: zero range

    mine = quantize(weight, kind)

    theirs = gguf.quants.quantize(weight, GGMLQuantizationType[kind.upper()])
    assert mine.dtype == np.uint8 and np.array_equal(mine, theirs)
    assert np.array_equal(
        dequantize(mine, kind, weight.shape),
        gguf.quants.dequantize(theirs, GGMLQuantizationType[kind.upper()]),
    )


def test_a_q8_0_export_holds_every_matrix_within_half_a_step_and_replies_like_fp32(llama, tmp_path):
    ours, saved = llama

    assert main(["export", str(saved), str(tmp_path / "out"), "--gguf-q8_0"]) == 0

    reader = GGUFReader(tmp_path / "out" / "out.gguf")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="np") as f:
        weights = {name: f.get_tensor(name) for name in f.keys()}
    config = ours.model.config
    for tensor in reader.tensors:
        if tensor.name == "blk.0.attn_q.weight":
            original = permute_rotary_rows(
                weights["model.layers.0.self_attn.q_proj.weight"],
                config.num_attention_heads,
            )
        elif tensor.name == "blk.1.ffn_down.weight":
            original = weights["model.layers.1.mlp.down_proj.weight"]
        else:
            assert tensor.tensor_type in (GGMLQuantizationType.Q8_0, GGMLQuantizationType.F32)
            continue
        assert tensor.tensor_type == GGMLQuantizationType.Q8_0
        back = dequantize(tensor.data, Q8_0, original.shape).reshape(-1, 32)
        blocks = original.reshape(-1, 32)
        step = np.abs(blocks).max(axis=1, keepdims=True) / 127
        scale_rounding = 127 * np.abs(step.astype(np.float16).astype(np.float32) - step)
        assert (np.abs(back - blocks) <= step / 2 + scale_rounding + 1e-9).all()
    # transformers reads the file back; on the tiny Llama the 8-bit replies equal fp32's
    assert_decodes_like_personachat(ours, tmp_path / "out", gguf_file="out.gguf")


def test_only_one_gguf_format_is_accepted(llama, tmp_path, capsys):
    _, saved = llama
    command = ["export", str(saved), str(tmp_path / "out"), "--gguf-q8_0", "--gguf-f16"]

    assert main(command) == 2
    assert "choose one GGUF format" in capsys.readouterr().err


def lora_finetune(saved, scale: float, seed: int = 0) -> ConvAIModel:
    """The tiny Llama with LoRA adapters whose B matrices are drawn at ``scale``."""
    tuned = ConvAIModel("auto", saved, use_cuda=False, args={**GREEDY, "lora_r": 4})
    tuned.model = with_lora(tuned.model, tuned.args)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in tuned.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)
    return tuned


def test_a_4bit_export_of_a_small_finetune_is_refused_with_the_measurement(llama, tmp_path):
    _, saved = llama
    tuned = lora_finetune(saved, 1e-4)  # a persona LoRA's size: far below a 4-bit step
    folder = tuned.save_model(tmp_path / "tuned")  # merged; model_args names the base

    with pytest.raises(ExportError, match="would be its base model again") as refused:
        export_folder(folder, tmp_path / "q4", gguf_format=Q4_1)
    message = str(refused.value)
    assert "4-bit blocks" in message and "identical to the base model's" in message
    assert "half a 4-bit step" in message and "--gguf-q8_0" in message
    assert not (tmp_path / "q4").exists()

    export_folder(folder, tmp_path / "q8", gguf_format=Q8_0)  # 8-bit keeps it
    assert (tmp_path / "q8" / "q8.gguf").is_file()


def test_a_4bit_export_of_a_large_finetune_is_written_with_the_measurement(llama, tmp_path):
    _, saved = llama
    tuned = lora_finetune(saved, 0.5)

    _, notes = export_model(
        tuned.model, tuned.tokenizer, tuned.args, tmp_path / "q4", gguf_format=Q4_1
    )

    assert any(n.startswith("4-bit (Q4_1) GGUF: in the") for n in notes)
    reader = GGUFReader(tmp_path / "q4" / "q4.gguf")
    kinds = {t.tensor_type for t in reader.tensors}
    assert GGMLQuantizationType.Q4_1 in kinds


def test_llama_cpp_loads_each_export_and_replies_like_personachat(llama, tmp_path):
    """Opt-in: runs where llama.cpp is installed (``llama-cpp-cffi``, or the .so named by
    PERSONACHAT_LLAMACPP_CFFI; see benchmarks/llamacpp_export_check.py)."""
    check = pytest.importorskip("benchmarks.llamacpp_export_check")
    module = check.load_llamacpp()
    if module is None:
        pytest.skip("llama.cpp is not installed here (pip install llama-cpp-cffi==0.4.42)")
    _, saved = llama

    for kind in ("f32", "f16", Q8_0):
        row = check.check_format(module, saved, kind, max_new=12)
        assert row["tokens"] == row["replies"] == len(check.TALKS), row
