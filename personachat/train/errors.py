"""How training tells the user it cannot start or go on."""

from __future__ import annotations

from pathlib import Path

from personachat.errors import PersonachatError


class TrainingError(PersonachatError, RuntimeError):
    """Training cannot start or go on; the message says why and what to do."""


class TrainingInterrupted(TrainingError):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint it can resume from."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        where = (
            f"resumable checkpoint saved to {checkpoint}"
            if checkpoint
            else "no checkpoint written (no_save=True)"
        )
        super().__init__(
            f"stopped by {signal_name} after step {step}; {where}. Resume with "
            "train_model(..., resume_from_checkpoint=True) or "
            "`personachat train ... --resume`."
        )


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written (a full disk, say); ``last`` is the newest complete
    checkpoint, which the failed write left intact (None: none was written yet)."""

    def __init__(self, path: Path, step: int, err: OSError, last: Path | None) -> None:
        self.path, self.step, self.last = path, step, last
        then = (
            f"then resume from the last complete checkpoint {last} (resume_from_checkpoint="
            "True; --resume)"
            if last
            else "then start again: no complete checkpoint had been written yet"
        )
        super().__init__(
            f"could not write checkpoint {path} at step {step} "
            f"({err.strerror or err}); free disk space or choose another output_dir, {then}."
        )


class EvaluationInterrupted(TrainingError):
    """A signal stopped an evaluation during training at a batch boundary; its results are
    not recorded, and training stops with a checkpoint as at any other step."""
