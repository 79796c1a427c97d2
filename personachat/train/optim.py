"""The optimizer and the learning-rate schedule, named as simpletransformers named them.

``optimizer``: ``AdamW`` (torch's, fused on CUDA) or ``Adafactor`` (transformers'), with no
weight decay on biases and LayerNorm weights either way. ``scheduler``: the transformers
schedules simpletransformers offered, plus ``reduce_on_plateau``. Every schedule is a
``LambdaLR``, so its state (and for ``reduce_on_plateau`` its halvings) is saved in the
checkpoint and a resumed run goes on with the learning rate an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
from functools import partial
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers.optimization import (
    Adafactor,
    AdafactorSchedule,
    get_constant_schedule,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_hard_restarts_schedule_with_warmup,
    get_polynomial_decay_schedule_with_warmup,
)

from personachat.args import OPTIMIZERS, SCHEDULERS, ArgsError, ConvAIArgs


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: decayed, and biases / LayerNorm weights (never
    decayed, as in the BERT and GPT recipes)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "ln" in name or "bias" in name else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def relative_step(args: ConvAIArgs) -> bool:
    """Adafactor setting its own step size: learning_rate and scheduler do not apply."""
    return args.optimizer == "Adafactor" and args.adafactor_relative_step


def make_optimizer(model, args: ConvAIArgs, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer ``args.optimizer`` names, over ``parameter_groups``."""
    groups = parameter_groups(model, args.weight_decay)
    if args.optimizer == "AdamW":
        return torch.optim.AdamW(
            groups, lr=args.learning_rate, eps=args.adam_epsilon, fused=device.type == "cuda"
        )
    if args.optimizer == "Adafactor":
        return Adafactor(
            groups,
            lr=None if args.adafactor_relative_step else args.learning_rate,
            eps=tuple(args.adafactor_eps),
            clip_threshold=args.adafactor_clip_threshold,
            decay_rate=args.adafactor_decay_rate,
            beta1=args.adafactor_beta1,
            weight_decay=args.weight_decay,
            scale_parameter=args.adafactor_scale_parameter,
            relative_step=args.adafactor_relative_step,
            warmup_init=args.adafactor_warmup_init,
        )
    raise ArgsError(f"optimizer {args.optimizer!r} is not known; choose one of {OPTIMIZERS}")


def warmup_steps(args: ConvAIArgs, total_steps: int) -> int:
    """warmup_steps if set, else warmup_ratio of the run (rounded up)."""
    return args.warmup_steps or math.ceil(total_steps * args.warmup_ratio)


def make_scheduler(optimizer, args: ConvAIArgs, total_steps: int) -> LambdaLR:
    """The schedule ``args.scheduler`` names, over ``total_steps`` optimizer steps."""
    if relative_step(args):
        return AdafactorSchedule(optimizer)  # reports the step size Adafactor chose
    warmup = warmup_steps(args, total_steps)
    if args.scheduler == "linear_schedule_with_warmup":
        return linear_schedule(optimizer, warmup, total_steps)
    if args.scheduler == "reduce_on_plateau":
        return LambdaLR(optimizer, PlateauFactor(warmup, args.plateau_patience))
    if args.scheduler == "polynomial_decay_schedule_with_warmup":
        check_polynomial_end(args)
    builders = {
        "constant_schedule": get_constant_schedule,
        "constant_schedule_with_warmup": partial(
            get_constant_schedule_with_warmup, num_warmup_steps=warmup
        ),
        "cosine_schedule_with_warmup": partial(
            get_cosine_schedule_with_warmup,
            num_warmup_steps=warmup,
            num_training_steps=total_steps,
            num_cycles=args.cosine_schedule_num_cycles,
        ),
        "cosine_with_hard_restarts_schedule_with_warmup": partial(
            get_cosine_with_hard_restarts_schedule_with_warmup,
            num_warmup_steps=warmup,
            num_training_steps=total_steps,
            num_cycles=args.cosine_schedule_num_cycles,
        ),
        "polynomial_decay_schedule_with_warmup": partial(
            get_polynomial_decay_schedule_with_warmup,
            num_warmup_steps=warmup,
            num_training_steps=total_steps,
            lr_end=args.polynomial_decay_schedule_lr_end,
            power=args.polynomial_decay_schedule_power,
        ),
    }
    if args.scheduler not in builders:
        raise ArgsError(f"scheduler {args.scheduler!r} is not known; choose one of {SCHEDULERS}")
    return builders[args.scheduler](optimizer)


