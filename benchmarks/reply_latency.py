"""Reply latency: decoding with the KV cache against re-encoding the sequence at every step.

Same process, same model, same prompts. A 4-sentence persona and a 5-utterance history; the
reply is forced to exactly ``--reply-tokens`` tokens (``min_length = max_length``) so both
paths do the same amount of decoding:

- cached: ``personachat.generation.generate.generate_reply`` (prompt encoded once, one step per token);
- naive:  the classic loop: run the model on the whole sequence for every new token, as
          simpletransformers' ``sample_sequence`` did.

Then replies/s of the batch API (``generate_replies``) at batch sizes 1, 8 and 32.

    python benchmarks/reply_latency.py                 # CPU: tiny model, about a minute
    python benchmarks/reply_latency.py --model-size small --device cuda
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from personachat.encoding.inputs import SpecialIds
from personachat.generation.generate import (
    DecodingOptions,
    build_prompt,
    generate_replies,
    generate_reply,
)

PERSONA = [
    "i work as a nurse .",
    "i have two cats .",
    "i love hiking in the mountains .",
    "my favorite food is sushi .",
]
HISTORY = [
    "hi , how are you today ?",
    "i am great , just back from a hike .",
    "oh nice , where did you go ?",
    "up the hills near my house , with my cats .",
    "cats on a hike ? what do you do for a living ?",
]


def build(size: str, device: torch.device):
    """A random-weight GPT-2 (tiny or small shape) with a byte-level tokenizer of its own."""
    from transformers import GPT2Config, GPT2DoubleHeadsModel

    from personachat.encoding.inputs import ATTR_TO_SPECIAL_TOKEN
    from personachat.model.scratch import train_tokenizer

    tokenizer = train_tokenizer(PERSONA + HISTORY, vocab_size=400)
    tokenizer.add_special_tokens(ATTR_TO_SPECIAL_TOKEN)
    shape = (
        dict(n_layer=4, n_embd=128, n_head=4)
        if size == "tiny"
        else dict(n_layer=12, n_embd=768, n_head=12)
    )
    vocab = len(tokenizer) if size == "tiny" else 50262  # small: GPT-2's real head width
    torch.manual_seed(0)
    model = GPT2DoubleHeadsModel(GPT2Config(vocab_size=vocab, n_positions=1024, **shape))
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def naive_reply(
    model, persona, history, special: SpecialIds, options: DecodingOptions, device
) -> list[int]:
    """Re-encode persona + history + reply so far for every new token (no cache)."""
    prompt = build_prompt(persona, history, special, options.max_history, 1024)
    ids, types = list(prompt["input_ids"]), list(prompt["token_type_ids"])
    reply = []
    stop = torch.tensor(sorted(special.stop_ids), device=device)
    for _ in range(options.max_length):
        logits = model(
            input_ids=torch.tensor([ids], device=device),
            token_type_ids=torch.tensor([types], device=device),
        ).logits[0, -1]
        logits[stop] = -float("inf")  # min_length = max_length
        token = int(torch.argmax(logits))
        reply.append(token)
        ids.append(token)
        types.append(special.speaker2)
    return reply


def timed(fn, repeats: int, device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reply-tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=10)
    options_ = parser.parse_args()
    device = torch.device(options_.device)
    model, tokenizer = build(options_.model_size, device)
    special = SpecialIds.from_tokenizer(tokenizer)
    persona = [tokenizer.encode(s) for s in PERSONA]
    history = [tokenizer.encode(s) for s in HISTORY]
    options = DecodingOptions.from_args(
        max_length=options_.reply_tokens,
        min_length=options_.reply_tokens,
        do_sample=False,
        max_history=2,
    )

    cached = generate_reply(model, persona, history, special, options, device)
    naive = naive_reply(model, persona, history, special, options, device)
    assert cached == naive, "the cached and naive paths must produce the same greedy reply"
    t_cached = statistics.median(
        timed(
            lambda: generate_reply(model, persona, history, special, options, device),
            options_.repeats,
            device,
        )
    )
    t_naive = statistics.median(
        timed(
            lambda: naive_reply(model, persona, history, special, options, device),
            options_.repeats,
            device,
        )
    )

    print(
        f"machine: {platform.processor() or platform.machine()}, {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"model {options_.model_size}, reply {options_.reply_tokens} tokens, "
        f"prompt {len(build_prompt(persona, history, special, 2, 1024)['input_ids'])} tokens"
    )
    print("\n| path | median latency per reply | ms per token |\n|---|---:|---:|")
    for name, t in (("KV cache", t_cached), ("re-encode every step", t_naive)):
        print(f"| {name} | {t * 1000:.1f} ms | {t * 1000 / options_.reply_tokens:.2f} |")
    print(f"| **speed-up** | **{t_naive / t_cached:.1f}x** | |")

    print("\n| batch size | replies/s | latency per batch |\n|---:|---:|---:|")
    base = None
    for batch in (1, 8, 32):
        conversations = [(persona, history)] * batch
        t = statistics.median(
            timed(
                lambda c=conversations: generate_replies(model, c, special, options, device),
                max(3, options_.repeats // 3),
                device,
            )
        )
        rate = batch / t
        base = base or rate
        print(f"| {batch} | {rate:.1f} ({rate / base:.1f}x batch 1) | {t * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
