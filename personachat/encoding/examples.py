"""The examples a model trains and is evaluated on: encoded as the options say.

Tokenized once and cached under ``cache_dir/tokens/`` (``token_cache``), or in memory only
with ``no_cache``; ``reprocess_input_data`` tokenizes again, once per builder (not at each
evaluation of a training run, which reads the same eval dialogs every time).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from personachat.args import ConvAIArgs
from personachat.encoding.dataset import dataset_from_dialogs
from personachat.encoding.inputs import TRANSFERTRANSFO, InputFormat, Overheads
from personachat.encoding.token_cache import EncodingOptions, cache_key, cached_dataset


def encoding_options(
    args: ConvAIArgs,
    max_tokens: int,
    num_candidates: int | None = None,
    overheads: Overheads = TRANSFERTRANSFO,
) -> EncodingOptions:
    """Every option of ``args`` that changes the examples; ``num_candidates`` (default:
    ``args.num_candidates``) is the number of candidates per example, ``overheads`` what the
    input format adds around the text."""
    return EncodingOptions(
        overheads=overheads,
        num_candidates=num_candidates or args.num_candidates,
        max_history=args.max_history,
        max_tokens=max_tokens,
        personality_permutations=args.personality_permutations,
        lowercase=args.do_lower_case,
        seed=args.manual_seed or 0,
    )


def whole_conversations(dialogs: Sequence[dict]) -> list[dict]:
    """Each dialog as one example, its last utterance: its history holds the whole
    conversation, so with the bot's earlier turns labelled (``label_history``) one input
    teaches every reply instead of one input per reply re-reading the same context.

    A dialog whose last history does not hold every earlier utterance's history and gold
    reply in order (data written turn by turn with gaps) keeps all its utterances: nothing is
    dropped."""
    whole = []
    for dialog in dialogs:
        utterances = dialog["utterances"]
        last = list(utterances[-1]["history"]) if utterances else []
        complete = all(
            last[: len(u["history"])] == list(u["history"])
            and last[len(u["history"]) : len(u["history"]) + 1] == list(u["candidates"][-1:])
            for u in utterances[:-1]
        )
        whole.append({**dialog, "utterances": utterances[-1:]} if complete else dialog)
    return whole


def tokenize_processes(args: ConvAIArgs) -> int:
    """Processes for tokenizing: ``process_count`` (None: cpu_count() - 2, at least 1), or
    one without ``use_multiprocessing``."""
    if not args.use_multiprocessing:
        return 1
    return args.process_count or max((os.cpu_count() or 1) - 2, 1)


class ExampleBuilder:
    """Builds the examples of dialogs for one tokenizer and one set of options (``args`` is
    read at each call, so options changed later apply)."""

    def __init__(self, tokenizer, special: InputFormat, args: ConvAIArgs) -> None:
        self.tokenizer, self.special, self.args = tokenizer, special, args
        self._retokenized: set[str] = set()  # cache keys reprocess_input_data already redid

    def __call__(
        self,
        dialogs: Sequence[dict],
        source: str,
        max_tokens: int,
        num_candidates: int | None = None,
        training: bool = False,
    ):
        """The dataset of ``dialogs`` (``source`` names them in messages), inputs cut to
        ``max_tokens``. ``training`` with ``train_whole_conversations``: one example per
        conversation, every bot turn labelled (``whole_conversations``); with
        ``train_history_labels``: the bot's turns in each example's history labelled."""
        args = self.args
        options = encoding_options(args, max_tokens, num_candidates, self.special.overheads)
        if training and args.train_whole_conversations:
            dialogs = whole_conversations(dialogs)
        if training and (args.train_whole_conversations or args.train_history_labels):
            options = dataclasses.replace(options, label_history=True)
        if args.no_cache:
            plain = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
            plain.pop("overheads")  # the in-memory dataset reads them from its format
            return dataset_from_dialogs(
                dialogs, self.tokenizer, self.special, source=source, **plain
            )
        key = cache_key(dialogs, self.tokenizer, options)
        reprocess = args.reprocess_input_data and key not in self._retokenized
        self._retokenized.add(key)
        return cached_dataset(
            dialogs,
            self.tokenizer,
            self.special,
            options,
            args.cache_dir,
            reprocess=reprocess,
            num_proc=tokenize_processes(args),
            key=key,
            source=source,
            log=None if args.silent else print,
        )
