"""A llama.cpp GGUF file of an exported Llama-family model (``personachat export --gguf``).

The file holds what llama.cpp's own converter writes for a Llama (or Qwen2) checkpoint with
a byte-level BPE tokenizer: the architecture's hyperparameters, the weights under llama.cpp's
tensor names (``gguf``'s name map, the one transformers' reader inverts), the vocabulary,
merges and token kinds, the special token ids and the chat template. The matrices are float32,
float16, or llama.cpp's Q8_0 / Q4_1 blocks (``gguf_quants``); norms stay float32, as llama.cpp
keeps them.

Two details decide whether llama.cpp reads it as personachat does. For the ``llama``
architecture llama.cpp stores the query and key projections with each head's rows reordered
(rotary halves interleaved), and readers undo it (``permute_rotary_rows``). And
``tokenizer.ggml.pre`` must be a name llama.cpp knows (``LLAMACPP_PRE_NAMES``) whose regexes
split text as the tokenizer does: llama.cpp refuses an unknown name, while transformers' reader
accepts any.

The file is then read back through transformers (``from_pretrained(..., gguf_file=...)``),
its tokenizer splitting text as llama.cpp does for the file's pre-tokenizer name, and kept only
if its logits equal the exported model's (rounded as the file stores it) within float rounding
and its tokenizer gives the same ids (``verify_gguf``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from personachat.errors import PersonachatError
from personachat.model.families import FAMILIES, family
from personachat.model.gguf_quants import BLOCK_BYTES, FORMATS, quantizable, quantize

SUPPORTED = tuple(t for t, f in FAMILIES.items() if f.gguf_architecture)  # llama, qwen2
LOGITS_TOLERANCE = 1e-4  # relative to the largest logit; float32 rounding is far below
SAMPLE_TEXTS = (
    "hello , how are you today ? i work as a nurse .",
    "I LOVE pizza!!  And 42 cats...\n\tnew line",
    "in 2024 i ran 10,000 m ; it's 3.5 km , isn't it ?",
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


def gguf_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """``(llama.cpp name, float32 array)`` of every weight, in the file's row order."""
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
        yield name, data


def stored(data: np.ndarray, kind: str) -> tuple[np.ndarray, object]:
    """A float32 tensor as a ``kind`` file stores it: (array, ggml type or None for plain
    float arrays). Vectors stay float32; block formats take matrices of whole 32-weight rows
    and store the others in float16, as llama.cpp's converter does."""
    import gguf

    if data.ndim < 2 or kind == "f32":
        return data, None
    if kind in BLOCK_BYTES and quantizable(data.shape):
        return quantize(data, kind), gguf.GGMLQuantizationType[kind.upper()]
    return data.astype(np.float16), None


def gguf_arch(model_type: str):
    import gguf

    name = family(model_type).gguf_architecture
    return next(arch for arch, known in gguf.MODEL_ARCH_NAMES.items() if known == name)


