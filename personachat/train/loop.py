"""The training loop, read top to bottom: set up; resume or start clean; then epoch by epoch
one optimizer step at a time (its micro-batches, then clip and step), and after each step
log, save, evaluate and react to a signal; at each epoch's end samples, evaluation and a
checkpoint; finally the model.

One pass per epoch over length-grouped, shuffled batches (``encoding.batching``), a step
every ``gradient_accumulation_steps`` micro-batches. Under ``torchrun`` the same loop runs in
every process on its own share of each step's batch, with gradients averaged by DDP; rank 0
alone writes files and logs.

Runs survive faults: checkpoints hold everything needed to go on exactly where a run
stopped, down to the micro-batch within the epoch and the random generators, so a resumed
run ends with the weights an uninterrupted one would have. Ctrl-C or SIGTERM finishes the
step, writes such a checkpoint and stops; a NaN loss stops before it can reach a
checkpoint; a full disk or an unwritable folder is found before the first step (``preflight``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from personachat.args import ConvAIArgs
from personachat.fs import write_file_atomic
from personachat.model.device import autocast, to_device
from personachat.train import checkpoints, distributed, guard
from personachat.train.errors import TrainingError, TrainingInterrupted
from personachat.train.evaluating import evaluate_now
from personachat.train.lock import unlock_output_dir
from personachat.train.outputs import (
    draw_curves,
    log_step,
    save_checkpoint,
    save_model,
    write_samples,
)
from personachat.train.resume import resume, start_clean
from personachat.train.setup import set_up, tensorboard_writer
from personachat.train.state import Hooks, Run, StepStats, StopOnSignal


def train(
    model,
    tokenizer,
    train_dataset,
    args: ConvAIArgs,
    device: torch.device,
    output_dir: str,
    evaluate: Callable[[], dict] | None = None,
    show_running_loss: bool = True,
    save_extra: dict[str, str] | None = None,
    resume_from: str | Path | None = None,
    on_epoch_end: Callable[[str], None] | None = None,
) -> tuple[int, dict]:
    """Fine-tune ``model`` on ``train_dataset``; returns (global_step, training details).

    ``resume_from``: a checkpoint folder (``checkpoints.resolve_resume``) to go on from.
    ``on_epoch_end(heading)`` runs on rank 0 before training (fresh runs) and after every
    epoch, with the random generators saved around it (the samples writer). Under
    ``torchrun`` this joins the process group (unless the caller already did), trains with
    DDP, and leaves the group as it found it.
    """
    if len(train_dataset) == 0:
        raise TrainingError("the training data holds no utterances")
    if args.train_batch_size == "auto" and device.type != "cuda":
        raise TrainingError("train_batch_size='auto' needs a CUDA device; pass a number on CPU")
    hooks = Hooks(evaluate, on_epoch_end, save_extra, show_running_loss)
    ctx = distributed.setup(device.type)
    try:
        run = set_up(model, tokenizer, train_dataset, args, device, output_dir, ctx, hooks)
        return run_training(run, resume_from)
    finally:
        distributed.teardown(ctx)
        unlock_output_dir(output_dir)  # taken by preflight (check_before_training)


def run_training(run: Run, resume_from: str | Path | None) -> tuple[int, dict]:
    """The loop of ``train`` in this process (one of ``run.ctx.world_size``)."""
    args = run.args
    if resume_from is not None:
        resume(run, resume_from)
    else:
        start_clean(run)
    distributed.barrier(run.ctx)  # every process has passed check_output_dir before writes
    if run.ctx.is_main:
        purge_step = run.state.global_step + 1 if resume_from is not None else None
        run.writer = tensorboard_writer(args, run.out, purge_step)
    if resume_from is None:
        write_samples(run, "Before training (step 0)", fresh=True)
    run.started = time.perf_counter() - run.state.train_seconds
    stopper = StopOnSignal(announce=run.announce, saved=partial(saved_so_far, run))
    with stopper as stop, failures_explained(run):
        while not finished(run):
            train_epoch(run, stop)
            if not run.state.stopped_early:
                end_epoch(run, stop)
    return finish(run)


def finished(run: Run) -> bool:
    """Every epoch done, max_steps reached, or stopped early."""
    state = run.state
    done = state.epoch >= run.num_epochs or state.global_step >= run.total_steps
    return done or state.stopped_early


# ----------------------------------------------------------------------------- one epoch
def train_epoch(run: Run, stop: StopOnSignal) -> None:
    """The epoch's remaining steps; ends at once when early stopping decides so."""
    run.bar = open_epoch(run)
    for i, batch in enumerate(run.bar, start=run.state.batches_done):
        if not micro_step(run, i, batch):
            continue
        stats = optimizer_step(run, i)
        if after_step(run, stats, stop) or run.state.global_step >= run.total_steps:
            break
    run.bar.close()


