"""``personachat export``: a plain causal-LM folder that transformers' own
``apply_chat_template`` + ``generate`` decode to exactly personachat's greedy reply; the
refusal of models trained with token types; ``--gguf`` read back through transformers."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil

import pytest
import torch
from gguf import GGUFReader
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from personachat import ConvAIModel
from personachat.cli import main
from personachat.model import export, gguf_export
from personachat.model.export import ExportError, export_folder, export_model
from personachat.model.gguf_export import GGUFExportError
from personachat.model.lora import with_lora
from tests.conftest import PERSONA, make_dialogs
from tests.test_saved_conventions import messages_of
from tests.tiny_models import build_tiny_chat_model

GREEDY = {"do_sample": False, "max_length": 12, "silent": True}
TALKS = [
    ("hi , what do you do ?", []),
    ("fine . any pets ?", ["hello !", "hi , how are you ?"]),
]
TEXTS = [s for d in make_dialogs() for u in d["utterances"] for s in u["history"] + u["candidates"]]


def standard_reply(model, tokenizer, persona, history, message, generation=None) -> str:
    """The reply of the exported folder through transformers alone, greedily."""
    ids = tokenizer.apply_chat_template(
        messages_of(persona, [*history, message]),
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=False,
    )
    mask = torch.ones_like(ids)
    out = model.generate(ids, attention_mask=mask, generation_config=generation, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def gguf_metadata(path, key: str) -> str:
    """A text value of a GGUF file's metadata, read with the gguf package."""
    field = GGUFReader(path).fields[key]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def assert_decodes_like_personachat(ours: ConvAIModel, folder, gguf_file=None) -> None:
    """transformers' reply equals personachat's on each talk; a GGUF file (read through
    transformers) decodes with the folder's generation_config.json, as an engine would."""
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    if gguf_file:  # transformers 5.24 drops the file's template; llama.cpp reads this key
        tokenizer.chat_template = gguf_metadata(folder / gguf_file, "tokenizer.chat_template")
    generation = GenerationConfig.from_pretrained(folder)
    for message, history in TALKS:
        expected, _ = ours.interact_single(message, history, personality=PERSONA)
        got = standard_reply(model, tokenizer, PERSONA, history, message, generation)
        assert got == expected


@pytest.fixture(scope="module")
def gpt2_without_token_types(tiny_checkpoint, tmp_path_factory):
    model = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={**GREEDY, "token_types": "none"}
    )
    saved = model.save_model(tmp_path_factory.mktemp("gpt2") / "saved")
    return model, saved


def saved_chat_model(folder, family: str):
    """A tiny chat model of ``family`` as personachat loads it, and the folder it saves."""
    build_tiny_chat_model(folder / "base", TEXTS + PERSONA, family)
    model = ConvAIModel("auto", folder / "base", use_cuda=False, args=GREEDY)
    return model, model.save_model(folder / "saved")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return saved_chat_model(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return saved_chat_model(tmp_path_factory.mktemp("qwen2"), "qwen2")


def test_an_exported_gpt2_decodes_like_personachat(gpt2_without_token_types, tmp_path):
    ours, saved = gpt2_without_token_types

    assert main(["export", str(saved), str(tmp_path / "out")]) == 0

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert "personachat_token_types" not in config
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if k.startswith("multiple_choice_head")]
    assert (tmp_path / "out" / "generation_config.json").is_file()
    assert (tmp_path / "out" / "README.md").read_text().startswith("---\n")
    assert not (tmp_path / "out" / "model_args.json").exists()  # a plain folder
    assert_decodes_like_personachat(ours, tmp_path / "out")


def test_an_exported_llama_decodes_like_personachat(llama, tmp_path):
    ours, saved = llama

    export_folder(saved, tmp_path / "out")

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if k.startswith("multiple_choice_head")]
    assert_decodes_like_personachat(ours, tmp_path / "out")


def test_a_lora_model_in_memory_exports_with_its_adapters_merged(llama, tmp_path):
    _, saved = llama
    ours = ConvAIModel("auto", saved, use_cuda=False, args={**GREEDY, "lora_r": 4})
    ours.model = with_lora(ours.model, ours.args)
    torch.manual_seed(0)
    with torch.no_grad():  # adapters that change the replies (peft starts them at zero)
        for name, param in ours.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)

    export_model(ours.model, ours.tokenizer, ours.args, tmp_path / "out")

    assert hasattr(ours.model, "merge_and_unload")  # the model exported stays as it was
    assert_decodes_like_personachat(ours, tmp_path / "out")


def test_a_folder_saved_with_its_lora_adapter_unmerged_exports_merged(llama, tmp_path):
    _, saved = llama
    args = {**GREEDY, "lora_r": 4, "lora_merge_on_save": False}
    ours = ConvAIModel("auto", saved, use_cuda=False, args=args)
    ours.model = with_lora(ours.model, ours.args)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in ours.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    lora_saved = ours.save_model(tmp_path / "lora_saved")
    assert (lora_saved / "lora").is_dir()  # base weights + adapter, as asked

    export_folder(lora_saved, tmp_path / "out")

    assert not (tmp_path / "out" / "lora").exists()  # one plain folder, adapters folded in
    assert_decodes_like_personachat(ours, tmp_path / "out")


