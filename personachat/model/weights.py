"""What a local model folder may be loaded from, checked before any weight is read.

Weights load only from safetensors files inside the model folder. ``from_pretrained`` would
also follow an index (``model.safetensors.index.json``) to pickle files or to paths outside
the folder (``../other/...``), and read a peft ``adapter_model.bin``: each is refused here
like a folder whose only weights are a pickle (``trust_remote_pickle`` allows pickle files
inside the folder, never a file outside it).

A folder that would make transformers fail with a traceback, or allocate without bound, is
refused in one sentence instead: no ``config.json``, a file that is not a regular file (a
named pipe would block the load forever), a truncated, random or empty safetensors file, and
a ``config.json`` whose sizes describe a model far larger than its weights (``n_embd: 10**9``
would try to allocate terabytes). The model is built on the ``meta`` device to count its
parameters, which allocates nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from personachat.errors import PersonachatError
from personachat.fs import file_kind

SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
ADAPTER_PICKLE = "adapter_model.bin"  # peft adapters, which from_pretrained also loads
CONFIG_FILE = "config.json"
MAX_JSON_BYTES = 64 * 2**20  # an index of a 1000-shard model is a few MB
# The model built from config.json may hold more parameters than its weight files (heads
# initialised fresh, an untied output layer), but not this many times more.
PARAMETER_SLACK = 2
PARAMETER_MARGIN = 16_000_000


class ModelLoadError(PersonachatError, RuntimeError):
    """The model or tokenizer could not be loaded; the message says how to fix it."""


class UnsafeCheckpointError(ModelLoadError):
    """The checkpoint's weights are a pickle and the caller did not pass trust_remote_pickle."""


def refuse_pickle_message(
    name: str, what: str = "its weights only as a pickle (pytorch_model.bin)"
) -> str:
    return (
        f"{name!r} holds {what}. personachat loads "
        "weights from safetensors only, because unpickling a file can run any code it "
        "contains. If you trust where this folder comes from, pass trust_remote_pickle=True "
        "(ConvAIModel(..., trust_remote_pickle=True), args={'trust_remote_pickle': True} or "
        "--set trust_remote_pickle=true); save the model once (model.save_model(DIR)) to get "
        "a safetensors copy that loads without it."
    )


