"""Loading a model and its tokenizer for persona chat, its special tokens, saving it.

GPT-2 (``GPT2DoubleHeadsModel``) and OpenAI GPT (``OpenAIGPTDoubleHeadsModel``) carry a
language-model head and a multiple-choice head that scores each candidate from the hidden
state of its last token; any other causal LM gets a multiple-choice head (``families``). All
come from ``from_pretrained``: a hub id (downloaded by transformers for a user who is online)
or a local folder, including folders written by personachat or simpletransformers. A local
folder is checked before anything is read (``weights``): safetensors files inside it only,
complete, and a config.json that fits them; the classic fine-tuned archive is fetched by
``archives``.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch

from personachat.encoding.inputs import ATTR_TO_SPECIAL_TOKEN
from personachat.fs import write_folder_atomic
from personachat.model.archives import FINETUNED_ARCHIVES, fetch_finetuned_archive
from personachat.model.conventions import (
    chat_template_for_saving,
    forget_gguf_name,
    is_transfertransfo_template,
    write_conventions,
)
from personachat.model.families import (
    TOKEN_TYPES_KEY,
    FamilyError,
    attach_choice_head,
    causal_lm,
    is_double_heads,
    model_class_for,
)
from personachat.model.gguf import gguf_folder, resolve_gguf_name
from personachat.model.lora import load_adapter, save_weights
from personachat.model.weights import (
    ModelLoadError,
    check_config_sizes,
    check_model_folder,
    read_json_file,
    safetensors_elements,
    weights_format,
)
from personachat.text import unicode_problem

# Hub ids simpletransformers users pass for model_type "gpt".
HUB_ALIASES = {"openai-gpt": "openai-community/openai-gpt"}
# The training personas, saved beside the weights: what interact() picks a persona from.
PERSONAS_FILE = "personas.json"


def resolve_device(use_cuda: bool | str, cuda_device: int = -1) -> torch.device:
    """``use_cuda=True`` without CUDA is an error (never a silent CPU run); "auto" picks."""
    if use_cuda == "auto":
        use_cuda = torch.cuda.is_available()
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ModelLoadError(
            "use_cuda=True but CUDA is not available on this machine. Pass use_cuda=False "
            "to run on the CPU (the personachat CLI picks the device itself)."
        )
    return torch.device("cuda" if cuda_device == -1 else f"cuda:{cuda_device}")


def model_class(model_type: str, config_type: str | None = None):
    """The class that loads a checkpoint asked for as ``model_type``: GPT-2 / OpenAI GPT's
    double-heads models, or ``AutoModelForCausalLM`` for "auto" and any transformers
    causal-LM type; ``config_type`` is the checkpoint's own (read from its config.json)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    wanted = {"gpt": "openai-gpt"}.get(model_type, model_type)
    if wanted != "auto" and wanted not in CONFIG_MAPPING_NAMES:
        raise ModelLoadError(
            f"Unknown model_type {model_type!r}; use 'gpt2' (GPT-2 and GPT-2-architecture "
            "models such as distilgpt2 or ruGPT-3-small), 'gpt' (OpenAI GPT), 'auto' (read "
            "from the checkpoint's config.json) or a causal-LM type such as 'llama' or 'qwen2'."
        )
    try:
        return model_class_for(model_type, config_type or ("gpt2" if wanted == "auto" else wanted))
    except FamilyError as err:
        raise ModelLoadError(str(err)) from err


