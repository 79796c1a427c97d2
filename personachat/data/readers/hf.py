"""Dialogs from the Hugging Face hub (``hf:NAME``), mapped through the same readers as files.

``datasets.load_dataset(NAME)`` fetches the data (or finds it in the local ``datasets`` cache
when offline), and each row is mapped by its columns:

- ``personality`` + ``utterances``: Persona-Chat dialogs, one per row;
- ``personality`` + ``history`` + ``candidates``: one utterance per row (e.g.
  ``bavard/personachat_truecased``), grouped into dialogs by ``conv_id`` — or, without it, by
  consecutive rows with the same persona;
- ``user 1 personas`` + ``user 2 personas`` + ``Best Generated Conversation``:
  Synthetic-Persona-Chat (``google/Synthetic-Persona-Chat``), two dialogs per row;
- ``personality`` + ``turns``: plain dialogs.

No network (or a wrong name) gives a DataError telling the user to pass a local file instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from personachat.data.dialogs import DataError
from personachat.data.readers import plain, synthetic_csv
from personachat.data.readers.records import Reading, add_checked

__all__ = ["dialogs_from_rows", "hf_records", "load_hf_records"]

_SPLIT_ALIASES = {
    "valid": ("valid", "validation", "val", "dev"),
    "validation": ("validation", "valid", "val", "dev"),
    "train": ("train",),
    "test": ("test",),
}


def _utterance_list(value: object) -> object:
    """``datasets`` may return a list of structs as a struct of lists; turn it back."""
    if isinstance(value, Mapping) and value and all(isinstance(v, list) for v in value.values()):
        keys = list(value)
        return [
            dict(zip(keys, items, strict=False)) for items in zip(*value.values(), strict=False)
        ]
    return value


def _utterance_rows(rows: Iterable[Mapping]) -> list[dict]:
    """Group one-utterance-per-row data into dialogs (by conv_id, else by persona runs)."""
    dialogs: list[dict] = []
    previous_key: object = object()
    for row in rows:
        persona = list(row["personality"])
        key = row["conv_id"] if "conv_id" in row else persona
        if key != previous_key:
            dialogs.append({"personality": persona, "utterances": []})
            previous_key = key
        dialogs[-1]["utterances"].append(
            {"history": list(row["history"]), "candidates": list(row["candidates"])}
        )
    return dialogs


def dialogs_from_rows(rows: Iterable[Mapping], columns: Sequence[str], source: str) -> list[dict]:
    """Map hub rows to validated Persona-Chat dialogs by their columns (module docstring)."""
    return hf_records(rows, columns, source).strict()


def hf_records(
    rows: Iterable[Mapping],
    columns: Sequence[str],
    source: str,
    allow_empty_personality: bool = False,
) -> Reading:
    """Every row (or, for one-utterance rows, every dialog) of a hub dataset with its
    dialogs and problems."""
    have = set(columns)
    allow = allow_empty_personality
    if {"personality", "utterances"} <= have:
        reading = Reading(source, "hub dialog", "row")
        for i, row in enumerate(rows):
            dialog = {
                "personality": list(row["personality"]),
                "utterances": _utterance_list(row["utterances"]),
            }
            add_checked(reading, [dialog], f"{source}: row {i}", allow)
    elif {"personality", "history", "candidates"} <= have:
        reading = Reading(source, "hub dialog", "dialog")
        for i, dialog in enumerate(_utterance_rows(rows)):
            add_checked(reading, [dialog], f"{source}: dialog {i}", allow)
    elif set(synthetic_csv.COLUMNS) <= have:
        reading = Reading(source, "hub dialog", "conversation")
        for i, row in enumerate(rows):
            found, problems, _ = synthetic_csv.dialogs_from_row(
                row[synthetic_csv.PERSONA_1] or "",
                row[synthetic_csv.PERSONA_2] or "",
                row[synthetic_csv.CONVERSATION] or "",
                f"{source}: row {i}",
                lambda k: f"conversation line {k + 1}",
                allow,
            )
            reading.add(found, problems)
    elif {"personality", "turns"} <= have:
        reading = Reading(source, "hub dialog", "row")
        for i, row in enumerate(rows):
            dialog, problems = plain.dialog_from_object(dict(row), f"{source}: row {i}", allow)
            reading.add([dialog] if dialog is not None else [], problems)
    else:
        raise DataError(
            f"{source}: columns {sorted(have)} match no known dialog layout — expected "
            "personality+utterances, personality+history+candidates, personality+turns, or "
            f"the Synthetic-Persona-Chat columns {list(synthetic_csv.COLUMNS)}; download the "
            "data and convert it to one of the file formats instead"
        )
    if not reading.records:
        reading.fatal.append(f"{source}: no rows")
    return reading


def _pick_split(loaded: object, split: str, name: str) -> object:
    if not isinstance(loaded, Mapping):  # a single Dataset
        return loaded
    for candidate in _SPLIT_ALIASES.get(split, (split,)):
        if candidate in loaded:
            return loaded[candidate]
    raise DataError(
        f'hf:{name}: has no split "{split}"; its splits are ' + ", ".join(f'"{s}"' for s in loaded)
    )


def load_hf_records(
    name: str, split: str = "train", allow_empty_personality: bool = False
) -> Reading:
    """Load ``split`` of the hub dataset ``name`` and map its rows to dialogs."""
    if not name.strip():
        raise DataError('"hf:" needs a dataset name after it, e.g. hf:bavard/personachat_truecased')
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"hf:{name}: reading hub datasets needs the datasets package — "
            "pip install datasets, or pass a local file"
        ) from None
    try:
        loaded = datasets.load_dataset(name)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # offline, unknown name, gated repo...: all mean "use a file"
        offline = [
            v
            for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
            if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        ]
        why = f" ({' and '.join(offline)} set: offline mode)" if offline else ""
        raise DataError(
            f"hf:{name}: could not load the dataset from the Hugging Face hub{why}: "
            f"{type(exc).__name__}: {str(exc)[:300]} — this machine may be offline or the name "
            "may be wrong; download the data where there is internet and pass the local file "
            "instead (Persona-Chat JSON, ParlAI text, Synthetic-Persona-Chat CSV or plain "
            "JSON/JSONL)"
        ) from None
    dataset = _pick_split(loaded, split, name)
    return hf_records(
        dataset, list(dataset.column_names), f"hf:{name} (split {split})", allow_empty_personality
    )
