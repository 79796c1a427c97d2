"""A short language-model pretraining for models built from scratch.

Why: a real GPT-2 arrives from its pretraining already able to *copy* — attention heads that
find an earlier occurrence of a pattern and repeat what followed it ("induction heads"). That
is what makes a fine-tuned persona bot state its persona's facts. A randomly initialised
model has to discover copying during fine-tuning, and there the signal is thin: one gold
reply per example carries the loss, and the few value tokens in it are all that reward
copying. On the offline persona benchmark, 750 fine-tuning steps from random weights never
got there (persona_accuracy ≈ 0.01).

So the scratch model first learns the language of its training dialogs as a plain causal LM
over whole dialogs (persona + every turn, in the TransferTransfo layout with speaker tokens,
every token labelled). Each dialog restates its persona several times, so every sequence
holds many copy events, and all of its tokens carry loss: copying is learned in a few hundred
cheap steps. This stands in for GPT-2's pretraining; fine-tuning then proceeds exactly as
from ``gpt2``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from personachat.data.dialogs import DataError
from personachat.encoding.inputs import (
    IGNORE_INDEX,
    SpecialIds,
    TextEncoder,
    build_input_from_segments,
    truncate_to_fit,
)
from personachat.model.families import lm_head, run_body
from personachat.model.loading import context_size


def dialog_sequences(
    dialogs: Sequence[dict], tokenizer, special: SpecialIds, max_tokens: int
) -> list[dict[str, list[int]]]:
    """Each dialog as one input: persona, then every turn (partner and bot), bot last."""
    encode = TextEncoder(tokenizer)  # each distinct string tokenized once, in batches
    encode.prime(
        t
        for d in dialogs
        for u in d["utterances"][-1:]
        for t in [*d["personality"], *u["history"], u["candidates"][-1]]
    )
    sequences = []
    for dialog in dialogs:
        if not dialog["utterances"]:
            continue
        last = dialog["utterances"][-1]
        turns = [encode(t) for t in [*last["history"], last["candidates"][-1]]]
        persona = [encode(s) for s in dialog["personality"]]
        persona, history, reply = truncate_to_fit(persona, turns[:-1], turns[-1], max_tokens)
        sequences.append(build_input_from_segments(persona, history, reply, special))
    return sequences


def pretrain_language_model(
    model,
    tokenizer,
    dialogs: Sequence[dict],
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    seed: int = 0,
    silent: bool = False,
) -> list[float]:
    """Train ``model`` (a GPT-2 double-heads model) as a causal LM on whole ``dialogs`` for
    ``steps`` AdamW steps (linear warmup over the first 10%, then linear decay). Returns the
    loss of every step."""
    special = SpecialIds.from_tokenizer(tokenizer)
    sequences = dialog_sequences(dialogs, tokenizer, special, context_size(model))
    if not sequences:
        raise DataError(
            "pretraining needs at least one dialog with an utterance; the training file has "
            "none — add dialogs to it, or set scratch: pretrain_steps: 0"
        )
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps)
    )
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="Pretraining (LM on whole dialogs)", disable=silent, leave=False)
    for _ in bar:
        batch = [sequences[rng.randrange(len(sequences))] for _ in range(batch_size)]
        width = max(len(s["input_ids"]) for s in batch)

        def pad(key: str, value: int, batch=batch, width=width) -> torch.Tensor:
            return torch.tensor([s[key] + [value] * (width - len(s[key])) for s in batch])

        ids, types = pad("input_ids", special.pad), pad("token_type_ids", special.pad)
        labels = ids.masked_fill(ids == special.pad, IGNORE_INDEX)
        hidden = run_body(model, ids, types).last_hidden_state
        logits = lm_head(model)(hidden[:, :-1])
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
