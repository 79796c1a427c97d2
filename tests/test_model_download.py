"""Fetching the classic fine-tuned archive (gpt_personachat_cache), from a loopback server."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading

import pytest

from personachat.model.loading import (
    ModelLoadError,
    fetch_finetuned_archive,
    load_model_and_tokenizer,
)


@pytest.fixture()
def serve(tmp_path):
    """Serve files from a folder on 127.0.0.1; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_archive_is_downloaded_unpacked_and_loadable(serve, tiny_checkpoint, tmp_path):
    root, base = serve
    with tarfile.open(root / "model.tar.gz", "w:gz") as tar:
        tar.add(tiny_checkpoint, arcname="gpt_personachat_cache")
    folder = fetch_finetuned_archive(
        "gpt_personachat_cache", tmp_path / "models", url=f"{base}/model.tar.gz"
    )
    assert (folder / "config.json").is_file()
    model, tokenizer = load_model_and_tokenizer("gpt2", folder)
    assert "<speaker2>" in tokenizer.get_vocab()
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    # A second call reuses the folder without the network.
    assert (
        fetch_finetuned_archive(
            "gpt_personachat_cache", tmp_path / "models", url="http://127.0.0.1:9/unreachable"
        )
        == folder
    )


def test_archive_cannot_write_outside_its_folder(serve, tmp_path):
    root, base = serve
    buffer = io.BytesIO(b"owned")
    with tarfile.open(root / "evil.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(buffer.getvalue())
        tar.addfile(info, buffer)
    with pytest.raises(ModelLoadError, match="not a valid"):
        fetch_finetuned_archive(
            "gpt_personachat_cache", tmp_path / "models", url=f"{base}/evil.tar.gz"
        )
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "models" / "gpt_personachat_cache").exists()


def test_offline_download_failure_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match="by hand"):
        fetch_finetuned_archive(
            "gpt_personachat_cache", tmp_path, url="http://127.0.0.1:9/model.tar.gz", timeout=5
        )


def test_a_pickled_archive_becomes_safetensors_so_the_notebook_needs_no_trust(
    serve, tiny_checkpoint, tmp_path
):
    """The classic archive ships pytorch_model.bin; after the download it loads as
    safetensors without trust_remote_pickle (and no pickle is left on disk)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    root, base = serve
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_checkpoint, legacy)
    state = load_file(legacy / "model.safetensors")
    (legacy / "model.safetensors").unlink()
    torch.save(state, legacy / "pytorch_model.bin")
    with tarfile.open(root / "model.tar.gz", "w:gz") as tar:
        tar.add(legacy, arcname="gpt_personachat_cache")

    folder = fetch_finetuned_archive(
        "gpt_personachat_cache", tmp_path / "models", url=f"{base}/model.tar.gz"
    )
    assert (folder / "model.safetensors").is_file()
    assert not (folder / "pytorch_model.bin").exists()
    model, _ = load_model_and_tokenizer("gpt2", folder)  # no trust_remote_pickle needed
    torch.testing.assert_close(model.transformer.wte.weight, state["transformer.wte.weight"])