def load_tokenizer(model_type: str, name: str):
    """AutoTokenizer, falling back to the model type's own class for old folders whose
    config.json predates the ``model_type`` key (e.g. gpt_personachat_cache)."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(name)
    except (ValueError, KeyError):
        fallback = "OpenAIGPTTokenizer" if model_type in ("gpt", "openai-gpt") else "GPT2Tokenizer"
        return getattr(transformers, fallback).from_pretrained(name)


def load_model_and_tokenizer(
    model_type: str,
    model_name: str | os.PathLike,
    trust_remote_pickle: bool = False,
    cache_dir: str | os.PathLike | None = None,
    input_format: str = "auto",
    **kwargs,
):
    """Load the model and its tokenizer, ready for ``input_format``.

    ``model_name``: a hub id, a local folder, a ``.gguf`` file or ``smollm2`` (converted once
    to a safetensors folder under ``cache_dir``). GPT-2 / OpenAI GPT load as double-heads
    models; any other causal LM gets a multiple-choice head (``families``). The special tokens
    ``<bos> <eos> <speaker1> <speaker2> <pad>`` are added only for the TransferTransfo format.

    Weights come from safetensors only: a local folder (or hub repository) that has only a
    pickle ``pytorch_model.bin`` is refused with ``UnsafeCheckpointError`` unless
    ``trust_remote_pickle=True``. Extra ``kwargs`` go to the model's ``from_pretrained``
    (e.g. ``revision``).
    """
    name = resolve_model_name(str(model_name), cache_dir)
    local = Path(name).expanduser()
    weight_files = check_weights(local, name, trust_remote_pickle, kwargs)
    cls = model_class(model_type, checkpoint_type(name, model_type))
    if weight_files and all(f.suffix == ".safetensors" for f in weight_files):
        # complete safetensors files whose sizes the config must fit, before any allocation
        check_config_sizes(cls, local, name, safetensors_elements(weight_files))
    try:
        tokenizer = load_tokenizer(model_type, name)
        model = _quiet_from_pretrained(cls, name, kwargs)
        forget_gguf_name(model.config)
    except OSError as err:
        hint = (
            ""
            if trust_remote_pickle
            else " If it only has pytorch_model.bin weights, see "
            "trust_remote_pickle (ConvAIModel's docstring)."
        )
        raise ModelLoadError(
            f"Could not load {name!r}: {err}\nPass a local folder with config.json, weights "
            f"and a tokenizer, or a hub id such as 'gpt2' when you are online.{hint}"
        ) from err
    except (RuntimeError, ValueError) as err:  # weights that do not fit config.json
        raise ModelLoadError(
            f"Could not load {name!r}: its files do not fit together ({_first_line(err)}); "
            "restore the folder as it was saved (config.json, weights and tokenizer)"
        ) from err
    attach_choice_head(model, local if local.is_dir() else None)
    model = load_adapter(model, local if local.is_dir() else None)  # saved unmerged LoRA
    if resolve_input_format(input_format, model, tokenizer) == "transfertransfo":
        add_special_tokens_(model, tokenizer)
    elif tokenizer.pad_token is None:  # batches need a pad id; never a new token here
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def resolve_model_name(name: str, cache_dir: str | os.PathLike | None) -> str:
    """Hub aliases, the classic fine-tuned archives (fetched once) and GGUF files (converted
    once under ``cache_dir``) resolved to what ``from_pretrained`` reads."""
    name = HUB_ALIASES.get(name, name)
    if name in FINETUNED_ARCHIVES and not Path(name).exists():
        return str(fetch_finetuned_archive(name))
    gguf = resolve_gguf_name(name)
    if gguf is not None:
        if cache_dir is None:
            from personachat.args import ConvAIArgs

            cache_dir = ConvAIArgs().cache_dir
        try:
            return str(gguf_folder(gguf, cache_dir))
        except OSError as err:
            raise ModelLoadError(
                f"cannot convert {gguf.name} under cache_dir {str(cache_dir)!r} "
                f"({err.strerror or err}); choose another cache_dir or fix its permissions"
            ) from err
    return name


def check_weights(local: Path, name: str, trust_remote_pickle: bool, kwargs: dict) -> list[Path]:
    """Refuse what cannot be loaded safely before anything is read (``weights.py``); steer
    ``from_pretrained`` to the safetensors weights. Returns a local folder's safetensors
    files (none for a hub id or a trusted pickle folder)."""
    if local.exists() and not local.is_dir():
        raise ModelLoadError(f"model_name {name!r} is a file; pass the folder that holds it")
    if not local.exists() and looks_local(name):
        raise ModelLoadError(missing_folder(name))
    if not local.is_dir():
        if not trust_remote_pickle:
            kwargs.setdefault("use_safetensors", True)  # a hub repo without safetensors fails
        return []
    files = check_model_folder(local, name, trust_remote_pickle)
    found = weights_format(local)
    if found is not None:
        kwargs.setdefault("use_safetensors", found == "safetensors")
    return files


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a folder here rather than a hub id (``owner/name``): it
    starts with . / ~ or a drive, has more than one slash or a backslash, or its first part
    is a folder here (``outputs/quik`` when ``outputs/`` exists)."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    if len(name) > 1 and name[1] == ":":  # C:...
        return True
    first = name.split("/")[0]
    return "/" in name and Path(first).is_dir()


def missing_folder(name: str) -> str:
    """The error for a model folder that does not exist, with the nearest names beside it."""
    import difflib

    parent = Path(name).expanduser().parent
    try:
        siblings = [p.name for p in parent.iterdir() if p.is_dir()]
    except OSError:
        siblings = []
    close = difflib.get_close_matches(Path(name).name, siblings, n=3)
    hint = f" (did you mean {', '.join(str(parent / c) for c in close)}?)" if close else ""
    return (
        f"no such folder: model {name!r} does not exist here{hint}; check the path (a hub "
        "model is named owner/name, and no hub request is made for a path)"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().split("\n")[0]
    return text[:300]


def checkpoint_type(name: str, model_type: str) -> str | None:
    """The ``model_type`` of the checkpoint's config.json; None where it cannot be read
    (then ``model_type`` decides: old folders predate the key)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name).model_type
    except (OSError, ValueError, KeyError):
        return None


