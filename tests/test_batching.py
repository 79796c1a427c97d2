"""Length-grouped batching and the automatic batch-size search, without a model."""

from __future__ import annotations

import random
import statistics

import pytest

from personachat.encoding.batching import (
    LengthGroupedBatchSampler,
    plan_global_batches,
    split_global_batch,
)
from personachat.train.autobatch import largest_fitting, plan_batches


def persona_chat_like_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [max(20, int(rng.gauss(110, 35))) for _ in range(n)]


def padding_share(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of the padded batch tensors that is padding."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths) / padded


def epoch(sampler: LengthGroupedBatchSampler) -> list[list[int]]:
    return list(sampler)


@pytest.mark.parametrize("n", [1, 7, 64, 1000, 1001])
@pytest.mark.parametrize("grouped", [True, False])
def test_every_example_comes_exactly_once_per_epoch(n, grouped):
    lengths = persona_chat_like_lengths(n)
    sampler = LengthGroupedBatchSampler(
        n, micro_batch_size=8, accumulation_steps=2, lengths=lengths if grouped else None, seed=3
    )
    batches = epoch(sampler)

    assert sorted(i for b in batches for i in b) == list(range(n))
    assert len(batches) == len(sampler)
    assert all(0 < len(b) <= 8 for b in batches)


def test_grouped_batches_need_far_less_padding_than_random_ones():
    lengths = persona_chat_like_lengths(4000)
    grouped = epoch(LengthGroupedBatchSampler(4000, 16, lengths=lengths, seed=0))
    shuffled = epoch(LengthGroupedBatchSampler(4000, 16, lengths=None, seed=0))

    assert padding_share(grouped, lengths) < 0.02
    assert padding_share(shuffled, lengths) > 0.2


def test_grouped_batches_are_still_shuffled_and_start_with_the_longest_input():
    lengths = persona_chat_like_lengths(4000)
    batches = epoch(LengthGroupedBatchSampler(4000, 16, lengths=lengths, seed=0))
    batch_max = [max(lengths[i] for i in b) for b in batches]

    assert batch_max[0] == max(lengths)
    # Not sorted: long and short batches alternate in no order (rank correlation near 0).
    positions = list(range(len(batch_max)))
    assert abs(statistics.correlation(positions, batch_max)) < 0.2


def test_the_plan_is_deterministic_per_seed_and_epoch():
    lengths = persona_chat_like_lengths(500)

    def plan(seed, epoch_number):
        sampler = LengthGroupedBatchSampler(500, 8, lengths=lengths, seed=seed)
        sampler.set_epoch(epoch_number)
        return epoch(sampler)

    assert plan(1, 0) == plan(1, 0)
    assert plan(1, 0) != plan(2, 0)
    assert plan(1, 0) != plan(1, 1)


@pytest.mark.parametrize("n", [64, 100, 3])
@pytest.mark.parametrize("grouped", [True, False])
def test_processes_get_disjoint_slices_that_together_cover_the_data(n, grouped):
    lengths = persona_chat_like_lengths(n) if grouped else None
    world = 4
    per_rank = [
        epoch(LengthGroupedBatchSampler(n, 4, 2, lengths=lengths, seed=5, world_size=world, rank=r))
        for r in range(world)
    ]

    # The same number of micro-batches everywhere, or DDP would wait for ever.
    assert len({len(b) for b in per_rank}) == 1
    seen = [i for batches in per_rank for b in batches for i in b]
    assert set(seen) == set(range(n))
    if n >= world:  # repeats only to give each process at least one example
        assert sorted(seen) == list(range(n))


def test_n_processes_see_the_micro_batches_of_one_process_accumulating_n_times_more():
    lengths = persona_chat_like_lengths(96)
    single = epoch(LengthGroupedBatchSampler(96, 4, accumulation_steps=4, lengths=lengths))
    ranks = [
        epoch(
            LengthGroupedBatchSampler(
                96, 4, accumulation_steps=2, lengths=lengths, world_size=2, rank=r
            )
        )
        for r in range(2)
    ]

    # Single-process step s runs micro-batches 4s..4s+3; rank r runs 4s+r and 4s+2+r.
    for step in range(96 // 16):
        mine = single[4 * step : 4 * step + 4]
        assert ranks[0][2 * step : 2 * step + 2] == [mine[0], mine[2]]
        assert ranks[1][2 * step : 2 * step + 2] == [mine[1], mine[3]]


def test_a_batch_of_8_and_two_accumulated_batches_of_4_see_the_same_examples_per_step():
    lengths = persona_chat_like_lengths(50)
    big = epoch(LengthGroupedBatchSampler(50, 8, 1, lengths=lengths, seed=1))
    small = epoch(LengthGroupedBatchSampler(50, 4, 2, lengths=lengths, seed=1))

    # 50 = 6 steps of 8 + a last step of 2, which the batch-4 run takes as one micro-batch.
    small_steps = [small[2 * s] + small[2 * s + 1] for s in range(6)] + [small[12]]
    assert len(small) == 13
    assert [sorted(b) for b in big] == [sorted(step) for step in small_steps]


def test_only_the_last_global_batch_is_short_and_it_comes_last():
    batches = plan_global_batches(103, 10, seed=0, lengths=persona_chat_like_lengths(103))
    assert [len(b) for b in batches] == [10] * 10 + [3]


def test_a_short_last_batch_is_split_evenly_between_processes():
    assert split_global_batch(list(range(5)), 4, world_size=2, rank=0) == [[0, 1, 2]]
    assert split_global_batch(list(range(5)), 4, world_size=2, rank=1) == [[3, 4]]
    assert split_global_batch([7], 4, world_size=2, rank=1) == [[7]]


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 6, 17, 32, 33, 100, 1000])
@pytest.mark.parametrize("upper", [1, 32, 64, 4096])
def test_the_search_finds_the_largest_batch_that_fits(limit, upper):
    probes = []

    def fits(batch_size):
        probes.append(batch_size)
        return batch_size <= limit

    assert largest_fitting(fits, upper) == min(limit, upper)
    assert len(probes) == len(set(probes))  # no size probed twice
    assert max(probes) <= upper
    assert len(probes) <= 2 * upper.bit_length() + 1


