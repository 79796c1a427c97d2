"""Which examples go into which batch: shuffled, length-grouped, split across processes.

Padding a batch to its own longest input (``encoding.collate``) only pays off when the
inputs of a batch have similar lengths. So one epoch is planned like this:

1. shuffle every example index (seeded by ``seed`` and the epoch);
2. cut the shuffled order into mega-chunks of ``mega_batches`` global batches and sort each
   chunk by length, longest first, so neighbours have similar lengths but the chunk is still
   a random draw from the whole data;
3. cut the result into *global* batches, the examples of one optimizer step
   (``micro_batch_size * accumulation_steps * world_size``), and shuffle their order, so the
   model does not see the lengths in a pattern. The batch holding the longest input goes
   first: if anything runs out of memory, it does so in the first step, not after an hour;
4. cut each global batch into micro-batches; process ``rank`` takes micro-batches
   ``a * world_size + rank`` for ``a = 0, 1, ...``.

Every process computes the same plan from the same seed, so the processes need no
communication to agree on disjoint data, and a run on N processes sees exactly the
micro-batches a single process sees with N times the accumulation steps.

Planning on global batches (not micro-batches) is also what keeps ``train_batch_size=8`` and
``train_batch_size=4, gradient_accumulation_steps=2`` on the same examples per step.
With ``group_by_length=False`` step 2 and the longest-first move are skipped: a plain shuffle.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import torch


def plan_global_batches(
    num_examples: int,
    global_batch_size: int,
    seed: int,
    epoch: int = 0,
    lengths: Sequence[int] | None = None,
    mega_batches: int = 50,
) -> list[list[int]]:
    """The epoch's optimizer steps as lists of example indices; every index exactly once.

    With ``lengths`` the batches are length-grouped (see the module docstring); without, the
    order is a plain seeded shuffle. Only the last batch may be smaller than
    ``global_batch_size``, and it stays last so that step boundaries are the same on every
    process and for every split of the batch into micro-batches.
    """
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if lengths is not None and len(lengths) != num_examples:
        raise ValueError(f"{len(lengths)} lengths for {num_examples} examples")
    rng = random.Random(f"personachat-batches:{seed}:{epoch}")
    order = list(range(num_examples))
    rng.shuffle(order)
    if lengths is None:
        return [order[i : i + global_batch_size] for i in range(0, num_examples, global_batch_size)]

    chunk = global_batch_size * max(1, mega_batches)
    grouped: list[int] = []
    for start in range(0, num_examples, chunk):
        # sorted() is stable, so equal lengths keep their shuffled order.
        grouped += sorted(order[start : start + chunk], key=lengths.__getitem__, reverse=True)
    batches = [
        grouped[i : i + global_batch_size] for i in range(0, num_examples, global_batch_size)
    ]
    last = batches.pop() if batches and len(batches[-1]) < global_batch_size else None
    rng.shuffle(batches)
    if batches:
        longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
        batches[0], batches[longest] = batches[longest], batches[0]
    return batches + ([last] if last else [])


def split_global_batch(
    batch: Sequence[int], micro_batch_size: int, world_size: int = 1, rank: int = 0
) -> list[list[int]]:
    """The micro-batches of one global batch that process ``rank`` runs, in order.

    A full batch splits into micro-batches of exactly ``micro_batch_size``. A short (last)
    batch splits into ``ceil(n / (micro_batch_size * world_size))`` micro-batches per process,
    as even as possible, so every process runs the same number of forward/backward passes
    (DDP needs that). Only when the batch has fewer examples than there are processes does a
    process get a repeat of an example from the same batch.
    """
    n = len(batch)
    per_rank = max(1, math.ceil(n / (micro_batch_size * world_size)))
    parts = per_rank * world_size
    if n < parts:  # fewer examples than micro-batches: repeat some, never leave one empty
        batch = [batch[i % n] for i in range(parts)]
        n = parts
    size, extra = divmod(n, parts)
    bounds = [0]
    for p in range(parts):
        bounds.append(bounds[-1] + size + (p < extra))
    micro = [list(batch[bounds[p] : bounds[p + 1]]) for p in range(parts)]
    return [micro[a * world_size + rank] for a in range(per_rank)]


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """A DataLoader ``batch_sampler``: this process's micro-batches for one epoch.

    Call ``set_epoch(epoch)`` before each epoch for a new shuffle (as with
    ``DistributedSampler``). ``len()`` is the number of micro-batches per epoch, the same on
    every process; ``steps_per_epoch`` the number of optimizer steps.
    """

    def __init__(
        self,
        num_examples: int,
        micro_batch_size: int,
        accumulation_steps: int = 1,
        lengths: Sequence[int] | None = None,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        mega_batches: int = 50,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if micro_batch_size < 1 or accumulation_steps < 1:
            raise ValueError("micro_batch_size and accumulation_steps must be >= 1")
        self.num_examples = num_examples
        self.micro_batch_size = micro_batch_size
        self.accumulation_steps = accumulation_steps
        self.lengths = lengths
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.mega_batches = mega_batches
        self.epoch = 0

    @property
    def global_batch_size(self) -> int:
        """Examples per optimizer step, over all processes."""
        return self.micro_batch_size * self.accumulation_steps * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.global_batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        return plan_global_batches(
            self.num_examples,
            self.global_batch_size,
            self.seed,
            self.epoch,
            self.lengths,
            self.mega_batches,
        )

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield from split_global_batch(batch, self.micro_batch_size, self.world_size, self.rank)

    def __len__(self) -> int:
        full, rest = divmod(self.num_examples, self.global_batch_size)
        last = math.ceil(rest / (self.micro_batch_size * self.world_size)) if rest else 0
        return full * self.accumulation_steps + last
