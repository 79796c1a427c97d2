"""Untrusted GGUF files: metadata that contradicts the tensors, a file cut short, a chat
template that never ends. Each is one line naming the key (or the file) before any
conversion; a sound file still loads."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import gguf
import pytest
from gguf import GGUFReader, GGUFValueType

from personachat.encoding.chat_format import ChatTemplateError
from personachat.model.gguf_checks import GGUFFileError, check_gguf_file
from personachat.model.gguf_export import write_gguf
from tests.conftest import PERSONA
from tests.tiny_models import build_tiny_chat_model

NESTED_LOOPS = (
    "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
)


@pytest.fixture(scope="module")
def sound_gguf(tmp_path_factory) -> Path:
    """A tiny Llama written as GGUF by personachat's own exporter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_chat_model(tmp_path_factory.mktemp("llama") / "base", PERSONA)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    path = folder.parent / "sound.gguf"
    return write_gguf(path, model, tokenizer, eos_id=tokenizer.eos_token_id)


def rewritten(source: Path, target: Path, changes: dict | None = None, drop=()) -> Path:
    """A copy of the GGUF ``source`` with metadata ``changes`` ({key: value}, same type)
    and without the tensors whose names start with one of ``drop``."""
    reader = GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(target, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = (changes or {}).get(key, field.contents())
        sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub)
    for tensor in reader.tensors:
        if not tensor.name.startswith(tuple(drop)):
            shape = list(reversed([int(d) for d in tensor.shape]))
            writer.add_tensor(
                tensor.name, tensor.data, raw_shape=shape, raw_dtype=tensor.tensor_type
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def load_gguf(path: Path, cache: Path):
    from personachat.model.loading import load_model_and_tokenizer

    return load_model_and_tokenizer("auto", str(path), cache_dir=str(cache))


def chat_model(path: Path, cache: Path):
    """The model as personachat talks with it (its chat template rendered at load)."""
    from personachat import ConvAIModel

    return ConvAIModel("auto", str(path), use_cuda=False, args={"cache_dir": str(cache)})


def test_a_sound_gguf_passes_the_checks_and_loads(sound_gguf, tmp_path):
    header = check_gguf_file(sound_gguf)
    assert header.data_end == sound_gguf.stat().st_size
    model, _ = load_gguf(sound_gguf, tmp_path)
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    ("changes", "drop", "named"),
    [
        ({"llama.block_count": 40}, (), "'llama.block_count' declares 40 layers"),
        ({"llama.block_count": 2**32 - 1}, (), "'llama.block_count' declares 4,294,967,295"),
        ({}, ("blk.1.",), "declares 2 layers but the file holds tensors for 1 layer(s)"),
        ({"llama.attention.head_count": 0}, (), "'llama.attention.head_count' is 0"),
        ({"llama.attention.head_count": 5}, (), "(5) does not divide 'llama.embedding_length'"),
        ({"llama.attention.head_count_kv": 3}, (), "'llama.attention.head_count_kv' is 3"),
        ({"llama.vocab_size": 10**6}, (), "'llama.vocab_size' is 1000000"),
        ({"tokenizer.ggml.bos_token_id": 10**6}, (), "'tokenizer.ggml.bos_token_id' is 1000000"),
        ({}, ("token_embd.",), "'token_embd.weight' (the token embeddings) is missing"),
    ],
)
def test_metadata_that_contradicts_the_tensors_is_one_line_naming_the_key(
    sound_gguf, tmp_path, changes, drop, named
):
    bad = rewritten(sound_gguf, tmp_path / "bad.gguf", changes, drop)

    with pytest.raises(GGUFFileError) as refused:
        load_gguf(bad, tmp_path / "cache")
    assert named in str(refused.value) and str(bad) in str(refused.value)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "cache" / "gguf").exists() or not any(
        (tmp_path / "cache" / "gguf").iterdir()
    )  # refused before any conversion


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.99, 20 / 100_000])
def test_a_truncated_gguf_is_one_line_naming_the_file(sound_gguf, tmp_path, keep):
    data = sound_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: max(8, int(len(data) * keep))])

    with pytest.raises(GGUFFileError, match="truncated") as refused:
        check_gguf_file(cut)
    assert str(cut) in str(refused.value) and "\n" not in str(refused.value)


def test_the_cli_says_one_line_for_an_inconsistent_gguf(sound_gguf, tmp_path):
    bad = rewritten(sound_gguf, tmp_path / "bad.gguf", {"llama.block_count": 40})
    command = [sys.executable, "-m", "personachat.cli", "interact", "--model", str(bad)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, input="")

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "'llama.block_count' declares 40 layers" in done.stderr


def test_a_chat_template_with_nested_loops_ends_within_seconds(sound_gguf, tmp_path):
    looping = rewritten(
        sound_gguf, tmp_path / "loop.gguf", {"tokenizer.chat_template": NESTED_LOOPS}
    )
    started = time.monotonic()

    with pytest.raises(ChatTemplateError, match="did not finish within 5 s") as refused:
        chat_model(looping, tmp_path)
    assert time.monotonic() - started < 60  # conversion included; the render stops at 5 s
    assert "input_format 'transfertransfo'" in str(refused.value)


def test_a_chat_template_that_writes_without_end_is_stopped(sound_gguf, tmp_path):
    flood = "{% for i in range(99999) %}{{ 'x' * 1000 }}{% endfor %}"
    big = rewritten(sound_gguf, tmp_path / "big.gguf", {"tokenizer.chat_template": flood})

    with pytest.raises(ChatTemplateError, match="wrote more than 100,000 characters"):
        chat_model(big, tmp_path)
