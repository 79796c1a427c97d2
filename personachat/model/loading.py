"""The double-heads model: loading, special tokens, the TransferTransfo loss, saving.

GPT-2 (``GPT2DoubleHeadsModel``) and OpenAI GPT (``OpenAIGPTDoubleHeadsModel``) carry a
language-model head and a multiple-choice head that scores each candidate from the hidden
state of its last token. Both come from ``from_pretrained``: a hub id (downloaded by
transformers for a user who is online) or a local folder, including folders written by
personachat or simpletransformers.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import torch

from personachat.encoding.inputs import ATTR_TO_SPECIAL_TOKEN
from personachat.errors import PersonachatError
from personachat.fs import write_folder_atomic
from personachat.model.families import (
    TOKEN_TYPES_KEY,
    FamilyError,
    attach_choice_head,
    causal_lm,
    is_double_heads,
    model_class_for,
)
from personachat.model.gguf import gguf_folder, resolve_gguf_name
from personachat.model.lora import merged

# Hub ids simpletransformers users pass for model_type "gpt".
HUB_ALIASES = {"openai-gpt": "openai-community/openai-gpt"}
# HuggingFace's Persona-Chat fine-tuned OpenAI GPT, which the classic notebook fetched with
# wget + tar as the folder "gpt_personachat_cache"; we fetch it when that folder is missing.
FINETUNED_ARCHIVES = {
    "gpt_personachat_cache": "https://s3.amazonaws.com/models.huggingface.co/"
    "transfer-learning-chatbot/gpt_personachat_cache.tar.gz",
}

# The training personas, saved beside the weights: what interact() picks a persona from.
PERSONAS_FILE = "personas.json"


class ModelLoadError(PersonachatError, RuntimeError):
    """The model or tokenizer could not be loaded; the message says how to fix it."""


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


def fetch_finetuned_archive(
    name: str, target_root: str | os.PathLike = ".", url: str | None = None, timeout: float = 120
) -> Path:
    """Download and unpack a known fine-tuned archive into ``target_root/name`` (atomically).

    Only regular files and folders are unpacked (``tarfile``'s "data" filter), so an archive
    cannot write outside the target or create links.
    """
    url = url or FINETUNED_ARCHIVES[name]
    target = Path(target_root) / name
    if target.is_dir():
        return target
    return write_folder_atomic(target, partial(_unpack_archive, name, url, timeout))


def _unpack_archive(name: str, url: str, timeout: float, folder: Path) -> None:
    """Download ``url`` and unpack its model files straight into ``folder``, weights as
    safetensors (the archive itself and the unpacking folder are removed)."""
    archive = folder / ".archive.tar.gz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as f:
            shutil.copyfileobj(response, f)
    except (OSError, urllib.error.URLError) as err:
        raise ModelLoadError(
            f"Could not download {name} from {url}: {err}. Download and unpack it by "
            f"hand into ./{name}, or pass another model folder."
        ) from err
    unpacked = folder / ".unpacked"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(unpacked, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise ModelLoadError(f"{url} is not a valid .tar.gz archive ({err})") from err
    # Archives hold the files either at the top level or inside one folder.
    entries = list(unpacked.iterdir())
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked
    for item in list(root.iterdir()):
        os.replace(item, folder / item.name)
    shutil.rmtree(unpacked)
    archive.unlink()
    pickle_to_safetensors(folder)


def pickle_to_safetensors(folder: Path) -> None:
    """Replace a known archive's ``pytorch_model.bin`` by ``model.safetensors``, once.

    Only for the archives of ``FINETUNED_ARCHIVES`` (fixed, known URLs): their weights are
    read with torch's restricted ``weights_only`` unpickler (tensors and plain containers
    only) at download time, so that every later load is safetensors and the classic notebook
    needs no ``trust_remote_pickle``. Tied tensors are stored as separate copies;
    ``from_pretrained`` ties them again.
    """
    from safetensors.torch import save_file

    source = folder / "pytorch_model.bin"
    if not source.is_file() or (folder / "model.safetensors").exists():
        return
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad archive
        raise ModelLoadError(
            f"the downloaded weights in {source.name} cannot be read "
            f"as plain tensors ({err}); the archive is not the expected one"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"the downloaded {source.name} is not a state dict of tensors")
    save_file(
        {k: v.detach().clone().contiguous() for k, v in state.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    source.unlink()


def load_tokenizer(model_type: str, name: str):
    """AutoTokenizer, falling back to the model type's own class for old folders whose
    config.json predates the ``model_type`` key (e.g. gpt_personachat_cache)."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(name)
    except (ValueError, KeyError):
        fallback = "OpenAIGPTTokenizer" if model_type in ("gpt", "openai-gpt") else "GPT2Tokenizer"
        return getattr(transformers, fallback).from_pretrained(name)


