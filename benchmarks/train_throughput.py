"""Training throughput: personachat's fast path against the classic naive recipe.

Same process, same model object, same examples, timed one after the other:

- fast:  length-grouped batches padded to their own longest input (``batching``), the LM head
         only on the gold reply's labelled positions (``double_heads_loss``), and on CUDA bf16
         autocast (fp16 + grad scaler where bf16 is missing), TF32 matmuls and fused AdamW;
- naive: every example padded to the longest input of the whole dataset, the full
         ``GPT2DoubleHeadsModel(...)`` forward with labels (LM logits for every position of
         every candidate), fp32 without TF32: what simpletransformers' ConvAIModel did.

Both run ``--steps`` optimizer steps of ``--batch-size`` examples on exactly the same
examples (after ``--warmup`` untimed steps on other examples), with AdamW and gradient
clipping. Reported: examples/s, tokens/s (real tokens only: padding does not count), step
time, peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS above the phase's start,
sampled from /proc every 2 ms), padding share, and on CUDA the MFU and the projected time of
one Persona-Chat epoch.

Data: Persona-Chat's training split has 131,438 examples (utterances) in 17,878 dialogs. The
weights are random, so only lengths matter, and lengths are drawn to match Persona-Chat
(documented in ``persona_chat_like_dialogs``); the full epoch is generated so that the naive
path pads to the maximum of a whole epoch, as the classic recipe did, and the timed examples
are a random sample of it. Options follow the classic recipe: ``num_candidates=2``,
``max_history=2``.

    python benchmarks/train_throughput.py                      # CPU: tiny model, < 3 min
    python benchmarks/train_throughput.py --model-size small --device cuda --batch-size 64
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import platform
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch

from personachat.args import ConvAIArgs
from personachat.encoding.batching import LengthGroupedBatchSampler
from personachat.encoding.dataset import PersonaChatDataset, collate
from personachat.encoding.inputs import IGNORE_INDEX, SpecialIds
from personachat.model.device import autocast_dtype
from personachat.train.autobatch import probe_train_micro_batch
from personachat.train.optim import make_optimizer
from personachat.train.setup import TrainingObjective

PERSONA_CHAT_DIALOGS = 17_878
PERSONA_CHAT_EXAMPLES = 131_438
GPT2_VOCAB = 50_257  # + 5 special tokens
NUM_CANDIDATES = 2
MAX_HISTORY = 2
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets; --peak-tflops overrides.
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("A100", 312e12),
]


# ------------------------------------------------------------------ data
def persona_chat_like_dialogs(
    vocab: int,
    seed: int = 0,
    num_dialogs: int = PERSONA_CHAT_DIALOGS,
    num_examples: int = PERSONA_CHAT_EXAMPLES,
) -> list[dict]:
    """Token-id dialogs with Persona-Chat's shape and length distribution (GPT-2 tokens).

    - persona: 4 or 5 sentences (even odds; Persona-Chat averages 4.5), each
      ``round(normal(9, 2))`` tokens clipped to [4, 16];
    - utterances: ``round(lognormal(median 12, sigma 0.35))`` tokens clipped to [3, 40]
      (mean about 13: Persona-Chat's ~11.7 words plus punctuation);
    - dialogs: 7 or 8 bot turns, so that 17,878 dialogs hold exactly 131,438 examples; turn k
      has the 2k+1 previous utterances as history (the partner speaks first), the bot's
      utterance as gold candidate and one distractor of the same length distribution.
    """
    rng = random.Random(seed)
    pool = [rng.randrange(vocab) for _ in range(100_003)]

    def sentence(n: int) -> list[int]:
        start = rng.randrange(len(pool) - n)
        return pool[start : start + n]

    def utterance() -> list[int]:
        return sentence(min(40, max(3, round(rng.lognormvariate(math.log(12), 0.35)))))

    extra = num_examples - 7 * num_dialogs  # dialogs with an 8th turn
    dialogs = []
    for d in range(num_dialogs):
        turns = 8 if d < extra else 7
        persona = [
            sentence(min(16, max(4, round(rng.gauss(9, 2))))) for _ in range(rng.choice((4, 5)))
        ]
        said = [utterance() for _ in range(2 * turns)]
        dialogs.append(
            {
                "personality": persona,
                "utterances": [
                    {"history": said[: 2 * k + 1], "candidates": [utterance(), said[2 * k + 1]]}
                    for k in range(turns)
                ],
            }
        )
    return dialogs


def special_ids(vocab: int) -> SpecialIds:
    return SpecialIds(
        bos=vocab, eos=vocab + 1, speaker1=vocab + 2, speaker2=vocab + 3, pad=vocab + 4
    )


def real_tokens(example: dict) -> int:
    return sum(len(c["input_ids"]) for c in example["candidates"])


def labelled_tokens(example: dict) -> int:
    return sum(sum(t != IGNORE_INDEX for t in c["lm_labels"][1:]) for c in example["candidates"])


# ------------------------------------------------------------------ model
def build_model(size: str, vocab: int):
    """GPT2DoubleHeadsModel with random weights: ``small`` is GPT-2 small's exact config;
    ``tiny`` is the shape of the offline quick config (4 layers, 128 wide, no dropout, fused
    tanh-GELU) with GPT-2's vocabulary."""
    from transformers import GPT2Config, GPT2DoubleHeadsModel

    special = special_ids(vocab)
    ids = {"vocab_size": vocab + 5, "bos_token_id": special.bos, "eos_token_id": special.eos}
    if size == "small":
        config = GPT2Config(**ids)
    else:
        config = GPT2Config(
            **ids,
            n_layer=4,
            n_embd=128,
            n_head=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            summary_first_dropout=0.0,
            activation_function="gelu_pytorch_tanh",
        )
    torch.manual_seed(0)
    return GPT2DoubleHeadsModel(config)


def model_flops(model, examples: list[dict]) -> float:
    """FLOPs the training algorithm needs for ``examples`` (forward + backward = 3 x forward):
    6 x non-embedding parameters per real token, the attention scores 12 x layers x width x
    T^2 per sequence of T tokens (PaLM's formula), and the LM head 6 x width x vocabulary per
    labelled token. Padding and LM logits nobody needs are not model FLOPs."""
    config = model.config
    embeddings = {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    body = sum(p.numel() for p in model.transformer.parameters() if id(p) not in embeddings)
    flops = 0.0
    for ex in examples:
        for c in ex["candidates"]:
            t = len(c["input_ids"])
            flops += 6 * body * t + 12 * config.n_layer * config.n_embd * t * t
        flops += 6 * config.n_embd * config.vocab_size * labelled_tokens(ex)
    return flops


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


# ------------------------------------------------------------------ memory
class PeakMemory:
    """Peak memory of one phase: CUDA's allocator statistics, or on the CPU the process's
    resident set sampled every 2 ms (tracemalloc does not see torch's allocations)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0

    @contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            yield self
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - start
            return
        trim_malloc()
        start = rss_bytes()
        peak = [start]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.002):
                peak[0] = max(peak[0], rss_bytes())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()
            self.peak_bytes = max(peak[0], rss_bytes()) - start


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim_malloc() -> None:
    """Give freed heap back to the OS so the next phase's RSS starts from what is live."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------ the two paths
@dataclass
class Result:
    name: str
    seconds: float
    steps: int
    examples: int
    real_tokens: int
    padded_tokens: int
    peak_bytes: int
    flops: float
    error: str = ""

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / self.seconds


def fast_batches(
    examples: list[dict], lengths: list[int], batch_size: int, seed: int
) -> list[list[dict]]:
    """Length-grouped, shuffled batches (the training sampler)."""
    sampler = LengthGroupedBatchSampler(len(examples), batch_size, lengths=lengths, seed=seed)
    return [[examples[i] for i in b] for b in sampler]


def naive_batches(examples: list[dict], batch_size: int, seed: int) -> list[list[dict]]:
    """Plainly shuffled batches."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [
        [examples[i] for i in order[start : start + batch_size]]
        for start in range(0, len(order), batch_size)
    ]


def collate_to_length(examples: list[dict], pad_id: int, pad_to: int) -> dict[str, torch.Tensor]:
    """``collate`` with every input padded to ``pad_to`` (the dataset's longest input)."""
    filler = {
        "candidates": [
            {
                "input_ids": [pad_id] * pad_to,
                "token_type_ids": [pad_id] * pad_to,
                "lm_labels": [IGNORE_INDEX] * pad_to,
                "mc_token_ids": 0,
            }
        ]
        * len(examples[0]["candidates"]),
        "mc_label": 0,
    }
    padded = collate([*examples, filler], pad_id=pad_id)  # the filler sets the length
    return {k: v[:-1] for k, v in padded.items()}


def fast_step(objective, device, amp_dtype) -> Callable[[dict], torch.Tensor]:
    def step(batch: dict) -> torch.Tensor:
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            return objective(batch).loss

    return step


def naive_step(model, lm_coef: float = 2.0, mc_coef: float = 1.0) -> Callable[[dict], torch.Tensor]:
    def step(batch: dict) -> torch.Tensor:
        out = model(
            input_ids=batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            mc_token_ids=batch["mc_token_ids"],
            labels=batch["lm_labels"],
            mc_labels=batch["mc_labels"],
            use_cache=False,
        )
        return lm_coef * out.loss + mc_coef * out.mc_loss

    return step


def run_phase(
    name: str,
    loss_of: Callable[[dict], torch.Tensor],
    collate_fn,
    model,
    optimizer,
    scaler,
    warmup: list[list[dict]],
    timed: list[list[dict]],
    device: torch.device,
    memory: PeakMemory,
) -> Result:
    """Warm-up steps, then the timed steps: collate, forward, backward, clip, AdamW step."""
    padded = 0

    def train_step(examples: list[dict]) -> None:
        nonlocal padded
        batch = {k: v.to(device, non_blocking=True) for k, v in collate_fn(examples).items()}
        padded += batch["input_ids"].numel()
        loss = loss_of(batch)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    timed_examples = [ex for batch in timed for ex in batch]
    real = sum(real_tokens(ex) for ex in timed_examples)
    try:
        with memory.measure():
            for batch in warmup:
                train_step(batch)
            synchronize(device)
            padded = 0
            started = time.perf_counter()
            for batch in timed:
                train_step(batch)
            synchronize(device)
            seconds = time.perf_counter() - started
    except torch.cuda.OutOfMemoryError as err:
        optimizer.zero_grad(set_to_none=True)
        return Result(
            name,
            math.nan,
            len(timed),
            len(timed_examples),
            real,
            1,
            0,
            0.0,
            error=f"out of memory: {str(err).splitlines()[0]}",
        )
    return Result(
        name,
        seconds,
        len(timed),
        len(timed_examples),
        real,
        padded,
        memory.peak_bytes,
        model_flops(model, timed_examples),
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ report
def report(results: list[Result], peak: float | None) -> str:
    def fmt_bytes(n: int) -> str:
        return f"{n / 2**20:,.0f} MiB"

    def epoch(r: Result) -> str:
        if r.error:
            return "-"
        seconds = PERSONA_CHAT_EXAMPLES / r.examples_per_s
        return f"{seconds / 60:,.1f} min" if seconds < 3 * 3600 else f"{seconds / 3600:,.1f} h"

    rows = [
        "| path | examples/s | real tokens/s | step time | peak memory | padding | MFU "
        "| projected Persona-Chat epoch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.error:
            rows.append(f"| {r.name} | {r.error} | | | | | | |")
            continue
        mfu = f"{r.flops / r.seconds / peak:.1%}" if peak else "-"
        rows.append(
            f"| {r.name} | {r.examples_per_s:,.1f} | {r.tokens_per_s:,.0f} | "
            f"{1000 * r.seconds / r.steps:,.0f} ms | {fmt_bytes(r.peak_bytes)} | "
            f"{1 - r.real_tokens / r.padded_tokens:.0%} | {mfu} | {epoch(r)} |"
        )
    fast, naive = results
    if not fast.error and not naive.error:
        memory = f"{naive.peak_bytes / fast.peak_bytes:.1f}x less" if fast.peak_bytes > 0 else "-"
        rows.append(
            f"| **fast / naive** | **{fast.examples_per_s / naive.examples_per_s:.1f}x** "
            f"| **{fast.tokens_per_s / naive.tokens_per_s:.1f}x** | | {memory} | | | |"
        )
    return "\n".join(rows)


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model-size",
        choices=["tiny", "small"],
        default=None,
        help="tiny: 4 layers x 128 (default on CPU); small: GPT-2 small (default on CUDA)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed optimizer steps per path (default: 20 CPU, 50 CUDA)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: 2 CPU, 10 CUDA)"
    )
    parser.add_argument(
        "--batch-size",
        default=None,
        help="examples per step (default: 8 CPU, 64 CUDA); 'auto' on CUDA: "
        "the probe of train_batch_size='auto'",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=GPT2_VOCAB,
        help="vocabulary without the 5 special tokens (default: GPT-2's)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    parser.add_argument("--no-amp", action="store_true", help="fast path in fp32 on CUDA too")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak bf16 TFLOP/s of the accelerator, for MFU (default: table)",
    )
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)

    cuda = options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    size = options.model_size or ("small" if cuda else "tiny")
    steps = options.steps or (50 if cuda else 20)
    warmup = options.warmup if options.warmup is not None else (10 if cuda else 2)
    vocab = options.vocab_size

    started = time.perf_counter()
    dialogs = persona_chat_like_dialogs(vocab, options.seed)
    special = special_ids(vocab)
    model = build_model(size, vocab).to(device)
    dataset = PersonaChatDataset(
        dialogs, special, NUM_CANDIDATES, MAX_HISTORY, max_tokens=model.config.n_positions
    )
    lengths = dataset.lengths
    pad_to = max(lengths)
    amp = None if options.no_amp else autocast_dtype(device, fp16=True)
    objective = TrainingObjective(model, lm_coef=2.0, mc_coef=1.0)
    if options.batch_size == "auto":
        if not cuda:
            parser.error("--batch-size auto needs CUDA")
        batch_size = probe_train_micro_batch(
            objective, dataset, partial(collate, pad_id=special.pad), device, amp, upper=1024
        )
        print(f"auto batch size: {batch_size}")
    else:
        batch_size = int(options.batch_size or (64 if cuda else 8))
    rng = random.Random(options.seed)
    sample = rng.sample(range(len(dataset)), (steps + warmup) * batch_size)
    warm_ids, timed_ids = sample[: warmup * batch_size], sample[warmup * batch_size :]
    warm_examples = [dataset[i] for i in warm_ids]
    timed_examples = [dataset[i] for i in timed_ids]
    print(
        f"data: {len(dataset):,} Persona-Chat-like examples (longest {pad_to} tokens, mean "
        f"{sum(lengths) / len(lengths):.0f}); {size} model, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
        f"{steps} timed + {warmup} warm-up steps of {batch_size} on {device} "
        f"(setup {time.perf_counter() - started:.0f} s)"
    )

    memory = PeakMemory(device)
    results = []
    # Fast first: on the CPU, RSS the allocator keeps after a phase could only inflate the
    # second phase's figure, and the naive path is the one expected to need more.
    if cuda:
        torch.set_float32_matmul_precision("high")
    forward = torch.compile(objective, dynamic=True) if options.compile else objective
    optimizer = make_optimizer(model, ConvAIArgs(learning_rate=1e-4), device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    results.append(
        run_phase(
            "fast",
            fast_step(forward, device, amp),
            partial(collate, pad_id=special.pad),
            model,
            optimizer,
            scaler,
            fast_batches(warm_examples, [lengths[i] for i in warm_ids], batch_size, options.seed),
            fast_batches(timed_examples, [lengths[i] for i in timed_ids], batch_size, options.seed),
            device,
            memory,
        )
    )
    del optimizer
    if cuda:
        torch.set_float32_matmul_precision("highest")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    results.append(
        run_phase(
            "naive",
            naive_step(model),
            partial(collate_to_length, pad_id=special.pad, pad_to=pad_to),
            model,
            optimizer,
            scaler,
            naive_batches(warm_examples, batch_size, options.seed),
            naive_batches(timed_examples, batch_size, options.seed),
            device,
            memory,
        )
    )

    print(
        f"\nmachine: {describe_machine(device)}; fast path: "
        f"{amp or 'fp32'}{', TF32' if cuda else ''}{', compiled' if options.compile else ''}"
    )
    print(report(results, peak_flops(device, options.peak_tflops)))
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
