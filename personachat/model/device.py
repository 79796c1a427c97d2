"""Where tensors live and in which precision they are computed: one place for both."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping

import torch


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a batch on ``device`` (asynchronously from pinned memory on CUDA)."""
    return {k: v.to(device, non_blocking=device.type == "cuda") for k, v in batch.items()}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX). There bf16 matrix
    products run 2-4x faster than fp32; elsewhere torch emulates them: on an AVX2-only AMD
    EPYC a 1280x576 @ 576x1536 product took 2.1 s in bf16 against 29 ms in fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def use_cpu_bf16(setting: bool | str) -> bool:
    """``cpu_bf16`` resolved: ``"auto"`` is bf16 only where the CPU has it in hardware;
    ``True`` is bf16 anyway (with one warning where it is emulated, hence slow)."""
    if setting == "auto":
        return cpu_has_native_bf16()
    if setting is True and not cpu_has_native_bf16():
        _warn_emulated_bf16()
    return bool(setting)


@functools.cache
def _warn_emulated_bf16() -> None:
    warnings.warn(
        "cpu_bf16=True on a CPU without AVX-512 BF16 / AMX: torch emulates bf16 here, many "
        "times slower than fp32; set cpu_bf16: auto (bf16 only where the CPU has it)",
        stacklevel=3,
    )


def autocast_dtype(
    device: torch.device, fp16: bool, cpu_bf16: bool | str = False
) -> torch.dtype | None:
    """On CUDA with ``fp16``: bf16 where the GPU supports it, else fp16. On the CPU with
    ``cpu_bf16`` (see ``use_cpu_bf16``): bf16. Else None: full precision."""
    if device.type == "cpu":
        return torch.bfloat16 if use_cpu_bf16(cpu_bf16) else None
    if device.type != "cuda" or not fp16:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """The one autocast context: mixed precision in ``dtype``, or a no-op for None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
