"""``train_batch_size="auto"``: the largest micro-batch that fits in GPU memory, then
gradient accumulation up to the effective batch the user asked for.

The classic recipe found "batch size 6" by running out of memory until it stopped. Here the
library does that search once, before training: it runs real training steps (forward,
backward, and memory held for the optimizer's state) on the *longest* inputs of the data,
doubling the batch until one fails, then bisecting. A batch "fits" only if it leaves a
safety margin of the GPU's memory unused, for fragmentation and for what the probe cannot
see (other processes, the allocator's caching). The search itself (``largest_fitting``) is a
pure function of a ``fits(batch_size) -> bool`` callable, tested on the CPU.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from personachat.model.device import autocast, to_device

DEFAULT_MARGIN = 0.10  # share of GPU memory the chosen batch leaves free
MAX_EVAL_BATCH = 512  # evaluation batches beyond this gain nothing but probing time


def largest_fitting(fits: Callable[[int], bool], upper: int) -> int:
    """The largest ``b`` in ``[1, upper]`` with ``fits(b)``; 0 when not even 1 fits.

    Assumes ``fits`` is monotone (if b fits, every smaller batch fits). Doubling from 1 finds a
    failing size in O(log b) probes, bisection then narrows the gap in O(log b) more; no size
    is probed twice, and nothing above ``upper`` is probed.
    """
    if upper < 1 or not fits(1):
        return 0
    good, bad = 1, upper + 1
    while good < upper:
        candidate = min(2 * good, upper)
        if fits(candidate):
            good = candidate
        else:
            bad = candidate
            break
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


@dataclass(frozen=True)
class BatchPlan:
    """Micro-batch per process, accumulation steps, and processes: one optimizer step sees
    ``micro_batch_size * accumulation_steps * world_size`` examples."""

    micro_batch_size: int
    accumulation_steps: int
    world_size: int = 1

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.accumulation_steps * self.world_size


def plan_batches(max_micro_batch: int, target: int, world_size: int = 1) -> BatchPlan:
    """Reach about ``target`` examples per step with micro-batches of at most
    ``max_micro_batch``: the fewest accumulation steps, then the micro-batch evened out
    (32 with at most 20 per micro-batch is 2 x 16, not 20 + 20)."""
    if max_micro_batch < 1 or target < 1 or world_size < 1:
        raise ValueError("max_micro_batch, target and world_size must be >= 1")
    per_process = math.ceil(target / world_size)
    accumulation = math.ceil(per_process / min(max_micro_batch, per_process))
    return BatchPlan(math.ceil(per_process / accumulation), accumulation, world_size)


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Example indices, longest input first: the worst-case batch of size b is the first b."""
    return sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)


def cuda_memory_fits(
    step: Callable[[int], None], device: torch.device, margin: float = DEFAULT_MARGIN
) -> Callable[[int], bool]:
    """Wrap ``step(batch_size)`` (one probe run) into a ``fits`` test for ``largest_fitting``:
    no out-of-memory error and a peak below ``(1 - margin)`` of the GPU's memory."""
    total = torch.cuda.get_device_properties(device).total_memory

    def fits(batch_size: int) -> bool:
        release(device)
        torch.cuda.reset_peak_memory_stats(device)
        out_of_memory = False
        try:
            step(batch_size)
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # the traceback holds tensors; free them outside except
        peak = torch.cuda.max_memory_reserved(device)
        release(device)
        return not out_of_memory and peak <= (1 - margin) * total

    return fits


def release(device: torch.device) -> None:
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()


def probe_train_micro_batch(
    objective: torch.nn.Module,
    dataset,
    collate_fn,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    upper: int,
    margin: float = DEFAULT_MARGIN,
) -> int:
    """Largest training micro-batch (<= upper) that fits on ``device``, on the longest inputs.

    Each probe runs forward and backward of ``objective`` (the model plus its loss) under the
    training autocast, while two fp32 copies of every trainable parameter are held to stand
    for AdamW's state (its ``exp_avg`` and ``exp_avg_sq``); gradients come from the backward
    itself. Weights are not changed: there is no optimizer step, and gradients are dropped.
    """
    order = longest_first(dataset.lengths)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer_state = [torch.zeros_like(p, dtype=torch.float32) for p in params for _ in (0, 1)]
    objective.train()

    def step(batch_size: int) -> None:
        batch = collate_fn([dataset[i] for i in order[:batch_size]])
        batch = to_device(batch, device)
        try:
            with autocast(device, amp_dtype):
                loss = objective(batch).loss
            loss.backward()
        finally:
            for p in params:
                p.grad = None

    try:
        return largest_fitting(cuda_memory_fits(step, device, margin), min(upper, len(order)))
    finally:
        del optimizer_state
        release(device)


def probe_eval_batch(
    objective: torch.nn.Module,
    dataset,
    collate_fn,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    upper: int = MAX_EVAL_BATCH,
    margin: float = DEFAULT_MARGIN,
) -> int:
    """Largest evaluation batch (<= upper) whose forward pass fits, on the longest inputs."""
    order = longest_first(dataset.lengths)
    was_training = objective.training
    objective.eval()

    @torch.no_grad()
    def step(batch_size: int) -> None:
        batch = collate_fn([dataset[i] for i in order[:batch_size]])
        batch = to_device(batch, device)
        with autocast(device, amp_dtype):
            objective(batch)

    try:
        return largest_fitting(cuda_memory_fits(step, device, margin), min(upper, len(order)))
    finally:
        objective.train(was_training)
        release(device)
