"""A GGUF file checked before it is converted: the file is untrusted input.

transformers converts whatever the metadata says: a file declaring more layers than it has
tensors loads with the missing layers random (and the conversion slows down super-linearly
with the declared count); zero attention heads, a token id past the vocabulary or a file cut
short end in tracebacks deep inside it. ``check_gguf_file`` reads the header, the metadata
and the tensor table itself (every count and length checked against the bytes left, so a
hostile header cannot make it allocate or loop past the file's size) and compares them, the
way llama.cpp's loader does, before any conversion: one ``GGUFError`` line naming the key.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from personachat.errors import PersonachatError

# GGUF value types: struct format of the fixed-size ones; 8 is a string, 9 an array.
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
SCALARS |= {10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
SPECIAL_TOKENS = ("bos", "eos", "unknown", "separator", "padding", "cls", "mask")
BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.")


class GGUFFileError(PersonachatError, ValueError):
    """A GGUF file is cut short, malformed, or its metadata contradicts its tensors."""


@dataclass
class GGUFHeader:
    """What the checks need: scalar and string metadata, array lengths, tensor shapes (in
    GGUF's order: the row length first), and whether each tensor's data is in the file."""

    values: dict[str, object] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    data_end: int = 0


class _Reader:
    """Little-endian reads that never go past the file's end (a truncated file says where)."""

    def __init__(self, file: BinaryIO, size: int, path: Path) -> None:
        self.file, self.size, self.path = file, size, path
        self.place = "the header"

    def take(self, count: int) -> bytes:
        if count > self.size - self.file.tell():
            raise GGUFFileError(
                f"GGUF file {self.path} is truncated or corrupt: {self.place} needs "
                f"{count:,} bytes at offset {self.file.tell():,}, past the end of the "
                f"{self.size:,}-byte file; download or export it again"
            )
        return self.file.read(count)

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar("<Q")).decode("utf-8", errors="replace")

    def value(self, kind: int, key: str, header: GGUFHeader) -> None:
        """Read one metadata value of ``kind`` into ``header`` (arrays: their length)."""
        if kind in SCALARS:
            header.values[key] = self.scalar(SCALARS[kind])
        elif kind == STRING:
            header.values[key] = self.string()
        elif kind == ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if count > self.size:  # every item takes at least one byte
                self.take(count)
            header.array_lengths[key] = count
            if item == STRING:
                for _ in range(count):
                    self.take(self.scalar("<Q"))
            elif item in SCALARS:
                self.take(count * struct.calcsize(SCALARS[item]))
            else:
                raise GGUFFileError(f"GGUF file {self.path}: key {key!r} is a nested array")
        else:
            raise GGUFFileError(f"GGUF file {self.path}: key {key!r} has unknown type {kind}")


