"""Real-data check: a small model trained from scratch on Synthetic-Persona-Chat, for a fixed
budget, against a unigram baseline (LM loss) and chance (hits@1).

The shared file ``../shared/data/synthetic-persona-chat/valid.csv`` (1,000 real
conversations, read through the same reader users get) is split by conversation: the first
900 train, the last 100 evaluate. Distractors are sampled from other dialogs (training:
``--num-candidates``; evaluation: ``--eval-candidates``, 20 as ConvAI2 ranks them), a
byte-level BPE tokenizer and a small GPT-2 are built from the training dialogs alone, and the
model trains for ``--epochs`` over ``--train-dialogs`` dialogs.

    python benchmarks/real_data_check.py                  # about 3 minutes on 2 CPU cores
    python benchmarks/real_data_check.py --train-dialogs 1800 --epochs 2

Prints the model's LM loss (nats per token) and perplexity per word (ConvAI2's definition,
comparable across tokenizers) next to the unigram baseline's (the loss of ignoring persona and
history), and hits@1 over the evaluation candidates next to chance.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from personachat import ConvAIModel
from personachat.data.candidates import add_distractors
from personachat.data.readers import read_dialogs
from personachat.evaluation.metrics import (
    gold_reply_tokens,
    reply_word_count,
    unigram_baseline_loss,
)
from personachat.model.scratch import ScratchConfig, build_scratch_checkpoint, dialog_texts

DEFAULT_FILE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "synthetic-persona-chat" / "valid.csv"
)


def train_scratch_gpt2(
    tmp: Path,
    train: list[dict],
    epochs: int = 1,
    num_candidates: int = 2,
    vocab_size: int = 2000,
    learning_rate: float = 2e-3,
) -> tuple[ConvAIModel, int, float]:
    """A 4 x 128 GPT-2 with a byte-level BPE built from ``train`` alone, trained on it under
    ``tmp``; returns the model, its optimizer steps and the training seconds."""
    folder = tmp / "scratch"
    build_scratch_checkpoint(
        folder,
        dialog_texts(train),
        ScratchConfig(vocab_size=vocab_size, n_layer=4, n_embd=128, n_head=4, n_positions=256),
    )
    (tmp / "train.json").write_text(json.dumps(train), encoding="utf-8")
    bot = ConvAIModel(
        "gpt2",
        folder,
        use_cuda=False,
        args={
            "output_dir": str(tmp / "out"),
            "num_train_epochs": epochs,
            "train_batch_size": 16,
            "eval_batch_size": 32,
            "num_candidates": num_candidates,
            "learning_rate": learning_rate,
            "warmup_ratio": 0.05,
            "manual_seed": 42,
            "save_steps": 0,
            "save_model_every_epoch": False,
            "silent": True,
            "max_history": 2,
            "do_sample": False,
            "max_length": 24,
        },
    )
    started = time.perf_counter()
    steps, _ = bot.train_model(str(tmp / "train.json"), show_running_loss=False)
    return bot, steps, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument(
        "--train-dialogs",
        type=int,
        default=600,
        help="dialogs to train on (of 1,800: two per conversation)",
    )
    parser.add_argument("--eval-dialogs", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--num-candidates", type=int, default=2, help="in training")
    parser.add_argument("--eval-candidates", type=int, default=20, help="hits@1 ranks among")
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    options = parser.parse_args(argv)
    if not options.file.is_file():
        print(f"{options.file} is not there; nothing to check (it ships in ../shared/data)")
        return 1

    dialogs = read_dialogs(options.file)  # two per conversation, in file order
    split = 2 * 900
    train, valid = dialogs[:split], dialogs[split:]
    train, _ = add_distractors(train, options.num_candidates, seed=0)
    valid, _ = add_distractors(valid, options.eval_candidates, seed=1)
    train, valid = train[: options.train_dialogs], valid[: options.eval_dialogs]

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "valid.json").write_text(json.dumps(valid), encoding="utf-8")
        bot, steps, seconds = train_scratch_gpt2(
            Path(tmp),
            train,
            epochs=options.epochs,
            num_candidates=options.num_candidates,
            vocab_size=options.vocab_size,
            learning_rate=options.learning_rate,
        )
        results = bot.eval_model(
            str(Path(tmp) / "valid.json"),
            output_dir=str(Path(tmp) / "ev"),
            verbose=False,
            silent=True,
        )
        valid_set = bot._dataset(valid, "valid")
        baseline = unigram_baseline_loss(
            bot._dataset(train, "train"), valid_set, len(bot.tokenizer)
        )
        # The unigram model's summed NLL over the gold replies, per word.
        tokens = sum(len(t) for t in gold_reply_tokens(valid_set))
        baseline_word = math.exp(baseline * tokens / reply_word_count(valid, valid_set.index))

    candidates = results["eval_num_candidates"]
    chance = 1 / candidates
    print(
        f"machine: {platform.processor() or platform.machine()}, cpu, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {date.today()}"
    )
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"data: {options.file.name}, {len(train)} train dialogs "
        f"({sum(len(d['utterances']) for d in train)} utterances), {len(valid)} eval dialogs "
        f"({results['num_examples']} utterances); model 4x128, vocab {len(bot.tokenizer)}; "
        f"{steps} steps in {seconds:.0f} s"
    )
    print("\n| metric | model | reference | better? |\n|---|---:|---:|---|")
    print(
        f"| LM loss (nats/token, gold replies) | {results['language_model_loss']:.3f} | "
        f"{baseline:.3f} (unigram) | {results['language_model_loss'] < baseline} |"
    )
    print(
        f"| perplexity per word (ConvAI2) | {results['word_perplexity']:.1f} | "
        f"{baseline_word:.1f} (unigram) | {results['word_perplexity'] < baseline_word} |"
    )
    print(
        f"| hits@1 ({candidates} candidates; trained on {options.num_candidates}) | "
        f"{results['hits@1']:.3f} | {chance:.3f} (chance) | {results['hits@1'] > chance} |"
    )
    return 0 if results["language_model_loss"] < baseline and results["hits@1"] > chance else 3


if __name__ == "__main__":
    sys.exit(main())
