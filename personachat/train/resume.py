"""Resume or start clean: the step between setting a run up and its first batch.

A resumed run loads weights, optimizer, schedule, grad scaler and position from its
checkpoint, refuses one written with other batch settings (its batches would differ), takes
a new learning_rate if one is given, and removes the checkpoints of the continuation it
abandons. A clean start removes checkpoints an earlier run left in an overwritten output_dir.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from personachat.train import checkpoints, optim
from personachat.train.errors import TrainingError
from personachat.train.state import Run, TrainingState


@dataclass(frozen=True)
class Resumed:
    """Where a checkpoint goes on from: its state, a way to put its generators back (called
    by the loop where they were captured), and the checkpoint itself."""

    state: TrainingState
    restore_rng: Callable[[], None]
    checkpoint: Path


def resume(run: Run, checkpoint: str | Path) -> Resumed:
    """Load ``checkpoint`` into the run's model, optimizer, scheduler and scaler; return the
    state it saved (``run.state`` is left as it was)."""
    checkpoint = Path(checkpoint)
    args, ctx = run.args, run.ctx
    try:
        saved, saved_plan, restore_rng = checkpoints.load_checkpoint(
            checkpoint, run.model, run.optimizer, run.scheduler, run.scaler, rank=ctx.rank
        )
    except checkpoints.CheckpointError as err:
        raise TrainingError(str(err)) from err
    check_same_plan(checkpoint, saved_plan, run.run_plan)
    state = TrainingState.from_dict(saved)
    if restore_rng is None:
        # A checkpoint without this rank's generators (an older version's): its own seed
        # per resume point, reproducible but not bit-equal to an uninterrupted run.
        seed = (args.manual_seed or 0) + ctx.rank + 7919 * state.global_step
        restore_rng = partial(torch.manual_seed, seed)
    optim.adopt_learning_rate(run.optimizer, run.scheduler, args.learning_rate, run.announce)
    if ctx.is_main:
        abandoned = remove_abandoned_checkpoints(run.out, checkpoint)
        if not args.silent:
            announce_resume(run, state, checkpoint, abandoned)
    return Resumed(state, restore_rng, checkpoint)


def check_same_plan(checkpoint: Path, saved: dict, now: dict) -> None:
    """Refuse a checkpoint whose run batched the data otherwise (the batches would differ)."""
    changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if changed:
        raise TrainingError(
            f"resume: {checkpoint} was written by a run with other settings ("
            + ", ".join(f"{k}: {a} then, {b} now" for k, (a, b) in changed.items())
            + "); resume with the same data and options, or start a fresh run."
        )


def remove_abandoned_checkpoints(out: Path, checkpoint: Path) -> int:
    """Cut-off saves, and the checkpoints further on than ``checkpoint`` in out (of the
    continuation being abandoned: rotation would keep them). Returns how many of those."""
    checkpoints.remove_temp_folders(out)
    later = (
        checkpoints.checkpoints_after(out, checkpoint)
        if checkpoint.parent.resolve() == out.resolve()
        else []
    )
    for path in later:
        checkpoints.remove_checkpoint(path)
    return len(later)


def announce_resume(run: Run, state: TrainingState, checkpoint: Path, abandoned: int) -> None:
    print(
        f"Resuming from {checkpoint}: step {state.global_step} of {run.total_steps}, "
        f"epoch {state.epoch + 1}, {state.batches_done} of {run.epoch_micro} "
        "micro-batches done"
        + (f"; removed {abandoned} later checkpoint(s) of the abandoned run" if abandoned else "")
    )


def start_clean(run: Run) -> None:
    """A fresh run: checkpoints of an earlier run in an overwritten output_dir go, so that a
    later --resume cannot find them."""
    if not run.ctx.is_main or run.args.no_save:
        return
    checkpoints.remove_temp_folders(run.out)
    stale = checkpoints.list_checkpoints(run.out)
    for path in stale:
        checkpoints.remove_checkpoint(path)
    if stale and not run.args.silent:
        print(
            f"Removed {len(stale)} checkpoint(s) of an earlier run in {run.out} "
            "(overwrite_output_dir)"
        )
