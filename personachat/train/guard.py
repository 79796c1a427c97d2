"""The NaN guard: a run whose loss or weights went non-finite ends with a TrainingError, never
with a saved model or checkpoint holding NaN/inf weights, and the checkpoint it names as
"the last good checkpoint" is one whose weights are all finite.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from personachat.train import checkpoints
from personachat.train.errors import TrainingError
from personachat.train.state import Run


def first_non_finite(model: torch.nn.Module) -> str | None:
    """The name of the first parameter holding a NaN or inf, or None (one device sync)."""
    named = list(model.named_parameters())
    if not named:
        return None
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named])
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


def check_weights(run: Run, doing: str) -> None:
    """Raise the diverged-run TrainingError if a weight is non-finite, before ``doing`` (e.g.
    "writing checkpoint-4"). Every process calls it: their weights are the same under DDP,
    so they all stop together."""
    name = first_non_finite(run.model)
    if name is not None:
        raise diverged(run, f"weight {name} became non-finite", before=doing)


def finite_checkpoint(folder: Path) -> bool:
    """Whether every weight saved in ``folder``'s model.safetensors is finite."""
    try:
        weights = load_file(str(folder / "model.safetensors"))
    except (OSError, SafetensorError):
        return False
    return all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())


def last_good_checkpoint(run: Run) -> Path | None:
    """The newest checkpoint of this run whose files are readable and weights finite."""
    for path in reversed(checkpoints.list_checkpoints(run.out)):
        if checkpoints.unreadable(path) is None and finite_checkpoint(path):
            return path
    return None


def diverged(run: Run, what: str, before: str | None = None) -> TrainingError:
    """The error of a run that went non-finite: where, why, and where to go on from.
    ``before``: what was refused (the weights already changed); None: the loss or gradient
    went non-finite and no weight changed."""
    state = run.state
    last = None if run.args.no_save or not run.ctx.is_main else last_good_checkpoint(run)
    kept = (
        f"The last good checkpoint is {last} (step "
        f"{(checkpoints.read_marker(last) or {}).get('global_step')}); resume "
        "from it with a lower learning rate (--resume PATH --set learning_rate=...; "
        "resume_from_checkpoint=PATH in Python), or start again with one if the loss "
        "was already climbing there."
        if last
        else "No checkpoint with finite weights had been written."
    )
    where = f"at step {state.global_step + 1} (epoch {state.epoch + 1})"
    done = (
        "training stopped before that step changed any weight"
        if before is None
        else f"training stopped without {before} and without saving the model"
    )
    if before is not None:
        where = f"at step {state.global_step} (epoch {state.epoch + 1})"
    return TrainingError(
        f"{what} {where}; {done}. Lower learning_rate (now {run.args.learning_rate}) or "
        f"check the data. {kept}"
    )