def test_the_search_reports_0_when_nothing_fits():
    assert largest_fitting(lambda b: False, 64) == 0


@pytest.mark.parametrize(
    "fitting, target, world, expected",
    [
        (20, 32, 1, (16, 2)),  # two steps of 16, not 20 + 12
        (64, 32, 1, (32, 1)),  # never a micro-batch larger than asked for
        (7, 32, 1, (7, 5)),  # 35: as close to 32 as 5 steps allow
        (1, 32, 1, (1, 32)),
        (16, 32, 2, (16, 1)),  # two processes of 16
        (5, 32, 4, (4, 2)),  # 4 processes x 4 x 2
    ],
)
def test_accumulation_reaches_about_the_asked_effective_batch(fitting, target, world, expected):
    plan = plan_batches(fitting, target, world)
    assert (plan.micro_batch_size, plan.accumulation_steps) == expected
    assert plan.micro_batch_size <= fitting
    assert target <= plan.effective_batch_size < target + world * plan.accumulation_steps


@pytest.mark.parametrize("max_tokens", [512, 30])
def test_dataset_lengths_are_the_built_inputs_lengths_without_building_them(max_tokens):
    from personachat.encoding.dataset import dataset_from_dialogs
    from personachat.encoding.inputs import ATTR_TO_SPECIAL_TOKEN, SpecialIds
    from personachat.model.scratch import train_tokenizer

    from .conftest import make_dialogs

    dialogs = make_dialogs()
    tokenizer = train_tokenizer(
        [s for d in dialogs for u in d["utterances"] for s in u["history"] + u["candidates"]], 300
    )
    tokenizer.add_special_tokens(ATTR_TO_SPECIAL_TOKEN)
    dataset = dataset_from_dialogs(
        dialogs,
        tokenizer,
        SpecialIds.from_tokenizer(tokenizer),
        num_candidates=2,
        max_history=1,
        max_tokens=max_tokens,
        personality_permutations=2,
    )

    built = [
        max(len(c["input_ids"]) for c in dataset[i]["candidates"]) for i in range(len(dataset))
    ]
    assert dataset.lengths == built
    assert len(set(built)) > 1
