"""What ``personachat train`` and ``eval`` print: the results, persona use side by side
(before and after fine-tuning, on every held-out file, with the persona removed) and a
short demo chat."""

from __future__ import annotations

import time
from pathlib import Path

from personachat.data.readers import read_dialogs


def demo_conversation(model, eval_file: str, turns: int = 4) -> None:
    """Print a short chat: the first eval dialog's persona and its partner's messages."""
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
    for utterance in dialog["utterances"][:turns]:
        message = utterance["history"][-1]
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
    if before:
        columns.insert(0, "zero-shot accuracy")
        for name, values in rows.items():
            values["zero-shot accuracy"] = before.get(name, {}).get("persona_accuracy")
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


def headline_rows(results: dict) -> list[tuple[str, str]]:
    """The figures a conversation model is judged by, as (label, value) rows: ConvAI2's
    triple (per-word perplexity, hits@1, generation F1), then persona accuracy, history
    recall and repetition, each where the evaluation measured it."""
    candidates = results.get("eval_num_candidates")
    ranking = {"lm": "language model", "mc": "multiple-choice head"}.get(results.get("ranking"))
    decoding = results.get("generation_f1_decoding", "")
    labels = {
        "word_perplexity": "perplexity per word",
        "hits@1": f"hits@1 among {candidates} ({ranking})",
        "generation_f1": f"generation F1 ({decoding})",
        "persona_accuracy": "persona accuracy",
        "history_recall": "history recall",
        "repetition_rate": "replies repeating an earlier one",
        "repeat_previous_rate": "replies repeating the previous one",
    }
    return [(label, f"{results[key]:.3f}") for key, label in labels.items() if key in results]


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