def open_epoch(run: Run) -> tqdm:
    """The epoch's batches from where the run stands, under a progress bar."""
    state, args = run.state, run.args
    run.sampler.set_epoch(state.epoch)
    run.batches.skip = state.batches_done
    # iter(loader) draws a base seed from torch's generator. A checkpoint taken within an
    # epoch saved the generators after its epoch's draw, one at an epoch's start (signal or
    # save_model_every_epoch) before the next epoch's: restored on the same side of the
    # draw, dropout goes on as if never stopped.
    if run.restore_rng is not None and state.batches_done == 0:
        run.restore_rng()
        run.restore_rng = None
    batches = iter(run.loader)
    if run.restore_rng is not None:
        run.restore_rng()
        run.restore_rng = None
    return tqdm(
        batches,
        desc=f"Epoch {state.epoch + 1}/{run.num_epochs}",
        initial=state.batches_done,
        total=min(run.epoch_micro, state.batches_done + run.micro_left()),
        disable=args.silent or not run.ctx.is_main,
        leave=False,
    )


def micro_step(run: Run, i: int, batch: dict[str, torch.Tensor]) -> bool:
    """Forward and backward of micro-batch ``i`` of the epoch; True if it ends a step."""
    accumulation = run.plan.accumulation_steps
    in_last_step = i >= run.epoch_micro - run.last_step_micro
    step_ends = (i + 1) % accumulation == 0 or i + 1 == run.epoch_micro
    batch = to_device(batch, run.device)
    # Between step boundaries DDP skips its gradient all-reduce (forward and backward both
    # inside no_sync); the boundary's backward reduces the sum.
    sync = run.objective.no_sync() if run.ctx.enabled and not step_ends else nullcontext()
    with sync:
        with autocast(run.device, run.amp_dtype):
            out = run.forward(batch)
        loss = out.loss / (run.last_step_micro if in_last_step else accumulation)
        run.scaler.scale(loss).backward()
    run.sums.add(out, batch["input_ids"].numel())
    return step_ends


def optimizer_step(run: Run, i: int) -> StepStats:
    """Clip and step, unless the loss or the gradients are not finite (then stop before any
    weight changes). ``i``: the micro-batch that ended the step."""
    stats = run.sums.reduce(run.ctx)  # every process's losses: one all-reduce per step
    if not math.isfinite(stats.loss_sum):
        stop_non_finite(run, f"loss became {stats.loss_sum / stats.micro}")
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.args.max_grad_norm)
    if not run.scaler.is_enabled() and not math.isfinite(float(grad_norm)):
        # With a grad scaler inf gradients just skip the step; without one they would turn
        # every weight into NaN.
        stop_non_finite(run, f"the gradient norm became {float(grad_norm)}")
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    state = run.state
    state.global_step += 1
    state.batches_done = i + 1
    state.running += stats.loss_sum
    state.running_n += stats.micro
    state.tokens_seen += stats.tokens
    return dataclasses.replace(stats, grad_norm=grad_norm)


def after_step(run: Run, stats: StepStats, stop: StopOnSignal) -> bool:
    """Log, evaluate, save, react to a signal; True if early stopping ends training.

    The evaluation comes before the checkpoint of the same step: the checkpoint then holds
    its result (best metric, early-stopping and plateau counts) and the random generators
    after it, and a run resumed from it goes on exactly as the uninterrupted one.
    """
    args, step = run.args, run.state.global_step
    log_step(run, stats)
    every = args.evaluate_during_training_steps
    evaluating = run.hooks.evaluate and args.evaluate_during_training and every > 0
    stopping = bool(evaluating and step % every == 0 and evaluate_now(run))
    if args.save_steps > 0 and step % args.save_steps == 0:
        save_checkpoint(run, f"checkpoint-{step}")
    if stopping:
        return True
    react_to_signal(run, stop)
    return False


