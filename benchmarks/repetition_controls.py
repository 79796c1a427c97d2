"""Repetition across turns on real conversations: what each decoding control costs and buys.

Loads a trained chat model (default: the main job's, ``outputs/quick``) and, for each setting
below, decodes greedily:

- self-play on held-out Synthetic-Persona-Chat dialogs (``data/synthetic-persona-chat/
  heldout.csv``: the partner's real messages, the bot's own replies in the history):
  ``repeat_previous_rate`` (the reply equals the bot's previous one) and ``repetition_rate``
  (it equals any earlier one of the dialog);
- the facts the controls must not suppress: history recall (``data/history_valid.json``,
  which asks the bot what it said itself) and persona accuracy (held-out personas).

    personachat train --config configs/quick.yaml       # once, to have outputs/quick
    python benchmarks/repetition_controls.py
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
from personachat.evaluation.persona import history_recall, persona_scores
from personachat.evaluation.replies import repetition_rates
from personachat.generation.generate import DecodingOptions

ROOT = Path(__file__).resolve().parents[1]
OFF = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "repeat_reply_penalty": 1.0}
SETTINGS: dict[str, dict] = {  # one control each, the others off
    "greedy, no control": {},
    "repetition_penalty 1.2": {"repetition_penalty": 1.2},
    "repetition_penalty 1.3": {"repetition_penalty": 1.3},
    "no_repeat_ngram_size 4": {"no_repeat_ngram_size": 4},
    "no_repeat_ngram_size 6": {"no_repeat_ngram_size": 6},
    "repeat_reply_penalty 1.5": {"repeat_reply_penalty": 1.5},
    "repeat_reply_penalty 3": {"repeat_reply_penalty": 3.0},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "outputs" / "quick"))
    parser.add_argument("--dialogs", type=int, default=10, help="held-out SPC dialogs")
    parser.add_argument("--persona-dialogs", type=int, default=20)
    options = parser.parse_args(argv)
    bot = ConvAIModel("auto", options.model, use_cuda=False, args={"silent": True})
    spc = read_dialogs(ROOT / "data" / "synthetic-persona-chat" / "heldout.csv")
    spc = spc[: options.dialogs]
    history = read_dialogs(ROOT / "data" / "history_valid.json")
    persona = read_dialogs(ROOT / "data" / "persona_valid.json")[: options.persona_dialogs]
    print(
        "| decoding | repeats previous reply | repeats any earlier | history recall "
        "| persona accuracy | s |\n|---|---:|---:|---:|---:|---:|",
        flush=True,
    )
    for name, setting in SETTINGS.items():
        started = time.perf_counter()
        decoding = DecodingOptions.from_args(bot.args, do_sample=False, **{**OFF, **setting})
        reply = partial(bot.generate_replies, options=decoding)
        rates = repetition_rates(reply, spc, silent=True)
        recall = history_recall(reply, history, silent=True)
        accuracy = persona_scores(reply, persona, silent=True)["persona_accuracy"]
        print(
            f"| {name} | {rates['repeat_previous_rate']:.3f} | {rates['repetition_rate']:.3f} "
            f"| {recall:.3f} | {accuracy:.3f} | {time.perf_counter() - started:.0f} |",
            flush=True,
        )
    print(
        f"\nmachine: {platform.machine()}, cpu {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {date.today()}; "
        f"model {options.model}; {len(spc)} SPC dialogs, {len(history)} history dialogs, "
        f"{len(persona)} persona dialogs\ncommand: python {' '.join(sys.argv)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
