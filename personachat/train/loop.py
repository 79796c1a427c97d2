"""The training loop: AdamW, linear warmup/decay, accumulation, clipping, mixed precision.

The loop is written out rather than hidden behind callbacks: one pass per epoch over
length-grouped, shuffled batches (``batching``), a gradient step every
``gradient_accumulation_steps`` micro-batches, and at the step boundaries the optional extras
(logging, evaluation, checkpoints, early stopping). Under ``torchrun`` the same loop runs in
every process on its own share of each step's batch, with gradients averaged by DDP; rank 0
alone writes files and logs.

Runs survive faults: checkpoints (``checkpoints``) hold everything needed to go on exactly
where a run stopped, down to the micro-batch within the epoch and the random generators, so
a resumed run ends with the weights an uninterrupted one would have. Ctrl-C or SIGTERM
finishes the step, writes such a checkpoint and stops; a NaN loss stops before it can reach
a checkpoint; a full disk or an unwritable folder is found before the first step.
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from personachat.args import ConvAIArgs
from personachat.encoding.batching import LengthGroupedBatchSampler
from personachat.encoding.inputs import collate
from personachat.errors import PersonachatError
from personachat.model.loading import LossOutput, double_heads_loss, save_pretrained_atomic
from personachat.train import checkpoints, distributed, reporting
from personachat.train.autobatch import (
    DEFAULT_MARGIN,
    BatchPlan,
    plan_batches,
    probe_eval_batch,
    probe_train_micro_batch,
)
from personachat.train.distributed import DistContext

# training_curves.png is redrawn after an evaluation only if the last drawing is older.
CURVES_EVERY_S = 10.0


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


def preflight(
    output_dir: str | Path, model, args: ConvAIArgs, free: Callable[[str | Path], int] | None = None
) -> None:
    """Before any data is read or step taken: output_dir must be writable, and its disk must
    hold one checkpoint (``free`` gives the free bytes; ``checkpoints.free_bytes`` by default).
    Only the main process writes there, so only it checks: two torchrun ranks testing one new
    folder at once would remove it from under each other.
    """
    if not distributed.is_main_process():
        return
    try:
        checkpoints.check_output_writable(output_dir)
        if not args.no_save:
            checkpoints.check_free_space(
                output_dir,
                checkpoints.checkpoint_bytes(model, args.save_optimizer_and_scheduler),
                free,
            )
    except checkpoints.CheckpointError as err:
        raise TrainingError(str(err)) from err


def check_output_dir(output_dir: str | Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder (hidden files such as .gitkeep do not count)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise TrainingError(f"output_dir {str(path)!r} is a file, not a folder")
    if path.is_dir() and any(not p.name.startswith(".") for p in path.iterdir()) and not overwrite:
        raise TrainingError(
            f"Output directory ({path}) already exists and is not empty. "
            "Set overwrite_output_dir=True (--overwrite-output-dir) to overwrite it, "
            "or choose another output_dir."
        )


def autocast_dtype(device: torch.device, fp16: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; None (full precision) on CPU or fp16=False."""
    if device.type != "cuda" or not fp16:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def configure_cuda_math() -> None:
    """TF32 tensor cores for the float32 matmuls left outside autocast (10-bit mantissa,
    ample for training; cuDNN already allows TF32 by default)."""
    torch.set_float32_matmul_precision("high")


