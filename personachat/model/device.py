"""Where tensors live and in which precision they are computed: one place for both."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a batch on ``device`` (asynchronously from pinned memory on CUDA)."""
    return {k: v.to(device, non_blocking=device.type == "cuda") for k, v in batch.items()}


def autocast_dtype(device: torch.device, fp16: bool, cpu_bf16: bool = False) -> torch.dtype | None:
    """On CUDA with ``fp16``: bf16 where the GPU supports it, else fp16. On the CPU with
    ``cpu_bf16``: bf16 (fast where the CPU has AVX-512 BF16 / AMX). Else None: full precision."""
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16 else None
    if device.type != "cuda" or not fp16:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """The one autocast context: mixed precision in ``dtype``, or a no-op for None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
