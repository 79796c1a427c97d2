"""LoRA through ``peft``: low-rank adapters on chosen linear layers, everything else frozen
except the multiple-choice head (and, on request, the token embeddings, for new special
tokens), which train fully.

``lora_target_modules`` names layers by the last part of their module path (``q_proj``,
``c_attn``, ...); None picks the attention projections of the family. Saving merges the
adapters into the weights when ``lora_merge_on_save`` is set (a plain model folder any engine
reads), else writes the adapter beside the base model's weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from personachat.errors import PersonachatError
from personachat.model.families import causal_lm, family, is_double_heads

ADAPTER_DIR = "lora"  # a saved folder's unmerged adapter (peft's own files), beside the base
# A checkpoint's trainable tensors (adapters, MC head, trained embeddings): the base weights
# stay those of model_name, so these restore a LoRA run exactly.
LORA_STATE_FILE = "lora_state.safetensors"

# A family without its own LoRA targets (``Family.lora_targets``): every linear layer named
# like these attention projections.
ATTENTION_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "query_key_value", "dense"]


class LoraError(PersonachatError, ValueError):
    """LoRA options that do not fit the model."""


def linear_layer_names(model: nn.Module) -> list[str]:
    """Distinct last path parts of the model's linear layers (what LoRA can target)."""
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D) and "multiple_choice_head" not in name
    }
    return sorted(names)


def target_modules(model: nn.Module, wanted: Sequence[str] | None) -> list[str]:
    """The LoRA targets: ``wanted`` (checked against the model), or the family default."""
    available = linear_layer_names(model)
    if wanted:
        missing = [name for name in wanted if name not in available]
        if missing:
            raise LoraError(
                f"lora_target_modules {list(wanted)}: {missing} not found in this "
                f"{model.config.model_type} model; its linear layers are {available}"
            )
        return list(wanted)
    default = family(model).lora_targets
    return list(default) if default else [name for name in ATTENTION_NAMES if name in available]


def apply_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    dropout: float,
    targets: Sequence[str] | None = None,
    train_embeddings: bool = False,
) -> nn.Module:
    """Wrap ``model`` in a peft LoRA model; returns the wrapper (the caller keeps using it
    in place of the model)."""
    from peft import LoraConfig, get_peft_model

    lm = causal_lm(model)
    chosen = target_modules(lm, targets)
    if not chosen:
        raise LoraError(
            f"no default LoRA targets for a {lm.config.model_type} model; set "
            f"lora_target_modules to some of {linear_layer_names(lm)}"
        )
    to_save = ["multiple_choice_head"]
    if train_embeddings:
        to_save.append(_embedding_name(lm))
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=chosen,
        modules_to_save=to_save,
        fan_in_fan_out=is_double_heads(lm),  # GPT-2's Conv1D stores weights transposed
    )
    return get_peft_model(lm, config)


def _embedding_name(lm: nn.Module) -> str:
    embed = lm.get_input_embeddings()
    for name, module in lm.named_modules():
        if module is embed:
            return name.rsplit(".", 1)[-1]
    raise LoraError("the model's input embedding could not be found for LoRA")


def merged(model: nn.Module) -> nn.Module:
    """A plain model with the adapters folded into its weights (the wrapper stays usable:
    this works on a copy's state, not in place)."""
    import copy

    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()


def with_lora(model: nn.Module, args) -> nn.Module:
    """``model`` wrapped for LoRA training when ``args.lora_r`` > 0 (once), else as it is."""
    if not args.lora_r or hasattr(model, "peft_config"):
        return model
    return apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_targets)


def merged_after_training(model: nn.Module, args) -> nn.Module:
    """With ``lora_merge_on_save``, the trained adapters folded into the weights in place: the
    model is then what was saved, and decodes without the adapters' extra products."""
    if args.lora_merge_on_save and hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` (or the model inside it) has unmerged LoRA layers."""
    return any("lora_A" in name for name, _ in model.named_modules())


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a LoRA run trains, by parameter name (what a checkpoint must restore)."""
    return {
        name: p.detach().contiguous().cpu()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's tensors under the plain names: the frozen base weights without the
    adapters, and the trained copy of every fully trained module (peft's modules_to_save)."""
    plain = {}
    for name, tensor in model.get_base_model().state_dict().items():
        if "lora_" in name or ".original_module." in name:
            continue
        name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        plain[name] = tensor
    return plain


def save_weights(model: nn.Module, folder: Path, merge: bool = True) -> None:
    """The model's weights into ``folder``: a plain model; a LoRA model merged (``merge``),
    else its base weights plus the adapter in ``folder/lora`` (peft's files), which
    ``load_adapter`` puts back on load."""
    if not hasattr(model, "merge_and_unload"):
        model.save_pretrained(folder, safe_serialization=True)
    elif merge:
        merged(model).save_pretrained(folder, safe_serialization=True)
    else:
        base = model.get_base_model()
        base.save_pretrained(folder, state_dict=base_state(model), safe_serialization=True)
        model.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True)


def load_adapter(model: nn.Module, folder: Path | None) -> nn.Module:
    """``model`` with the adapter saved in ``folder/lora`` (trainable: training goes on with
    it), or ``model`` as it is when the folder has none."""
    if folder is None or not (folder / ADAPTER_DIR / "adapter_config.json").is_file():
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, folder / ADAPTER_DIR, is_trainable=True)


def load_trainable_state(model, weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy a LoRA checkpoint's trainable tensors into ``model``; (missing, unexpected)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = [name for name in params if name not in weights]
    unexpected = [name for name in weights if name not in params]
    if not missing and not unexpected:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[name])
    return missing, unexpected