def read_json_file(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> object:
    """The JSON value of a regular file of at most ``max_bytes``; ModelLoadError otherwise."""
    kind = file_kind(path)
    if kind is not None:
        raise ModelLoadError(f"{path} is {kind}, not a file; {what} must be a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelLoadError(f"{path} is {size / 2**20:.0f} MB, too large for {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ModelLoadError(f"{path} is not valid JSON ({err}); {what} must be JSON") from err


def weights_format(folder: str | os.PathLike) -> str | None:
    """``"safetensors"``, ``"pickle"`` or None: which weights a local model folder holds
    (safetensors win when both are there, as ``from_pretrained`` would pick them too)."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in SAFE_WEIGHT_FILES):
        return "safetensors"
    if any((folder / name).is_file() for name in PICKLE_WEIGHT_FILES):
        return "pickle"
    return None


def check_model_folder(folder: Path, name: str, trust_remote_pickle: bool) -> list[Path]:
    """Refuse a folder that cannot be loaded safely and completely; returns the weight files
    ``from_pretrained`` will read from it (none for a trusted pickle-only folder, whose
    ``pytorch_model.bin`` it finds itself)."""
    for entry in folder.iterdir():  # from_pretrained opens what it finds: never a pipe
        kind = file_kind(entry)
        if kind not in (None, "a folder"):
            raise ModelLoadError(f"{entry} is {kind}; a model folder holds regular files only")
    config = folder / CONFIG_FILE
    if not config.exists():
        raise ModelLoadError(
            f"model folder {name!r} has no {CONFIG_FILE}; pass a folder saved by "
            "save_model / save_pretrained (config.json, weights and tokenizer files)"
        )
    read_json_file(config, f"the model's {CONFIG_FILE}")
    if (folder / ADAPTER_PICKLE).exists() and not trust_remote_pickle:
        raise UnsafeCheckpointError(
            refuse_pickle_message(name, f"peft adapter weights as a pickle ({ADAPTER_PICKLE})")
        )
    found = weights_format(folder)
    if found == "pickle":
        if not trust_remote_pickle:
            raise UnsafeCheckpointError(refuse_pickle_message(name))
        index = folder / PICKLE_WEIGHT_FILES[1]
        if index.exists():
            indexed_files(folder, index, name, allow_pickle=True)
        return []
    if found is None:
        return []
    index = folder / SAFE_WEIGHT_FILES[1]
    if index.exists():
        return indexed_files(folder, index, name, allow_pickle=trust_remote_pickle)
    return [folder / SAFE_WEIGHT_FILES[0]]


def indexed_files(folder: Path, index: Path, name: str, allow_pickle: bool) -> list[Path]:
    """The weight files ``index`` names: each inside ``folder``, a regular file, and a
    safetensors file unless ``allow_pickle`` (a ``.bin`` inside the folder)."""
    data = read_json_file(index, "a weights index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelLoadError(
            f"{index} has no weight_map of tensor names to file names; restore the file "
            "saved with the model"
        )
    files = []
    for file_name in sorted(set(weight_map.values())):
        parts = PurePosixPath(file_name.replace("\\", "/")).parts
        if not parts or parts[0] == "/" or ".." in parts or ":" in file_name:
            raise UnsafeCheckpointError(
                f"{index} maps tensors to {file_name!r}, outside the model folder {name!r}; "
                "weights load only from files inside the folder"
            )
        path = folder.joinpath(*parts)
        if path.suffix != ".safetensors" and not allow_pickle:
            raise UnsafeCheckpointError(
                refuse_pickle_message(name, f"weights in {file_name!r}, a pickle its index names")
            )
        kind = file_kind(path) if path.exists() else "missing"
        if kind is not None:
            raise ModelLoadError(f"{index} names {file_name!r}, which is {kind}")
        files.append(path)
    return files


def safetensors_elements(files: list[Path]) -> int:
    """The number of weights stored in ``files``, from their headers; a file that is not a
    complete safetensors file (truncated, random bytes, empty) is a ModelLoadError."""
    from safetensors import safe_open

    total = 0
    for path in files:
        kind = file_kind(path)
        if kind is not None:
            raise ModelLoadError(f"{path} is {kind}; weights must be a regular file")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    shape = f.get_slice(key).get_shape()
                    total += _product(shape)
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: a broken file
            raise ModelLoadError(
                f"{path} is not a complete safetensors file ({err}); it may be truncated "
                "(an interrupted download or copy) or not weights at all: copy or save the "
                "model again"
            ) from err
    return total


def _product(shape) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total


def check_config_sizes(cls, folder: Path, name: str, stored: int) -> None:
    """Refuse a ``config.json`` describing a model far larger than the ``stored`` weights
    (or one that cannot be built), before transformers allocates it. The model is built on
    the meta device: shapes only, no memory."""
    import torch
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            build = getattr(cls, "from_config", None) or cls._from_config
            model = build(config)
        needed = sum(p.numel() for p in model.parameters())
    except Exception as err:  # noqa: BLE001 - whatever the sizes break, the config is wrong
        raise ModelLoadError(
            f"{folder / CONFIG_FILE} describes a model that cannot be built ({err}); "
            "restore the config.json saved with the weights"
        ) from err
    if needed > PARAMETER_SLACK * stored + PARAMETER_MARGIN:
        raise ModelLoadError(
            f"{folder / CONFIG_FILE} describes a model of {needed:,} parameters, but the "
            f"weights of {name!r} hold {stored:,}: its sizes (n_embd, hidden_size, "
            "n_layer, vocab_size...) do not belong to these weights; restore the "
            "config.json saved with them"
        )


def tied_weight_names(model) -> set[str]:
    """Parameter names that share storage with an earlier one (saved once by safetensors)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = tensor.data_ptr()
        if key in seen:
            tied.add(name)
        else:
            seen[key] = name
    return tied