def test_a_model_with_token_types_is_refused_with_the_reason_and_the_fix(
    tiny_checkpoint, tmp_path, capsys
):
    saved = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False).save_model(tmp_path / "tt")

    with pytest.raises(ExportError, match="token types") as refused:
        export_folder(saved, tmp_path / "out")
    assert "token_types=none" in str(refused.value)
    assert "input_format=chat_template" in str(refused.value)
    assert not (tmp_path / "out").exists()

    assert main(["export", str(saved), str(tmp_path / "out")]) == 2
    assert "never pass token_type_ids" in capsys.readouterr().err

    assert main(["export", str(saved), str(tmp_path / "out"), "--allow-inexact"]) == 0
    assert "speaker embeddings" in capsys.readouterr().err
    assert "exported inexactly" in (tmp_path / "out" / "README.md").read_text()


def tree_digest(folder) -> dict[str, str]:
    """Every file under ``folder`` (relative path → sha256 of its bytes)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_folder_it_did_not_write_is_never_replaced(gpt2_without_token_types, tmp_path):
    _, saved = gpt2_without_token_types
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    with pytest.raises(ExportError, match="not empty"):
        export_folder(saved, out)
    with pytest.raises(ExportError, match="not written by personachat export"):
        export_folder(saved, out, overwrite=True)
    assert tree_digest(out) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()}

    (out / "keep.txt").unlink()  # an empty folder is fine
    export_folder(saved, out)
    assert (out / "config.json").is_file()
    (out / "notes.txt").write_text("added after the export")
    export_folder(saved, out, overwrite=True)  # a folder it exported: replaced whole
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()


def test_export_next_to_and_around_its_source_keeps_every_byte(
    gpt2_without_token_types, tmp_path, capsys
):
    _, saved = gpt2_without_token_types
    home = tmp_path / "home"
    model = home / "model"
    shutil.copytree(saved, model)
    (home / "notes.txt").write_text("beside the model")
    before = tree_digest(home)

    for out in (home, tmp_path, model):  # holds MODEL, holds it further up, MODEL itself
        assert main(["export", str(model), str(out), "--overwrite"]) == 2
        assert "Traceback" not in capsys.readouterr().err
        assert tree_digest(home) == before
    (model / "sub").mkdir()
    (model / "sub" / "x.txt").write_text("inside")
    with pytest.raises(ExportError, match="inside the model folder"):
        export_folder(model, model / "sub", overwrite=True)
    (model / "sub" / "x.txt").unlink()
    (model / "sub").rmdir()
    assert tree_digest(home) == before

    export_folder(model, home / "beside")  # new folders next to it and in it are fine
    export_folder(model, model / "plain")
    after = tree_digest(home)
    assert {k: v for k, v in after.items() if k.startswith(("model/", "notes"))} == {
        **before,
        **{k: v for k, v in after.items() if k.startswith("model/plain/")},
    }


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gguf_reads_back_through_transformers_and_decodes_like_personachat(
    family, request, tmp_path
):
    ours, saved = request.getfixturevalue(family)

    assert main(["export", str(saved), str(tmp_path / "out"), "--gguf"]) == 0

    assert (tmp_path / "out" / "out.gguf").is_file()
    assert_decodes_like_personachat(ours, tmp_path / "out", gguf_file="out.gguf")


def test_a_float16_gguf_is_written_and_checked_too(llama, tmp_path):
    _, saved = llama
    export_folder(saved, tmp_path / "f32", gguf=True)
    export_folder(saved, tmp_path / "f16", gguf=True, gguf_half=True)

    f32, f16 = (tmp_path / n / f"{n}.gguf" for n in ("f32", "f16"))
    assert f16.stat().st_size < f32.stat().st_size


def test_a_gguf_that_reads_back_differently_is_not_kept(llama, tmp_path, monkeypatch):
    _, saved = llama
    # a writer that forgets llama.cpp's row order of the query/key projections
    monkeypatch.setattr(gguf_export, "permute_rotary_rows", lambda weight, heads: weight)

    with pytest.raises(GGUFExportError, match="differ"):
        export_folder(saved, tmp_path / "out", gguf=True)
    assert not (tmp_path / "out").exists()


def test_gguf_of_a_gpt2_model_names_what_works(gpt2_without_token_types, tmp_path):
    _, saved = gpt2_without_token_types

    with pytest.raises(GGUFExportError, match="llama, qwen2"):
        export_folder(saved, tmp_path / "out", gguf=True)
    assert not (tmp_path / "out").exists()


def test_export_onto_a_full_disk_is_one_line_naming_the_path(
    gpt2_without_token_types, tmp_path, monkeypatch, capsys
):
    _, saved = gpt2_without_token_types

    def disk_full(folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "README.md"))

    monkeypatch.setattr(export, "write_conventions", disk_full)
    assert main(["export", str(saved), str(tmp_path / "out")]) == 2

    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("personachat export: error: No space left on device writing ")
    assert "README.md" in line and "written before the disk filled" in line
    assert list(tmp_path.iterdir()) == []  # no half folder, no temporary