# Weight files ``from_pretrained`` reads, by how they are stored. Pickle files can run any code
# when they are unpickled, so they are loaded only when the caller says it trusts them.
SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class UnsafeCheckpointError(ModelLoadError):
    """The checkpoint's weights are a pickle and the caller did not pass trust_remote_pickle."""


def weights_format(folder: str | os.PathLike) -> str | None:
    """``"safetensors"``, ``"pickle"`` or None: which weights a local model folder holds
    (safetensors win when both are there, as ``from_pretrained`` would pick them too)."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in SAFE_WEIGHT_FILES):
        return "safetensors"
    if any((folder / name).is_file() for name in PICKLE_WEIGHT_FILES):
        return "pickle"
    return None


def refuse_pickle_message(name: str) -> str:
    return (
        f"{name!r} holds its weights only as a pickle (pytorch_model.bin). personachat loads "
        "weights from safetensors only, because unpickling a file can run any code it "
        "contains. If you trust where this folder comes from, pass trust_remote_pickle=True "
        "(ConvAIModel(..., trust_remote_pickle=True), args={'trust_remote_pickle': True} or "
        "--set trust_remote_pickle=true); save the model once (model.save_model(DIR)) to get "
        "a safetensors copy that loads without it."
    )


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
    check_weights(local, name, trust_remote_pickle, kwargs)
    cls = model_class(model_type, checkpoint_type(name, model_type))
    try:
        tokenizer = load_tokenizer(model_type, name)
        model = _quiet_from_pretrained(cls, name, kwargs)
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
    attach_choice_head(model, local if local.is_dir() else None)
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
        return str(gguf_folder(gguf, cache_dir))
    return name


def check_weights(local: Path, name: str, trust_remote_pickle: bool, kwargs: dict) -> None:
    """Refuse what cannot be loaded safely before anything is read; steer ``from_pretrained``
    to the safetensors weights."""
    if local.exists() and not local.is_dir():
        raise ModelLoadError(f"model_name {name!r} is a file; pass the folder that holds it")
    if not local.exists() and name.startswith((".", "/", "~")):
        raise ModelLoadError(f"model folder {name!r} does not exist")
    if local.is_dir():
        found = weights_format(local)
        if found == "pickle" and not trust_remote_pickle:
            raise UnsafeCheckpointError(refuse_pickle_message(name))
        if found is not None:
            kwargs.setdefault("use_safetensors", found == "safetensors")
    elif not trust_remote_pickle:
        kwargs.setdefault("use_safetensors", True)  # a hub repo without safetensors fails


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
    if is_double_heads(model) or not getattr(tokenizer, "chat_template", None):
        return "transfertransfo"
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
) -> None:
    """Weights (safetensors), config, tokenizer, ``model_args.json`` and extra text files,
    written straight into ``folder`` (callers write into a temporary folder first)."""
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    # No "Writing model shards" bar for every checkpoint of a training run.
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        plain = unwrap(model)
        if hasattr(plain, "merge_and_unload"):  # LoRA: adapters folded in, a plain folder
            plain = merged(plain)
        plain.save_pretrained(folder, safe_serialization=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    if args is not None:
        args.save(folder)
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
    leaves truncated files or weights that do not match their config.
    """
    return write_folder_atomic(
        output_dir,
        partial(
            write_model_files, model=model, tokenizer=tokenizer, args=args, extra_files=extra_files
        ),
        merge=True,
    )


def unwrap(model):
    """The plain model inside DDP or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def read_personas(model_name: str | os.PathLike) -> list[list[str]]:
    """Personas saved beside a model by personachat (empty for hub models)."""
    path = Path(str(model_name)) / PERSONAS_FILE
    if not path.is_file():
        return []
    try:
        personas = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return []
    return [p for p in personas if isinstance(p, list) and p and all(isinstance(s, str) for s in p)]