def read_gguf_header(path: Path) -> GGUFHeader:
    """The metadata and tensor table of ``path``, every length checked against its size."""
    from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType

    size = path.stat().st_size
    header = GGUFHeader()
    with open(path, "rb") as file:
        read = _Reader(file, size, path)
        if read.take(4) != b"GGUF":
            raise GGUFFileError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        version, tensors, keys = read.scalar("<I"), read.scalar("<Q"), read.scalar("<Q")
        if version not in (2, 3):
            raise GGUFFileError(f"GGUF file {path} has version {version}; 2 and 3 are read")
        for _ in range(keys):
            read.place = "the metadata"
            key = read.string()
            read.place = f"the value of {key!r}"
            read.value(read.scalar("<I"), key, header)
        offsets = {}
        for _ in range(tensors):
            read.place = "the tensor table"
            name = read.string()
            read.place = f"the shape of tensor {name!r}"
            header.shapes[name] = tuple(read.scalar("<Q") for _ in range(read.scalar("<I")))
            offsets[name] = (read.scalar("<I"), read.scalar("<Q"))
        alignment = int(header.values.get("general.alignment", GGUF_DEFAULT_ALIGNMENT) or 1)
        start = -(-file.tell() // alignment) * alignment
    for name, (kind, offset) in offsets.items():
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise GGUFFileError(
                f"GGUF file {path}: tensor {name!r} has unknown type {kind}"
            ) from None
        elements = 1
        for dim in header.shapes[name]:
            elements *= dim
        end = start + offset + elements // block * block_bytes
        if end > size:
            raise GGUFFileError(
                f"GGUF file {path} is truncated: tensor {name!r} ends at byte {end:,}, past "
                f"the end of the {size:,}-byte file; download or export it again"
            )
        header.data_end = max(header.data_end, end)
    return header


def check_gguf_file(path: Path) -> GGUFHeader:
    """``path``'s header, after checking its metadata against its tensors (see the module
    docstring); a GGUFFileError naming the key otherwise."""
    header = read_gguf_header(path)
    arch = header.values.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        problem = "key 'general.architecture' is missing, so the model type is unknown"
    else:
        checks = (layer_problem, head_problem, vocabulary_problem, token_id_problem)
        problem = next(filter(None, (check(header, arch) for check in checks)), None)
    if problem:
        raise GGUFFileError(
            f"GGUF file {path}: {problem}. The file is inconsistent (damaged or not written "
            "by a GGUF converter); export or download it again"
        )
    return header


def _count(header: GGUFHeader, key: str) -> int | None:
    value = header.values.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def layer_problem(header: GGUFHeader, arch: str) -> str | None:
    """``ARCH.block_count`` against the ``blk.N.*`` tensors present."""
    key = f"{arch}.block_count"
    declared = _count(header, key)
    if declared is None or declared < 1:
        return f"key {key!r} is {header.values.get(key)!r}, not a number of layers"
    present = {int(m.group(1)) for name in header.shapes if (m := BLOCK_TENSOR.match(name))}
    if declared > len(header.shapes):  # checked first: a hostile count may be 2**64 - 1
        return (
            f"key {key!r} declares {declared:,} layers but the file holds "
            f"{len(header.shapes)} tensors in all ({len(present)} layer(s))"
        )
    if present != set(range(declared)):
        missing = sorted(set(range(declared)) - present)
        extra = sorted(present - set(range(declared)))
        held = f"tensors for {len(present)} layer(s)"
        gap = f" (layer {missing[0]} has none)" if missing else f" (and blk.{extra[0]}.*)"
        return f"key {key!r} declares {declared} layers but the file holds {held}{gap}"
    return None


def head_problem(header: GGUFHeader, arch: str) -> str | None:
    """Attention heads above zero, dividing the embedding size (unless a key length is
    given), key/value heads dividing the heads."""
    width_key, heads_key = f"{arch}.embedding_length", f"{arch}.attention.head_count"
    kv_key = f"{arch}.attention.head_count_kv"
    width, heads = _count(header, width_key), _count(header, heads_key)
    if width is None or width < 1:
        return f"key {width_key!r} is {header.values.get(width_key)!r}, not an embedding size"
    if heads is None or heads < 1:
        return f"key {heads_key!r} is {header.values.get(heads_key)!r}; it must be at least 1"
    if f"{arch}.attention.key_length" not in header.values and width % heads:
        return f"key {heads_key!r} ({heads}) does not divide {width_key!r} ({width})"
    kv = _count(header, kv_key) if kv_key in header.values else heads
    if kv is None or kv < 1 or heads % kv:
        return f"key {kv_key!r} is {header.values.get(kv_key)!r}; it must divide {heads_key!r}"
    embedding = header.shapes.get("token_embd.weight")
    if embedding is not None and embedding[:1] != (width,):
        return f"tensor 'token_embd.weight' has rows of {embedding[0]}, not {width_key!r} ({width})"
    return None


def vocabulary_problem(header: GGUFHeader, arch: str) -> str | None:
    """The token list, ``ARCH.vocab_size`` and the embedding (and output) rows agree."""
    tokens = header.array_lengths.get("tokenizer.ggml.tokens")
    if not tokens:
        return "key 'tokenizer.ggml.tokens' is missing or empty: the file has no vocabulary"
    declared = _count(header, f"{arch}.vocab_size")
    if f"{arch}.vocab_size" in header.values and declared != tokens:
        return f"key '{arch}.vocab_size' is {declared} but the token list holds {tokens}"
    for name in ("token_embd.weight", "output.weight"):
        shape = header.shapes.get(name)
        if shape is not None and (len(shape) != 2 or shape[1] != tokens):
            rows = shape[1] if len(shape) == 2 else shape
            return f"tensor {name!r} has {rows} rows but the token list holds {tokens} tokens"
    if "token_embd.weight" not in header.shapes:
        return "tensor 'token_embd.weight' (the token embeddings) is missing"
    return None


def token_id_problem(header: GGUFHeader, arch: str) -> str | None:
    """Every special token id (bos, eos, pad, ...) names a token of the list."""
    tokens = header.array_lengths["tokenizer.ggml.tokens"]
    for name in SPECIAL_TOKENS:
        key = f"tokenizer.ggml.{name}_token_id"
        if key in header.values:
            value = _count(header, key)
            if value is None or not 0 <= value < tokens:
                return f"key {key!r} is {header.values[key]!r}, outside the {tokens} tokens"
    return None
