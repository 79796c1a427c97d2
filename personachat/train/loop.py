"""The training loop, read top to bottom: set up; resume or start clean; then epoch by epoch
one optimizer step at a time (``train_epoch``: its micro-batches, clip and step, then log,
evaluate, save and react to a signal); at each epoch's end samples, evaluation and a
checkpoint; finally the model.

Where the run stands is one ``TrainingState`` (``run.state``: what a checkpoint saves), and
only this file changes it: the helpers it calls (``outputs``, ``evaluating``, ``resume``)
return what they found, and the loop takes it in. What the caller adds (evaluation, the
samples, a per-step callback) comes in as named ``TrainingHooks``.

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
    StepLog,
    draw_curves,
    log_step,
    rotate,
    save_checkpoint,
    save_model,
    write_samples,
)
from personachat.train.resume import resume, start_clean
from personachat.train.setup import set_up, tensorboard_writer
from personachat.train.state import (
    LastCheckpoint,
    Run,
    StepStats,
    StopOnSignal,
    TrainingHooks,
    TrainingState,
)


def train(
    model,
    tokenizer,
    train_dataset,
    args: ConvAIArgs,
    device: torch.device,
    output_dir: str,
    hooks: TrainingHooks | None = None,
    *,
    save_extra: dict[str, str] | None = None,
    show_running_loss: bool = True,
    resume_from: str | Path | None = None,
) -> tuple[int, dict]:
    """Fine-tune ``model`` on ``train_dataset``; returns (global_step, training details).

    ``hooks``: evaluation, the samples writer and a per-step callback (``TrainingHooks``).
    ``save_extra``: files written beside every saved model. ``resume_from``: a checkpoint
    folder (``checkpoints.resolve_resume``) to go on from. Under ``torchrun`` this joins the
    process group (unless the caller already did), trains with DDP, and leaves the group as
    it found it.
    """
    if len(train_dataset) == 0:
        raise TrainingError("the training data holds no utterances")
    if args.train_batch_size == "auto" and device.type != "cuda":
        raise TrainingError("train_batch_size='auto' needs a CUDA device; pass a number on CPU")
    hooks = hooks or TrainingHooks()
    ctx = distributed.setup(device.type)
    try:
        run = set_up(model, tokenizer, train_dataset, args, device, output_dir, ctx, hooks)
        run = dataclasses.replace(run, save_extra=save_extra, show_running_loss=show_running_loss)
        return run_training(run, resume_from)
    finally:
        distributed.teardown(ctx)
        unlock_output_dir(output_dir)  # taken by preflight (check_before_training)


def run_training(run: Run, resume_from: str | Path | None) -> tuple[int, dict]:
    """The loop of ``train`` in this process (one of ``run.ctx.world_size``)."""
    run, restore_rng = begin(run, resume_from)
    stopper = StopOnSignal(announce=run.announce, saved=partial(saved_so_far, run))
    with stopper as stop, failures_explained(run):
        while not finished(run):
            train_epoch(run, stop, restore_rng)
            restore_rng = None  # put back once, in the epoch the checkpoint was taken in
            if not run.state.stopped_early:
                end_epoch(run, stop)
    return finish(run)


def begin(run: Run, resume_from: str | Path | None) -> tuple[Run, Callable[[], None] | None]:
    """The run as it starts: a checkpoint's state (and a way to put its random generators
    back) or a clean start; the TensorBoard writer; the samples before training."""
    state, restore_rng, last = TrainingState(), None, LastCheckpoint()
    if resume_from is not None:
        resumed = resume(run, resume_from)
        state, restore_rng = resumed.state, resumed.restore_rng
        last = LastCheckpoint(path=resumed.checkpoint)
    else:
        start_clean(run)
    distributed.barrier(run.ctx)  # every process has passed check_output_dir before writes
    writer = None
    if run.ctx.is_main:
        purge_step = state.global_step + 1 if resume_from is not None else None
        writer = tensorboard_writer(run.args, run.out, purge_step)
    if resume_from is None:
        write_samples(run, "Before training (step 0)", fresh=True)
    started = time.perf_counter() - state.train_seconds
    run = dataclasses.replace(run, state=state, last_checkpoint=last, writer=writer)
    return dataclasses.replace(run, started=started), restore_rng


def finished(run: Run) -> bool:
    """Every epoch done, max_steps reached, or stopped early."""
    state = run.state
    done = state.epoch >= run.num_epochs or state.global_step >= run.total_steps
    return done or state.stopped_early


# ----------------------------------------------------------------------------- one epoch
def train_epoch(run: Run, stop: StopOnSignal, restore_rng: Callable[[], None] | None) -> None:
    """The epoch's remaining steps; ends at once when early stopping decides so."""
    args, state, hooks = run.args, run.state, run.hooks
    accumulation, epoch_micro = run.plan.accumulation_steps, run.epoch_micro
    every = args.evaluate_during_training_steps
    evaluating = hooks.on_evaluate and args.evaluate_during_training and every > 0
    bar = open_epoch(run, restore_rng)
    for i, batch in enumerate(bar, start=state.batches_done):
        # Forward and backward of one micro-batch; the last step of an epoch may hold fewer
        # of them, and its loss is averaged over those.
        in_last_step = i >= epoch_micro - run.last_step_micro
        step_ends = (i + 1) % accumulation == 0 or i + 1 == epoch_micro
        batch = to_device(batch, run.device)
        # Between step boundaries DDP skips its gradient all-reduce (forward and backward
        # both inside no_sync); the boundary's backward reduces the sum.
        sync = run.objective.no_sync() if run.ctx.enabled and not step_ends else nullcontext()
        with sync:
            with autocast(run.device, run.amp_dtype):
                out = run.forward(batch)
            loss = out.loss / (run.last_step_micro if in_last_step else accumulation)
            run.scaler.scale(loss).backward()
        run.sums.add(out, batch["input_ids"].numel())
        if not step_ends:
            continue
        # Clip and step (a NaN stops here, before any weight changes), then log.
        stats = optimizer_step(run, i)
        step = state.global_step
        log = log_step(run, stats, bar)
        keep_records(state, log)
        if hooks.on_step_end:
            hooks.on_step_end(step, log.values)
        # Evaluate before the checkpoint of the same step: the checkpoint then holds its
        # result (best metric, early-stopping and plateau counts) and the generators after
        # it, and a run resumed from it goes on exactly as the uninterrupted one.
        if evaluating and step % every == 0:
            evaluate(run)
        if args.save_steps > 0 and step % args.save_steps == 0:
            save_checkpoint(run, f"checkpoint-{step}")
        if state.stopped_early:
            break
        react_to_signal(run, stop, bar)
        if step >= run.total_steps:
            break
    bar.close()


