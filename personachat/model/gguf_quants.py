"""llama.cpp's block formats for ``export --gguf-q8_0`` / ``--gguf-q4_1``, and whether a 4-bit
file of a fine-tune still holds the fine-tune.

Both formats cut each row into blocks of 32 weights and store every block on its own, byte for
byte as ggml's reference quantizers (``quantize_row_q8_0_ref``, ``quantize_row_q4_1_ref``)
write them:

- Q8_0 (34 bytes a block): a float16 scale ``d = max|x| / 127``, then 32 int8 ``round(x / d)``.
- Q4_1 (20 bytes a block): float16 ``d = (max - min) / 15`` and ``m = min``, then 32 4-bit
  ``q = floor((x - min) / d + 0.5)`` (at most 15) packed two a byte: weight ``j`` in the low
  nibble of byte ``j``, weight ``j + 16`` in its high nibble.

A 4-bit step is coarse: ``d`` is a fifteenth of the block's range. A LoRA fine-tune changes a
weight by far less than that, so after rounding most blocks come out exactly as the base
model's (SmolLM2-135M with a persona LoRA: 99.995 % of blocks, issue 24) and the file is the
base model again. ``finetune_in_4bit`` measures that before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32
Q8_0, Q4_1 = "q8_0", "q4_1"
BLOCK_BYTES = {Q8_0: 34, Q4_1: 20}
# --gguf (f32), --gguf-f16, --gguf-q8_0, --gguf-q4_1: how a GGUF file stores the matrices
FORMATS = ("f32", "f16", Q8_0, Q4_1)
# the 4-bit file is refused when more of the blocks the fine-tune changed than this come out
# identical to the base model's (or its update is below half a 4-bit step): the file would
# then mostly be the base model
MOSTLY_BASE = 0.5


def quantizable(shape: tuple[int, ...]) -> bool:
    """Whether a tensor is stored in a block format: matrices whose rows are whole blocks
    (vectors, like the norms, stay float32; other matrices float16, as llama.cpp's converter
    does)."""
    return len(shape) == 2 and shape[-1] % BLOCK == 0


def _blocks(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(weight, dtype=np.float32).reshape(-1, BLOCK)


def _roundf(values: np.ndarray) -> np.ndarray:
    """C's ``roundf``: halves away from zero (numpy's ``round`` goes to even)."""
    return np.copysign(np.floor(np.abs(values) + np.float32(0.5)), values)


def _inverse(scale: np.ndarray) -> np.ndarray:
    safe = np.where(scale == 0, np.float32(1), scale)
    return np.where(scale == 0, np.float32(0), np.float32(1) / safe).astype(np.float32)


def quantize(weight: np.ndarray, kind: str) -> np.ndarray:
    """``weight`` (rows × a multiple of 32) as ``kind`` blocks: uint8, rows × bytes a row."""
    rows = weight.shape[0]
    x = _blocks(weight)
    if kind == Q8_0:
        scale = (np.abs(x).max(axis=1) / np.float32(127)).astype(np.float32)
        q = _roundf(x * _inverse(scale)[:, None]).astype(np.int8)
        packed = [scale.astype(np.float16).view(np.uint8).reshape(-1, 2), q.view(np.uint8)]
    elif kind == Q4_1:
        low, high = x.min(axis=1), x.max(axis=1)
        scale = ((high - low) / np.float32(15)).astype(np.float32)
        level = (x - low[:, None]) * _inverse(scale)[:, None] + np.float32(0.5)
        q = np.minimum(15, np.trunc(level).astype(np.int8)).astype(np.uint8)
        nibbles = q[:, :16] | (q[:, 16:] << 4)
        packed = [
            scale.astype(np.float16).view(np.uint8).reshape(-1, 2),
            low.astype(np.float16).view(np.uint8).reshape(-1, 2),
            nibbles,
        ]
    else:
        raise ValueError(f"unknown block format {kind!r}; {Q8_0} and {Q4_1} are written")
    return np.concatenate(packed, axis=1).reshape(rows, -1)


def dequantize(data: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 weights ``kind`` blocks ``data`` stand for (what llama.cpp computes with)."""
    blocks = np.ascontiguousarray(data).reshape(-1, BLOCK_BYTES[kind])
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    if kind == Q8_0:
        values = scale * blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    else:
        low = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        nibbles = blocks[:, 4:]
        q = np.concatenate([nibbles & 15, nibbles >> 4], axis=1).astype(np.float32)
        values = scale * q + low
    return values.reshape(shape)


def stored_weight(weight: np.ndarray, kind: str) -> np.ndarray:
    """``weight`` as a GGUF file of format ``kind`` (f32, f16, q8_0, q4_1) holds it, back in
    float32: the reference the written file is checked against."""
    if kind == "f32" or weight.ndim < 2:
        return weight.astype(np.float32)
    if kind in BLOCK_BYTES and quantizable(weight.shape):
        return dequantize(quantize(weight, kind), kind, weight.shape)
    return weight.astype(np.float16).astype(np.float32)


@dataclass(frozen=True)
class FinetuneIn4Bit:
    """How much of a fine-tune a 4-bit file keeps, over the matrices the fine-tune changed."""

    changed_tensors: int
    blocks: int
    identical_blocks: int
    update_to_half_step: float  # median over the changed weights of |update| / (d / 2)

    @property
    def identical_fraction(self) -> float:
        return self.identical_blocks / self.blocks if self.blocks else 1.0

    @property
    def mostly_base(self) -> bool:
        """Most changed blocks round to the base's, or 4-bit rounding (up to half a step per
        weight) moves the typical weight further than the fine-tune did: either way the file
        holds the base model plus rounding noise larger than the fine-tune."""
        return self.identical_fraction > MOSTLY_BASE or self.update_to_half_step < 1

    def describe(self) -> str:
        return (
            f"in the {self.changed_tensors} weight matrices the fine-tune changed, "
            f"{self.identical_fraction:.3%} of the {self.blocks:,} 4-bit blocks "
            f"({self.identical_blocks:,}) come out identical to the base model's, and the "
            f"merged update is {self.update_to_half_step:.3g}× half a 4-bit step (median "
            "over the changed weights; below 1×, 4-bit rounding moves a weight further than "
            "the fine-tune did)"
        )


def finetune_in_4bit(base: dict[str, np.ndarray], tuned: dict[str, np.ndarray]) -> FinetuneIn4Bit:
    """Quantize the fine-tune's and the base's matrices (same names) to Q4_1 and compare them
    block by block; only matrices the fine-tune changed count."""
    changed = blocks = identical = 0
    ratios = []
    for name, after in tuned.items():
        before = base.get(name)
        if before is None or before.shape != after.shape or not quantizable(after.shape):
            continue
        if np.array_equal(before, after):
            continue
        changed += 1
        mine, theirs = quantize(after, Q4_1), quantize(before, Q4_1)
        same = (mine.reshape(-1, BLOCK_BYTES[Q4_1]) == theirs.reshape(-1, 20)).all(axis=1)
        blocks += same.size
        identical += int(same.sum())
        x = _blocks(before)
        half_step = ((x.max(axis=1) - x.min(axis=1)) / np.float32(30))[:, None]
        update = np.abs(_blocks(after) - x)
        moved = update > 0
        ratios.append((update / np.where(half_step == 0, np.inf, half_step))[moved])
    median = float(np.median(np.concatenate(ratios))) if ratios else 0.0
    return FinetuneIn4Bit(changed, blocks, identical, median)
