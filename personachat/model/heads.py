"""The TransferTransfo loss: language modelling on the gold reply plus the multiple choice of
the gold reply among the candidates, for any model family (through ``families``' seam)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from personachat.encoding.inputs import IGNORE_INDEX
from personachat.model.families import choice_head, lm_head, run_body


@dataclass
class LossOutput:
    """Losses of one batch. Sums and counts are kept so a whole set can be averaged exactly."""

    loss: torch.Tensor
    lm_loss: torch.Tensor
    mc_loss: torch.Tensor
    lm_loss_sum: torch.Tensor
    lm_tokens: int
    mc_logits: torch.Tensor


def double_heads_loss(
    model, batch: dict[str, torch.Tensor], lm_coef: float, mc_coef: float
) -> LossOutput:
    """``lm_coef * lm_loss + mc_coef * mc_loss`` with the LM head only where labels exist.

    The transformer body runs on every candidate; the 50k-wide LM head runs only on positions
    whose next token is labelled (the gold reply), which gives the same loss as the full
    computation at a fraction of the FLOPs and memory.
    """
    # [batch, candidates, length, hidden]; the one call that differs between model families
    hidden = run_body(model, batch["input_ids"], batch["token_type_ids"]).last_hidden_state
    mc_logits = choice_head(model)(hidden, batch["mc_token_ids"]).squeeze(-1)
    mc_loss = F.cross_entropy(mc_logits.float(), batch["mc_labels"])

    # Hidden state at t predicts token t+1.
    targets = batch["lm_labels"][..., 1:]
    mask = targets != IGNORE_INDEX
    lm_tokens = int(mask.sum())
    if lm_tokens:
        logits = lm_head(model)(hidden[..., :-1, :][mask]).float()
        lm_loss_sum = F.cross_entropy(logits, targets[mask], reduction="sum")
    else:
        lm_loss_sum = hidden.sum() * 0.0  # keeps the graph; no labelled token in this batch
    lm_loss = lm_loss_sum / max(lm_tokens, 1)
    loss = lm_coef * lm_loss + mc_coef * mc_loss
    return LossOutput(loss, lm_loss, mc_loss, lm_loss_sum.detach(), lm_tokens, mc_logits)
