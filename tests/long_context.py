"""A tiny GPT-2 that reads 2,048 tokens: real clients send max_tokens of 256-300 and cards of
thousands of characters, more than the shared tiny checkpoint's 128 positions hold."""

from __future__ import annotations

from pathlib import Path

from personachat.model.scratch import ScratchConfig, build_scratch_checkpoint

from .conftest import PERSONA, make_dialogs


def build_long_context(folder: Path, extra_texts: list[str] = ()) -> Path:
    """The checkpoint in ``folder``, its tokenizer trained on the test dialogs and
    ``extra_texts`` (a card's words: fewer tokens per word)."""
    texts = [s for d in make_dialogs() for u in d["utterances"] for s in u["history"]]
    texts += PERSONA + list(extra_texts)
    config = ScratchConfig(vocab_size=1500, n_layer=2, n_embd=32, n_head=2, n_positions=2048)
    build_scratch_checkpoint(folder, texts, config)
    return folder