def _quiet_from_pretrained(cls, name: str, kwargs: dict):
    """``from_pretrained`` without transformers' load report: the multiple-choice head's keys
    in a personachat folder are "unexpected" to ``AutoModelForCausalLM`` by design (they are
    restored by ``attach_choice_head``)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return cls.from_pretrained(name, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


def make_input_format(args, model, tokenizer):
    """The input format object for ``args.input_format`` ("auto" resolved), which is written
    back into ``args`` (so model_args.json records it); the model's config records whether it
    uses token types (``args.token_types``, "auto": with TransferTransfo only)."""
    from personachat.encoding.chat_format import ChatFormat
    from personachat.encoding.inputs import SpecialIds

    args.input_format = resolve_input_format(args.input_format, model, tokenizer)
    if args.token_types == "auto":
        args.token_types = "embed" if args.input_format == "transfertransfo" else "none"
    setattr(causal_lm(model).config, TOKEN_TYPES_KEY, args.token_types)
    if args.input_format == "chat_template":
        return ChatFormat.from_tokenizer(tokenizer)
    return SpecialIds.from_tokenizer(tokenizer)


def resolve_input_format(requested: str, model, tokenizer) -> str:
    """``"transfertransfo"`` or ``"chat_template"``: as requested, or for ``"auto"`` the
    classic layout on GPT-2 / OpenAI GPT and the tokenizer's own template where it has one."""
    if requested != "auto":
        return requested
    template = getattr(tokenizer, "chat_template", None)
    if is_double_heads(model) or not template or is_transfertransfo_template(template):
        return "transfertransfo"  # a TransferTransfo folder's own template writes that layout
    return "chat_template"


def add_special_tokens_(model, tokenizer) -> int:
    """Add ``<bos> <eos> <speaker1> <speaker2> <pad>`` once; resize embeddings if needed."""
    before = len(tokenizer)
    added = tokenizer.add_special_tokens(ATTR_TO_SPECIAL_TOKEN)
    if added > 0 or model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(max(before + added, len(tokenizer)))
    return added


def context_size(model) -> int:
    config = model.config
    return int(getattr(config, "n_positions", None) or config.max_position_embeddings)


def write_model_files(
    folder: str | os.PathLike,
    model,
    tokenizer,
    args=None,
    extra_files: dict[str, str] | None = None,
    card_source: str | os.PathLike | None = None,
) -> None:
    """Weights (safetensors), config, tokenizer, ``model_args.json`` and extra text files,
    written straight into ``folder`` (callers write into a temporary folder first). With
    ``args``, also the conventions other tools read (``conventions``): the chat template,
    ``generation_config.json`` and a model card from ``card_source``'s report (default
    ``folder``)."""
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    # No "Writing model shards" bar for every checkpoint of a training run.
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        # LoRA: merged into a plain folder, or the base weights plus the adapter
        save_weights(unwrap(model), folder, merge=getattr(args, "lora_merge_on_save", True))
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    layout = resolve_input_format(args.input_format, unwrap(model), tokenizer) if args else None
    with chat_template_for_saving(tokenizer, layout, args):
        tokenizer.save_pretrained(folder)
    if args is not None:
        args.save(folder)
        write_conventions(folder, tokenizer, args, layout, source=card_source or folder)
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")


def save_pretrained_atomic(
    output_dir: str | os.PathLike,
    model,
    tokenizer,
    args=None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write weights (safetensors), config, tokenizer and ``model_args.json`` to output_dir.

    Everything is written into a temporary folder beside the target first. A fresh target is
    then created by one rename; an existing folder (which may hold checkpoints, eval results
    or TensorBoard runs) gets each file moved in by rename, weights last, so a crash never
    leaves truncated files or weights that do not match their config. The model card reads
    the ``report.md`` and ``eval_results.json`` already in output_dir.
    """
    fill = partial(
        write_model_files,
        model=model,
        tokenizer=tokenizer,
        args=args,
        extra_files=extra_files,
        card_source=output_dir,
    )
    return write_folder_atomic(output_dir, fill, merge=True)


def unwrap(model):
    """The plain model inside DDP or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def read_personas(model_name: str | os.PathLike) -> list[list[str]]:
    """Personas saved beside a model by personachat (empty for hub models): a JSON list of
    personas, each a list of sentences. A file in any other shape is a ModelLoadError naming
    the place, not a persona drawn later from whatever it holds."""
    path = Path(str(model_name)) / PERSONAS_FILE
    if not path.exists():
        return []
    personas = read_json_file(path, "the list of personas")
    if not isinstance(personas, list):
        raise ModelLoadError(
            f"{path} must be a JSON list of personas (each a list of sentences), got a "
            f"{type(personas).__name__}; fix it, or delete it to draw personas from Persona-Chat"
        )
    for index, persona in enumerate(personas):
        problem = persona_problem(persona)
        if problem:
            raise ModelLoadError(f"{path}: persona {index} {problem}; fix or delete that file")
    return [persona for persona in personas if persona]  # [] : trained without a persona


def persona_problem(persona: object) -> str | None:
    """What is wrong with one saved persona, or None."""
    if not isinstance(persona, list):
        return "must be a list of sentences"
    for sentence in persona:
        if not isinstance(sentence, str) or not sentence.strip():
            return "has a sentence that is not text"
        if unicode_problem(sentence):
            return f"has a sentence that is {unicode_problem(sentence)}"
    return None
