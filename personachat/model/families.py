"""The model seam: how each model family runs its body, its LM head and its multiple-choice
head. Nothing outside this module asks which family a model is: the rest reads the family's
record.

- GPT-2 and OpenAI GPT load as transformers' ``*DoubleHeadsModel`` (so existing checkpoints,
  simpletransformers folders and ``gpt_personachat_cache`` load unchanged); token types are
  the speaker tokens' embeddings, added by the model itself.
- Any other causal LM (Llama, Qwen2, Mistral, GPT-NeoX, ...) loads as
  ``AutoModelForCausalLM`` with a ``ChoiceHead`` attached: dropout and one linear layer over
  the final hidden state at each candidate's last token, as GPT-2's head. It is saved inside
  the model's safetensors (keys ``multiple_choice_head.*``, which ``AutoModelForCausalLM``
  skips, so the folder stays a plain causal LM) and restored by ``attach_choice_head``.
  Token types, where used (``token_types: embed``), are added through ``inputs_embeds`` as
  the same embedding rows GPT-2 uses: the speaker tokens' own.

``config.personachat_token_types`` ("embed" or "none") records in the saved ``config.json``
whether a model was trained with token types, so a reloaded model runs the way it was trained.

What differs between families is written once, in ``FAMILIES``: one ``Family`` record per
``config.model_type`` (``family(model)`` looks it up; any other causal LM gets
``OTHER_CAUSAL_LM``). Adding a family is one entry here, plus a block adapter in
``generation/blocks.py`` if it should get the static decoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from personachat.errors import PersonachatError


@dataclass(frozen=True)
class Family:
    """What personachat needs to know about one model family (one ``config.model_type``).

    - ``double_heads_class``: the transformers class that loads it with both heads (GPT-2,
      OpenAI GPT); None: ``AutoModelForCausalLM`` plus a ``ChoiceHead``.
    - ``lm_class``: the plain LM class an export saves it as; None: the causal LM as it is.
    - ``lora_targets``: LoRA's default layers; None: the attention projections found by name.
    - ``decoder``: the block adapter of the static decoder (``generation.blocks``): "gpt2" or
      "llama"; "cached" for the model's own forward with its KV cache, "reencode" for a
      model without one.
    - ``gguf_architecture``: llama.cpp's architecture name for ``export --gguf``; None: not
      written.
    - ``body_attribute``: where the transformer body sits on the LM ("transformer" for the
      double-heads models); None: ``get_decoder()``.
    """

    double_heads_class: str | None = None
    lm_class: str | None = None
    lora_targets: tuple[str, ...] | None = None
    decoder: str = "cached"
    gguf_architecture: str | None = None
    body_attribute: str | None = None


FAMILIES = {
    "gpt2": Family(
        double_heads_class="GPT2DoubleHeadsModel",
        lm_class="GPT2LMHeadModel",
        lora_targets=("c_attn", "c_proj"),
        decoder="gpt2",
        body_attribute="transformer",
    ),
    "openai-gpt": Family(
        double_heads_class="OpenAIGPTDoubleHeadsModel",
        lm_class="OpenAIGPTLMHeadModel",
        lora_targets=("c_attn", "c_proj"),
        decoder="reencode",  # no KV cache in transformers
        body_attribute="transformer",
    ),
    "llama": Family(decoder="llama", gguf_architecture="llama"),
    "qwen2": Family(decoder="llama", gguf_architecture="qwen2"),
    "mistral": Family(decoder="llama"),
}
OTHER_CAUSAL_LM = Family()  # GPT-NeoX, Phi, ...: the model's own cached forward
HEAD_PREFIX = "multiple_choice_head."
TOKEN_TYPES_KEY = "personachat_token_types"


class ChoiceHead(nn.Module):
    """Scores each candidate from the hidden state of its last token."""

    def __init__(self, hidden_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor, mc_token_ids: torch.Tensor) -> torch.Tensor:
        """``hidden`` [..., length, width], ``mc_token_ids`` [...] → scores [..., 1]."""
        index = mc_token_ids[..., None, None].expand(*mc_token_ids.shape, 1, hidden.size(-1))
        picked = hidden.gather(-2, index).squeeze(-2)
        return self.summary(self.dropout(picked))


def causal_lm(model) -> nn.Module:
    """The transformers model inside a peft (LoRA) wrapper, or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def family(model_or_type) -> Family:
    """The ``Family`` record of a model (or a peft wrapper of one, or a ``model_type``)."""
    if isinstance(model_or_type, str):
        return FAMILIES.get(model_or_type, OTHER_CAUSAL_LM)
    return FAMILIES.get(causal_lm(model_or_type).config.model_type, OTHER_CAUSAL_LM)