def open_epoch(run: Run, restore_rng: Callable[[], None] | None) -> tqdm:
    """The epoch's batches from where the run stands, under a progress bar."""
    state, args = run.state, run.args
    run.sampler.set_epoch(state.epoch)
    run.batches.skip = state.batches_done
    # iter(loader) draws a base seed from torch's generator. A checkpoint taken within an
    # epoch saved the generators after its epoch's draw, one at an epoch's start (signal or
    # save_model_every_epoch) before the next epoch's: restored on the same side of the
    # draw, dropout goes on as if never stopped.
    if restore_rng is not None and state.batches_done == 0:
        restore_rng()
        restore_rng = None
    batches = iter(run.loader)
    if restore_rng is not None:
        restore_rng()
    return tqdm(
        batches,
        desc=f"Epoch {state.epoch + 1}/{run.num_epochs}",
        initial=state.batches_done,
        total=min(run.epoch_micro, state.batches_done + run.micro_left()),
        disable=args.silent or not run.ctx.is_main,
        leave=False,
    )


def optimizer_step(run: Run, i: int) -> StepStats:
    """Clip and step, unless the loss or the gradients are not finite (then stop before any
    weight changes), and count the step. ``i``: the micro-batch that ended it."""
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


def keep_records(state: TrainingState, log: StepLog) -> None:
    """A step's curve point and history row into the state; the running loss starts anew
    after each row."""
    if log.curve is not None:
        state.record_curve(log.curve)
    if log.row is not None:
        state.record(log.row)
        state.running, state.running_n = 0.0, 0


def evaluate(run: Run) -> None:
    """Evaluate now and take the outcome in: history, best metric, early stopping."""
    state = run.state
    evaluation = evaluate_now(run)
    if evaluation is None:  # interrupted by a signal: nothing recorded
        return
    best_before = state.best_step
    state.record(evaluation.row)
    state.best_metric, state.best_step = evaluation.best_metric, evaluation.best_step
    state.evals_without_improvement = evaluation.evals_without_improvement
    state.stopped_early = evaluation.stop
    if state.best_step != best_before:
        rotate(run)  # the previous best checkpoint may go now
    draw_curves(run)


def end_epoch(run: Run, stop: StopOnSignal) -> None:
    """Samples and evaluation, then the epoch counts as done (and is checkpointed)."""
    args, state = run.args, run.state
    epoch = state.epoch
    write_samples(run, f"After epoch {epoch + 1} (step {state.global_step})")
    if run.hooks.on_evaluate and args.evaluate_during_training and args.evaluate_each_epoch:
        evaluate(run)
    state.epoch, state.batches_done = epoch + 1, 0
    if args.save_model_every_epoch:
        save_checkpoint(run, f"checkpoint-{state.global_step}-epoch-{epoch + 1}")
    if not state.stopped_early:
        react_to_signal(run, stop)


# ----------------------------------------------------------------------------- stopping
def react_to_signal(run: Run, stop: StopOnSignal, bar: tqdm | None = None) -> None:
    """At a step boundary: on a signal (in any process), checkpoint and raise
    TrainingInterrupted."""
    requested = distributed.broadcast_flag(stop.requested is not None, run.ctx, run.device)
    if not requested:
        return
    path = save_checkpoint(run, f"checkpoint-{run.state.global_step}", resumable=True)
    draw_curves(run, final=True)
    if run.writer:
        run.writer.close()
    if bar is not None:
        bar.close()  # cleared (leave=False), so the message that follows reads well
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
