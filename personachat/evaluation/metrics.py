"""Evaluation: LM loss and perplexity of the gold replies, multiple-choice metrics, reply F1.

Every metric is computed over the whole evaluation set (token-weighted LM loss, MC
predictions pooled before F1), never as an average of per-batch values, which is what made
simpletransformers' ``f1_score`` depend on the batch size.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from personachat.encoding.inputs import IGNORE_INDEX
from personachat.model.loading import double_heads_loss


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


@torch.no_grad()
def evaluation_sums(
    model,
    batches: Iterable[dict[str, torch.Tensor]],
    lm_coef: float,
    mc_coef: float,
    device: torch.device,
    autocast_dtype=None,
    silent: bool = False,
) -> dict:
    """The additive part of an evaluation (loss sums, counts, labels and predictions in batch
    order): what processes that each evaluated a share of the data can add up."""
    model.eval()
    sums = {
        "lm_sum": 0.0,
        "lm_tokens": 0,
        "mc_sum": 0.0,
        "n_examples": 0,
        "labels": [],
        "preds": [],
    }
    for batch in tqdm(batches, desc="Evaluating", disable=silent, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            out = double_heads_loss(model, batch, lm_coef, mc_coef)
        sums["lm_sum"] += float(out.lm_loss_sum)
        sums["lm_tokens"] += out.lm_tokens
        batch_size = batch["mc_labels"].numel()
        sums["mc_sum"] += float(out.mc_loss) * batch_size
        sums["n_examples"] += batch_size
        sums["labels"] += batch["mc_labels"].tolist()
        sums["preds"] += out.mc_logits.argmax(dim=-1).tolist()
    return sums


def metrics_from_sums(sums: dict, lm_coef: float, mc_coef: float) -> dict:
    """The evaluation metrics of ``evaluation_sums`` (or of several added up)."""
    n_examples, labels, preds = sums["n_examples"], sums["labels"], sums["preds"]
    if n_examples == 0:
        raise ValueError("the evaluation data holds no utterances")
    lm_loss = sums["lm_sum"] / max(sums["lm_tokens"], 1)
    mc_loss = sums["mc_sum"] / n_examples
    return {
        "language_model_loss": lm_loss,
        "perplexity": math.exp(min(lm_loss, 50.0)),
        "mc_loss": mc_loss,
        "eval_loss": lm_coef * lm_loss + mc_coef * mc_loss,
        "f1_score": macro_f1(labels, preds),
        "hits@1": sum(y == p for y, p in zip(labels, preds, strict=True)) / n_examples,
        "num_examples": n_examples,
        "_labels": labels,
        "_preds": preds,
    }


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


RepliesFn = Callable[[list[tuple[list[str], list[str]]]], list[str]]
"""Answers a batch of (persona, history) conversations with one reply each."""


def reply_all(
    replies_fn: RepliesFn,
    conversations: Sequence[tuple[list[str], list[str]]],
    batch_size: int = 32,
    desc: str = "Generating",
    silent: bool = False,
) -> list[str]:
    """Replies to every conversation, ``batch_size`` at a time (one padded decoding call)."""
    replies: list[str] = []
    for start in tqdm(
        range(0, len(conversations), batch_size), desc=desc, disable=silent, leave=False
    ):
        replies += replies_fn(list(conversations[start : start + batch_size]))
    return replies


def generation_f1(
    replies_fn: RepliesFn, dialogs: Sequence[dict], limit: int | None = None, silent: bool = False
) -> float:
    """Mean word F1 of generated replies against the gold reply over the dialogs' utterances.

    ``limit`` caps the number of utterances.
    """
    items = [
        (d["personality"], u["history"], u["candidates"][-1])
        for d in dialogs
        for u in d["utterances"]
    ]
    items = items[:limit] if limit else items
    replies = reply_all(replies_fn, [(p, h) for p, h, _ in items], silent=silent)
    scores = [word_f1(reply, gold) for reply, (_, _, gold) in zip(replies, items, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


def format_results(results: dict) -> str:
    """simpletransformers' eval_results.txt format: ``key = value`` per line, sorted."""
    return "".join(f"{key} = {results[key]}\n" for key in sorted(results))


def mentions(reply: str, value: str) -> bool:
    """Whether the reply states the value as whole words ("tea" does not match "teacher")."""
    return re.search(rf"(?<!\w){re.escape(value.lower())}(?!\w)", reply.lower()) is not None


def probe_items(dialogs: Sequence[dict]) -> list[tuple[int, int, str]]:
    """(dialog index, utterance index, expected value) of every annotated persona probe."""
    return [
        (d, u, utt["probe"]["value"])
        for d, dialog in enumerate(dialogs)
        for u, utt in enumerate(dialog["utterances"])
        if isinstance(utt.get("probe"), dict) and isinstance(utt["probe"].get("value"), str)
    ]


def persona_accuracy(
    replies_fn: RepliesFn, dialogs: Sequence[dict], silent: bool = False
) -> float | None:
    """Share of probes whose reply contains the persona's value (None: no probes in data)."""
    probes = probe_items(dialogs)
    if not probes:
        return None
    conversations = [
        (dialogs[d]["personality"], dialogs[d]["utterances"][u]["history"]) for d, u, _ in probes
    ]
    replies = reply_all(replies_fn, conversations, desc="Persona probes", silent=silent)
    return sum(mentions(r, value) for r, (_, _, value) in zip(replies, probes, strict=True)) / len(
        probes
    )


def persona_hits_at_1(
    dialogs: Sequence[dict], index: Sequence[tuple], labels: Sequence[int], preds: Sequence[int]
) -> float | None:
    """MC accuracy restricted to probe utterances; ``index[i]`` = (dialog, utterance, …)."""
    probes = {(d, u) for d, u, _ in probe_items(dialogs)}
    picks = [
        y == p for (d, u, *_), y, p in zip(index, labels, preds, strict=True) if (d, u) in probes
    ]
    return sum(picks) / len(picks) if picks else None


def repetition_rate(replies_fn: RepliesFn, dialogs: Sequence[dict], silent: bool = False) -> float:
    """Share of the bot's replies that repeat one of its earlier replies in the same dialog.

    The bot talks to each dialog's partner messages with its *own* replies in the history
    (self-play against a scripted partner), which is where repetition shows up. All dialogs
    advance turn by turn together, so each turn is one batched decoding call.
    """
    histories: list[list[str]] = [[] for _ in dialogs]
    said: list[set[str]] = [set() for _ in dialogs]
    repeats = total = 0
    for turn in range(max((len(d["utterances"]) for d in dialogs), default=0)):
        active = [i for i, d in enumerate(dialogs) if turn < len(d["utterances"])]
        for i in active:
            history = dialogs[i]["utterances"][turn]["history"]
            histories[i].append(history[-1] if history else "")
        replies = reply_all(
            replies_fn,
            [(dialogs[i]["personality"], histories[i]) for i in active],
            desc=f"Self-play turn {turn + 1}",
            silent=silent,
        )
        for i, reply in zip(active, replies, strict=True):
            key = normalize_answer(reply)
            repeats += key in said[i]
            total += 1
            said[i].add(key)
            histories[i].append(reply)
    return repeats / total if total else 0.0


def without_persona(dialogs: Sequence[dict]) -> list[dict]:
    """The ablation: the same dialogs with every persona removed from the model's input."""
    return [{**dialog, "personality": []} for dialog in dialogs]
