"""Before the first step: the checks that fail fast, and the ``Run`` the loop steps through.

A full disk, an unwritable folder, a non-empty output_dir or a batch that cannot fit are
found here, before any data is read or step taken. ``set_up`` then puts the model on its
device, plans the micro-batches (probing the GPU for ``train_batch_size="auto"``), builds the
length-grouped loader, wraps the loss for DDP and ``torch.compile``, and makes the optimizer,
schedule and grad scaler.
"""

from __future__ import annotations

import errno
import math
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from personachat.args import ArgsError, ConvAIArgs
from personachat.encoding.batching import LengthGroupedBatchSampler
from personachat.encoding.dataset import collate
from personachat.errors import PersonachatError
from personachat.model.device import autocast_dtype
from personachat.model.loading import LossOutput, double_heads_loss
from personachat.train import checkpoints, distributed, optim
from personachat.train.autobatch import (
    DEFAULT_MARGIN,
    BatchPlan,
    plan_batches,
    probe_eval_batch,
    probe_train_micro_batch,
)
from personachat.train.distributed import DistContext
from personachat.train.state import Hooks, Run, SkipBatches, StepSums


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


# ----------------------------------------------------------------------------- output_dir
def check_before_training(
    output_dir: str | Path, resume_from_checkpoint, model, args: ConvAIArgs, eval_file
) -> Path | None:
    """The checks that fail fast, before any data is read; returns the checkpoint that
    ``resume_from_checkpoint`` means (None: a fresh run, into an empty or overwritten
    output_dir)."""
    try:
        resume = checkpoints.resolve_resume(resume_from_checkpoint, output_dir)
    except checkpoints.CheckpointError as err:
        raise TrainingError(str(err)) from err
    if resume is None:
        check_output_dir(output_dir, args.overwrite_output_dir)
    preflight(output_dir, model, args)
    if args.evaluate_during_training and eval_file is None:
        raise ArgsError(
            "evaluate_during_training is enabled but eval_file is not given: pass "
            "eval_file=... (--eval-file), or set evaluate_during_training=False"
        )
    return resume


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


def preflight(
    output_dir: str | Path, model, args: ConvAIArgs, free: Callable[[str | Path], int] | None = None
) -> None:
    """Before any data is read or step taken: output_dir must be writable, and its disk must
    hold one checkpoint (``free`` gives the free bytes; ``free_bytes`` by default). Only the
    main process writes there, so only it checks: two torchrun ranks testing one new folder
    at once would remove it from under each other.
    """
    if not distributed.is_main_process():
        return
    check_output_writable(output_dir)
    if not args.no_save:
        needed = checkpoint_bytes(model, args.save_optimizer_and_scheduler)
        available = (free or free_bytes)(output_dir)
        if available < needed:
            raise TrainingError(
                f"only {available / 2**20:.0f} MB free on the disk of {output_dir}, but one "
                f"checkpoint needs about {needed / 2**20:.0f} MB; free some space, choose "
                "another output_dir, or set no_save=True. Nothing was trained."
            )