def check_polynomial_end(args: ConvAIArgs) -> None:
    """The polynomial decay goes down from learning_rate to its lr_end, never up."""
    if not args.polynomial_decay_schedule_lr_end < args.learning_rate:
        raise ArgsError(
            f"polynomial_decay_schedule_lr_end ({args.polynomial_decay_schedule_lr_end}) must "
            f"be smaller than learning_rate ({args.learning_rate})"
        )


def linear_schedule(optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Learning rate rises linearly for warmup_steps, then falls linearly to 0 at total.

    Not transformers' ``get_linear_schedule_with_warmup``: its first step has a learning rate
    of 0 (a step that changes nothing); here warmup starts at 1/warmup_steps. Kept so that the
    default schedule, and every figure measured with it, stays as it was.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return LambdaLR(optimizer, factor)


class PlateauFactor:
    """``reduce_on_plateau``'s learning-rate factor: the linear warmup of the default schedule,
    then 1, halved whenever eval_loss has gone ``patience`` evaluations without a new best.

    A callable object rather than a function because ``LambdaLR`` saves such an object's
    attributes in its ``state_dict``: a resumed run keeps the halvings, the best loss and the
    count of evaluations since.
    """

    def __init__(self, warmup_steps: int, patience: int) -> None:
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.scale = 1.0
        self.best_loss: float | None = None
        self.evaluations_without_improvement = 0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.scale * (step + 1) / self.warmup_steps
        return self.scale

    def observe(self, loss: float) -> bool:
        """Take one evaluation's loss; True if the learning rate is halved because of it."""
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.evaluations_without_improvement = loss, 0
            return False
        self.evaluations_without_improvement += 1
        if self.evaluations_without_improvement < self.patience:
            return False
        self.scale /= 2
        self.evaluations_without_improvement = 0
        return True


def after_evaluation(optimizer, scheduler, results: dict, announce: bool) -> None:
    """reduce_on_plateau: count the evaluation, and halve the learning rate on a plateau."""
    plateau = next((f for f in getattr(scheduler, "lr_lambdas", []) if hasattr(f, "observe")), None)
    if plateau is None or not plateau.observe(float(results["eval_loss"])):
        return
    refresh_lr(optimizer, scheduler)
    if announce:
        print(
            f"reduce_on_plateau: eval_loss has not improved for {plateau.patience} "
            f"evaluations; learning rate halved to {scheduler.get_last_lr()[0]:.3g}"
        )


def refresh_lr(optimizer, scheduler: LambdaLR) -> None:
    """Set each group's learning rate to what the schedule says now (after its base or its
    factor changed between steps)."""
    for group, base, fn in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def adopt_learning_rate(optimizer, scheduler, learning_rate: float, announce: bool) -> None:
    """On resume, a learning_rate other than the checkpoint's replaces its peak (the schedule's
    shape and position stay): the way out of a NaN is resuming with a lower one. Adafactor's
    relative step has no learning rate to replace."""
    if isinstance(scheduler, AdafactorSchedule):
        return
    if all(math.isclose(base, learning_rate) for base in scheduler.base_lrs):
        return
    if announce:
        print(f"learning_rate {scheduler.base_lrs[0]:g} -> {learning_rate:g} from here on")
    scheduler.base_lrs = [learning_rate] * len(scheduler.base_lrs)
    for group in optimizer.param_groups:
        group["initial_lr"] = learning_rate
    refresh_lr(optimizer, scheduler)


# ----------------------------------------------------------------------------- saved state
def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """The optimizer's ``state_dict`` split into a JSON-able part and named tensors."""
    full = optimizer.state_dict()
    tensors, plain_state = {}, {}
    for index, values in full["state"].items():
        plain_state[str(index)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain_state[str(index)][name] = value
    return {"param_groups": full["param_groups"], "state": plain_state}, tensors


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, plain: dict, tensors: dict[str, torch.Tensor]
) -> None:
    """Inverse of ``optimizer_state``; ``load_state_dict`` moves tensors to the parameters'
    device and dtype."""
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def json_safe(values: dict) -> dict:
    """Keep only entries JSON can hold (a LambdaLR's functions are not saved by torch either)."""
    safe = {}
    for key, value in values.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        safe[key] = value
    return safe
