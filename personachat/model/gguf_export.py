"""A llama.cpp GGUF file of an exported Llama-family model (``personachat export --gguf``).

The file holds what llama.cpp's own converter writes for a Llama (or Qwen2) checkpoint with
a byte-level BPE tokenizer: the architecture's hyperparameters, the weights under llama.cpp's
tensor names (``gguf``'s name map, the one transformers' reader inverts), the vocabulary,
merges and token kinds, the special token ids and the chat template. Unquantized: float32,
or float16 for matrices (norms stay float32, as llama.cpp keeps them).

One detail matters for the numbers: for the ``llama`` architecture llama.cpp stores the query
and key projections with each head's rows reordered (rotary halves interleaved), and readers
(llama.cpp, transformers) undo it. ``permute_rotary_rows`` does that reordering.

The file is then read back through transformers (``from_pretrained(..., gguf_file=...)``) and
kept only if its logits equal the exported model's within float rounding and its tokenizer
splits text the same way (``verify_gguf``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from personachat.errors import PersonachatError

SUPPORTED = ("llama", "qwen2")
LOGITS_TOLERANCE = 1e-4  # relative to the largest logit; float32 rounding is far below
SAMPLE_TEXTS = (
    "hello , how are you today ? i work as a nurse .",
    "I LOVE pizza!!  And 42 cats...\n\tnew line",
)


class GGUFExportError(PersonachatError, ValueError):
    """The model cannot be written as a GGUF file, or the file did not read back the same."""


def check_gguf_exportable(config) -> None:
    """Refuse what this writer does not cover, naming what works."""
    kind = config.model_type
    if kind not in SUPPORTED:
        raise GGUFExportError(
            f"--gguf writes Llama-family models (model types {', '.join(SUPPORTED)}: e.g. "
            f"SmolLM2, Llama, Qwen2.5), and this model is a {kind!r} model; export without "
            "--gguf (the folder works with transformers, vLLM and TGI), or convert the "
            "folder with llama.cpp's convert_hf_to_gguf.py"
        )
    rope = dict(getattr(config, "rope_parameters", None) or {})
    problems = []
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope scaling {rope.get('rope_type')!r}")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"activation {config.hidden_act!r}")
    if kind == "llama" and (getattr(config, "attention_bias", False) or config.mlp_bias):
        problems.append("bias terms in the attention or MLP")
    if problems:
        raise GGUFExportError(
            f"--gguf covers plain {kind} models, and this one has {', '.join(problems)}; "
            "export without --gguf, or convert the folder with llama.cpp's convert_hf_to_gguf.py"
        )


def permute_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order for a ``llama`` query/key projection: within each head, the
    first and second halves of the rotary dimensions are interleaved."""
    rows = weight.shape[0]
    split = weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
    return split.swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model, half: bool) -> Iterator[tuple[str, np.ndarray]]:
    """``(llama.cpp name, array)`` of every weight, in the file's layout."""
    import gguf

    config = model.config
    arch = gguf_arch(config.model_type)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # readers tie the output to the embedding when the file has none
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFExportError(
                f"tensor {hf_name!r} has no llama.cpp name; export without --gguf"
            )
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if config.model_type == "llama" and ".attn_q." in name:
            data = permute_rotary_rows(data, config.num_attention_heads)
        elif config.model_type == "llama" and ".attn_k." in name:
            data = permute_rotary_rows(data, config.num_key_value_heads)
        if half and data.ndim > 1:
            data = data.astype(np.float16)
        yield name, data


