"""The weights decoding runs on: the model itself, or on the CPU a copy made once — bf16
(``cpu_bf16``), optionally with weight-only int8 / int4 linear layers (``cpu_quantize``), or,
where decoding stays fp32, fp32 with fbgemm's fp16 / int8 weight layers."""

from __future__ import annotations

import copy
import weakref

import torch

from personachat.model.device import use_cpu_bf16

_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decoding_model(model: torch.nn.Module, options, device) -> torch.nn.Module:
    """What ``generate_replies`` decodes with, given ``options.cpu_bf16`` and
    ``options.cpu_quantize``. On the CPU with bf16: a bf16 copy, its layers quantized as
    asked. On the CPU in fp32 (no bf16 in hardware): the model itself, or with
    ``cpu_quantize`` an fp32 copy whose linear layers read fp16 or int8 weights through
    fbgemm (int4 has no fp32 kernel: int8, with a warning). Elsewhere (CUDA): the model."""
    if torch.device(device).type != "cpu":
        return model
    if use_cpu_bf16(options.cpu_bf16):
        return decoding_copy(model, options.cpu_quantize)
    kind = options.cpu_quantize
    if kind == "none":
        return model
    from personachat.generation.quantize import fp32_kernels_available, warn_no_fp32_kernel

    if not fp32_kernels_available():
        warn_no_fp32_kernel(
            kind,
            "this torch build has no fbgemm kernels for fp32 activations (they are in x86 "
            "builds); decoding in plain fp32",
        )
        return model
    if kind == "int4":
        warn_no_fp32_kernel(
            kind,
            "4-bit kernels need bf16 decoding (cpu_bf16: true, or auto on a CPU with AVX-512 "
            "BF16 / AMX); decoding with int8 weights and fp32 activations instead",
        )
    return decoding_copy(model, kind, torch.float32)


def decoding_copy(
    model: torch.nn.Module, quantize: str = "none", dtype: torch.dtype = torch.bfloat16
) -> torch.nn.Module:
    """A ``dtype`` copy of ``model`` for decoding (bf16, or fp32 for the fbgemm layers), its
    linear layers quantized to ``quantize`` ("int8" / "int4" / "fp16"; "none": as they are),
    kept while its weights stay the same: made again after an optimizer step or a loaded
    state dict changes them.

    Why a copy and not autocast: under ``inference_mode`` autocast does not cache its casts,
    so every decoding step would convert every weight matrix to bf16 again (measured 5x
    slower than fp32 on SmolLM2); the copy converts them once.
    """
    weights = tuple((p.data_ptr(), p._version) for p in model.parameters())
    key = (quantize, dtype)
    kept = _COPIES.get(model, {})
    if kept.get(key, (None,))[0] != weights:
        with torch.inference_mode(False), torch.no_grad():  # normal tensors: versions tracked
            decoding = copy.deepcopy(model).eval()
            if quantize != "none":  # from the weights as they are (bf16 would move them)
                from personachat.generation.quantize import quantize_linears

                quantize_linears(decoding, quantize, dtype)
            decoding = decoding.to(dtype)  # integer codes and packed weights stay
        kept = {key: (weights, decoding)}  # one copy per model: the latest kind asked
        _COPIES[model] = kept
    return kept[key][1]