def free_bytes(path: str | Path) -> int:
    """Free disk space where ``path`` is (or would be created). Tests replace this."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def checkpoint_bytes(model, with_optimizer: bool) -> int:
    """About how many bytes one checkpoint takes: the weights, plus two float32 moments per
    parameter for AdamW, plus a few MB for tokenizer and state files."""
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    moments = 2 * 4 * sum(p.numel() for p in params) if with_optimizer else 0
    return weights + moments + 8 * 2**20


def check_output_writable(output_dir: str | Path) -> None:
    """Write a file in output_dir, or raise TrainingError saying why. Folders created for the
    test are removed again: a run that then fails on its data leaves nothing behind."""
    root = Path(output_dir)
    created = []
    probe = root
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                break  # another process (a torchrun rank doing the same test) is using it
    except OSError as err:
        raise TrainingError(
            f"output_dir {str(root)!r} is not writable ({err.strerror or err}); choose "
            "another output_dir (--output-dir) or fix its permissions. Nothing was trained."
        ) from err


# ----------------------------------------------------------------------------- the loss
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


# ----------------------------------------------------------------------------- batch sizes
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
        raise TrainingError("eval_batch_size='auto' needs a CUDA device; pass a number on CPU")
    objective = TrainingObjective(model, args.lm_coef, args.mc_coef)
    pad = partial(collate, pad_id=pad_id)
    size = probe_eval_batch(objective, dataset, pad, device, autocast_dtype(device, args.fp16))
    if size < 1:
        raise TrainingError(
            "not even one evaluation example of the longest input fits in GPU "
            "memory; use a smaller model or fewer num_candidates"
        )
    if not args.silent and distributed.is_main_process():
        print(f"eval_batch_size='auto': {size} (longest input {max(dataset.lengths)} tokens)")
    return size


# ----------------------------------------------------------------------------- the run
def set_up(
    model, tokenizer, dataset, args: ConvAIArgs, device, output_dir, ctx, hooks: Hooks
) -> Run:
    """Everything the loop needs in this process, before resuming or starting clean."""
    check_options(args, hooks)
    device = place(model, args, device, ctx)
    amp_dtype = autocast_dtype(device, args.fp16)
    objective = TrainingObjective(model, args.lm_coef, args.mc_coef)
    pad = partial(collate, pad_id=tokenizer.pad_token_id)
    plan = batch_plan(objective, dataset, args, device, amp_dtype, ctx, pad)
    sampler, batches, loader = make_loader(dataset, args, plan, ctx, device, pad)
    objective = wrap_for_processes(objective, device, ctx)
    # Shapes change every batch (dynamic padding): compile for dynamic shapes from the start.
    forward = torch.compile(objective, dynamic=True) if args.compile else objective
    if ctx.is_main and ctx.enabled and not args.silent:
        print(
            f"DDP: {ctx.world_size} processes x {plan.micro_batch_size} examples x "
            f"{plan.accumulation_steps} accumulation step(s) = {plan.effective_batch_size} "
            "per step"
        )
    optimizer = optim.make_optimizer(model, args, device)
    scheduler = optim.make_scheduler(
        optimizer, args, sampler.steps_per_epoch * args.num_train_epochs
    )
    # What must not change between a run and its resumption (else the batches differ).
    run_plan = {
        "examples": len(dataset),
        "micro_batch_size": plan.micro_batch_size,
        "accumulation_steps": plan.accumulation_steps,
        "world_size": ctx.world_size,
        "seed": args.manual_seed or 0,
        "group_by_length": args.group_by_length,
        "num_train_epochs": args.num_train_epochs,
    }
    return Run(
        model=model,
        tokenizer=tokenizer,
        args=args,
        device=device,
        ctx=ctx,
        out=Path(output_dir),
        objective=objective,
        forward=forward,
        amp_dtype=amp_dtype,
        plan=plan,
        sampler=sampler,
        batches=batches,
        loader=loader,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        run_plan=run_plan,
        hooks=hooks,
        sums=StepSums(device),
    )


def make_loader(dataset, args: ConvAIArgs, plan: BatchPlan, ctx: DistContext, device, pad):
    """This process's micro-batches: length-grouped and shuffled per epoch (seeded), through
    ``SkipBatches`` so that a resumed run can leave out those already trained on."""
    sampler = LengthGroupedBatchSampler(
        len(dataset),
        plan.micro_batch_size,
        plan.accumulation_steps,
        lengths=getattr(dataset, "lengths", None) if args.group_by_length else None,
        seed=args.manual_seed or 0,
        world_size=ctx.world_size,
        rank=ctx.rank,
    )
    batches = SkipBatches(sampler)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=pad,
        num_workers=args.dataloader_num_workers,
        pin_memory=device.type == "cuda",
    )
    return sampler, batches, loader


def check_options(args: ConvAIArgs, hooks: Hooks) -> None:
    """Options that need something else: reduce_on_plateau needs evaluations to react to."""
    evaluating = hooks.evaluate is not None and args.evaluate_during_training
    if args.scheduler == "reduce_on_plateau" and not evaluating:
        raise TrainingError(
            "scheduler='reduce_on_plateau' halves the learning rate when eval_loss stops "
            "improving during training: set evaluate_during_training=True and give an "
            "eval_file (--eval-file), or choose another scheduler"
        )
    if optim.relative_step(args) and not args.silent and distributed.is_main_process():
        print(
            "optimizer='Adafactor' with adafactor_relative_step=True sets its own step size: "
            "learning_rate and scheduler are not used (set adafactor_relative_step=False "
            "and adafactor_warmup_init=False to use them)"
        )


def place(model, args: ConvAIArgs, device: torch.device, ctx: DistContext) -> torch.device:
    """Put the model in training mode on its device (under torchrun: LOCAL_RANK's GPU)."""
    if device.type == "cuda":
        if ctx.enabled or device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        configure_cuda_math()
    if ctx.enabled and args.manual_seed is not None:
        torch.manual_seed(args.manual_seed + ctx.rank)  # independent dropout per process
    model.to(device).train()
    return device


def configure_cuda_math() -> None:
    """TF32 tensor cores for the float32 matmuls left outside autocast (10-bit mantissa,
    ample for training; cuDNN already allows TF32 by default)."""
    torch.set_float32_matmul_precision("high")


def wrap_for_processes(
    objective: torch.nn.Module, device: torch.device, ctx: DistContext
) -> torch.nn.Module:
    """Under torchrun, DDP around the loss. gradient_as_bucket_view: gradients live in DDP's
    buckets, no second copy (the memory the batch-size probe accounted for). GPT-2 has no
    buffers to broadcast."""
    if not ctx.enabled:
        return objective
    return DistributedDataParallel(
        objective,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
    )


def tensorboard_writer(args: ConvAIArgs, output_dir: str | Path, purge_step: int | None = None):
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
