"""Evaluation: LM loss and perplexity of the gold replies, multiple-choice metrics, reply F1.

Every metric is computed over the whole evaluation set (token-weighted LM loss, MC
predictions pooled before F1), never as an average of per-batch values, which is what made
simpletransformers' ``f1_score`` depend on the batch size.

Two figures are the ones the field reports (ConvAI2, TransferTransfo), so they compare:

- ``hits@1`` ranks the gold reply among ``eval_num_candidates`` candidates (every candidate
  the data has by default: 20 on Persona-Chat), whatever ``num_candidates`` training used;
- ``word_perplexity`` is the summed negative log-likelihood of the gold replies divided by
  their number of words (ConvAI2-normalised, :func:`normalize_answer`). ``perplexity`` is
  the same per BPE token, which depends on the tokenizer and so compares only between
  models that share one.

Metrics of generated replies live in :mod:`.replies`, those of persona use in :mod:`.persona`.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from personachat.encoding.inputs import IGNORE_INDEX, EncodingError
from personachat.fs import write_file_atomic
from personachat.model.device import autocast, to_device
from personachat.model.heads import double_heads_loss


def macro_f1(labels: Sequence[int], preds: Sequence[int]) -> float:
    """Macro-averaged F1 over every class seen in labels or preds (sklearn's definition,
    with 0 for a class that has no true or no predicted instance)."""
    if not labels:
        return 0.0
    classes = sorted(set(labels) | set(preds))
    scores = []
    for c in classes:
        tp = sum(1 for y, p in zip(labels, preds, strict=True) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, preds, strict=True) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, preds, strict=True) if y == c and p != c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Punctuation becomes a space, as in ParlAI's metric ("i'm" -> "i m"), not deleted.
_PUNCT = str.maketrans(string.punctuation, " " * len(string.punctuation))


def normalize_answer(text: str) -> str:
    """ConvAI2 normalisation: lowercase, strip punctuation and articles, squeeze spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def word_f1(prediction: str, gold: str) -> float:
    """Word-overlap F1 between a generated reply and the gold reply (ConvAI2 metric)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# On the CPU a batch is scored at most this many candidate inputs at a time: with 20
# candidates, eval_batch_size 8 is 160 sequences, whose activations would take gigabytes.
CPU_MAX_SEQUENCES = 64


def evaluate_batches(
    model,
    batches: Iterable[dict[str, torch.Tensor]],
    lm_coef: float,
    mc_coef: float,
    device: torch.device,
    autocast_dtype=None,
    silent: bool = False,
) -> dict:
    """Loss and MC metrics over all batches. Returns metrics plus raw labels/preds."""
    return metrics_from_sums(
        evaluation_sums(model, batches, lm_coef, mc_coef, device, autocast_dtype, silent),
        lm_coef,
        mc_coef,
    )


def split_batch(batch: dict[str, torch.Tensor], max_sequences: int | None) -> list[dict]:
    """``batch`` cut along its examples so that each part holds at most ``max_sequences``
    candidate inputs (at least one example each); the whole batch when it fits or when
    ``max_sequences`` is None. Losses are sums, so the parts add up to the batch."""
    input_ids = batch.get("input_ids")
    if max_sequences is None or input_ids is None or input_ids.dim() < 3:
        return [batch]
    examples, candidates = input_ids.shape[:2]
    per_part = max(1, max_sequences // candidates)
    if examples <= per_part:
        return [batch]
    return [
        {key: value[start : start + per_part] for key, value in batch.items()}
        for start in range(0, examples, per_part)
    ]


@torch.no_grad()
def evaluation_sums(
    model,
    batches: Iterable[dict[str, torch.Tensor]],
    lm_coef: float,
    mc_coef: float,
    device: torch.device,
    autocast_dtype=None,
    silent: bool = False,
    max_sequences: int | None = -1,
) -> dict:
    """The additive part of an evaluation (loss sums, counts, labels and predictions in batch
    order): what processes that each evaluated a share of the data can add up.

    ``max_sequences``: candidate inputs per forward pass (see :func:`split_batch`); the
    default -1 means :data:`CPU_MAX_SEQUENCES` on the CPU and no limit elsewhere."""
    if max_sequences == -1:
        max_sequences = CPU_MAX_SEQUENCES if device.type == "cpu" else None
    model.eval()
    sums = {
        "lm_sum": 0.0,
        "lm_tokens": 0,
        "mc_sum": 0.0,
        "n_examples": 0,
        "labels": [],
        "preds": [],
    }
    for whole in tqdm(batches, desc="Evaluating", disable=silent, leave=False):
        for batch in split_batch(whole, max_sequences):
            batch = to_device(batch, device)
            with autocast(device, autocast_dtype):
                out = double_heads_loss(model, batch, lm_coef, mc_coef)
            sums["lm_sum"] += float(out.lm_loss_sum)
            sums["lm_tokens"] += out.lm_tokens
            batch_size = batch["mc_labels"].numel()
            sums["mc_sum"] += float(out.mc_loss) * batch_size
            sums["n_examples"] += batch_size
            sums["labels"] += batch["mc_labels"].tolist()
            sums["preds"] += out.mc_logits.argmax(dim=-1).tolist()
    return sums


def hits_at_1(labels: Sequence[int], preds: Sequence[int]) -> float:
    """Share of examples whose top-scored candidate is the gold one."""
    if not labels:
        return 0.0
    return sum(y == p for y, p in zip(labels, preds, strict=True)) / len(labels)


def capped_exp(nats: float) -> float:
    """``exp(nats)``, capped at ``exp(50)`` so that a diverged model still reports a number."""
    return math.exp(min(nats, 50.0))


def metrics_from_sums(
    sums: dict, lm_coef: float, mc_coef: float, reply_words: int | None = None
) -> dict:
    """The evaluation metrics of ``evaluation_sums`` (or of several added up).

    ``reply_words``: the number of words of the evaluated gold replies
    (:func:`reply_word_count`); with it, ``word_perplexity`` is reported too."""
    n_examples, labels, preds = sums["n_examples"], sums["labels"], sums["preds"]
    if n_examples == 0:
        raise ValueError("the evaluation data holds no utterances")
    lm_loss = sums["lm_sum"] / max(sums["lm_tokens"], 1)
    mc_loss = sums["mc_sum"] / n_examples
    results = {
        "language_model_loss": lm_loss,
        "perplexity": capped_exp(lm_loss),
        "mc_loss": mc_loss,
        "eval_loss": lm_coef * lm_loss + mc_coef * mc_loss,
        "f1_score": macro_f1(labels, preds),
        "hits@1": hits_at_1(labels, preds),
        "num_examples": n_examples,
    }
    if reply_words:
        results["word_perplexity"] = word_perplexity(sums["lm_sum"], reply_words)
    return {**results, "_labels": labels, "_preds": preds}


def word_perplexity(nll_sum: float, words: int) -> float:
    """ConvAI2's perplexity: ``exp(summed NLL of the gold replies / their number of words)``.

    The NLL is summed over every predicted token of the replies (``<eos>`` included, as
    ParlAI counts its end token), so a tokenizer that cuts words into more pieces pays for
    each piece but is divided by the same number of words: figures compare across
    tokenizers."""
    if words <= 0:
        raise ValueError("word perplexity needs at least one word")
    return capped_exp(nll_sum / words)


def reply_word_count(dialogs: Sequence[dict], index: Iterable[Sequence]) -> int:
    """Words of the gold replies of the examples ``index`` lists (``(dialog, utterance,
    ...)`` each, as a dataset's ``index``), counted after ConvAI2 normalisation."""
    words: dict[tuple[int, int], int] = {}
    total = 0
    for d, u, *_ in index:
        if (d, u) not in words:
            gold = dialogs[d]["utterances"][u]["candidates"][-1]
            words[d, u] = len(normalize_answer(gold).split())
        total += words[d, u]
    return total


def merge_sums(shares: Sequence[tuple[Sequence[int], dict]], total: int) -> dict:
    """Add up ``evaluation_sums`` of processes that each evaluated the examples at the given
    indexes; labels and predictions come back in example order, as one process makes them."""
    merged = {"lm_sum": 0.0, "lm_tokens": 0, "mc_sum": 0.0, "n_examples": 0}
    labels: list[int | None] = [None] * total
    preds: list[int | None] = [None] * total
    for indexes, sums in shares:
        for key in merged:
            merged[key] += sums[key]
        for index, label, pred in zip(indexes, sums["labels"], sums["preds"], strict=True):
            labels[index], preds[index] = label, pred
    if any(label is None for label in labels):
        raise RuntimeError("an evaluation share is missing")  # a bug, not a user error
    return {**merged, "labels": labels, "preds": preds}


def gold_reply_tokens(dataset: Sequence[dict]) -> Iterable[list[int]]:
    """The tokens the LM loss is computed on, per example: the gold reply and ``<eos>``."""
    for i in range(len(dataset)):
        gold = dataset[i]["candidates"][-1]
        yield [t for t in gold["lm_labels"] if t != IGNORE_INDEX]


def unigram_baseline_loss(train: Sequence[dict], eval_: Sequence[dict], vocab_size: int) -> float:
    """LM loss (nats per token) of a context-free unigram model on ``eval_``'s gold replies.

    The unigram distribution is fit on ``train``'s gold-reply tokens with add-one smoothing
    over the whole vocabulary; it is the loss a model reaches by ignoring persona and history
    altogether, so a trained model must do better to show it reads its context. Measured on
    exactly the tokens ``language_model_loss`` is measured on (same tokenizer, same layout).
    """
    counts = Counter(t for tokens in gold_reply_tokens(train) for t in tokens)
    total = sum(counts.values()) + vocab_size
    loss, n = 0.0, 0
    for tokens in gold_reply_tokens(eval_):
        for t in tokens:
            loss -= math.log((counts[t] + 1) / total)
            n += 1
    if n == 0:
        raise ValueError("the evaluation data holds no gold-reply tokens")
    return loss / n


def apply_metric_fns(labels: list[int], preds: list[int], metric_fns: dict[str, Callable]) -> dict:
    """simpletransformers' extra metrics: each ``fn(labels, preds)`` on the MC predictions."""
    return {name: fn(labels, preds) for name, fn in metric_fns.items()}


def format_results(results: dict) -> str:
    """simpletransformers' eval_results.txt format: ``key = value`` per line, sorted."""
    return "".join(f"{key} = {results[key]}\n" for key in sorted(results))


def evaluation_folder(
    output_dir: str | os.PathLike | None, eval_file: str | os.PathLike | None, model_dir: str
) -> Path:
    """Where ``eval_model`` writes its results: ``output_dir`` when given, else
    ``<model_dir>/eval/<eval file's stem>/``. A folder holding a saved model (its
    ``config.json``) gets them in its own ``eval/<stem>/``: a model's ``eval_results.json`` is
    what its training measured, the figures its card publishes, and is never overwritten by a
    later evaluation."""
    stem = Path(str(eval_file)).stem if eval_file else "personachat-valid"
    folder = Path(output_dir) if output_dir else Path(model_dir) / "eval" / stem
    if (folder / "config.json").is_file():
        folder = folder / "eval" / stem
    return folder


def write_results(output_dir: str | os.PathLike, results: dict) -> None:
    """``eval_results.txt`` (simpletransformers' format) and ``eval_results.json``."""
    output_dir = Path(output_dir)
    write_file_atomic(output_dir / "eval_results.txt", format_results(results))
    write_file_atomic(output_dir / "eval_results.json", json.dumps(results, indent=2))


def eval_num_candidates(dialogs: Sequence[dict], requested: int | None, source: str) -> int:
    """How many candidates hits@1 ranks the gold reply among: ``requested``, or, when None,
    every candidate the data has (the fewest any utterance has: batches need one count).

    A ``requested`` count larger than the data has is an EncodingError saying how many
    there are."""
    counts = [
        (len(u["candidates"]), d, j)
        for d, dialog in enumerate(dialogs)
        for j, u in enumerate(dialog["utterances"])
    ]
    if not counts:
        raise EncodingError(f"{source}: no utterances to evaluate")
    fewest, d, j = min(counts)
    if requested is None or requested <= fewest:
        return fewest if requested is None else requested
    most = max(n for n, _, _ in counts)
    have = (
        f"every utterance has {fewest} candidates"
        if most == fewest
        else f"utterances have {fewest} to {most} candidates (dialog {d}, utterance {j} "
        f"has {fewest})"
    )
    raise EncodingError(
        f"{source}: eval_num_candidates={requested} but {have} — set eval_num_candidates "
        f"to at most {fewest}, or leave it unset to rank among every candidate the data has"
    )
