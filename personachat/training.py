"""The training loop: AdamW, linear warmup/decay, accumulation, clipping, mixed precision.

The loop is written out rather than hidden behind callbacks: one pass per epoch over
length-grouped, shuffled batches (``batching``), a gradient step every
``gradient_accumulation_steps`` micro-batches, and at the step boundaries the optional extras
(logging, evaluation, checkpoints, early stopping). Under ``torchrun`` the same loop runs in
every process on its own share of each step's batch, with gradients averaged by DDP; rank 0
alone writes files and logs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from .args import ConvAIArgs
from .autobatch import (
    DEFAULT_MARGIN,
    BatchPlan,
    plan_batches,
    probe_eval_batch,
    probe_train_micro_batch,
)
from .batching import LengthGroupedBatchSampler
from .distributed import DistContext
from .encoding import collate
from .modeling import LossOutput, double_heads_loss, save_pretrained_atomic


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


def check_output_dir(output_dir: str | Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder (hidden files such as .gitkeep do not count)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise TrainingError(f"output_dir {str(path)!r} is a file, not a folder")
    if path.is_dir() and any(not p.name.startswith(".") for p in path.iterdir()) and not overwrite:
        raise TrainingError(
            f"Output directory ({path}) already exists and is not empty. "
            "Set overwrite_output_dir=True (--overwrite-output-dir) to overwrite it, "
            "or choose another output_dir."
        )


def autocast_dtype(device: torch.device, fp16: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; None (full precision) on CPU or fp16=False."""
    if device.type != "cuda" or not fp16:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def configure_cuda_math() -> None:
    """TF32 tensor cores for the float32 matmuls left outside autocast (10-bit mantissa,
    ample for training; cuDNN already allows TF32 by default)."""
    torch.set_float32_matmul_precision("high")


