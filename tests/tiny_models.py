"""Tiny chat models built offline: random-weight Llama / Qwen2 checkpoints whose tokenizer has
a ChatML chat template (the layout SmolLM2 and Qwen2.5 use), saved as ordinary model folders
and loaded through the same ``from_pretrained`` path as a hub model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chat_tokenizer(texts: Iterable[str], vocab_size: int = 400):
    """Byte-level BPE trained on ``texts`` with ChatML's special tokens and template;
    ``<|im_end|>`` is eos and pad, as in SmolLM2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts) + ["system user assistant"], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def build_tiny_chat_model(
    folder: str | Path, texts: Iterable[str], family: str = "llama", seed: int = 0
) -> Path:
    """A random-weight ``LlamaForCausalLM`` (or ``Qwen2ForCausalLM``: ``family="qwen2"``)
    with grouped-query attention, RoPE, RMSNorm and SwiGLU, 2 layers of width 32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = chat_tokenizer(texts)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
