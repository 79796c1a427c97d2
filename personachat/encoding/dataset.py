"""Dialogs to training and evaluation examples, and examples to padded batches.

A dataset stores only token ids per sentence (each distinct string tokenized once by
``TextEncoder``); an item's input layout (``inputs.build_example``) is assembled when it is
read, and padded tensors exist for one batch at a time (``collate``), padded to that batch's
longest input. ``token_dataset.CachedPersonaChatDataset`` yields the same items from disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from itertools import chain

import torch

from personachat.encoding.inputs import (
    IGNORE_INDEX,
    EncodingError,
    SpecialIds,
    TextEncoder,
    build_example,
    check_num_candidates,
    example_index,
    example_length,
    history_window,
)


def encode_dialogs(dialogs: Sequence[dict], encoder: TextEncoder) -> list[dict]:
    """Replace every string of every dialog by its token ids (same structure)."""
    encoder.prime(chain.from_iterable(_dialog_texts(d) for d in dialogs))
    return [
        {
            "personality": [encoder(s) for s in d["personality"]],
            "utterances": [
                {
                    "history": [encoder(h) for h in u["history"]],
                    "candidates": [encoder(c) for c in u["candidates"]],
                }
                for u in d["utterances"]
            ],
        }
        for d in dialogs
    ]


def _dialog_texts(dialog: dict) -> Iterable[str]:
    yield from dialog["personality"]
    for utt in dialog["utterances"]:
        yield from utt["history"]
        yield from utt["candidates"]


class PersonaChatDataset(torch.utils.data.Dataset):
    """Training/eval examples built lazily from token ids: one item per (utterance, permutation).

    Only token ids per sentence are held in memory; an item's input layout is assembled when
    it is read, so memory does not grow with padding or with the number of candidates.
    """

    def __init__(
        self,
        encoded_dialogs: Sequence[dict],
        special: SpecialIds,
        num_candidates: int,
        max_history: int,
        max_tokens: int,
        personality_permutations: int = 1,
        seed: int = 0,
        label_history: bool = False,
    ) -> None:
        self.dialogs = encoded_dialogs
        self.label_history = label_history
        self.special = special
        self.num_candidates = num_candidates
        self.max_history = max_history
        self.max_tokens = max_tokens
        self.index: list[tuple[int, int, tuple[int, ...]]] = list(
            example_index(
                [len(d["personality"]) for d in encoded_dialogs],
                [len(d["utterances"]) for d in encoded_dialogs],
                personality_permutations,
                seed,
            )
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict:
        d, u, order = self.index[idx]
        dialog = self.dialogs[d]
        persona = [dialog["personality"][i] for i in order]
        utterance = dialog["utterances"][u]
        return build_example(
            persona,
            utterance["history"],
            utterance["candidates"],
            self.special,
            self.num_candidates,
            self.max_history,
            self.max_tokens,
            self.label_history,
        )

    def example_length(self, idx: int) -> int:
        """Tokens of item ``idx``'s longest candidate input (what padding it costs), from
        token counts alone: the same truncation as ``__getitem__`` but no input is built."""
        d, u, order = self.index[idx]
        dialog = self.dialogs[d]
        utterance = dialog["utterances"][u]
        return example_length(
            [len(dialog["personality"][i]) for i in order],
            [len(h) for h in history_window(utterance["history"], self.max_history)],
            [len(c) for c in list(utterance["candidates"])[-self.num_candidates :]],
            self.max_tokens,
            self.special.overheads,
        )

    @cached_property
    def lengths(self) -> list[int]:
        """``example_length`` of every item, computed once: what length-grouped batching
        and the automatic batch size sort by."""
        return [self.example_length(i) for i in range(len(self.index))]


def collate(examples: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest input: tensors of shape [batch, candidates, length]."""
    longest = max(len(c["input_ids"]) for ex in examples for c in ex["candidates"])
    n_cand = len(examples[0]["candidates"])
    if any(len(ex["candidates"]) != n_cand for ex in examples):
        raise EncodingError("every example in a batch needs the same number of candidates")

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.tensor(
            [
                [c[key] + [value] * (longest - len(c[key])) for c in ex["candidates"]]
                for ex in examples
            ],
            dtype=torch.long,
        )

    return {
        "input_ids": pad("input_ids", pad_id),
        "token_type_ids": pad("token_type_ids", pad_id),
        "lm_labels": pad("lm_labels", IGNORE_INDEX),
        "mc_token_ids": torch.tensor(
            [[c["mc_token_ids"] for c in ex["candidates"]] for ex in examples], dtype=torch.long
        ),
        "mc_labels": torch.tensor([ex["mc_label"] for ex in examples], dtype=torch.long),
    }


def dataset_from_dialogs(
    dialogs: Sequence[dict],
    tokenizer,
    special: SpecialIds,
    *,
    num_candidates: int,
    max_history: int,
    max_tokens: int,
    personality_permutations: int = 1,
    lowercase: bool = False,
    seed: int = 0,
    label_history: bool = False,
    source: str = "<data>",
    overheads: object = None,
) -> PersonaChatDataset:
    """Tokenize dialogs (each distinct string once) and index their examples.

    ``overheads`` is accepted so that every ``EncodingOptions`` field can be passed; the
    dataset reads them from ``special``, the input format it lays inputs out with."""
    check_num_candidates(dialogs, num_candidates, source)
    encoded = encode_dialogs(dialogs, TextEncoder(tokenizer, lowercase=lowercase))
    return PersonaChatDataset(
        encoded,
        special,
        num_candidates,
        max_history,
        max_tokens,
        personality_permutations,
        seed,
        label_history,
    )