def gguf_arch(model_type: str):
    import gguf

    return {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[model_type]


def vocabulary(tokenizer, size: int) -> tuple[list[str], list[int], list[str], str]:
    """Tokens (byte-level spelling), their llama.cpp kinds, merges and the pre-tokenizer name
    of a byte-level BPE tokenizer; vocabulary rows beyond the tokenizer are padding."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise GGUFExportError(
            f"--gguf writes byte-level BPE tokenizers, and this one is {model.get('type')!r}; "
            "export without --gguf"
        )
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    tokens: list[str | None] = [None] * size
    kinds = [int(gguf.TokenType.NORMAL)] * size
    for token, index in model["vocab"].items():
        if index < size:
            tokens[index] = token
    for added in spec.get("added_tokens", []):
        if added["id"] >= size:
            raise GGUFExportError(
                f"token {added['content']!r} (id {added['id']}) lies beyond the model's "
                f"{size} embedding rows; export without --gguf"
            )
        tokens[added["id"]] = added["content"]
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        kinds[added["id"]] = int(kind)
    for index, token in enumerate(tokens):
        if token is None:
            tokens[index], kinds[index] = f"[PAD{index}]", int(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, kinds, merges, pre


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for how the tokenizer splits text: GPT-2's
    byte-level regex, or a split pattern transformers' GGUF reader knows by name."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        if not pre.get("add_prefix_space", False):
            return "gpt2"
    steps = (pre or {}).get("pretokenizers") or []
    if pre and pre.get("type") == "Sequence" and steps and steps[0].get("type") == "Split":
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
            if regex == pattern:
                return name
    raise GGUFExportError(
        "--gguf writes byte-level BPE tokenizers that split text as GPT-2, Llama 3 or Qwen2 do, "
        "and this tokenizer splits it another way; export without --gguf"
    )


def write_gguf(path: Path, model, tokenizer, eos_id: int, half: bool = False) -> Path:
    """Write ``model`` (a plain Llama/Qwen2 ``*ForCausalLM``) and its tokenizer to ``path``."""
    import gguf

    config = model.config
    check_gguf_exportable(config)
    size = model.get_input_embeddings().num_embeddings
    tokens, kinds, merges, pre = vocabulary(tokenizer, size)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf_arch(config.model_type)])
    writer.add_name(path.stem)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if half else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 1e4))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges(merges)
    special = {
        writer.add_bos_token_id: tokenizer.bos_token_id,
        writer.add_eos_token_id: eos_id,
        writer.add_pad_token_id: tokenizer.pad_token_id,
        writer.add_unk_token_id: tokenizer.unk_token_id,
    }
    for add, token_id in special.items():
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(False)  # the chat template writes every special token itself
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)
    for name, data in gguf_tensors(model, half):
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def verify_gguf(path: Path, model, tokenizer, prompts: list[list[int]]) -> float:
    """Read ``path`` back through transformers and compare it with ``model`` (as written:
    with float16 matrices, ``model`` rounded the same way by the caller): the logits of
    ``prompts`` and some random ids, and the tokenizer on sample texts. Returns the largest
    logit difference; raises GGUFExportError where they differ."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        back = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
        back_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        raise GGUFExportError(f"transformers cannot read the GGUF file back ({err})") from err
    for text in [*SAMPLE_TEXTS, tokenizer.decode(prompts[0]) if prompts else ""]:
        mine = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = back_tokenizer(text, add_special_tokens=False)["input_ids"]
        if mine != theirs:
            raise GGUFExportError(
                f"the GGUF file's tokenizer splits {text[:40]!r} differently ({theirs[:12]} "
                f"against {mine[:12]}); export without --gguf"
            )
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    random_ids = torch.randint(0, vocab, (2, 24), generator=generator).tolist()
    worst = 0.0
    with torch.no_grad():
        for ids in [*prompts, *random_ids]:
            batch = torch.tensor([ids])
            expected = model(input_ids=batch).logits.float()
            got = back(input_ids=batch).logits.float()
            scale = max(1.0, float(expected.abs().max()))
            worst = max(worst, float((expected - got).abs().max()) / scale)
    if worst > LOGITS_TOLERANCE:
        raise GGUFExportError(
            f"the GGUF file read back through transformers gives logits that differ from the "
            f"exported model's by {worst:.2e} (relative; allowed {LOGITS_TOLERANCE:.0e}), so it "
            "was not kept; export without --gguf and convert with llama.cpp's tools"
        )
    return worst
