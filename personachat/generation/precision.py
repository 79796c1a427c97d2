"""The weights decoding runs on: the model itself, or on the CPU a bf16 copy (``cpu_bf16``),
optionally with weight-only int8 / int4 linear layers (``cpu_quantize``), made once."""

from __future__ import annotations

import copy
import weakref

import torch

from personachat.model.device import use_cpu_bf16

_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decoding_model(model: torch.nn.Module, options, device) -> torch.nn.Module:
    """What ``generate_replies`` decodes with, given ``options.cpu_bf16`` and
    ``options.cpu_quantize``: quantization only on top of bf16 decoding (its kernels are
    slower than fp32 without bf16 in hardware; a warning says it was not used)."""
    if torch.device(device).type != "cpu" or not use_cpu_bf16(options.cpu_bf16):
        if options.cpu_quantize != "none" and torch.device(device).type == "cpu":
            from personachat.generation.quantize import warn_quantize_without_bf16

            warn_quantize_without_bf16(options.cpu_quantize)
        return model
    return decoding_copy(model, options.cpu_quantize)


def decoding_copy(model: torch.nn.Module, quantize: str = "none") -> torch.nn.Module:
    """A bf16 copy of ``model`` for decoding, its linear layers quantized to ``quantize``
    ("int8" / "int4"; "none": bf16), kept while its weights stay the same: made again after
    an optimizer step or a loaded state dict changes them.

    Why a copy and not autocast: under ``inference_mode`` autocast does not cache its casts,
    so every decoding step would convert every weight matrix to bf16 again (measured 5x
    slower than fp32 on SmolLM2); the copy converts them once.
    """
    weights = tuple((p.data_ptr(), p._version) for p in model.parameters())
    kept = _COPIES.get(model, {})
    if kept.get(quantize, (None,))[0] != weights:
        with torch.inference_mode(False), torch.no_grad():  # normal tensors: versions tracked
            decoding = copy.deepcopy(model).eval()
            if quantize != "none":  # from the weights as they are (bf16 would move them)
                from personachat.generation.quantize import quantize_linears

                quantize_linears(decoding, quantize)
            decoding = decoding.to(torch.bfloat16)  # integer codes and packed weights stay
        kept = {quantize: (weights, decoding)}  # one copy per model: the latest kind asked
        _COPIES[model] = kept
    return kept[quantize][1]
