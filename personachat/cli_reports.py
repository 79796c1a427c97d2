"""What ``personachat train`` and ``eval`` print: the results, persona use side by side
(before and after fine-tuning, on every held-out file, with the persona removed) and a
short demo chat."""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from personachat.data.readers import read_dialogs
from personachat.evaluation.ranking import RANKING_NAMES

# The demo chat: the persona's own facts, then a fact of the user's and questions that can
# only be answered from the conversation (what the user said, what the bot said, what the
# user asked first). Not an evaluation: history_valid.json measures the same on held-out text.
DEMO_MESSAGES = (
    "Hi! What do you do for a living?",
    "Nice. My dog is called Biscuit, and I live in Porto.",
    "What do you like to do on weekends?",
    "Do you have any pets?",
    "Sorry, what was my dog's name again?",
    "And what did you say you do for a living?",
    "What did I ask you first?",
)


def demo_conversation(model, eval_file: str, messages=DEMO_MESSAGES) -> None:
    """Print a chat with the first eval dialog's persona, the whole conversation in view."""
    dialog = read_dialogs(  # skipped dialogs were reported by the evaluation
        eval_file,
        format=model.args.data_format,
        split="valid",
        skip_invalid=model.args.skip_invalid,
        allow_empty_personality=model.args.allow_empty_personality,
        report=lambda _: None,
    )[0]
    print("\nPersona:", " ".join(dialog["personality"]))
    history: list[str] = []
    for message in messages:
        reply, history = model.interact_single(message, history, dialog["personality"])
        print(f"  user: {message}\n  bot:  {reply}")


def zero_shot(model, settings: dict) -> dict[str, dict] | None:
    """With ``zero_shot: true``: the model's persona figures before any fine-tuning."""
    if not (settings["zero_shot"] and settings["eval_file"]):
        return None
    started = time.perf_counter()
    rows = persona_rows(model, settings, None)
    print(f"Zero-shot persona evaluation: {time.perf_counter() - started:.0f} s")
    return rows


def persona_rows(model, settings: dict, results: dict | None) -> dict[str, dict]:
    """Persona figures of every evaluation the config names: ``eval_file`` (``results``, or
    replies only when None), the extra held-out files and the persona ablation (full
    evaluations written to OUTPUT_DIR/eval_<label>/, or replies only with ``persona_only``)."""
    out = Path(model.args.output_dir)
    only = settings["persona_only"] or results is None

    def evaluate(path: str, label: str, ablate: bool = False) -> dict:
        if only:
            return model.persona_eval(path, ablate_persona=ablate)
        return model.eval_model(
            path,
            output_dir=str(out / f"eval_{label}"),
            verbose=False,
            silent=True,
            ablate_persona=ablate,
        )

    eval_file = settings["eval_file"]
    rows = {eval_file: results if results is not None else model.persona_eval(eval_file)}
    for label, path in settings["extra_eval_files"].items():
        rows[f"{path} ({label})"] = evaluate(path, label)
    if settings["ablation_eval"]:
        rows[f"{eval_file} with the persona removed"] = evaluate(eval_file, "ablation", True)
    return rows


def report_persona_use(
    model, settings: dict, results: dict, before: dict[str, dict] | None = None
) -> None:
    """Print the persona metrics of every evaluation side by side; ``before``: the same
    model's figures before fine-tuning (the zero-shot column)."""
    rows = persona_rows(model, settings, results)
    if len(rows) == 1 and "persona_accuracy" not in results:
        return
    columns = [
        "persona_accuracy",
        "persona_contradiction_rate",
        "persona_hits@1",
        "hits@1",
        "language_model_loss",
    ]
    if any("history_recall" in values for values in rows.values()):
        columns.insert(1, "history_recall")
    if before:  # the zero-shot figure of each row: its persona accuracy, or history recall
        columns.insert(0, "zero-shot")
        for name, values in rows.items():
            earlier = before.get(name, {})
            values["zero-shot"] = earlier.get("persona_accuracy", earlier.get("history_recall"))
    width = {c: max(20, len(c) + 2) for c in columns}
    candidates = results.get("eval_num_candidates", model.args.num_candidates)
    if candidates > 1:
        print(f"\nPersona use (hits@1 among {candidates} candidates, chance {1 / candidates:.2f}):")
    else:  # one candidate (eval_num_candidates: 1): nothing was ranked
        columns = [c for c in columns if "hits@1" not in c]
        print("\nPersona use (one candidate per utterance: no hits@1):")
    print(f"  {'evaluation':50s}" + "".join(f"{c:>{width[c]}s}" for c in columns))
    for name, values in rows.items():
        cells = "".join(
            f"{values[c]:>{width[c]}.3f}"
            if isinstance(values.get(c), float)
            else "-".rjust(width[c])
            for c in columns
        )
        print(f"  {name[-50:]:50s}{cells}")


