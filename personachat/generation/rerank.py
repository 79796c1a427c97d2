"""The best of several sampled replies: ``respond`` with ``rerank_samples`` > 1.

Each sample is scored by the multiple-choice head (the model's judgment of fit with persona
and history) plus the reply's mean log-likelihood per token, and the best is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from personachat.encoding.dataset import collate
from personachat.encoding.inputs import (
    IGNORE_INDEX,
    InputFormat,
    reply_history,
    truncate_to_fit,
)
from personachat.generation.generate import DecodingOptions, generate_reply
from personachat.model.device import to_device
from personachat.model.families import choice_head, lm_head, run_body
from personachat.model.loading import context_size


@torch.no_grad()
def score_replies(
    model,
    persona: Sequence[Sequence[int]],
    history: Sequence[Sequence[int]],
    replies: Sequence[Sequence[int]],
    special: InputFormat,
    max_history: int,
    device: torch.device | str = "cpu",
    max_history_tokens: int = 0,
) -> list[float]:
    """Multiple-choice logit + mean log-likelihood per token of each reply (with ``<eos>``).

    Length normalisation keeps short replies from winning just by having fewer tokens to pay
    for; the MC head adds the model's judgment of fit with persona and history.
    """
    history = reply_history(history, special, max_history, max_history_tokens)
    fit = context_size(model)
    inputs = [
        special.build(*truncate_to_fit(persona, history, r, fit, special.overheads), lm_labels=True)
        for r in replies
    ]
    batch = collate([{"candidates": inputs, "mc_label": 0}], special.pad)
    batch = to_device(batch, torch.device(device))
    hidden = run_body(model, batch["input_ids"], batch["token_type_ids"]).last_hidden_state
    mc_logits = choice_head(model)(hidden, batch["mc_token_ids"]).squeeze(-1)[0].float()
    log_probs = torch.log_softmax(lm_head(model)(hidden[0, :, :-1]).float(), dim=-1)
    targets = batch["lm_labels"][0, :, 1:]
    mask = targets != IGNORE_INDEX
    token_ll = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    mean_ll = token_ll.sum(-1) / mask.sum(-1).clamp(min=1)
    return (mc_logits + mean_ll).tolist()


def respond(
    model,
    persona: Sequence[Sequence[int]],
    history: Sequence[Sequence[int]],
    special: InputFormat,
    options: DecodingOptions,
    device: torch.device | str = "cpu",
) -> list[int]:
    """The bot's reply: one decoding pass, or with ``rerank_samples=N`` the best of N samples."""
    if options.rerank_samples <= 1:
        return generate_reply(model, persona, history, special, options, device)
    sampling = replace(options, do_sample=True, rerank_samples=0)
    samples = list(
        dict.fromkeys(
            tuple(generate_reply(model, persona, history, special, sampling, device))
            for _ in range(options.rerank_samples)
        )
    )
    scores = score_replies(
        model,
        persona,
        history,
        samples,
        special,
        options.max_history,
        device,
        options.max_history_tokens,
    )
    return list(samples[max(range(len(samples)), key=scores.__getitem__)])
