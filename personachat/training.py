"""The training loop: AdamW, linear warmup/decay, accumulation, clipping, mixed precision.

The loop is written out rather than hidden behind callbacks: one pass per epoch over a
shuffled DataLoader, a gradient step every ``gradient_accumulation_steps`` batches, and at
the step boundaries the optional extras (logging, evaluation, checkpoints, early stopping).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .args import ConvAIArgs
from .encoding import collate
from .modeling import double_heads_loss, save_pretrained_atomic


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
    """Fine-tune ``model`` on ``train_dataset``; returns (global_step, training details)."""
    if len(train_dataset) == 0:
        raise TrainingError("the training data holds no utterances")
    if args.train_batch_size == "auto":
        raise TrainingError("train_batch_size='auto' needs a CUDA device; pass a number on CPU")
    generator = torch.Generator().manual_seed(args.manual_seed or 0)
    loader = torch.utils.data.DataLoader(
        train_dataset, batch_size=args.train_batch_size, shuffle=True, generator=generator,
        collate_fn=partial(collate, pad_id=tokenizer.pad_token_id),
        num_workers=args.dataloader_num_workers,
    )
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    total_steps = steps_per_epoch * args.num_train_epochs
    warmup = args.warmup_steps or math.ceil(total_steps * args.warmup_ratio)
    optimizer = make_optimizer(model, args, device)
    scheduler = linear_schedule(optimizer, warmup, total_steps)
    amp_dtype = autocast_dtype(device, args.fp16)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    writer = tensorboard_writer(args, output_dir)
    state = TrainingState()
    save = partial(save_pretrained_atomic, tokenizer=tokenizer, args=args, extra_files=save_extra)

    model.to(device).train()
    running, running_n, tokens_seen, started = 0.0, 0, 0, time.perf_counter()
    for epoch in range(args.num_train_epochs):
        state.epoch = epoch + 1
        bar = tqdm(loader, desc=f"Epoch {epoch + 1}/{args.num_train_epochs}",
                   disable=args.silent, leave=False)
        for i, batch in enumerate(bar):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                out = double_heads_loss(model, batch, args.lm_coef, args.mc_coef)
            loss = out.loss / args.gradient_accumulation_steps
            if not torch.isfinite(out.loss):
                raise TrainingError(
                    f"loss became {float(out.loss)} at step {state.global_step} (epoch "
                    f"{epoch + 1}); lower learning_rate (now {args.learning_rate}) or check "
                    "the data. The last saved checkpoint is untouched."
                )
            scaler.scale(loss).backward()
            running += float(out.loss.detach())
            running_n += 1
            tokens_seen += int(batch["input_ids"].numel())
            if (i + 1) % args.gradient_accumulation_steps and i + 1 != len(loader):
                continue

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
                writer.add_scalar("lm_loss", float(out.lm_loss.detach()), step)
                writer.add_scalar("mc_loss", float(out.mc_loss.detach()), step)
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
                if eval_and_maybe_stop(evaluate, state, args, model, save, writer):
                    break
        bar.close()
        if state.stopped_early:
            break
        if args.save_model_every_epoch and not args.no_save:
            save(Path(output_dir) / f"checkpoint-{state.global_step}-epoch-{epoch + 1}", model)
        if evaluate and args.evaluate_during_training and args.evaluate_each_epoch:
            if eval_and_maybe_stop(evaluate, state, args, model, save, writer):
                break

    if not args.no_save:
        save(output_dir, model)
        (Path(output_dir) / "training_progress_scores.json").write_text(
            json.dumps(state.history, indent=2), encoding="utf-8")
    if writer:
        writer.close()
    details = dict(state.history, stopped_early=state.stopped_early,
                   train_seconds=time.perf_counter() - started)
    return state.global_step, details


def eval_and_maybe_stop(evaluate: Callable[[], dict], state: TrainingState, args: ConvAIArgs,
                        model, save: Callable, writer) -> bool:
    """Evaluate, keep the best model, and say whether early stopping should end training."""
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
        if not args.silent:
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
