"""Choosing ``eval_ranking: pmi``'s weight: hits@1 among 20 for several weights of the
context-free score, on training conversations the main job's mix never drew (where the weight
is chosen) and on the held-out ones (read only, never chosen on).

A candidate's PMI score is its mean log-likelihood after persona and history less ``weight``
times its mean log-likelihood with neither; weight 0 is plain LM ranking. Every utterance's
two score lists are computed once (``evaluation.ranking.candidate_scores``, the code
``personachat eval --ranking pmi`` runs), then each weight only re-picks, so a sweep costs one
ranking pass per set. Candidates: 19 distractors from other dialogs of the same file, seed 42,
as the main job's ``conversation_eval`` draws them.

    personachat train --config configs/quick.yaml       # once, to have outputs/quick
    python benchmarks/pmi_weight.py --model outputs/quick
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

import torch

from personachat import ConvAIModel
from personachat.config import load_config
from personachat.data.mix import drawn_indices
from personachat.data.readers import read_dialogs
from personachat.evaluation.ranking import (
    PMI_WEIGHT,
    candidate_scores,
    pmi_pick,
    with_candidates_to_rank,
)
from personachat.model.device import autocast_dtype
from personachat.model.loading import context_size

ROOT = Path(__file__).resolve().parents[1]
SPC = ROOT / "data" / "synthetic-persona-chat"
CANDIDATES = 20


def never_drawn(train_file: Path, config: Path) -> list[int]:
    """Indices of ``train_file``'s dialogs that the config's ``train_mix`` does not draw
    (all of them when the mix does not read that file)."""
    settings = load_config(str(config))
    total = len(read_dialogs(train_file))
    seed = settings.get("args", {}).get("manual_seed") or 0
    drawn: set[int] = set()
    for path, count in (settings.get("train_mix") or {}).items():
        if Path(path).resolve() == train_file.resolve() and count is not None:
            drawn = set(drawn_indices(total, count, seed, path))
        elif Path(path).resolve() == train_file.resolve():
            drawn = set(range(total))
    return [i for i in range(total) if i not in drawn]


def sweep(bot: ConvAIModel, dialogs: list[dict], weights: list[float]) -> dict[float, float]:
    """hits@1 of each weight over every utterance of ``dialogs`` (the gold reply last)."""
    utterances = [
        (d, u) for d, dialog in enumerate(dialogs) for u in range(len(dialog["utterances"]))
    ]
    scored = candidate_scores(
        bot.model,
        bot.special,
        bot._encode,
        dialogs,
        utterances,
        bot.args,
        bot.device,
        context_size(bot.model),
        CANDIDATES,
        dtype=autocast_dtype(bot.device, bot.args.fp16, bot.args.cpu_bf16),
        context_free=True,
    )
    gold = CANDIDATES - 1
    return {
        w: sum(pmi_pick(*scored[key], w) == gold for key in utterances) / len(utterances)
        for w in weights
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "outputs" / "quick"))
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quick.yaml")
    parser.add_argument("--choose-dialogs", type=int, default=6)
    parser.add_argument("--heldout-dialogs", type=int, default=10)
    parser.add_argument("--weights", default="0,0.25,0.5,0.75,1")
    options = parser.parse_args(argv)
    weights = [float(w) for w in options.weights.split(",")]
    bot = ConvAIModel("auto", options.model, use_cuda=False, args={"silent": True})

    train = with_candidates_to_rank(read_dialogs(SPC / "train.csv"), CANDIDATES, 42)
    unseen = never_drawn(SPC / "train.csv", options.config)
    choose = [train[i] for i in unseen[: options.choose_dialogs]]
    held = with_candidates_to_rank(read_dialogs(SPC / "heldout.csv"), CANDIDATES, 42)
    held = held[: options.heldout_dialogs]
    sets = {"training conversations never drawn": choose, "held-out conversations": held}
    figures = {name: sweep(bot, dialogs, weights) for name, dialogs in sets.items()}

    print(
        f"\n{date.today()} · {platform.processor() or platform.machine()} · torch "
        f"{torch.__version__} · model {options.model} · `python {' '.join(sys.argv)}`"
    )
    sizes = {name: sum(len(d["utterances"]) for d in dialogs) for name, dialogs in sets.items()}
    print("| weight | " + " | ".join(f"{n} ({sizes[n]})" for n in sets) + " |")
    print("|---:|" + "---:|" * len(sets))
    for w in weights:
        mark = " (the config's)" if w == PMI_WEIGHT else ""
        print(f"| {w:g}{mark} | " + " | ".join(f"{figures[n][w]:.3f}" for n in sets) + " |")
    best = max(weights, key=lambda w: figures["training conversations never drawn"][w])
    print(f"best on the training conversations: {best:g} (PMI_WEIGHT is {PMI_WEIGHT:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
