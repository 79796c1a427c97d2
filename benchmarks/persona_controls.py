"""What each decoding control does to persona use and to repetition, on the persona benchmark.

Loads a trained model (default: the offline main job's, ``outputs/quick``) and, for each
setting below, measures on the held-out personas:

- ``persona_accuracy``: share of probes whose reply states the persona's value;
- ``repetition_rate``: share of self-play replies that repeat an earlier reply of the bot.

Settings: greedy; sampling (temperature 0.7, top-p 0.9); sampling + ``repetition_penalty``;
sampling + ``no_repeat_ngram_size``; greedy + both; sampling + re-ranking N samples with the
multiple-choice head and length-normalised LM likelihood (``rerank_samples``).

    personachat train --config configs/quick.yaml       # once, to have outputs/quick
    python benchmarks/persona_controls.py              # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from functools import partial
from pathlib import Path

import torch

from personachat import ConvAIModel
from personachat.data.readers import read_dialogs
from personachat.evaluation.persona import persona_accuracy
from personachat.evaluation.replies import repetition_rate
from personachat.generation.generate import DecodingOptions

SETTINGS: dict[str, dict] = {
    "greedy": {"do_sample": False},
    "sampling (T=0.7, top_p=0.9)": {"do_sample": True},
    "sampling + repetition_penalty=1.3": {"do_sample": True, "repetition_penalty": 1.3},
    "sampling + no_repeat_ngram_size=3": {"do_sample": True, "no_repeat_ngram_size": 3},
    "greedy + penalty 1.3 + no_repeat 3": {
        "do_sample": False,
        "repetition_penalty": 1.3,
        "no_repeat_ngram_size": 3,
    },
    "sampling + rerank_samples=4": {"do_sample": True, "rerank_samples": 4},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="outputs/quick")
    parser.add_argument("--eval-file", default="data/persona_valid.json")
    parser.add_argument("--dialogs", type=int, default=60, help="held-out dialogs to use")
    options = parser.parse_args(argv)
    if not (Path(options.model) / "config.json").is_file():
        print(
            f"no trained model in {options.model}; run "
            "`personachat train --config configs/quick.yaml` first"
        )
        return 1
    bot = ConvAIModel("gpt2", options.model, use_cuda=False, args={"silent": True})
    dialogs = read_dialogs(options.eval_file)[: options.dialogs]
    print(
        f"machine: {platform.processor() or platform.machine()}, cpu, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {date.today()}"
    )
    print(f"command: python {' '.join(sys.argv)}")
    print(f"model: {options.model}; data: {options.eval_file}, {len(dialogs)} dialogs\n")
    print("| decoding | persona_accuracy | repetition_rate | seconds |\n|---|---:|---:|---:|")
    for name, overrides in SETTINGS.items():
        torch.manual_seed(0)
        decoding = DecodingOptions.from_args(bot.args, **overrides)
        replies = partial(bot.generate_replies, options=decoding)
        started = time.perf_counter()
        accuracy = persona_accuracy(replies, dialogs, silent=True)
        repeats = repetition_rate(replies, dialogs, silent=True)
        print(
            f"| {name} | {accuracy:.3f} | {repeats:.3f} | {time.perf_counter() - started:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