class TrainingObjective(torch.nn.Module):
    """The model and its TransferTransfo loss as one module whose ``forward`` is the loss.

    Why a module: ``double_heads_loss`` calls ``model.transformer``, the MC head and the LM
    head directly (to run the LM head on labelled positions only), never ``model.forward``.
    DDP only synchronises gradients for work done inside *its own* ``forward``: that call is
    what arms its reducer for the next backward, and a backward through a DDP-wrapped model
    whose forward was bypassed leaves every process with its own unsynchronised gradients,
    silently. Wrapping this module instead (``DDP(TrainingObjective(model))``) puts the whole
    loss computation inside DDP's forward. ``torch.compile`` wraps it for the same reason, and
    the plain ``model`` (what evaluation, generation and saving use) stays unwrapped.
    """

    def __init__(self, model: torch.nn.Module, lm_coef: float, mc_coef: float) -> None:
        super().__init__()
        self.model = model
        self.lm_coef = lm_coef
        self.mc_coef = mc_coef

    def forward(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        return double_heads_loss(self.model, batch, self.lm_coef, self.mc_coef)


def batch_plan(
    objective: torch.nn.Module,
    dataset,
    args: ConvAIArgs,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    ctx: DistContext,
    collate_fn,
) -> BatchPlan:
    """Micro-batch and accumulation: as given, or probed on the GPU for ``"auto"``."""
    if args.train_batch_size != "auto":
        return BatchPlan(args.train_batch_size, args.gradient_accumulation_steps, ctx.world_size)
    if device.type != "cuda":
        raise TrainingError("train_batch_size='auto' needs a CUDA device; pass a number on CPU")
    per_process = math.ceil(args.auto_batch_target / ctx.world_size)
    fitting = probe_train_micro_batch(
        objective, dataset, collate_fn, device, amp_dtype, upper=per_process
    )
    # Every process must run the same number of micro-batches per step.
    fitting = distributed.all_reduce_min(fitting, ctx, device)
    if fitting < 1:
        raise TrainingError(
            f"not even one example of the longest input ({max(dataset.lengths)} tokens per "
            f"candidate, {args.num_candidates} candidates) fits in GPU memory for training; "
            "use a smaller model, fewer num_candidates, or a GPU with more memory"
        )
    plan = plan_batches(fitting, args.auto_batch_target, ctx.world_size)
    if ctx.is_main and not args.silent:
        print(
            f"train_batch_size='auto': micro-batches of up to {fitting} fit on the longest "
            f"inputs ({max(dataset.lengths)} tokens x {args.num_candidates} candidates) "
            f"with {DEFAULT_MARGIN:.0%} of GPU memory to spare; using {plan.micro_batch_size} "
            f"x {plan.accumulation_steps} accumulation step(s) x {plan.world_size} "
            f"process(es) = {plan.effective_batch_size} examples per step "
            f"(auto_batch_target={args.auto_batch_target})"
        )
    return plan


def resolve_eval_batch_size(
    model, dataset, args: ConvAIArgs, device: torch.device, pad_id: int
) -> int:
    """``eval_batch_size`` as given, or for ``"auto"`` the largest batch whose forward pass
    fits on the GPU with the longest inputs of ``dataset``."""
    if args.eval_batch_size != "auto":
        return args.eval_batch_size
    if device.type != "cuda":
        raise ValueError("eval_batch_size='auto' needs a CUDA device; pass a number on CPU")
    objective = TrainingObjective(model, args.lm_coef, args.mc_coef)
    size = probe_eval_batch(
        objective,
        dataset,
        partial(collate, pad_id=pad_id),
        device,
        autocast_dtype(device, args.fp16),
    )
    if size < 1:
        raise ValueError(
            "not even one evaluation example of the longest input fits in GPU "
            "memory; use a smaller model or fewer num_candidates"
        )
    if not args.silent and distributed.is_main_process():
        print(f"eval_batch_size='auto': {size} (longest input {max(dataset.lengths)} tokens)")
    return size


def make_optimizer(model, args: ConvAIArgs, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights (as in BERT/GPT recipes)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "ln" in name or "bias" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=args.learning_rate, eps=args.adam_epsilon, fused=device.type == "cuda"
    )


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    """Learning rate rises linearly for warmup_steps, then falls linearly to 0 at total."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainingState:
    """What the loop tracks between steps; saved in every checkpoint, returned as details.

    ``epoch`` counts finished epochs (their end-of-epoch evaluation and samples included);
    ``batches_done`` the micro-batches of epoch ``epoch`` already trained on, always at a step
    boundary, which is where a resumed run picks up.
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class StopOnSignal:
    """Turn the first SIGINT/SIGTERM into a request to stop at the next step boundary.

    A second signal gets the default behaviour (Ctrl-C twice stops at once). Signal handlers
    can only be set from the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True) -> None:
        self.requested: str | None = None
        self.announce = announce
        self._previous: dict = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        if self.announce:  # tqdm.write: printed above the progress bar, not into it
            tqdm.write(
                f"{self.requested}: finishing this step and writing a checkpoint "
                "(send it again to stop at once) ..."
            )

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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
    ctx = distributed.setup(device.type)
    try:
        return run_training(
            model,
            tokenizer,
            train_dataset,
            args,
            device,
            output_dir,
            ctx,
            evaluate,
            show_running_loss,
            save_extra,
            resume_from,
            on_epoch_end,
        )
    finally:
        distributed.teardown(ctx)


def run_training(
    model,
    tokenizer,
    train_dataset,
    args: ConvAIArgs,
    device: torch.device,
    output_dir: str,
    ctx: DistContext,
    evaluate: Callable[[], dict] | None = None,
    show_running_loss: bool = True,
    save_extra: dict[str, str] | None = None,
    resume_from: str | Path | None = None,
    on_epoch_end: Callable[[str], None] | None = None,
) -> tuple[int, dict]:
    """The loop of ``train`` in this process (one of ``ctx.world_size``)."""
    if device.type == "cuda":
        if ctx.enabled or device.index is None:  # under torchrun: LOCAL_RANK's GPU
            device = torch.device("cuda", torch.cuda.current_device())
        configure_cuda_math()
    if ctx.enabled and args.manual_seed is not None:
        torch.manual_seed(args.manual_seed + ctx.rank)  # independent dropout per process
    model.to(device).train()
    amp_dtype = autocast_dtype(device, args.fp16)
    objective = TrainingObjective(model, args.lm_coef, args.mc_coef)
    pad = partial(collate, pad_id=tokenizer.pad_token_id)
    plan = batch_plan(objective, train_dataset, args, device, amp_dtype, ctx, pad)
    accumulation = plan.accumulation_steps
    sampler = LengthGroupedBatchSampler(
        len(train_dataset),
        plan.micro_batch_size,
        accumulation,
        lengths=getattr(train_dataset, "lengths", None) if args.group_by_length else None,
        seed=args.manual_seed or 0,
        world_size=ctx.world_size,
        rank=ctx.rank,
    )
    resumable_sampler = SkipBatches(sampler)
    loader = torch.utils.data.DataLoader(
        train_dataset,
        batch_sampler=resumable_sampler,
        collate_fn=pad,
        num_workers=args.dataloader_num_workers,
        pin_memory=device.type == "cuda",
    )
    if ctx.enabled:
        # gradient_as_bucket_view: gradients live in DDP's buckets, no second copy (the
        # memory the batch-size probe accounted for). GPT-2 has no buffers to broadcast.
        objective = DistributedDataParallel(
            objective,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,
        )
    # Shapes change every batch (dynamic padding): compile for dynamic shapes from the start.
    forward = torch.compile(objective, dynamic=True) if args.compile else objective
    if ctx.is_main and ctx.enabled and not args.silent:
        print(
            f"DDP: {ctx.world_size} processes x {plan.micro_batch_size} examples x "
            f"{accumulation} accumulation step(s) = {plan.effective_batch_size} per step"
        )

    steps_per_epoch = sampler.steps_per_epoch
    total_steps = steps_per_epoch * args.num_train_epochs
    warmup = args.warmup_steps or math.ceil(total_steps * args.warmup_ratio)
    optimizer = make_optimizer(model, args, device)
    scheduler = linear_schedule(optimizer, warmup, total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    # What must not change between a run and its resumption (else the batches differ).
    run_plan = {
        "examples": len(train_dataset),
        "micro_batch_size": plan.micro_batch_size,
        "accumulation_steps": accumulation,
        "world_size": ctx.world_size,
        "seed": args.manual_seed or 0,
        "group_by_length": args.group_by_length,
        "num_train_epochs": args.num_train_epochs,
    }
    out = Path(output_dir)
    state = TrainingState()
    restore_rng: Callable[[], None] | None = None
    if resume_from is not None:
        resume_from = Path(resume_from)
        try:
            saved, saved_plan, restore_rng = checkpoints.load_checkpoint(
                resume_from, model, optimizer, scheduler, scaler, rank=ctx.rank
            )
        except checkpoints.CheckpointError as err:
            raise TrainingError(str(err)) from err
        changed = {k: (saved_plan.get(k), v) for k, v in run_plan.items() if saved_plan.get(k) != v}
        if changed:
            raise TrainingError(
                f"resume: {resume_from} was written by a run with other settings ("
                + ", ".join(f"{k}: {a} then, {b} now" for k, (a, b) in changed.items())
                + "); resume with the same data and options, or start a fresh run."
            )
        state = TrainingState.from_dict(saved)
        if restore_rng is None:
            # A checkpoint without this rank's generators (an older version's): its own seed
            # per resume point, reproducible but not bit-equal to an uninterrupted run.
            seed = (args.manual_seed or 0) + ctx.rank + 7919 * state.global_step
            restore_rng = partial(torch.manual_seed, seed)
        adopt_learning_rate(
            optimizer, scheduler, args.learning_rate, announce=ctx.is_main and not args.silent
        )
        if ctx.is_main:
            checkpoints.remove_temp_folders(out)
            later = (
                checkpoints.checkpoints_after(out, resume_from)
                if resume_from.parent.resolve() == out.resolve()
                else []
            )
            for path in later:  # of the abandoned continuation: rotation would keep them
                checkpoints.remove_checkpoint(path)
            if not args.silent:
                print(
                    f"Resuming from {resume_from}: step {state.global_step} of {total_steps}, "
                    f"epoch {state.epoch + 1}, {state.batches_done} of {len(sampler)} "
                    "micro-batches done"
                    + (
                        f"; removed {len(later)} later checkpoint(s) of the abandoned run"
                        if later
                        else ""
                    )
                )
    elif ctx.is_main and not args.no_save:
        checkpoints.remove_temp_folders(out)
        stale = checkpoints.list_checkpoints(out)
        for path in stale:  # overwrite_output_dir: a later --resume must not find these
            checkpoints.remove_checkpoint(path)
        if stale and not args.silent:
            print(
                f"Removed {len(stale)} checkpoint(s) of an earlier run in {out} "
                "(overwrite_output_dir)"
            )
    # Every process has passed check_output_dir before rank 0 writes anything.
    distributed.barrier(ctx)
    writer = (
        tensorboard_writer(
            args, output_dir, purge_step=state.global_step + 1 if resume_from else None
        )
        if ctx.is_main
        else None
    )
    save_files = partial(
        save_pretrained_atomic, tokenizer=tokenizer, args=args, extra_files=save_extra
    )
    last_checkpoint: dict = {"path": resume_from, "at": None, "resumable": False}
    curves_path = out / reporting.CURVES_FILE
    # Per-step curve points: every step on short runs, about 200+ points on long ones.
    curve_every = max(1, min(max(1, args.logging_steps), total_steps // 200))

    def save(path, model) -> None:
        if ctx.is_main:
            save_files(path, model)

    def position() -> tuple[int, int, int]:
        return state.global_step, state.epoch, state.batches_done

    def save_checkpoint(name: str, resumable: bool | None = None) -> Path | None:
        """A checkpoint of this very moment (rank 0), then the rotation. Resumable unless
        save_optimizer_and_scheduler=False (the one written on a signal always is)."""
        if args.no_save:
            return None
        resumable = args.save_optimizer_and_scheduler if resumable is None else resumable
        # Every rank reaches this point at the same step; each hands rank 0 its generators.
        rank_rng = distributed.gather_rng_states(ctx) if resumable else {}
        if not ctx.is_main:
            return None
        if last_checkpoint["at"] == position() and (last_checkpoint["resumable"] or not resumable):
            return last_checkpoint["path"]  # this very moment is saved already
        path = out / name
        state.train_seconds = time.perf_counter() - started
        try:
            checkpoints.save_checkpoint(
                path,
                model,
                tokenizer,
                args,
                save_extra,
                optimizer if resumable else None,
                scheduler,
                scaler,
                state.to_dict(),
                run_plan,
                rank_rng,
            )
        except OSError as err:
            previous = last_checkpoint["path"] or "none written yet"
            raise TrainingError(
                f"could not write checkpoint {path} at step {state.global_step} ({err}); free "
                f"disk space or choose another output_dir. The last complete checkpoint "
                f"({previous}) is intact."
            ) from err
        last_checkpoint.update(path=path, at=position(), resumable=resumable)
        rotate()
        return path

    def rotate() -> None:
        """save_total_limit: the newest checkpoints, and the one of the best evaluation."""
        if not args.save_total_limit or not ctx.is_main or args.no_save:
            return
        best = next(
            (
                p
                for p in checkpoints.list_checkpoints(out)
                if state.best_step is not None
                and (checkpoints.read_marker(p) or {}).get("global_step") == state.best_step
            ),
            None,
        )
        checkpoints.rotate_checkpoints(out, args.save_total_limit, keep=best)

    last_drawn = [-math.inf]

    def draw_curves(final: bool = False) -> None:
        """Redraw training_curves.png: at the end, and after evaluations at most every
        CURVES_EVERY_S seconds (a drawing costs about half a second of CPU)."""
        now = time.perf_counter()
        if not ctx.is_main or args.no_save or (not final and now - last_drawn[0] < CURVES_EVERY_S):
            return
        reporting.plot_curves(state.curves, state.history, curves_path)
        last_drawn[0] = now

    def samples(heading: str, fresh: bool = False) -> None:
        """The probe replies, with the random generators as they were (greedy decoding
        should use none, but a resumed run must match an uninterrupted one regardless).
        ``fresh``: a new run starts the file anew (an overwritten output_dir keeps none of
        an earlier run's samples)."""
        if on_epoch_end is None or not ctx.is_main:
            return
        plain, tensors = checkpoints.capture_rng_state()
        try:
            on_epoch_end(heading, fresh=True) if fresh else on_epoch_end(heading)
        finally:
            checkpoints.restore_rng_state(plain, tensors)
            model.train()

    def evaluate_now() -> bool:
        best_before = state.best_step
        stop = eval_and_maybe_stop(evaluate, state, args, model, save, writer, ctx, device)
        if state.best_step != best_before:
            rotate()  # the previous best checkpoint may go now
        draw_curves()
        return stop

    def stop_now(stop: StopOnSignal) -> None:
        """At a step boundary: on a signal, checkpoint and raise TrainingInterrupted."""
        requested = stop.requested is not None
        if ctx.enabled:
            requested = distributed.broadcast_flag(requested, ctx, device)
        if not requested:
            return
        path = save_checkpoint(f"checkpoint-{state.global_step}", resumable=True)
        draw_curves(final=True)
        if writer:
            writer.close()
        if bars:
            bars[-1].close()  # cleared (leave=False), so the message that follows reads well
        distributed.barrier(ctx)
        raise TrainingInterrupted(stop.requested or "SIGTERM", state.global_step, path)

    step_losses = torch.zeros(3, device=device)  # loss, lm_loss, mc_loss summed over micro
    step_micro, step_tokens = 0, 0
    epoch_micro = len(sampler)
    # The last step of an epoch may hold fewer micro-batches; its loss is averaged over those.
    last_step_micro = epoch_micro - (steps_per_epoch - 1) * accumulation
    if resume_from is None:
        samples("Before training (step 0)", fresh=True)
    started = time.perf_counter() - state.train_seconds
    bars: list = []  # the current epoch's progress bar, for stop_now to close
    with StopOnSignal(announce=ctx.is_main and not args.silent) as stop:
        try:
            while state.epoch < args.num_train_epochs and not state.stopped_early:
                epoch = state.epoch
                sampler.set_epoch(epoch)
                resumable_sampler.skip = state.batches_done
                # iter(loader) draws a base seed from torch's generator. A checkpoint taken
                # within an epoch saved the generators after its epoch's draw, one at an
                # epoch's start (signal or save_model_every_epoch) before the next epoch's:
                # restored on the same side of the draw, dropout goes on as if never stopped.
                if restore_rng is not None and state.batches_done == 0:
                    restore_rng()
                    restore_rng = None
                batches = iter(loader)
                if restore_rng is not None:
                    restore_rng()
                    restore_rng = None
                bar = tqdm(
                    batches,
                    desc=f"Epoch {epoch + 1}/{args.num_train_epochs}",
                    initial=state.batches_done,
                    total=epoch_micro,
                    disable=args.silent or not ctx.is_main,
                    leave=False,
                )
                bars.append(bar)
                for i, batch in enumerate(bar, start=state.batches_done):
                    in_last_step = i >= epoch_micro - last_step_micro
                    step_ends = (i + 1) % accumulation == 0 or i + 1 == epoch_micro
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    # Between step boundaries DDP skips its gradient all-reduce (forward and
                    # backward both inside no_sync); the boundary's backward reduces the sum.
                    with objective.no_sync() if ctx.enabled and not step_ends else nullcontext():
                        with torch.autocast(
                            device.type,
                            dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None,
                        ):
                            out_ = forward(batch)
                        loss = out_.loss / (last_step_micro if in_last_step else accumulation)
                        scaler.scale(loss).backward()
                    # Kept on the device: no GPU->CPU sync per micro-batch, one per step below.
                    step_losses += (
                        torch.stack([out_.loss, out_.lm_loss, out_.mc_loss]).detach().float()
                    )
                    step_micro += 1
                    step_tokens += batch["input_ids"].numel()
                    if not step_ends:
                        continue

                    # Step statistics of all processes (one all-reduce of 5 numbers per step).
                    totals = torch.cat(
                        [
                            step_losses,
                            torch.tensor(
                                [step_micro, step_tokens], dtype=torch.float32, device=device
                            ),
                        ]
                    )
                    loss_sum, lm_sum, mc_sum, micro_all, tokens_all = distributed.all_reduce_sum(
                        totals, ctx
                    ).tolist()
                    step_losses.zero_()
                    step_micro, step_tokens = 0, 0
                    if not math.isfinite(loss_sum):
                        draw_curves(final=True)  # the curves up to the last good step
                        raise_non_finite(
                            f"loss became {loss_sum / micro_all}",
                            state,
                            epoch,
                            args,
                            last_checkpoint["path"],
                        )

                    scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        model.parameters(), args.max_grad_norm
                    )
                    if not scaler.is_enabled() and not math.isfinite(float(grad_norm)):
                        # With a grad scaler inf gradients just skip the step; without one
                        # they would turn every weight into NaN.
                        draw_curves(final=True)
                        raise_non_finite(
                            f"the gradient norm became {float(grad_norm)}",
                            state,
                            epoch,
                            args,
                            last_checkpoint["path"],
                        )
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.global_step += 1
                    state.batches_done = i + 1
                    state.running += loss_sum
                    state.running_n += int(micro_all)
                    state.tokens_seen += int(tokens_all)
                    step = state.global_step

                    if step % curve_every == 0 or step == total_steps:
                        state.record_curve(
                            {
                                "step": step,
                                "loss": loss_sum / micro_all,
                                "lm_loss": lm_sum / micro_all,
                                "mc_loss": mc_sum / micro_all,
                                "lr": scheduler.get_last_lr()[0],
                                "grad_norm": float(grad_norm),
                            }
                        )
                    if show_running_loss and not args.silent:
                        bar.set_postfix(loss=f"{state.running / state.running_n:.3f}")
                    if writer and step % max(1, args.logging_steps) == 0:
                        elapsed = time.perf_counter() - started
                        writer.add_scalar("loss", state.running / state.running_n, step)
                        writer.add_scalar("lm_loss", lm_sum / micro_all, step)
                        writer.add_scalar("mc_loss", mc_sum / micro_all, step)
                        writer.add_scalar("lr", scheduler.get_last_lr()[0], step)
                        writer.add_scalar("grad_norm", float(grad_norm), step)
                        writer.add_scalar(
                            "tokens_per_s", state.tokens_seen / max(elapsed, 1e-9), step
                        )
                    if step % max(1, args.logging_steps) == 0 or step == total_steps:
                        state.record(
                            {"global_step": step, "train_loss": state.running / state.running_n}
                        )
                        state.running, state.running_n = 0.0, 0
                    if args.save_steps > 0 and step % args.save_steps == 0:
                        save_checkpoint(f"checkpoint-{step}")
                    if (
                        evaluate
                        and args.evaluate_during_training
                        and args.evaluate_during_training_steps > 0
                        and step % args.evaluate_during_training_steps == 0
                    ):
                        if evaluate_now():
                            break
                    stop_now(stop)
                bar.close()
                if state.stopped_early:
                    break
                # End of the epoch: evaluation and samples, then the epoch counts as done.
                samples(f"After epoch {epoch + 1} (step {state.global_step})")
                if evaluate and args.evaluate_during_training and args.evaluate_each_epoch:
                    evaluate_now()
                state.epoch, state.batches_done = epoch + 1, 0
                if args.save_model_every_epoch:
                    save_checkpoint(f"checkpoint-{state.global_step}-epoch-{epoch + 1}")
                if not state.stopped_early:
                    stop_now(stop)
        except TrainingError as err:
            # What was done so far, for report.md (the run's details are never returned).
            err.details = dict(state.history, train_seconds=time.perf_counter() - started)
            raise
        except torch.OutOfMemoryError as err:
            raise TrainingError(
                f"CUDA out of memory at step {state.global_step + 1} with micro-batches of "
                f"{plan.micro_batch_size} examples x {args.num_candidates} candidates: set "
                "train_batch_size='auto' (finds the largest micro-batch that fits and reaches "
                "the same effective batch with gradient accumulation), or a smaller "
                "train_batch_size with a larger gradient_accumulation_steps; fp16=True also "
                "saves memory."
            ) from err

    state.train_seconds = time.perf_counter() - started
    draw_curves(final=True)
    if not args.no_save and ctx.is_main:
        save(output_dir, model)
        (out / "training_progress_scores.json").write_text(
            json.dumps(state.history, indent=2), encoding="utf-8"
        )
    if writer:
        writer.close()
    distributed.barrier(ctx)  # nobody returns before the model is saved
    details = dict(
        state.history, stopped_early=state.stopped_early, train_seconds=state.train_seconds
    )
    return state.global_step, details


def adopt_learning_rate(optimizer, scheduler, learning_rate: float, announce: bool) -> None:
    """On resume, a learning_rate other than the checkpoint's replaces its peak (the schedule's
    shape and position stay): the way out of a NaN is resuming with a lower one."""
    if all(math.isclose(base, learning_rate) for base in scheduler.base_lrs):
        return
    if announce:
        print(f"learning_rate {scheduler.base_lrs[0]:g} -> {learning_rate:g} from here on")
    scheduler.base_lrs = [learning_rate] * len(scheduler.base_lrs)
    for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def raise_non_finite(
    what: str, state: TrainingState, epoch: int, args: ConvAIArgs, last_checkpoint: Path | None
) -> None:
    """Stop on a NaN/inf before the optimizer step, so no checkpoint ever holds its damage."""
    kept = (
        f"The last good checkpoint is {last_checkpoint} (step "
        f"{(checkpoints.read_marker(last_checkpoint) or {}).get('global_step')}); resume "
        "from it with a lower learning rate (--resume --set learning_rate=...; "
        "resume_from_checkpoint=True in Python), or start again with one if the loss "
        "was already climbing there."
        if last_checkpoint
        else "No checkpoint had been written yet."
    )
    raise TrainingError(
        f"{what} at step {state.global_step + 1} (epoch {epoch + 1}); training stopped "
        f"before that step changed any weight. Lower learning_rate (now {args.learning_rate}) "
        f"or check the data. {kept}"
    )


def eval_and_maybe_stop(
    evaluate: Callable[[], dict],
    state: TrainingState,
    args: ConvAIArgs,
    model,
    save: Callable,
    writer,
    ctx: DistContext | None = None,
    device: torch.device | None = None,
) -> bool:
    """Evaluate, keep the best model, and say whether early stopping should end training.

    Under DDP every process evaluates the same weights on the whole evaluation set, and rank
    0's decision is broadcast: processes that stopped at different steps would hang.
    """
    stop = evaluate_and_decide(evaluate, state, args, model, save, writer)
    if ctx is not None and device is not None:
        stop = distributed.broadcast_flag(stop, ctx, device)
    state.stopped_early = stop
    return state.stopped_early


def evaluate_and_decide(
    evaluate: Callable[[], dict],
    state: TrainingState,
    args: ConvAIArgs,
    model,
    save: Callable,
    writer,
) -> bool:
    """One evaluation: record it, save the best model, and decide on early stopping."""
    results = evaluate()
    model.train()
    numeric = {k: v for k, v in results.items() if isinstance(v, int | float)}
    state.record(
        {
            "eval_global_step": state.global_step,
            **{f"eval_{k}" if not k.startswith("eval_") else k: v for k, v in numeric.items()},
        }
    )
    if writer:
        for key, value in numeric.items():
            writer.add_scalar(f"eval/{key}", value, state.global_step)
    metric_name = args.early_stopping_metric
    if metric_name not in results:
        raise TrainingError(
            f"early_stopping_metric {metric_name!r} is not an evaluation result; "
            f"choose one of {sorted(numeric)}"
        )
    value = float(results[metric_name])
    better = state.best_metric is None or (
        state.best_metric - value > args.early_stopping_delta
        if args.early_stopping_metric_minimize
        else value - state.best_metric > args.early_stopping_delta
    )
    if better:
        state.best_metric = value
        state.best_step = state.global_step
        state.evals_without_improvement = 0
        if args.save_best_model and not args.no_save:
            save(args.best_model_dir, model)
        return False
    state.evals_without_improvement += 1
    if args.use_early_stopping and state.evals_without_improvement >= args.early_stopping_patience:
        if not args.silent and distributed.is_main_process():
            print(
                f"Early stopping: {metric_name} has not improved for "
                f"{state.evals_without_improvement} evaluations (best {state.best_metric:.4f})."
            )
        state.stopped_early = True
        return True
    return False


def tensorboard_writer(args: ConvAIArgs, output_dir: str, purge_step: int | None = None):
    """A SummaryWriter in tensorboard_dir (default: OUTPUT_DIR/runs), or None if unavailable.

    A resumed run passes ``purge_step`` (its first step), so TensorBoard drops what the
    interrupted run logged after its checkpoint instead of drawing those steps twice.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    log_dir = args.tensorboard_dir or str(Path(output_dir) / "runs")
    return SummaryWriter(log_dir=log_dir, purge_step=purge_step)
