"""Evaluation during training: record the results, keep the best model, halve the learning
rate on a plateau (``reduce_on_plateau``), and decide on early stopping.

``evaluate_now`` changes nothing of the run's state: it returns an ``Evaluation`` (the
history row, the best metric and the early-stopping count after it, the decision) that the
loop applies. Under DDP every process evaluates (its share of the examples, the sums added,
so all hold the same results) and rank 0's early-stopping decision is broadcast: processes
that stopped at different steps would hang.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from personachat.train import distributed, guard, optim
from personachat.train.errors import EvaluationInterrupted, TrainingError
from personachat.train.outputs import save_model
from personachat.train.state import Run


@dataclass(frozen=True)
class Evaluation:
    """One evaluation's outcome: its history row (``eval_``-prefixed numbers), the best
    metric and its step, the evaluations since it improved, and whether to stop here."""

    row: dict
    best_metric: float | None
    best_step: int | None
    evals_without_improvement: int
    stop: bool


def evaluate_now(run: Run) -> Evaluation | None:
    """Evaluate at this step (and save the best model); None if a signal interrupted it."""
    try:
        evaluation = evaluate_and_decide(run)
    except EvaluationInterrupted:
        run.model.train()
        if run.announce:
            print(
                f"The evaluation at step {run.state.global_step} was interrupted; its results "
                "are not recorded."
            )
        return None  # the loop checkpoints and stops at its next signal check
    stop = distributed.broadcast_flag(evaluation.stop, run.ctx, run.device)
    return replace(evaluation, stop=stop)


def evaluate_and_decide(run: Run) -> Evaluation:
    """One evaluation: its results, the best model saved, the early-stopping decision."""
    args, state = run.args, run.state
    results = run.hooks.on_evaluate()
    run.model.train()
    row = record_evaluation(run, results)
    optim.after_evaluation(run.optimizer, run.scheduler, results, run.announce)
    metric_name = args.early_stopping_metric
    if metric_name not in results:
        numeric = [k for k, v in results.items() if isinstance(v, int | float)]
        raise TrainingError(
            f"early_stopping_metric {metric_name!r} is not an evaluation result; "
            f"choose one of {sorted(numeric)}"
        )
    value = float(results[metric_name])
    if is_improvement(value, state.best_metric, args):
        if args.save_best_model and not args.no_save:
            guard.check_weights(run, f"writing the best model to {args.best_model_dir}")
            save_model(run, args.best_model_dir)
        return Evaluation(row, value, state.global_step, 0, stop=False)
    count = state.evals_without_improvement + 1
    stop = args.use_early_stopping and count >= args.early_stopping_patience
    if stop and run.announce:
        print(
            f"Early stopping: {metric_name} has not improved for {count} evaluations "
            f"(best {state.best_metric:.4f})."
        )
    return Evaluation(row, state.best_metric, state.best_step, count, stop)


def record_evaluation(run: Run, results: dict) -> dict:
    """The numeric results as a history row (``eval_``-prefixed), and in TensorBoard."""
    step = run.state.global_step
    numeric = {k: v for k, v in results.items() if isinstance(v, int | float)}
    prefixed = {f"eval_{k}" if not k.startswith("eval_") else k: v for k, v in numeric.items()}
    if run.writer:
        for key, value in numeric.items():
            run.writer.add_scalar(f"eval/{key}", value, step)
    return {"eval_global_step": step, **prefixed}


def is_improvement(value: float, best: float | None, args) -> bool:
    """Better than the best so far by more than early_stopping_delta, in the metric's sense."""
    if best is None:
        return True
    if args.early_stopping_metric_minimize:
        return best - value > args.early_stopping_delta
    return value - best > args.early_stopping_delta
