"""What a run writes while it trains: the model, checkpoints (and their rotation), the curves,
the samples and TensorBoard scalars. Rank 0 alone writes; the other ranks only take part
in the collective steps (handing rank 0 their random generators for a checkpoint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from personachat.model.loading import save_pretrained_atomic
from personachat.train import checkpoints, distributed, guard, reporting
from personachat.train.errors import CheckpointWriteError
from personachat.train.rng import capture_rng_state, restore_rng_state
from personachat.train.state import Run, StepStats

# training_curves.png is redrawn after an evaluation only if the last drawing is older.
CURVES_EVERY_S = 10.0


def save_model(run: Run, path: str | Path) -> None:
    """The model as a loadable folder (the final one, or the best so far), from rank 0."""
    if run.ctx.is_main:
        save_pretrained_atomic(
            path, run.model, run.tokenizer, args=run.args, extra_files=run.save_extra
        )


def save_checkpoint(run: Run, name: str, resumable: bool | None = None) -> Path | None:
    """A checkpoint of this very moment (rank 0), then the rotation. Resumable unless
    save_optimizer_and_scheduler=False (the one written on a signal always is). Every rank
    calls it at the same step: each hands rank 0 its generators. ``run.last_checkpoint``
    (this function's own record) then names it."""
    args, state, last = run.args, run.state, run.last_checkpoint
    if args.no_save:
        return None
    guard.check_weights(run, f"writing {name}")  # every rank: all stop together
    resumable = args.save_optimizer_and_scheduler if resumable is None else resumable
    rank_rng = distributed.gather_rng_states(run.ctx) if resumable else {}
    if not run.ctx.is_main:
        return None
    if last.at == state.position() and (last.resumable or not resumable):
        return last.path  # this very moment is saved already
    path = run.out / name
    training = dict(state.to_dict(), train_seconds=run.seconds())
    try:
        checkpoints.save_checkpoint(
            path,
            run.model,
            run.tokenizer,
            args,
            run.save_extra,
            run.optimizer if resumable else None,
            run.scheduler,
            run.scaler,
            training,
            run.run_plan,
            rank_rng,
        )
    except OSError as err:
        raise CheckpointWriteError(path, state.global_step, err, last.path) from err
    last.path, last.at, last.resumable = path, state.position(), resumable
    rotate(run)
    return path


def rotate(run: Run) -> None:
    """save_total_limit: keep the newest checkpoints, and the one of the best evaluation."""
    args = run.args
    if not args.save_total_limit or not run.ctx.is_main or args.no_save:
        return
    best_step = run.state.best_step
    best = next(
        (
            path
            for path in checkpoints.list_checkpoints(run.out)
            if best_step is not None
            and (checkpoints.read_marker(path) or {}).get("global_step") == best_step
        ),
        None,
    )
    checkpoints.rotate_checkpoints(run.out, args.save_total_limit, keep=best)


def draw_curves(run: Run, final: bool = False) -> None:
    """Redraw training_curves.png: at the end, and after evaluations at most every
    CURVES_EVERY_S seconds (a drawing costs about half a second of CPU)."""
    now = time.perf_counter()
    if not run.ctx.is_main or run.args.no_save:
        return
    if not final and now - run.curves_clock.drawn < CURVES_EVERY_S:
        return
    reporting.plot_curves(run.state.curves, run.state.history, run.out / reporting.CURVES_FILE)
    run.curves_clock.drawn = now


def write_samples(run: Run, heading: str, fresh: bool = False) -> None:
    """The probe replies, with the random generators as they were (greedy decoding should
    use none, but a resumed run must match an uninterrupted one regardless). ``fresh``: a
    new run starts the file anew (an overwritten output_dir keeps none of an earlier run's
    samples)."""
    on_epoch_end = run.hooks.on_epoch_end
    if on_epoch_end is None or not run.ctx.is_main:
        return
    plain, tensors = capture_rng_state()
    try:
        on_epoch_end(heading, fresh=True) if fresh else on_epoch_end(heading)
    finally:
        restore_rng_state(plain, tensors)
        run.model.train()


@dataclass(frozen=True)
class StepLog:
    """What one optimizer step adds to the run's records (``TrainingState``): its values
    (mean losses and learning rate), a curve point now and then, a history row every
    logging_steps (and at the last step; the running loss then starts anew)."""

    values: dict[str, float]
    curve: dict[str, float] | None
    row: dict[str, float] | None


def log_step(run: Run, stats: StepStats, bar) -> StepLog:
    """The step's values on the progress bar (the running loss) and in TensorBoard (every
    logging_steps), and what the run's records get (see ``StepLog``). ``run.state``
    already counts this step."""
    args, state = run.args, run.state
    step, lr = state.global_step, run.scheduler.get_last_lr()[0]
    values = {
        "loss": stats.mean(stats.loss_sum),
        "lm_loss": stats.mean(stats.lm_sum),
        "mc_loss": stats.mean(stats.mc_sum),
        "lr": lr,
    }
    running = state.running / state.running_n
    curve = None
    if step % run.curve_every == 0 or step == run.total_steps:
        curve = {"step": step, **values, "grad_norm": float(stats.grad_norm)}
    if run.show_running_loss and not args.silent:
        bar.set_postfix(loss=f"{running:.3f}")
    logging_step = step % max(1, args.logging_steps) == 0
    if run.writer and logging_step:
        scalars = {
            "loss": running,
            "lm_loss": values["lm_loss"],
            "mc_loss": values["mc_loss"],
            "lr": lr,
            "grad_norm": float(stats.grad_norm),
            "tokens_per_s": state.tokens_seen / max(run.seconds(), 1e-9),
        }
        for key, value in scalars.items():
            run.writer.add_scalar(key, value, step)
    row = None
    if logging_step or step == run.total_steps:
        row = {"global_step": step, "train_loss": running}
    return StepLog(values, curve, row)
