"""Setting a run up: the ``Run`` the loop steps through.

``set_up`` puts the model on its device, plans the micro-batches (probing the GPU for
``train_batch_size="auto"``), builds the length-grouped loader, wraps the loss for DDP and
``torch.compile``, and makes the optimizer, schedule and grad scaler. (The checks that fail
fast, before any data is read, are in ``preflight``.)
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from personachat.args import ConvAIArgs
from personachat.encoding.batching import LengthGroupedBatchSampler
from personachat.encoding.dataset import collate
from personachat.model.device import autocast_dtype
from personachat.model.heads import LossOutput, double_heads_loss
from personachat.train import distributed, optim
from personachat.train.autobatch import (
    DEFAULT_MARGIN,
    BatchPlan,
    plan_batches,
    probe_eval_batch,
    probe_train_micro_batch,
)
from personachat.train.distributed import DistContext
from personachat.train.errors import TrainingError
from personachat.train.state import Run, SkipBatches, StepSums, TrainingHooks, total_steps


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
    size = probe_eval_batch(
        objective, dataset, pad, device, autocast_dtype(device, args.fp16, args.cpu_bf16)
    )
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
    model, tokenizer, dataset, args: ConvAIArgs, device, output_dir, ctx, hooks: TrainingHooks
) -> Run:
    """Everything the loop needs in this process, before resuming or starting clean."""
    check_options(args, hooks)
    device = place(model, args, device, ctx)
    amp_dtype = autocast_dtype(device, args.fp16, args.cpu_bf16)
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
    scheduler = optim.make_scheduler(optimizer, args, total_steps(args, sampler.steps_per_epoch))
    # What must not change between a run and its resumption (else the batches differ).
    run_plan = {
        "examples": len(dataset),
        "micro_batch_size": plan.micro_batch_size,
        "accumulation_steps": plan.accumulation_steps,
        "world_size": ctx.world_size,
        "seed": args.manual_seed or 0,
        "group_by_length": args.group_by_length,
        "num_train_epochs": args.num_train_epochs,
        "max_steps": max(args.max_steps, 0),
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


def check_options(args: ConvAIArgs, hooks: TrainingHooks) -> None:
    """Options that need something else: reduce_on_plateau needs evaluations to react to."""
    evaluating = hooks.on_evaluate is not None and args.evaluate_during_training
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
