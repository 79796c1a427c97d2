"""History recall of a trained model, by who said the fact: the user (3-6 messages back), the
bot itself, or the user's first question ("What did I ask you first?").

``data/history_valid.json`` holds 100 held-out history probes (phrasings and values the
training file never uses); a probe counts when the greedy reply states the value. The slot
names say who said it (``user_*``, ``bot_*``, ``first_question``).

    personachat train --config configs/quick.yaml       # once, to have outputs/quick
    python benchmarks/history_recall.py [--model outputs/quick]
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from functools import partial
from pathlib import Path

import torch

from personachat import ConvAIModel
from personachat.data.readers import read_dialogs
from personachat.evaluation.persona import history_recall
from personachat.generation.generate import DecodingOptions

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"the user's fact": "user_", "the bot's own words": "bot_", "the first question": "first"}


def only(dialogs: list[dict], prefix: str) -> list[dict]:
    """The dialogs with only the history probes whose slot starts with ``prefix``."""

    def keep(utterance: dict) -> dict:
        probe = utterance.get("probe") or {}
        if str(probe.get("slot", "")).startswith(prefix):
            return utterance
        return {k: v for k, v in utterance.items() if k != "probe"}

    return [{**d, "utterances": [keep(u) for u in d["utterances"]]} for d in dialogs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "outputs" / "quick"))
    parser.add_argument("--file", default=str(ROOT / "data" / "history_valid.json"))
    options = parser.parse_args(argv)
    bot = ConvAIModel("auto", options.model, use_cuda=False, args={"silent": True})
    reply = partial(bot.generate_replies, options=DecodingOptions.from_args(bot.args))
    dialogs = read_dialogs(options.file)
    print("| history probes | recall |\n|---|---:|")
    for name, prefix in KINDS.items():
        print(f"| {name} | {history_recall(reply, only(dialogs, prefix), silent=True):.3f} |")
    print(f"| all | {history_recall(reply, dialogs, silent=True):.3f} |")
    print(
        f"\nmachine: {platform.machine()}, cpu {torch.backends.cpu.get_cpu_capability()}, "
        f"torch {torch.__version__}, {date.today()}; model {options.model}\n"
        f"command: python {' '.join(sys.argv)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