def headline_labels(results: dict, ranking_named: bool = True) -> dict[str, str]:
    """The figures a conversation model is judged by, result name → label: ConvAI2's triple
    (per-word perplexity, hits@1, generation F1), then persona accuracy, history recall and
    repetition, each where the evaluation measured it."""
    candidates = results.get("eval_num_candidates")
    ranking = RANKING_NAMES.get(results.get("ranking"))
    decoding = results.get("generation_f1_decoding", "")
    labels = {
        "word_perplexity": "perplexity per word",
        "hits@1": f"hits@1 among {candidates}" + (f" ({ranking})" if ranking_named else ""),
        "generation_f1": f"generation F1 ({decoding})",
        "persona_accuracy": "persona accuracy",
        "history_recall": "history recall",
        "repetition_rate": "replies repeating an earlier one",
        "repeat_previous_rate": "replies repeating the previous one",
    }
    return {key: label for key, label in labels.items() if key in results}


def headline_rows(results: dict) -> list[tuple[str, str]]:
    """``headline_labels`` as (label, value) rows."""
    return [(label, f"{results[key]:.3f}") for key, label in headline_labels(results).items()]


def print_results(results: dict, eval_file: str | None = None) -> None:
    """The headline figures as a table, then every result."""
    rows = headline_rows(results)
    if rows:
        print(
            f"\nEvaluation of {eval_file or 'the eval file'} ({results.get('num_examples')} "
            "utterances):"
        )
        width = max(len(label) for label, _ in rows)
        print(f"  | {'figure':{width}s} | value |\n  |{'-' * (width + 2)}|------:|")
        for label, value in rows:
            print(f"  | {label:{width}s} | {value} |")
    print("\nAll results:" if rows else "Evaluation:")
    for key, value in results.items():
        print(f"  {key:22s} {value:.4f}" if isinstance(value, float) else f"  {key:22s} {value}")


@contextmanager
def options_set(args, **values):
    """``args`` with ``values`` set for the block, put back after it."""
    before = {name: getattr(args, name) for name in values}
    for name, value in values.items():
        setattr(args, name, value)
    try:
        yield args
    finally:
        for name, value in before.items():
            setattr(args, name, value)


def conversation_figures(model, settings: dict, output_dir: str | None = None) -> dict | None:
    """With ``conversation_eval`` in the config: the figures real conversations are judged
    by (perplexity per word, hits@1 among ``candidates``, generation F1, the repetition
    rates) on its first ``dialogs`` dialogs; results go to ``output_dir`` (None: nowhere)."""
    spec = settings.get("conversation_eval")
    if not spec:
        return None
    limits = {"eval_num_candidates": spec["candidates"], "max_eval_examples": spec["dialogs"]}
    with options_set(model.args, **limits), tempfile.TemporaryDirectory() as scratch:
        return model.eval_model(
            spec["file"],
            output_dir=output_dir or scratch,
            verbose=False,
            silent=True,
            generation_f1=True,
            repetition_rate=True,
        )


def report_conversations(settings: dict, after: dict | None, before: dict | None) -> None:
    """Print the conversation figures before (zero-shot) and after fine-tuning, row by row
    (the ranking each hits@1 used is named under the table)."""
    if after is None:
        return
    spec = settings["conversation_eval"]
    labels = headline_labels(after, ranking_named=False)
    print(
        f"\nReal conversations ({spec['file']}, first {spec['dialogs']} dialogs, "
        f"{after.get('num_examples')} replies; never trained on):"
    )
    width = max(map(len, labels.values()))
    print(f"  | {'figure':{width}s} | zero-shot | fine-tuned |")
    print(f"  |{'-' * (width + 2)}|----------:|-----------:|")
    for key, label in labels.items():
        zero = f"{before[key]:.3f}" if before and key in before else "-"
        print(f"  | {label:{width}s} | {zero:>9s} | {after[key]:>10.3f} |")
    rankings = [
        "the " + RANKING_NAMES[r["ranking"]] for r in (before or {}, after) if r.get("ranking")
    ]
    if rankings:
        print("  hits@1 ranked by " + ", then by ".join(rankings))