# Every pre-tokenizer name llama.cpp accepts for a BPE vocabulary (``tokenizer.ggml.pre``),
# mirroring the name checks in llama.cpp's src/llama-vocab.cpp (``llama_vocab::impl::load``,
# 2026): any other name makes llama.cpp refuse the file ("unknown pre-tokenizer type").
# transformers' GGUF reader accepts any name, so the export checks against this list itself.
LLAMACPP_PRE_NAMES = frozenset(
    """default minicpm5 llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2
    jina-v5-nano deepseek-llm deepseek-coder deepseek-v3 spark2_5 youtu falcon mpt starcoder
    gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert
    jais-2 gemma4 granite-embed-multi-311m sarvam-moe jina-v1-en jina-v2-code roberta-bpe
    whitespace refact command-r qwen2 deepseek-r1-qwen kormo f2llmv2 qwen35 stablelm2 olmo
    dbrx smaug-bpe poro-chat glm4 chatglm-bpe viking jais tekken smollm codeshell bloom
    gpt3-finnish exaone exaone4 exaone-moe chameleon minerva-7b megrez gpt-4o llama4 kanana2
    talkie granite-embed-multi-97m tiny_aya cohere2moe superbpe trillion granite-docling
    bailingmoe bailingmoe2 llada-moe seed-coder hunyuan hunyuan-dense hy_v4 joyai-llm kimi-k2
    ufakzeka grok-2 afmoe laguna minimax-m2 solar-open mellum2""".split()
)


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp pre-tokenizer the exporter writes: the steps of a ``tokenizer.json``
    pre-tokenizer that split text exactly as llama.cpp's regexes for that name do
    (``llm_tokenizer_bpe`` in llama-vocab.cpp), and whether llama.cpp takes a word found whole
    in the vocabulary without merging (``ignore_merges``)."""

    name: str
    steps: tuple[tuple, ...]
    ignore_merges: bool = False


def _split_steps(name: str) -> tuple[tuple, ...]:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    return (("Split", GGUF_PRE_TOKENIZER_SPLITS[name]), ("ByteLevel", False))


def written_pre_tokenizers() -> tuple[PreTokenizer, ...]:
    """The splits ``--gguf`` recognizes, each under its llama.cpp name: GPT-2's byte-level
    regex (``gpt-2``); digits one by one, then GPT-2's regex (``smollm``: llama.cpp splits
    ``\\p{N}`` first, then GPT-2's regex); Qwen2's and Llama 3's split regexes."""
    return (
        PreTokenizer("gpt-2", (("ByteLevel", True),)),
        PreTokenizer("smollm", (("Digits", True), ("ByteLevel", True))),
        PreTokenizer("qwen2", _split_steps("qwen2")),
        PreTokenizer("llama-bpe", _split_steps("llama-bpe"), ignore_merges=True),
    )


def pre_tokenizer_steps(pre: dict | None) -> tuple[tuple, ...] | None:
    """A ``tokenizer.json`` pre-tokenizer as comparable steps (None: a step we do not map)."""
    steps = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre]
    out = []
    for step in steps or []:
        kind = (step or {}).get("type")
        if kind == "ByteLevel" and not step.get("add_prefix_space", False):
            out.append(("ByteLevel", bool(step.get("use_regex", True))))
        elif kind == "Digits":
            out.append(("Digits", bool(step.get("individual_digits", False))))
        elif kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            out.append(("Split", (step.get("pattern") or {}).get("Regex")))
        else:
            return None
    return tuple(out) or None