class TrainingObjective(torch.nn.Module):
    """The model and its TransferTransfo loss as one module whose ``forward`` is the loss.

    Why a module: ``double_heads_loss`` calls ``model.transformer``, the MC head and the LM
    head directly (to run the LM head on labelled positions only), never ``model.forward``.
    DDP only synchronises gradients for work done inside *its own* ``forward``: that call is
    what arms its reducer for the next backward, and a backward through a DDP-wrapped model
    whose forward was bypassed leaves every process with its own unsynchronised gradients,
    silently. Wrapping this module instead (``DDP(TrainingObjective(model))``) puts the whole
    loss computation inside DDP's forward. ``torch.compile`` wraps it for the same reason, and
    the plain ``model`` (what evaluation, generation and saving use) stays unwrapped.
    """

    def __init__(self, model: torch.nn.Module, lm_coef: float, mc_coef: float) -> None:
        super().__init__()
        self.model = model
        self.lm_coef = lm_coef
        self.mc_coef = mc_coef

    def forward(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        return double_heads_loss(self.model, batch, self.lm_coef, self.mc_coef)


def batch_plan(objective: torch.nn.Module, dataset, args: ConvAIArgs, device: torch.device,
               amp_dtype: torch.dtype | None, ctx: DistContext, collate_fn) -> BatchPlan:
    """Micro-batch and accumulation: as given, or probed on the GPU for ``"auto"``."""
    if args.train_batch_size != "auto":
        return BatchPlan(args.train_batch_size, args.gradient_accumulation_steps, ctx.world_size)
    if device.type != "cuda":
        raise TrainingError("train_batch_size='auto' needs a CUDA device; pass a number on CPU")
    per_process = math.ceil(args.auto_batch_target / ctx.world_size)
    fitting = probe_train_micro_batch(objective, dataset, collate_fn, device, amp_dtype,
                                      upper=per_process)
    # Every process must run the same number of micro-batches per step.
    fitting = distributed.all_reduce_min(fitting, ctx, device)
    if fitting < 1:
        raise TrainingError(
            f"not even one example of the longest input ({max(dataset.lengths)} tokens per "
            f"candidate, {args.num_candidates} candidates) fits in GPU memory for training; "
            "use a smaller model, fewer num_candidates, or a GPU with more memory")
    plan = plan_batches(fitting, args.auto_batch_target, ctx.world_size)
    if ctx.is_main and not args.silent:
        print(f"train_batch_size='auto': micro-batches of up to {fitting} fit on the longest "
              f"inputs ({max(dataset.lengths)} tokens x {args.num_candidates} candidates) "
              f"with {DEFAULT_MARGIN:.0%} of GPU memory to spare; using {plan.micro_batch_size} "
              f"x {plan.accumulation_steps} accumulation step(s) x {plan.world_size} "
              f"process(es) = {plan.effective_batch_size} examples per step "
              f"(auto_batch_target={args.auto_batch_target})")
    return plan


def resolve_eval_batch_size(model, dataset, args: ConvAIArgs, device: torch.device,
                            pad_id: int) -> int:
    """``eval_batch_size`` as given, or for ``"auto"`` the largest batch whose forward pass
    fits on the GPU with the longest inputs of ``dataset``."""
    if args.eval_batch_size != "auto":
        return args.eval_batch_size
    if device.type != "cuda":
        raise ValueError("eval_batch_size='auto' needs a CUDA device; pass a number on CPU")
    objective = TrainingObjective(model, args.lm_coef, args.mc_coef)
    size = probe_eval_batch(objective, dataset, partial(collate, pad_id=pad_id), device,
                            autocast_dtype(device, args.fp16))
    if size < 1:
        raise ValueError("not even one evaluation example of the longest input fits in GPU "
                         "memory; use a smaller model or fewer num_candidates")
    if not args.silent and distributed.is_main_process():
        print(f"eval_batch_size='auto': {size} (longest input {max(dataset.lengths)} tokens)")
    return size


def make_optimizer(model, args: ConvAIArgs, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights (as in BERT/GPT recipes)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "ln" in name or "bias" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, eps=args.adam_epsilon,
                             fused=device.type == "cuda")


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    """Learning rate rises linearly for warmup_steps, then falls linearly to 0 at total."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainingState:
    """What the loop tracks between steps; returned to the caller as training details."""

    global_step: int = 0
    epoch: int = 0
    best_metric: float | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: dict[str, list] = field(default_factory=lambda: {"global_step": [], "train_loss": []})

    def record(self, values: dict) -> None:
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)


def train(model, tokenizer, train_dataset, args: ConvAIArgs, device: torch.device,
          output_dir: str, evaluate: Callable[[], dict] | None = None,
          show_running_loss: bool = True, save_extra: dict[str, str] | None = None
          ) -> tuple[int, dict]:
    """Fine-tune ``model`` on ``train_dataset``; returns (global_step, training details).

    Under ``torchrun`` this joins the process group (unless the caller already did), trains
    with DDP, and leaves the group as it found it.
    """
    if len(train_dataset) == 0:
        raise TrainingError("the training data holds no utterances")
    if args.train_batch_size == "auto" and device.type != "cuda":
        raise TrainingError("train_batch_size='auto' needs a CUDA device; pass a number on CPU")
    ctx = distributed.setup(device.type)
    try:
        return run_training(model, tokenizer, train_dataset, args, device, output_dir, ctx,
                            evaluate, show_running_loss, save_extra)
    finally:
        distributed.teardown(ctx)


def run_training(model, tokenizer, train_dataset, args: ConvAIArgs, device: torch.device,
                 output_dir: str, ctx: DistContext, evaluate: Callable[[], dict] | None = None,
                 show_running_loss: bool = True, save_extra: dict[str, str] | None = None
                 ) -> tuple[int, dict]:
    """The loop of ``train`` in this process (one of ``ctx.world_size``)."""
    if device.type == "cuda":
        if ctx.enabled or device.index is None:  # under torchrun: LOCAL_RANK's GPU
            device = torch.device("cuda", torch.cuda.current_device())
        configure_cuda_math()
    if ctx.enabled and args.manual_seed is not None:
        torch.manual_seed(args.manual_seed + ctx.rank)  # independent dropout per process
    model.to(device).train()
    amp_dtype = autocast_dtype(device, args.fp16)
    objective = TrainingObjective(model, args.lm_coef, args.mc_coef)
    pad = partial(collate, pad_id=tokenizer.pad_token_id)
    plan = batch_plan(objective, train_dataset, args, device, amp_dtype, ctx, pad)
    accumulation = plan.accumulation_steps
    sampler = LengthGroupedBatchSampler(
        len(train_dataset), plan.micro_batch_size, accumulation,
        lengths=getattr(train_dataset, "lengths", None) if args.group_by_length else None,
        seed=args.manual_seed or 0, world_size=ctx.world_size, rank=ctx.rank)
    loader = torch.utils.data.DataLoader(
        train_dataset, batch_sampler=sampler, collate_fn=pad,
        num_workers=args.dataloader_num_workers, pin_memory=device.type == "cuda",
    )
    if ctx.enabled:
        # gradient_as_bucket_view: gradients live in DDP's buckets, no second copy (the
        # memory the batch-size probe accounted for). GPT-2 has no buffers to broadcast.
        objective = DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    # Shapes change every batch (dynamic padding): compile for dynamic shapes from the start.
    forward = torch.compile(objective, dynamic=True) if args.compile else objective
    if ctx.is_main and ctx.enabled and not args.silent:
        print(f"DDP: {ctx.world_size} processes x {plan.micro_batch_size} examples x "
              f"{accumulation} accumulation step(s) = {plan.effective_batch_size} per step")

    steps_per_epoch = sampler.steps_per_epoch
    total_steps = steps_per_epoch * args.num_train_epochs
    warmup = args.warmup_steps or math.ceil(total_steps * args.warmup_ratio)
    optimizer = make_optimizer(model, args, device)
    scheduler = linear_schedule(optimizer, warmup, total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    # Every process has passed check_output_dir before rank 0 writes anything.
    distributed.barrier(ctx)
    writer = tensorboard_writer(args, output_dir) if ctx.is_main else None
    state = TrainingState()
    save_files = partial(save_pretrained_atomic, tokenizer=tokenizer, args=args,
                         extra_files=save_extra)

    def save(path, model) -> None:
        if ctx.is_main:
            save_files(path, model)

    running, running_n, tokens_seen, started = 0.0, 0, 0, time.perf_counter()
    step_losses = torch.zeros(3, device=device)  # loss, lm_loss, mc_loss summed over micro
    step_micro, step_tokens = 0, 0
    # The last step of an epoch may hold fewer micro-batches; its loss is averaged over those.
    last_step_micro = len(loader) - (steps_per_epoch - 1) * accumulation
    for epoch in range(args.num_train_epochs):
        state.epoch = epoch + 1
        sampler.set_epoch(epoch)
        bar = tqdm(loader, desc=f"Epoch {epoch + 1}/{args.num_train_epochs}",
                   disable=args.silent or not ctx.is_main, leave=False)
        for i, batch in enumerate(bar):
            in_last_step = i >= len(loader) - last_step_micro
            step_ends = (i + 1) % accumulation == 0 or i + 1 == len(loader)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            # Between step boundaries DDP skips its gradient all-reduce (forward and backward
            # both inside no_sync); the boundary's backward reduces the accumulated sum.
            with (objective.no_sync() if ctx.enabled and not step_ends else nullcontext()):
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    out = forward(batch)
                loss = out.loss / (last_step_micro if in_last_step else accumulation)
                scaler.scale(loss).backward()
            # Kept on the device: no GPU->CPU sync per micro-batch, one per step below.
            step_losses += torch.stack([out.loss, out.lm_loss, out.mc_loss]).detach().float()
            step_micro += 1
            step_tokens += batch["input_ids"].numel()
            if not step_ends:
                continue

            # Step statistics of all processes (one all-reduce of 5 numbers per step).
            totals = torch.cat([step_losses, torch.tensor([step_micro, step_tokens],
                                                          dtype=torch.float32, device=device)])
            loss_sum, lm_sum, mc_sum, micro_all, tokens_all = distributed.all_reduce_sum(
                totals, ctx).tolist()
            step_losses.zero_()
            step_micro, step_tokens = 0, 0
            if not math.isfinite(loss_sum):
                raise TrainingError(
                    f"loss became {loss_sum / micro_all} at step {state.global_step + 1} "
                    f"(epoch {epoch + 1}); lower learning_rate (now {args.learning_rate}) or "
                    "check the data. The last saved checkpoint is untouched."
                )
            running += loss_sum
            running_n += int(micro_all)
            tokens_seen += int(tokens_all)

            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            step = state.global_step

            if show_running_loss and not args.silent:
                bar.set_postfix(loss=f"{running / running_n:.3f}")
            if writer and step % max(1, args.logging_steps) == 0:
                elapsed = time.perf_counter() - started
                writer.add_scalar("loss", running / running_n, step)
                writer.add_scalar("lm_loss", lm_sum / micro_all, step)
                writer.add_scalar("mc_loss", mc_sum / micro_all, step)
                writer.add_scalar("lr", scheduler.get_last_lr()[0], step)
                writer.add_scalar("grad_norm", float(grad_norm), step)
                writer.add_scalar("tokens_per_s", tokens_seen / max(elapsed, 1e-9), step)
            if step % max(1, args.logging_steps) == 0 or step == total_steps:
                state.record({"global_step": step, "train_loss": running / running_n})
                running, running_n = 0.0, 0
            if args.save_steps > 0 and step % args.save_steps == 0 and not args.no_save:
                save(Path(output_dir) / f"checkpoint-{step}", model)
            if (evaluate and args.evaluate_during_training
                    and args.evaluate_during_training_steps > 0
                    and step % args.evaluate_during_training_steps == 0):
                if eval_and_maybe_stop(evaluate, state, args, model, save, writer, ctx, device):
                    break
        bar.close()
        if state.stopped_early:
            break
        if args.save_model_every_epoch and not args.no_save:
            save(Path(output_dir) / f"checkpoint-{state.global_step}-epoch-{epoch + 1}", model)
        if evaluate and args.evaluate_during_training and args.evaluate_each_epoch:
            if eval_and_maybe_stop(evaluate, state, args, model, save, writer, ctx, device):
                break

    if not args.no_save and ctx.is_main:
        save(output_dir, model)
        (Path(output_dir) / "training_progress_scores.json").write_text(
            json.dumps(state.history, indent=2), encoding="utf-8")
    if writer:
        writer.close()
    distributed.barrier(ctx)  # nobody returns before the model is saved
    details = dict(state.history, stopped_early=state.stopped_early,
                   train_seconds=time.perf_counter() - started)
    return state.global_step, details


def eval_and_maybe_stop(evaluate: Callable[[], dict], state: TrainingState, args: ConvAIArgs,
                        model, save: Callable, writer, ctx: DistContext | None = None,
                        device: torch.device | None = None) -> bool:
    """Evaluate, keep the best model, and say whether early stopping should end training.

    Under DDP every process evaluates the same weights on the whole evaluation set, and rank
    0's decision is broadcast: processes that stopped at different steps would hang.
    """
    stop = evaluate_and_decide(evaluate, state, args, model, save, writer)
    if ctx is not None and device is not None:
        stop = distributed.broadcast_flag(stop, ctx, device)
    state.stopped_early = stop
    return state.stopped_early


def evaluate_and_decide(evaluate: Callable[[], dict], state: TrainingState, args: ConvAIArgs,
                        model, save: Callable, writer) -> bool:
    """One evaluation: record it, save the best model, and decide on early stopping."""
    results = evaluate()
    model.train()
    numeric = {k: v for k, v in results.items() if isinstance(v, int | float)}
    state.record({f"eval_{k}" if not k.startswith("eval_") else k: v for k, v in numeric.items()})
    if writer:
        for key, value in numeric.items():
            writer.add_scalar(f"eval/{key}", value, state.global_step)
    metric_name = args.early_stopping_metric
    if metric_name not in results:
        raise TrainingError(
            f"early_stopping_metric {metric_name!r} is not an evaluation result; "
            f"choose one of {sorted(numeric)}"
        )
    value = float(results[metric_name])
    better = (state.best_metric is None or
              (state.best_metric - value > args.early_stopping_delta
               if args.early_stopping_metric_minimize
               else value - state.best_metric > args.early_stopping_delta))
    if better:
        state.best_metric = value
        state.evals_without_improvement = 0
        if args.save_best_model and not args.no_save:
            save(args.best_model_dir, model)
        return False
    state.evals_without_improvement += 1
    if args.use_early_stopping and state.evals_without_improvement >= args.early_stopping_patience:
        if not args.silent and distributed.is_main_process():
            print(f"Early stopping: {metric_name} has not improved for "
                  f"{state.evals_without_improvement} evaluations (best {state.best_metric:.4f}).")
        state.stopped_early = True
        return True
    return False


def tensorboard_writer(args: ConvAIArgs, output_dir: str):
    """A SummaryWriter in tensorboard_dir (default: OUTPUT_DIR/runs), or None if unavailable."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    log_dir = args.tensorboard_dir or str(Path(output_dir) / "runs")
    return SummaryWriter(log_dir=log_dir)
