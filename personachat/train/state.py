"""What a training run holds while it trains: ``TrainingState`` (what a checkpoint saves)
and ``Run`` (the live objects of this process, set up once: model, optimizer, loader, hooks).

Only the loop (``loop.py``) changes a ``TrainingState``; the helpers it calls read the run and
return values. The few helpers the loop needs around its batches live here too:
``StepSums`` (the statistics of the step in progress, kept on the device), ``SkipBatches``
(resume within an epoch) and ``StopOnSignal`` (Ctrl-C and SIGTERM become a request to stop
at the next step boundary).
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from personachat.args import ConvAIArgs
from personachat.encoding.batching import LengthGroupedBatchSampler
from personachat.model.heads import LossOutput
from personachat.train import distributed
from personachat.train.autobatch import BatchPlan
from personachat.train.distributed import DistContext


@dataclass
class TrainingState:
    """Where a run stands between steps: exactly what a checkpoint saves (``training`` in its
    training_state.json; the optimizer, scheduler, scaler and generators are saved beside it
    from their own objects), and what ``train`` returns as details.

    ``epoch`` counts finished epochs (their end-of-epoch evaluation and samples included);
    ``batches_done`` the micro-batches of epoch ``epoch`` already trained on, always at a step
    boundary, which is where a resumed run picks up. ``stopped_early``: an evaluation decided
    to stop (a checkpoint of that moment resumes into a finished run). Only the loop changes it.
    """

    global_step: int = 0
    epoch: int = 0
    batches_done: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: dict[str, list] = field(default_factory=lambda: {"global_step": [], "train_loss": []})
    # Per-step values for training_curves.png (every few steps on long runs).
    curves: dict[str, list] = field(default_factory=dict)
    # Running sums between logging steps, tokens seen and time spent (over resumes).
    running: float = 0.0
    running_n: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0

    def record(self, values: dict) -> None:
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)

    def record_curve(self, values: dict) -> None:
        for key, value in values.items():
            self.curves.setdefault(key, []).append(value)

    def position(self) -> tuple[int, int, int]:
        """Where training stands: a checkpoint of the same position holds the same weights."""
        return self.global_step, self.epoch, self.batches_done

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class StepStats:
    """One optimizer step, summed over every micro-batch of every process."""

    loss_sum: float
    lm_sum: float
    mc_sum: float
    micro: int
    tokens: int
    # Before clipping; a tensor on the device, read (a GPU sync) only when logged.
    grad_norm: torch.Tensor | float = math.nan

    def mean(self, value: float) -> float:
        return value / self.micro


class StepSums:
    """The losses, micro-batches and tokens of the step in progress. The losses stay on the
    device: no GPU->CPU sync per micro-batch, one all-reduce of 5 numbers per step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.losses = torch.zeros(3, device=device)  # loss, lm_loss, mc_loss
        self.micro = 0
        self.tokens = 0

    def add(self, out: LossOutput, tokens: int) -> None:
        self.losses += torch.stack([out.loss, out.lm_loss, out.mc_loss]).detach().float()
        self.micro += 1
        self.tokens += tokens

    def reduce(self, ctx: DistContext) -> StepStats:
        """The sums of every process, and a fresh start for the next step."""
        counts = torch.tensor([self.micro, self.tokens], dtype=torch.float32, device=self.device)
        totals = distributed.all_reduce_sum(torch.cat([self.losses, counts]), ctx).tolist()
        self.losses.zero_()
        self.micro, self.tokens = 0, 0
        loss_sum, lm_sum, mc_sum, micro, tokens = totals
        return StepStats(loss_sum, lm_sum, mc_sum, int(micro), int(tokens))


class SkipBatches(torch.utils.data.Sampler[list[int]]):
    """A batch sampler that leaves out the first ``skip`` micro-batches of the epoch: the ones
    a resumed run already trained on (the epoch's plan itself is seeded, so it is the same)."""

    def __init__(self, sampler: LengthGroupedBatchSampler) -> None:
        self.sampler = sampler
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