def pre_tokenizer_name(pre: dict | None, ignore_merges: bool = False) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for how the tokenizer splits text: the one
    whose regexes give the same pieces (``written_pre_tokenizers``)."""
    steps = pre_tokenizer_steps(pre)
    for known in written_pre_tokenizers():
        if known.steps == steps and known.ignore_merges == bool(ignore_merges):
            return known.name
    raise GGUFExportError(
        "--gguf writes byte-level BPE tokenizers that split text as GPT-2, SmolLM, Llama 3 or "
        "Qwen2 do, and this tokenizer splits it another way; export without --gguf"
    )


def llamacpp_pre_tokenizer(name: str):
    """The ``tokenizers`` pre-tokenizer that splits text as llama.cpp does for ``name``."""
    from tokenizers import Regex, pre_tokenizers

    if name not in LLAMACPP_PRE_NAMES:
        raise GGUFExportError(
            f"tokenizer.ggml.pre {name!r} is not a pre-tokenizer llama.cpp knows: llama.cpp "
            "refuses the file ('unknown pre-tokenizer type'); export again with this version"
        )
    known = {p.name: p for p in written_pre_tokenizers()}.get(name)
    if known is None:
        raise GGUFExportError(f"tokenizer.ggml.pre {name!r} is not one --gguf writes")
    steps = []
    for kind, value in known.steps:
        if kind == "ByteLevel":
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=value))
        elif kind == "Digits":
            steps.append(pre_tokenizers.Digits(individual_digits=value))
        else:
            steps.append(pre_tokenizers.Split(Regex(value), behavior="isolated"))
    return pre_tokenizers.Sequence(steps)


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
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"), model.get("ignore_merges", False))
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


def write_gguf(path: Path, model, tokenizer, eos_id: int, kind: str = "f32") -> Path:
    """Write ``model`` (a plain Llama/Qwen2 ``*ForCausalLM``) and its tokenizer to ``path``,
    the matrices as ``kind`` (``FORMATS``); ``eos_id``: the token that ends a reply."""
    import gguf

    if kind not in FORMATS:
        raise GGUFExportError(f"GGUF format {kind!r}: choose one of {', '.join(FORMATS)}")
    config = model.config
    check_gguf_exportable(config)
    size = model.get_input_embeddings().num_embeddings
    vocabulary(tokenizer, size)  # refused before the file is opened
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf_arch(config.model_type)])
    writer.add_name(path.stem)
    file_types = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}
    writer.add_file_type(gguf.LlamaFileType[file_types.get(kind, "MOSTLY_Q4_1")])
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
    add_tokenizer(writer, tokenizer, size, eos_id)
    for name, data in gguf_tensors(model):
        array, raw_dtype = stored(data, kind)
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def add_tokenizer(writer, tokenizer, size: int, eos_id: int) -> None:
    """The tokenizer's keys, as llama.cpp's loader reads them (llama-vocab.cpp): model
    ``gpt2`` (byte-level BPE), the pre-tokenizer name, tokens with their kinds, merges as
    "left right" strings, special ids, no automatic BOS, the chat template."""
    tokens, kinds, merges, pre = vocabulary(tokenizer, size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges(merges)
    special = {
        writer.add_bos_token_id: tokenizer.bos_token_id,
        writer.add_eos_token_id: eos_id,
        # the end of a turn; llama.cpp otherwise guesses it from token texts such as
        # <|im_end|> or <|endoftext|> (whichever its hash map yields first)
        writer.add_eot_token_id: eos_id,
        writer.add_pad_token_id: tokenizer.pad_token_id,
        writer.add_unk_token_id: tokenizer.unk_token_id,
    }
    for add, token_id in special.items():
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(False)  # the chat template writes every special token itself
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def verify_gguf(path: Path, model, tokenizer, prompts: list[list[int]]) -> float:
    """Read ``path`` back through transformers and compare it with ``model`` (as written:
    the caller passes the model with its matrices rounded as the file stores them): the
    logits of ``prompts`` and some random ids, and the tokenizer on sample texts, split as
    llama.cpp splits for the file's ``tokenizer.ggml.pre`` (which must be a name llama.cpp
    knows). Returns the largest logit difference; raises GGUFExportError where they differ."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        back = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
        back_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        raise GGUFExportError(f"transformers cannot read the GGUF file back ({err})") from err
    # transformers reads any name, and reads names it has no split for as GPT-2's
    back_tokenizer.backend_tokenizer.pre_tokenizer = llamacpp_pre_tokenizer(file_pre_name(path))
    check_same_tokens(tokenizer, back_tokenizer, prompts)
    worst = largest_logit_difference(model, back, prompts)
    if worst > LOGITS_TOLERANCE:
        raise GGUFExportError(
            f"the GGUF file read back through transformers gives logits that differ from the "
            f"exported model's by {worst:.2e} (relative; allowed {LOGITS_TOLERANCE:.0e}), so it "
            "was not kept; export without --gguf and convert with llama.cpp's tools"
        )
    return worst


def file_pre_name(path: Path) -> str:
    """The ``tokenizer.ggml.pre`` a GGUF file states."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return str(field.contents()) if field is not None else ""


def check_same_tokens(tokenizer, back_tokenizer, prompts: list[list[int]]) -> None:
    """The read-back tokenizer splits the sample texts (and the first prompt) as ours does."""
    for text in [*SAMPLE_TEXTS, tokenizer.decode(prompts[0]) if prompts else ""]:
        mine = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = back_tokenizer(text, add_special_tokens=False)["input_ids"]
        if mine != theirs:
            raise GGUFExportError(
                f"the GGUF file's tokenizer splits {text[:40]!r} differently ({theirs[:12]} "
                f"against {mine[:12]}); export without --gguf"
            )


def largest_logit_difference(model, back, prompts: list[list[int]]) -> float:
    """The largest logit difference (relative to the largest logit) between ``model`` and
    ``back`` on ``prompts`` and two rows of random ids."""
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
    return worst
