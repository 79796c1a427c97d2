"""Evaluation during training: record the results, keep the best model, halve the learning
rate on a plateau (``reduce_on_plateau``), and decide on early stopping.

Under DDP every process evaluates (its share of the examples, the sums added, so all hold
the same results) and rank 0's early-stopping decision is broadcast: processes that stopped
at different steps would hang.
"""

from __future__ import annotations

from personachat.train import distributed, guard, optim
from personachat.train.errors import EvaluationInterrupted, TrainingError
from personachat.train.outputs import draw_curves, rotate, save_model
from personachat.train.state import Run


def evaluate_now(run: Run) -> bool:
    """Evaluate at this step; True if early stopping ends training here."""
    best_before = run.state.best_step
    try:
        stop = evaluate_and_decide(run)
    except EvaluationInterrupted:
        run.model.train()
        if run.announce:
            print(
                f"The evaluation at step {run.state.global_step} was interrupted; its results "
                "are not recorded."
            )
        return False  # the loop checkpoints and stops at its next signal check
    stop = distributed.broadcast_flag(stop, run.ctx, run.device)
    run.state.stopped_early = stop
    if run.state.best_step != best_before:
        rotate(run)  # the previous best checkpoint may go now
    draw_curves(run)
    return stop


def evaluate_and_decide(run: Run) -> bool:
    """One evaluation: record it, save the best model, and decide on early stopping."""
    args, state = run.args, run.state
    results = run.hooks.evaluate()
    run.model.train()
    numeric = record_evaluation(run, results)
    optim.after_evaluation(run.optimizer, run.scheduler, results, run.announce)
    metric_name = args.early_stopping_metric
    if metric_name not in results:
        raise TrainingError(
            f"early_stopping_metric {metric_name!r} is not an evaluation result; "
            f"choose one of {sorted(numeric)}"
        )
    value = float(results[metric_name])
    if is_improvement(value, state.best_metric, args):
        state.best_metric = value
        state.best_step = state.global_step
        state.evals_without_improvement = 0
        if args.save_best_model and not args.no_save:
            guard.check_weights(run, f"writing the best model to {args.best_model_dir}")
            save_model(run, args.best_model_dir)
        return False
    state.evals_without_improvement += 1
    if args.use_early_stopping and state.evals_without_improvement >= args.early_stopping_patience:
        if run.announce:
            print(
                f"Early stopping: {metric_name} has not improved for "
                f"{state.evals_without_improvement} evaluations (best {state.best_metric:.4f})."
            )
        state.stopped_early = True
        return True
    return False


def record_evaluation(run: Run, results: dict) -> dict:
    """Add the numeric results to the history (``eval_``-prefixed) and TensorBoard."""
    step = run.state.global_step
    numeric = {k: v for k, v in results.items() if isinstance(v, int | float)}
    prefixed = {f"eval_{k}" if not k.startswith("eval_") else k: v for k, v in numeric.items()}
    run.state.record({"eval_global_step": step, **prefixed})
    if run.writer:
        for key, value in numeric.items():
            run.writer.add_scalar(f"eval/{key}", value, step)
    return numeric


def is_improvement(value: float, best: float | None, args) -> bool:
    """Better than the best so far by more than early_stopping_delta, in the metric's sense."""
    if best is None:
        return True
    if args.early_stopping_metric_minimize:
        return best - value > args.early_stopping_delta
    return value - best > args.early_stopping_delta
