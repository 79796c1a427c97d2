"""A model's evaluation on a set of examples: every figure ``eval_model`` reports.

The losses, perplexities and multiple-choice figures from one pass over the examples
(``metrics``; shared out over torchrun processes during training), then what needs replies:
persona figures on probed utterances (``persona``), generation F1 and repetition
(``replies``). The model facade builds the examples and the reply function; nothing here
tokenizes or decodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from personachat.encoding.dataset import collate
from personachat.evaluation.metrics import (
    apply_metric_fns,
    evaluation_sums,
    hits_at_1,
    merge_sums,
    metrics_from_sums,
    reply_word_count,
)
from personachat.evaluation.persona import (
    history_recall,
    persona_hits_at_1,
    persona_scores,
    probe_items,
    without_persona,
)
from personachat.evaluation.ranking import LM_RANKINGS
from personachat.evaluation.replies import decoding_label, generation_f1, repetition_rates
from personachat.model.device import autocast_dtype
from personachat.train import distributed
from personachat.train.errors import EvaluationInterrupted
from personachat.train.setup import resolve_eval_batch_size
from personachat.train.state import stop_requested


def evaluation_losses(
    model,
    dataset,
    dialogs: Sequence[dict],
    args,
    device: torch.device,
    pad_id: int,
    *,
    silent: bool = True,
    shard: bool = False,
) -> tuple[dict, list[int], list[int]]:
    """LM and multiple-choice metrics over ``dataset`` (the examples of ``dialogs``).
    Returns (results, labels, preds). ``shard``: under torchrun, every process computes the
    losses of its share of the examples and they are added up (every rank must call it then,
    as training's evaluations do); the results are the same."""
    batch_size = resolve_eval_batch_size(model, dataset, args, device, pad_id)
    ctx = distributed.joined_context() if shard else distributed.DistContext()
    indexes = range(ctx.rank, len(dataset), ctx.world_size)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indexes) if ctx.enabled else dataset,
        batch_size=batch_size,
        pin_memory=device.type == "cuda",
        collate_fn=partial(collate, pad_id=pad_id),
    )
    sums = evaluation_sums(
        model,
        StopBetweenBatches(loader, ctx, device, len(dataset) // ctx.world_size, batch_size),
        args.lm_coef,
        args.mc_coef,
        device,
        autocast_dtype(device, args.fp16, args.cpu_bf16),
        silent=silent,
    )
    if ctx.enabled:
        sums = merge_sums(distributed.gather_objects((list(indexes), sums), ctx), len(dataset))
    words = reply_word_count(dialogs, dataset.index)
    results = metrics_from_sums(sums, args.lm_coef, args.mc_coef, words)
    return results, results.pop("_labels"), results.pop("_preds")


# Figures of a ranking of the candidates (all of them: of the multiple-choice head).
RANKING_FIGURES = ("hits@1", "f1_score", "mc_loss")
MC_HEAD_FIGURES = ("f1_score", "mc_loss")


def ranked_results(
    results: dict,
    labels: list[int],
    preds: list[int],
    ranking: str | None,
    head_trained: bool,
    metric_fns: dict[str, Callable] | None = None,
) -> dict:
    """``results`` with the ranking figures that mean something.

    ``ranking`` (``ranking.resolve_ranking``): None when each utterance had one candidate:
    nothing was ranked, so hits@1, ``f1_score``, ``mc_loss`` and the ``metric_fns`` (which
    read the rankings) are left out rather than reported as 1.0 and 0 by construction.
    ``"lm"``/``"pmi"``: hits@1 of the language model's ranking (``labels``/``preds``); no head figures
    (the losses then run over the gold reply alone). ``"mc"``: the head's, as simpletransformers reported
    them. The ranking used is recorded as ``results["ranking"]``."""
    results = dict(results)
    if ranking is None:
        for key in RANKING_FIGURES:
            results.pop(key, None)
        return results
    results["ranking"] = ranking
    results["hits@1"] = hits_at_1(labels, preds)
    if ranking in LM_RANKINGS:  # the losses ran over the gold reply alone: no head figures
        for key in MC_HEAD_FIGURES:
            results.pop(key, None)
    results.update(apply_metric_fns(labels, preds, metric_fns or {}))
    return results


class StopBetweenBatches:
    """The loader's batches, until a signal asks the training in progress to stop
    (``stop_requested``): then EvaluationInterrupted at the next batch instead of waiting
    for the whole evaluation. Under torchrun the processes agree on it at each batch they
    all have (``least`` examples each, in batches of ``batch_size``), so all stop together."""

    def __init__(self, loader, ctx, device: torch.device, least: int, batch_size: int) -> None:
        self.loader, self.ctx, self.device = loader, ctx, device
        self.shared = -(-least // batch_size)  # batches every process has

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            stop = stop_requested()
            if self.ctx.enabled:
                stop = i < self.shared and distributed.broadcast_flag(stop, self.ctx, self.device)
            if stop:
                raise EvaluationInterrupted("evaluation interrupted by a signal")
            yield batch


def reply_metrics(
    reply: Callable[[list], list[str]],
    decoding,
    dialogs: Sequence[dict],
    index,
    labels,
    preds,
    *,
    silent: bool = True,
    generation: bool = False,
    repetition: bool = False,
) -> dict:
    """The figures that need replies (``reply``, decoding with options ``decoding``):
    persona figures when the dialogs have probes, generation F1 and repetition on request.
    ``index``, ``labels`` and ``preds``: the examples' index and ranking results (None when
    nothing was ranked)."""
    if stop_requested() and not distributed.joined_context().enabled:
        raise EvaluationInterrupted("evaluation interrupted by a signal")
    results = {}
    if probe_items(dialogs):
        if preds is not None:  # None: nothing was ranked
            results["persona_hits@1"] = persona_hits_at_1(dialogs, index, labels, preds)
        scores = persona_scores(reply, dialogs, silent=silent)
        results.update({k: v for k, v in scores.items() if v is not None})
    if generation:
        results["generation_f1"] = generation_f1(reply, dialogs, silent=silent)
        results["generation_f1_decoding"] = decoding_label(decoding)
    recall = history_recall(reply, dialogs, silent=silent)
    if recall is not None:
        results["history_recall"] = recall
    if repetition:
        results.update(repetition_rates(reply, dialogs, silent=silent))
    return results


def persona_only(
    reply: Callable[[list], list[str]], dialogs: Sequence[dict], silent: bool, ablate: bool
) -> dict:
    """Persona figures (and ``history_recall`` where the data has history probes) of the
    replies ``reply(conversations)`` gives to the probes of ``dialogs`` (every persona
    removed with ``ablate``): no losses."""
    dialogs = without_persona(dialogs) if ablate else dialogs
    results = persona_scores(reply, dialogs, silent=silent)
    recall = history_recall(reply, dialogs, silent=silent)
    if recall is not None:
        results["history_recall"] = recall
    return results
