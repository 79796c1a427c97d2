"""The classic fine-tuned archives, fetched once and stored as safetensors.

HuggingFace's Persona-Chat fine-tuned OpenAI GPT was fetched by the classic notebook with
wget + tar as the folder ``gpt_personachat_cache``; personachat fetches it when that folder is
missing, unpacks only regular files and folders, and converts its pickle weights once (with
torch's restricted unpickler) so every later load is safetensors.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import torch

from personachat.fs import write_folder_atomic
from personachat.model.weights import ModelLoadError

# HuggingFace's Persona-Chat fine-tuned OpenAI GPT, which the classic notebook fetched with
# wget + tar as the folder "gpt_personachat_cache"; we fetch it when that folder is missing.
FINETUNED_ARCHIVES = {
    "gpt_personachat_cache": "https://s3.amazonaws.com/models.huggingface.co/"
    "transfer-learning-chatbot/gpt_personachat_cache.tar.gz",
}


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
