"""Tokenize once (personachat.encoding.token_cache): what is cached, when it is reused, what is safe.

A spy on ``_tokenize_texts`` counts real tokenizations, so "read from the cache" is checked
without timing anything.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import multiprocessing
import os
import pickle
from pathlib import Path

import pytest
import torch

from personachat import ConvAIModel
from personachat.encoding import token_cache, token_tables
from personachat.encoding.dataset import collate, dataset_from_dialogs
from personachat.encoding.inputs import ATTR_TO_SPECIAL_TOKEN, IGNORE_INDEX, SpecialIds
from personachat.encoding.token_cache import (
    CACHE_SUBDIR,
    EncodingOptions,
    cache_key,
    cached_dataset,
)
from personachat.encoding.token_tables import MANIFEST
from personachat.model.scratch import train_tokenizer

from .conftest import make_dialogs

OPTIONS = EncodingOptions(
    num_candidates=2, max_history=1, max_tokens=64, personality_permutations=2, seed=3
)


def unicode_dialogs() -> list[dict]:
    """make_dialogs plus a Russian dialog with emoji and upper case (lowercasing matters)."""
    return make_dialogs(6) + [
        {
            "personality": ["Я работаю врачом .", "У меня есть кот 🐱 ."],
            "utterances": [
                {
                    "history": ["Привет ! Кем ты работаешь ?"],
                    "candidates": ["Я пилот .", "Я врач 🙂 ."],
                },
                {
                    "history": ["Привет ! Кем ты работаешь ?", "Я врач 🙂 .", "А животные есть ?"],
                    "candidates": ["Нет .", "Есть кот 🐱 ."],
                },
            ],
        }
    ]


def make_tokenizer(vocab_size: int = 300):
    texts = [
        s
        for d in unicode_dialogs()
        for u in d["utterances"]
        for s in u["history"] + u["candidates"] + d["personality"]
    ]
    tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer.add_special_tokens(ATTR_TO_SPECIAL_TOKEN)
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def special(tokenizer) -> SpecialIds:
    return SpecialIds.from_tokenizer(tokenizer)


@pytest.fixture()
def tokenizations(monkeypatch) -> list[int]:
    """Counts the strings each real tokenization run got (one entry per run)."""
    runs: list[int] = []
    real = token_tables._tokenize_texts

    def spy(folder, texts, *args, **kwargs):
        runs.append(len(texts))
        return real(folder, texts, *args, **kwargs)

    monkeypatch.setattr(token_tables, "_tokenize_texts", spy)
    return runs


def entries(cache_dir: Path) -> list[str]:
    root = cache_dir / CACHE_SUBDIR
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def items(dataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


# --- reuse and invalidation ------------------------------------------------------------------


def test_the_second_load_reads_the_cache_instead_of_tokenizing(
    tmp_path, tokenizer, special, tokenizations
):
    dialogs = make_dialogs()
    logged: list[str] = []

    first = cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path, log=logged.append)
    second = cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path, log=logged.append)

    assert len(tokenizations) == 1
    assert "read from the cache" in logged[-1]
    assert first.cache_key == second.cache_key and len(entries(tmp_path)) == 1
    assert items(first) == items(second)


def test_a_changed_file_tokenizes_again(tmp_path, tokenizer, special, tokenizations):
    dialogs = make_dialogs()
    edited = copy.deepcopy(dialogs)
    edited[3]["utterances"][1]["candidates"][-1] = "i have two cats ."

    cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path)
    dataset = cached_dataset(edited, tokenizer, special, OPTIONS, tmp_path)

    assert len(tokenizations) == 2 and len(entries(tmp_path)) == 2
    edited_example = next(i for i, (d, u, _) in enumerate(dataset.index) if (d, u) == (3, 1))
    gold = dataset[edited_example]["candidates"][-1]["input_ids"]
    assert tokenizer.decode(gold).endswith("i have two cats .<eos>")


def test_text_no_example_uses_does_not_change_the_key(tokenizer):
    # History older than the 2*max_history+1 window, and candidates before the last
    # num_candidates, never reach an example: editing them must not invalidate the cache.
    dialogs = make_dialogs()
    edited = copy.deepcopy(dialogs)
    utterance = edited[0]["utterances"][1]
    utterance["history"].insert(0, "an old message nobody sees")
    utterance["candidates"].insert(0, "an extra distractor beyond num_candidates")

    assert cache_key(dialogs, tokenizer, OPTIONS) == cache_key(edited, tokenizer, OPTIONS)


@pytest.mark.parametrize(
    "change",
    [
        {"num_candidates": 1},
        {"max_history": 0},
        {"max_tokens": 40},
        {"personality_permutations": 1},
        {"lowercase": True},
        {"seed": 4},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_encoding_option_is_part_of_the_key(
    tmp_path, tokenizer, special, tokenizations, change
):
    dialogs = unicode_dialogs()
    changed = dataclasses.replace(OPTIONS, **change)

    assert cache_key(dialogs, tokenizer, OPTIONS) != cache_key(dialogs, tokenizer, changed)
    cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path)
    cached_dataset(dialogs, tokenizer, special, changed, tmp_path)
    assert len(tokenizations) == 2


def test_a_changed_tokenizer_tokenizes_again(tmp_path, special, tokenizations):
    dialogs = make_dialogs()
    small, large = make_tokenizer(300), make_tokenizer(350)
    with_token = make_tokenizer(300)
    with_token.add_tokens(["nurse"])

    keys = {cache_key(dialogs, t, OPTIONS) for t in (small, large, with_token)}
    assert len(keys) == 3
    assert cache_key(dialogs, small, OPTIONS) == cache_key(dialogs, make_tokenizer(300), OPTIONS)
    for t in (small, large, with_token):
        cached_dataset(dialogs, t, SpecialIds.from_tokenizer(t), OPTIONS, tmp_path)
    assert len(tokenizations) == 3


def test_reprocess_tokenizes_again_and_replaces_the_entry(
    tmp_path, tokenizer, special, tokenizations
):
    dialogs = make_dialogs()
    first = cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path)
    manifest = first.folder / MANIFEST
    created = manifest.read_text()
    os.utime(manifest, (0, 0))

    again = cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path, reprocess=True)

    assert len(tokenizations) == 2
    assert entries(tmp_path) == [first.cache_key]
    assert (
        manifest.stat().st_mtime > 0
        and json.loads(manifest.read_text())["key"] == json.loads(created)["key"]
    )
    assert items(again) == items(first)


def test_reprocess_input_data_retokenizes_once_per_model(tiny_checkpoint, tmp_path, tokenizations):
    args = {"cache_dir": str(tmp_path), "reprocess_input_data": True, "silent": True}
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)
    dialogs = make_dialogs()

    model._dataset(dialogs, "train")
    model._dataset(dialogs, "train")  # e.g. the next evaluation of the same eval data
    assert len(tokenizations) == 1
    ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)._dataset(dialogs, "train")
    assert len(tokenizations) == 2
    ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={**args, "reprocess_input_data": False}
    )._dataset(dialogs, "train")
    assert len(tokenizations) == 2


def test_no_cache_tokenizes_in_memory_and_writes_nothing(tiny_checkpoint, tmp_path, tokenizations):
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={"cache_dir": str(tmp_path), "no_cache": True, "silent": True},
    )
    dataset = model._dataset(make_dialogs(), "train")

    assert len(dataset) == 24 and not tokenizations
    assert not any(tmp_path.iterdir())


# --- same examples as the in-memory path -----------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        OPTIONS,
        EncodingOptions(num_candidates=1, max_history=0, max_tokens=1024),
        # Short enough that history, persona and even replies are cut (the slow length path).
        EncodingOptions(
            num_candidates=2,
            max_history=2,
            max_tokens=14,
            personality_permutations=3,
            lowercase=True,
            seed=11,
        ),
    ],
    ids=["permutations", "one-candidate-no-history", "truncated-lowercased"],
)
def test_the_cached_dataset_yields_exactly_the_in_memory_examples(
    tmp_path, tokenizer, special, options
):
    dialogs = unicode_dialogs()
    reference = dataset_from_dialogs(dialogs, tokenizer, special, **dataclasses.asdict(options))

    for _ in range(2):  # built, then read back
        cached = cached_dataset(dialogs, tokenizer, special, options, tmp_path)
        assert len(cached) == len(reference)
        assert items(cached) == items(reference)
        assert cached.lengths == reference.lengths
        assert list(cached.index) == reference.index
        assert [cached.example_length(i) for i in range(len(cached))] == reference.lengths


def test_unicode_round_trips_through_the_cache(tmp_path, tokenizer, special):
    dataset = cached_dataset(unicode_dialogs(), tokenizer, special, OPTIONS, tmp_path)
    last = dataset[len(dataset) - 1]["candidates"][-1]  # the Russian dialog's second reply
    reply = [t for t in last["lm_labels"] if t != IGNORE_INDEX]

    assert tokenizer.decode(reply, skip_special_tokens=True) == "Есть кот 🐱 ."
    assert "Я работаю врачом ." in tokenizer.decode(last["input_ids"])


def test_batches_collate_and_workers_get_the_path_not_the_data(tmp_path, tokenizer, special):
    dataset = cached_dataset(make_dialogs(), tokenizer, special, OPTIONS, tmp_path)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=5, collate_fn=lambda b: collate(b, special.pad)
    )
    batch = next(iter(loader))
    assert batch["input_ids"].shape[:2] == (5, 2)

    shipped = pickle.dumps(dataset)  # what a spawned DataLoader worker receives
    assert len(shipped) < 1000
    assert items(pickle.loads(shipped)) == items(dataset)


def test_worker_processes_give_the_same_entry(tmp_path, tokenizer, special):
    # > 1,000 distinct strings, so that two datasets workers really share the tokenization.
    dialogs = [
        {
            "personality": [f"i am person {i} ."],
            "utterances": [
                {
                    "history": [f"message {i} {j}" for j in range(3)],
                    "candidates": [f"reply {i} a", f"reply {i} b"],
                }
            ],
        }
        for i in range(500)
    ]
    one = cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path / "one", num_proc=1)
    two = cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path / "two", num_proc=2)

    assert one.num_texts == two.num_texts > 2000
    assert items(one) == items(two) and one.lengths == two.lengths


# --- what is on disk ---------------------------------------------------------------------------

PICKLE_OR_TORCH = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, torch.save's zip


def test_no_pickle_anywhere_in_the_cache(tmp_path, tokenizer, special):
    cached_dataset(unicode_dialogs(), tokenizer, special, OPTIONS, tmp_path, num_proc=1)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]

    assert files
    for path in files:
        head = path.read_bytes()[:8]
        assert path.suffix in (".arrow", ".json"), path
        assert not head.startswith(PICKLE_OR_TORCH), path
        if path.suffix == ".arrow":
            assert head.startswith(b"ARROW1"), path  # Arrow IPC file format
        else:
            json.loads(path.read_text(encoding="utf-8"))


def _build_and_die(cache_dir: str, dialogs: list[dict]) -> None:
    """In a child: build an entry, but die (as if killed) right before the manifest."""

    def die(*args, **kwargs):
        os._exit(9)

    token_tables._write_bytes = die
    tokenizer = make_tokenizer()
    cached_dataset(dialogs, tokenizer, SpecialIds.from_tokenizer(tokenizer), OPTIONS, cache_dir)


def test_a_build_killed_halfway_is_never_read(tmp_path, tokenizer, special, tokenizations):
    dialogs = make_dialogs()
    child = multiprocessing.get_context("fork").Process(
        target=_build_and_die, args=(str(tmp_path), dialogs)
    )
    child.start()
    child.join(60)

    assert child.exitcode == 9
    root = tmp_path / CACHE_SUBDIR
    leftovers = [p.name for p in root.iterdir()]
    [leftover] = leftovers  # a hidden temporary, no entry under the key
    assert leftover.startswith(".") and ".tmp-" in leftover
    assert (root / leftover / "texts.arrow").is_file()  # it was half written

    dataset = cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path)
    assert len(tokenizations) == 1  # built afresh
    assert entries(tmp_path) == [dataset.cache_key]  # and the dead build's folder is gone


@pytest.mark.parametrize("damage", ["truncated-table", "no-manifest", "bad-manifest"])
def test_a_damaged_entry_is_rebuilt_not_read(tmp_path, tokenizer, special, tokenizations, damage):
    dialogs = make_dialogs()
    first = cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path)
    expected = items(first)
    del first  # release the memory maps before damaging the files
    folder = tmp_path / CACHE_SUBDIR / cache_key(dialogs, tokenizer, OPTIONS)
    if damage == "truncated-table":
        table = folder / "texts.arrow"
        table.write_bytes(table.read_bytes()[:100])
    elif damage == "no-manifest":
        (folder / MANIFEST).unlink()
    else:
        (folder / MANIFEST).write_text("{not json")
    logged: list[str] = []

    rebuilt = cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path, log=logged.append)

    assert len(tokenizations) == 2
    assert "cannot be used" in logged[0]
    assert items(rebuilt) == expected


def test_an_entry_another_process_just_landed_is_kept_not_pulled_from_under_it(
    tmp_path, tokenizer, special
):
    """Two torchrun ranks on a cold cache both tokenize; the second to finish must not
    replace (and delete) the entry the first is already reading."""
    dialogs = make_dialogs(3)
    first = cached_dataset(dialogs, tokenizer, special, OPTIONS, tmp_path)
    expected = items(first)
    root = tmp_path / CACHE_SUBDIR
    [key] = entries(tmp_path)
    landed = (root / key).stat().st_ino

    token_cache.write_entry(root, key, dialogs, tokenizer, OPTIONS, replace=False)

    assert (root / key).stat().st_ino == landed
    assert items(first) == expected  # the first reader's files are still there
    assert entries(tmp_path) == [key]  # and the second build left nothing behind