def end_epoch(run: Run, stop: StopOnSignal) -> None:
    """Samples and evaluation, then the epoch counts as done (and is checkpointed)."""
    args, state = run.args, run.state
    epoch = state.epoch
    write_samples(run, f"After epoch {epoch + 1} (step {state.global_step})")
    if run.hooks.evaluate and args.evaluate_during_training and args.evaluate_each_epoch:
        evaluate_now(run)
    state.epoch, state.batches_done = epoch + 1, 0
    if args.save_model_every_epoch:
        save_checkpoint(run, f"checkpoint-{state.global_step}-epoch-{epoch + 1}")
    if not state.stopped_early:
        react_to_signal(run, stop)


# ----------------------------------------------------------------------------- stopping
def react_to_signal(run: Run, stop: StopOnSignal) -> None:
    """At a step boundary: on a signal (in any process), checkpoint and raise
    TrainingInterrupted."""
    requested = distributed.broadcast_flag(stop.requested is not None, run.ctx, run.device)
    if not requested:
        return
    path = save_checkpoint(run, f"checkpoint-{run.state.global_step}", resumable=True)
    draw_curves(run, final=True)
    if run.writer:
        run.writer.close()
    if run.bar is not None:
        run.bar.close()  # cleared (leave=False), so the message that follows reads well
    distributed.barrier(run.ctx)
    raise TrainingInterrupted(stop.requested or "SIGTERM", run.state.global_step, path)


def saved_so_far(run: Run) -> str:
    """What a run stopped at once has saved, and what it has not (the second signal's line)."""
    last, step = run.last_checkpoint, run.state.global_step
    if run.args.no_save or last.path is None:
        return f"Nothing of this run is saved (no checkpoint written; step {step} reached)."
    at = last.at[0] if last.at else (checkpoints.read_marker(last.path) or {}).get("global_step")
    return (
        f"Saved: {last.path} (step {at}), which --resume (resume_from_checkpoint=True) goes "
        f"on from. Not saved: the training after step {at} (now at step {step})."
    )


def stop_non_finite(run: Run, what: str) -> None:
    """Stop on a NaN/inf before the optimizer step, so no checkpoint ever holds its damage."""
    draw_curves(run, final=True)  # the curves up to the last good step
    raise guard.diverged(run, what)


@contextmanager
def failures_explained(run: Run) -> Iterator[None]:
    """A TrainingError carries what was done so far (for report.md); CUDA running out of
    memory becomes one that says how to fit."""
    try:
        yield
    except TrainingError as err:
        err.details = dict(run.state.history, train_seconds=run.seconds())
        raise
    except torch.OutOfMemoryError as err:
        raise TrainingError(
            f"CUDA out of memory at step {run.state.global_step + 1} with micro-batches of "
            f"{run.plan.micro_batch_size} examples x {run.args.num_candidates} candidates: "
            "set train_batch_size='auto' (finds the largest micro-batch that fits and "
            "reaches the same effective batch with gradient accumulation), or a smaller "
            "train_batch_size with a larger gradient_accumulation_steps; fp16=True also "
            "saves memory."
        ) from err


# ----------------------------------------------------------------------------- the end
def finish(run: Run) -> tuple[int, dict]:
    """The final model, its history and curves; every process returns after they are saved."""
    state = run.state
    state.train_seconds = run.seconds()
    draw_curves(run, final=True)
    guard.check_weights(run, "writing the final model")  # a diverged run never "finishes"
    if not run.args.no_save and run.ctx.is_main:
        save_model(run, run.out)
        write_file_atomic(
            run.out / "training_progress_scores.json", json.dumps(state.history, indent=2)
        )
    if run.writer:
        run.writer.close()
    distributed.barrier(run.ctx)
    details = dict(
        state.history, stopped_early=state.stopped_early, train_seconds=state.train_seconds
    )
    return state.global_step, details