def is_double_heads(model) -> bool:
    """GPT-2 / OpenAI GPT double-heads models carry both heads and take token types."""
    return family(model).double_heads_class is not None


def body(model) -> nn.Module:
    """The transformer body (embeddings, blocks, final norm) of the model's causal LM."""
    lm = causal_lm(model)
    attribute = family(lm).body_attribute
    return getattr(lm, attribute) if attribute else lm.get_decoder()


def uses_token_types(model) -> bool:
    """Whether the model was trained with token types: as its config records, else GPT-2's
    double heads yes (TransferTransfo) and any other causal LM no (a plain chat model)."""
    lm = causal_lm(model)
    default = "embed" if is_double_heads(lm) else "none"
    return getattr(lm.config, TOKEN_TYPES_KEY, default) != "none"


def run_body(model, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None, **kw):
    """The transformer body's output for ``input_ids`` of any leading shape
    ([batch, candidates, length] in training); ``last_hidden_state`` keeps that shape.

    Extra keywords (attention mask, positions, cache) go to the body as they are.
    """
    lm = causal_lm(model)
    types = token_type_ids if uses_token_types(lm) else None
    if is_double_heads(lm):
        return body(lm)(input_ids=input_ids, token_type_ids=types, **kw)
    shape = input_ids.shape
    flat = input_ids.reshape(-1, shape[-1])
    embed = lm.get_input_embeddings()
    x = embed(flat)
    if types is not None:
        x = x + embed(types.reshape(-1, shape[-1]))
    out = lm.get_decoder()(inputs_embeds=x, **kw)
    out.last_hidden_state = out.last_hidden_state.reshape(*shape, -1)
    return out


def lm_head(model) -> nn.Module:
    return causal_lm(model).get_output_embeddings()


def choice_head(model) -> nn.Module:
    return causal_lm(model).multiple_choice_head


def attach_choice_head(model, folder: str | Path | None = None) -> None:
    """Give a causal LM without one a ``ChoiceHead``, with its saved weights from ``folder``
    when the folder has them (a personachat-trained model), else freshly initialised."""
    lm = causal_lm(model)
    if is_double_heads(lm) or hasattr(lm, "multiple_choice_head"):
        return
    head = ChoiceHead(lm.config.hidden_size)
    lm.multiple_choice_head = head.to(lm.device)
    saved = saved_head_state(Path(folder)) if folder is not None else {}
    if saved:
        head.load_state_dict(saved)


def saved_head_state(folder: Path) -> dict[str, torch.Tensor]:
    """``multiple_choice_head.*`` tensors of a saved folder (single file or shards)."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = {weight_map[k] for k in weight_map if k.startswith(HEAD_PREFIX)}
    else:
        files = {"model.safetensors"} if (folder / "model.safetensors").is_file() else set()
    state = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                if key.startswith(HEAD_PREFIX):
                    state[key[len(HEAD_PREFIX) :]] = f.get_tensor(key)
    return state


def model_class_for(model_type: str, config_type: str):
    """The transformers class that loads a ``config_type`` checkpoint asked for as
    ``model_type`` ("gpt2", "gpt", "auto", or a causal-LM type such as "llama")."""
    import transformers
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    wanted = {"gpt": "openai-gpt"}.get(model_type, model_type)
    double_heads = family(config_type).double_heads_class
    if wanted not in ("auto", config_type) and not (
        family(wanted).double_heads_class and double_heads
    ):
        raise FamilyError(
            f"model_type {model_type!r} was given but the checkpoint's config.json says "
            f"{config_type!r}; pass model_type {config_type!r} or 'auto'"
        )
    if double_heads:
        return getattr(transformers, double_heads)
    encoder = config_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if config_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or encoder:
        raise FamilyError(
            f"the checkpoint is a {config_type!r} model, which is not a causal (decoder-only) "
            "language model; personachat fine-tunes models such as gpt2, llama, qwen2, "
            "mistral, gpt_neox or smollm2"
        )
    return transformers.AutoModelForCausalLM


class FamilyError(PersonachatError, ValueError):
    """The checkpoint is not a model family personachat can fine-tune."""
