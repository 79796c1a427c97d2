"""A small GPT-2-architecture checkpoint built from nothing: the offline default.

No hub is needed: a byte-level BPE tokenizer is trained on the given texts (so Cyrillic and
emoji work like Latin text), a GPT-2 config of the requested size is initialised with random
weights, and both are saved as an ordinary folder. Everything downstream then loads it with
``from_pretrained`` exactly as it would load ``gpt2``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from personachat.args import ArgsError, unknown_key_message
from personachat.data.readers import read_dialogs
from personachat.encoding.inputs import ATTR_TO_SPECIAL_TOKEN
from personachat.model.loading import save_pretrained_atomic


@dataclass(frozen=True)
class ScratchConfig:
    """Size of the tokenizer and of the GPT-2 body."""

    vocab_size: int = 2000
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 256
    # No dropout and the fused tanh-GELU: on a CPU, dropout masks and the unfused gelu_new
    # were half of the step time of a model this small, and a few epochs barely overfit.
    dropout: float = 0.0
    activation_function: str = "gelu_pytorch_tanh"
    seed: int = 0
    # A short LM pretraining on the training dialogs (see ``pretrain``): what gives the
    # scratch model the copying a real GPT-2 brings from its own pretraining. 0: none.
    pretrain_steps: int = 0
    pretrain_batch_size: int = 16
    pretrain_learning_rate: float = 2e-3


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE ``GPT2TokenizerFast`` trained on texts (built from the tokenizer
    object: ``vocab_file=``/``merges_file=`` silently yields an empty one in transformers 5)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return GPT2TokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def dialog_texts(dialogs: Iterable[dict]) -> Iterable[str]:
    """Every persona sentence, history utterance and candidate of Persona-Chat dialogs."""
    for dialog in dialogs:
        yield from dialog["personality"]
        for utt in dialog["utterances"]:
            yield from utt["history"][-1:]
            yield from utt["candidates"]


def build_scratch_checkpoint(
    output_dir: str | os.PathLike,
    texts: Iterable[str],
    config: ScratchConfig = ScratchConfig(),
    dialogs: Sequence[dict] | None = None,
    silent: bool = False,
) -> Path:
    """Write a GPT2DoubleHeadsModel + tokenizer trained on ``texts`` to output_dir: random
    weights, or with ``config.pretrain_steps`` LM-pretrained on ``dialogs`` first."""
    from transformers import GPT2Config, GPT2DoubleHeadsModel

    tokenizer = train_tokenizer(texts, config.vocab_size)
    tokenizer.add_special_tokens(ATTR_TO_SPECIAL_TOKEN)  # before sizing the embeddings
    torch.manual_seed(config.seed)
    gpt2_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        summary_first_dropout=config.dropout,
        activation_function=config.activation_function,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2DoubleHeadsModel(gpt2_config)
    if config.pretrain_steps > 0:
        if not dialogs:
            raise ValueError("pretrain_steps > 0 needs the training dialogs to pretrain on")
        from personachat.model.pretrain import pretrain_language_model

        pretrain_language_model(
            model,
            tokenizer,
            dialogs,
            config.pretrain_steps,
            config.pretrain_batch_size,
            config.pretrain_learning_rate,
            seed=config.seed,
            silent=silent,
        )
    model.config.scratch = asdict(config)
    return save_pretrained_atomic(output_dir, model, tokenizer)


# Part of the cached scratch model's key: bump it whenever building or pretraining the scratch
# model changes what it produces, so an older cached model is never reused (a cached model
# from before a change made the main job's figures differ between machines).
SCRATCH_VERSION = 2


def cached_scratch_checkpoint(train_file: str, scratch: dict, args) -> Path:
    """The scratch checkpoint for ``train_file`` and the ``scratch:`` options of a config,
    built under ``args.cache_dir`` the first time and found there afterwards (the folder is
    named by a hash of the options, the file's bytes and ``SCRATCH_VERSION``)."""
    known = {f.name for f in fields(ScratchConfig)}
    for key in scratch:
        if key not in known:
            raise ArgsError(f"scratch: {unknown_key_message(key, sorted(known))}")
    config = ScratchConfig(**scratch)
    data = Path(train_file).read_bytes() if Path(train_file).is_file() else b""
    options = json.dumps({**asdict(config), "version": SCRATCH_VERSION}).encode()
    key = hashlib.sha256(options + data).hexdigest()[:16]
    folder = Path(args.cache_dir) / f"scratch-gpt2-{key}"
    if (folder / "config.json").is_file():
        return folder
    dialogs = read_dialogs(  # invalid dialogs skipped are reported when training reads
        train_file,
        format=args.data_format,
        skip_invalid=args.skip_invalid,
        allow_empty_personality=args.allow_empty_personality,
        report=lambda _: None,
    )
    print(
        f"Building a small GPT-2 ({config.n_layer} layers, {config.n_embd} wide, "
        f"vocabulary {config.vocab_size}) with a tokenizer trained on {train_file} → {folder}"
    )
    if config.pretrain_steps:
        print(
            f"Pretraining it as a language model on the training dialogs for "
            f"{config.pretrain_steps} steps (see personachat/model/pretrain.py)"
        )
    build_scratch_checkpoint(folder, dialog_texts(dialogs), config, dialogs=dialogs)
    return folder