class StopOnSignal:
    """Turn the first SIGINT/SIGTERM into a request to stop at the next step boundary (or at
    the next batch of an evaluation: ``stop_requested``).

    A second signal stops at once, after one line on stderr saying what was saved and what
    was not (``saved()`` gives it). Signal handlers can only be set from the main thread;
    elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True, saved: Callable[[], str] | None = None) -> None:
        self.requested: str | None = None
        self.announce = announce
        self.saved = saved
        self._previous: dict = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            _active.append(self)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name
        signal.signal(signum, self._stop_now)
        if self.announce:  # tqdm.write: printed above the progress bar, not into it
            tqdm.write(
                f"{self.requested}: finishing this step (or evaluation batch) and writing a "
                "checkpoint (send it again to stop at once) ..."
            )

    def _stop_now(self, signum, frame) -> None:
        """The second signal: say what is saved, then end the process by that signal."""
        name = signal.Signals(signum).name
        if self.announce or self.saved is not None:
            what = self.saved() if self.saved is not None else "see output_dir"
            sys.stderr.write(f"\n{name} again: stopping at once without a checkpoint. {what}\n")
            sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self in _active:
            _active.remove(self)


# The StopOnSignal of the training in progress (innermost last): what evaluations check.
_active: list[StopOnSignal] = []


def stop_requested() -> bool:
    """Whether a signal asked the training in progress to stop (evaluations check it between
    batches, so that a stop never waits for a whole evaluation)."""
    return bool(_active) and _active[-1].requested is not None


@dataclass(frozen=True)
class TrainingHooks:
    """What the caller adds to the loop, each called at its point of the run (rank 0 only for
    ``on_epoch_end``; every process for the others).

    - ``on_evaluate()``: evaluate the model now and return the results (a dict holding
      ``early_stopping_metric``); raises ``EvaluationInterrupted`` when a signal cut it short.
    - ``on_epoch_end(heading, fresh=False)``: before training (``fresh=True`` on a new run)
      and after every epoch, with the random generators saved around it (samples.md).
    - ``on_step_end(step, losses)``: after every optimizer step, with its mean ``loss``,
      ``lm_loss``, ``mc_loss`` and the learning rate ``lr`` it ran with.
    """

    on_evaluate: Callable[[], dict] | None = None
    on_epoch_end: Callable[..., None] | None = None
    on_step_end: Callable[[int, dict], None] | None = None


@dataclass
class LastCheckpoint:
    """The newest checkpoint this run wrote (or resumed from), and the position it holds."""

    path: Path | None = None
    at: tuple[int, int, int] | None = None
    resumable: bool = False


class CurvesClock:
    """When training_curves.png was last drawn: drawings after evaluations are spaced out."""

    def __init__(self) -> None:
        self.drawn = -math.inf


@dataclass(frozen=True)
class Run:
    """One training run in this process: what it trains, with what, and where it stands.

    Set up once (``setup.set_up``) and never changed: resuming makes a new one with the
    checkpoint's ``state`` (``dataclasses.replace``). ``objective`` is the model and its loss
    (DDP-wrapped under torchrun); ``forward`` the same, compiled with ``compile=True``;
    ``model`` stays the plain model that is evaluated, sampled from and saved. ``state`` is
    the one thing the loop changes, step by step; ``last_checkpoint`` is kept by
    ``outputs.save_checkpoint`` (the second signal's message reads it).
    """

    model: torch.nn.Module
    tokenizer: Any
    args: ConvAIArgs
    device: torch.device
    ctx: DistContext
    out: Path
    objective: torch.nn.Module
    forward: Callable[[dict], LossOutput]
    amp_dtype: torch.dtype | None
    plan: BatchPlan
    sampler: LengthGroupedBatchSampler
    batches: SkipBatches
    loader: torch.utils.data.DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    run_plan: dict
    hooks: TrainingHooks
    sums: StepSums
    save_extra: dict[str, str] | None = None  # files saved beside every model (personas.json)
    show_running_loss: bool = True
    state: TrainingState = field(default_factory=TrainingState)
    last_checkpoint: LastCheckpoint = field(default_factory=LastCheckpoint)
    writer: Any = None  # a TensorBoard SummaryWriter on rank 0, if available
    started: float = 0.0  # perf_counter() at the start, less the time of earlier parts
    curves_clock: CurvesClock = field(default_factory=CurvesClock)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return total_steps(self.args, self.steps_per_epoch)

    def micro_left(self) -> int:
        """Micro-batches this process has left to run (max_steps may end within an epoch)."""
        return (self.total_steps - self.state.global_step) * self.plan.accumulation_steps

    @property
    def num_epochs(self) -> int:
        """Epochs the run starts: num_train_epochs, or as many as max_steps needs."""
        return math.ceil(self.total_steps / max(1, self.steps_per_epoch))

    @property
    def epoch_micro(self) -> int:
        """Micro-batches of one epoch in this process."""
        return len(self.sampler)

    @property
    def last_step_micro(self) -> int:
        """The last step of an epoch may hold fewer micro-batches; its loss is averaged over
        those."""
        return self.epoch_micro - (self.steps_per_epoch - 1) * self.plan.accumulation_steps

    @property
    def curve_every(self) -> int:
        """Per-step curve points: every step on short runs, about 200+ points on long ones."""
        every = max(1, self.args.logging_steps)
        return max(1, min(every, self.total_steps // 200))

    @property
    def announce(self) -> bool:
        """Whether this process prints progress (rank 0, not silent)."""
        return self.ctx.is_main and not self.args.silent

    def seconds(self) -> float:
        """Training time so far, earlier parts of a resumed run included."""
        return time.perf_counter() - self.started


def total_steps(args, steps_per_epoch: int) -> int:
    """The optimizer steps of the run: ``max_steps`` when set (> 0), else every epoch's."""
    if args.max_steps and args.max_steps > 0:
        return args.max_steps
    return steps_per_epoch * args.num_train_epochs
