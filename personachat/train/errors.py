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
