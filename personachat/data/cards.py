"""Character cards: the persona files SillyTavern and its kin share, read as a persona.

A card is JSON (Character Card V2: ``{"spec": "chara_card_v2", "spec_version": "2.0",
"data": {...}}``; V1: the same fields at the top level) or a PNG image carrying that JSON,
base64-encoded, in a text chunk with the keyword ``chara`` (newer tools add a V3 copy under
``ccv3``; either is read). What personachat uses of it:

- ``name`` → ``PersonaCard.name`` (fills ``{{char}}`` / ``<BOT>``),
- ``description`` and ``personality`` → persona sentences, one per line and per sentence end,
- ``first_mes`` → the bot's opening line (``alternate_greetings[0]`` when it is empty).

``{{user}}`` / ``<USER>`` become the user's name. The other fields (scenario, example
messages, system prompt, lorebook…) are prompt text for large instruction models; a
persona-chat model conditions on a few short sentences and has no place for them.

A card is checked against the server's persona limits (``ServeSettings``): a card the
terminal accepts is one the server accepts too. PNG chunks are read here with ``struct`` and
``zlib`` (CRC checked), so reading a card needs no image library.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from personachat.data.dialogs import unicode_problem
from personachat.errors import PersonachatError

# A card is a small JSON or an avatar image; a few MB is a large one. Anything beyond is
# refused before it is read (a server reads cards that users upload).
MAX_CARD_BYTES = 10 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = ("chara", "ccv3")  # chara first: the V2 copy every tool writes
CARD_SPECS = ("chara_card_v2", "chara_card_v3")  # V3 keeps V2's fields under data

_CHAR = re.compile(r"\{\{\s*char\s*\}\}|<bot>", re.IGNORECASE)
_USER = re.compile(r"\{\{\s*user\s*\}\}|<user>", re.IGNORECASE)
# A sentence ends at . ! ? … (a closing quote or bracket may follow) before whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"'”’)\]*])\s+")


class CardError(PersonachatError, ValueError):
    """A character card that cannot be used: names the file, what is wrong and the fix."""


@dataclass(frozen=True)
class PersonaCard:
    """What a character card gives a persona bot.

    ``personality``: persona sentences, as ``interact(personality=...)`` takes them;
    ``first_message``: the bot's opening line, or None when the card has none.
    """

    name: str
    personality: list[str]
    first_message: str | None


@dataclass(frozen=True)
class CardLimits:
    """How much persona a card may bring: the server's persona and message limits."""

    sentences: int  # max_persona_sentences
    sentence_chars: int  # max_persona_chars
    first_message_chars: int  # max_message_chars: the opening line is a message too

    @classmethod
    def from_settings(cls, settings) -> CardLimits:
        """The limits of a ``ServeSettings`` (a server started with other limits)."""
        return cls(
            settings.max_persona_sentences,
            settings.max_persona_chars,
            settings.max_message_chars,
        )


def default_limits() -> CardLimits:
    """The server's default limits. Imported on use, not at the top: the numbers have one
    home (``ServeSettings``), and that module loads torch, which a card reader does not need
    until it checks a card."""
    from personachat.serve.settings import ServeSettings

    return CardLimits.from_settings(ServeSettings())


def read_card(
    path: str | Path, user: str = "User", limits: CardLimits | None = None
) -> PersonaCard:
    """The card in the file ``path`` (JSON or PNG). The size is checked before reading."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CARD_BYTES:
            raise CardError(_too_large(str(path), size))
        with path.open("rb") as f:
            data = f.read(MAX_CARD_BYTES + 1)
    except OSError as err:
        raise CardError(
            f"{path}: cannot read the character card ({err.strerror or err}); "
            "check the path and that the file is readable"
        ) from None
    return parse_card(data, str(path), user, limits)


def parse_card(
    data: bytes, source: str, user: str = "User", limits: CardLimits | None = None
) -> PersonaCard:
    """The card in ``data``: PNG bytes (told by the PNG signature) or JSON bytes.
    ``source`` names where the bytes came from in every error."""
    if len(data) > MAX_CARD_BYTES:
        raise CardError(_too_large(source, len(data)))
    if data.startswith(PNG_SIGNATURE):
        text = card_text_from_png(data, source)
        kind = "the PNG's card chunk"
    else:
        text, kind = _decode_text(data, source, "the file"), "the file"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        what = "neither a PNG image nor JSON" if kind == "the file" else "not JSON"
        raise CardError(
            f"{source}: not a character card: {kind} is {what} ({err.msg} at line "
            f"{err.lineno}, column {err.colno}); give a Character Card V2 .json or .png file"
        ) from None
    if not isinstance(obj, dict):
        raise CardError(
            f"{source}: a character card is a JSON object, got a {type(obj).__name__}; "
            'give a Character Card V2 file ({"spec": "chara_card_v2", "data": {...}})'
        )
    return card_from_json(obj, source, user, limits)


def card_from_json(
    obj: dict, source: str, user: str = "User", limits: CardLimits | None = None
) -> PersonaCard:
    """The persona of a card's JSON object (V2/V3 with ``data``, or V1 at the top level),
    macros filled in and checked against ``limits`` (default: the server's defaults)."""
    fields = _card_fields(obj, source)
    name = _text_field(fields, "name", source)
    if not name.strip():
        raise CardError(f'{source}: the card has no "name"; give the character a name')
    name = name.strip()

    def fill(text: str) -> str:
        return _USER.sub(lambda _: user, _CHAR.sub(lambda _: name, text))

    sentences = [
        s
        for key in ("description", "personality")
        for s in persona_sentences(fill(_text_field(fields, key, source)))
    ]
    if not sentences:
        raise CardError(
            f'{source}: the card "{name}" has no persona text: its "description" and '
            '"personality" are empty; write a few sentences about the character there'
        )
    first = _text_field(fields, "first_mes", source).strip() or _first_greeting(fields, source)
    card = PersonaCard(name, sentences, fill(first).strip() or None)
    check_limits(card, source, limits or default_limits())
    return card


def persona_sentences(text: str) -> list[str]:
    """``text`` as persona sentences: one per line and per sentence end, wording kept
    (the model's encoder lower-cases where it was trained so); empty pieces and pieces
    without a letter or digit (``***``, ``---`` separators) are dropped."""
    pieces = (p.strip() for line in text.splitlines() for p in _SENTENCE_END.split(line))
    return [p for p in pieces if any(c.isalnum() for c in p)]


def persona_and_opening(
    card: PersonaCard | None, personality: list[str] | None, opening: str | None
) -> tuple[list[str] | None, str | None]:
    """The persona to chat with and the bot's opening line: the card's persona and first
    message (unless another opening is given) when no personality is given or the card's own
    is; otherwise ``personality`` and ``opening`` as they are."""
    if card is None or (personality and list(personality) != card.personality):
        return personality, opening
    return card.personality, opening or card.first_message


def check_limits(card: PersonaCard, source: str, limits: CardLimits) -> None:
    """Refuse a card with more persona than the server takes, saying how to shorten it."""
    fix = (
        f"shorten the card's description and personality to at most {limits.sentences} "
        f"sentences of at most {limits.sentence_chars} characters each (a persona bot "
        "conditions on a few short facts, as in Persona-Chat)"
    )
    if len(card.personality) > limits.sentences:
        raise CardError(
            f"{source}: the card gives {len(card.personality)} persona sentences, more than "
            f"the {limits.sentences} allowed (max_persona_sentences); {fix}"
        )
    for i, sentence in enumerate(card.personality):
        if len(sentence) > limits.sentence_chars:
            raise CardError(
                f"{source}: persona sentence {i + 1} ({sentence[:40]!r}…) has {len(sentence)} "
                f"characters, more than the {limits.sentence_chars} allowed "
                f"(max_persona_chars); {fix}"
            )
    if card.first_message and len(card.first_message) > limits.first_message_chars:
        raise CardError(
            f'{source}: the card\'s "first_mes" has {len(card.first_message)} characters, '
            f"more than the {limits.first_message_chars} a message may have "
            "(max_message_chars); shorten the first message"
        )


def _card_fields(obj: dict, source: str) -> dict:
    """The object holding a card's fields: ``data`` for V2/V3, the card itself for V1."""
    if "spec" not in obj:
        return obj  # V1: no spec, fields at the top level
    spec = obj["spec"]
    if spec not in CARD_SPECS:
        raise CardError(
            f'{source}: unknown card "spec" {spec!r}; expected "chara_card_v2" '
            '(or "chara_card_v3"), or no "spec" for a V1 card with its fields at the top level'
        )
    fields = obj.get("data")
    if not isinstance(fields, dict):
        raise CardError(
            f'{source}: a {spec} card keeps its fields in a "data" object, got '
            f"{type(fields).__name__ if 'data' in obj else 'none'}; re-export the card"
        )
    return fields


def _text_field(fields: dict, key: str, source: str) -> str:
    """A text field of the card ('' when absent or null), refused if it is not text."""
    value = fields.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CardError(
            f'{source}: the card\'s "{key}" must be text, got {type(value).__name__}; '
            "fix or re-export the card"
        )
    problem = unicode_problem(value)
    if problem:
        raise CardError(f'{source}: the card\'s "{key}" is {problem}')
    return value


def _first_greeting(fields: dict, source: str) -> str:
    """``alternate_greetings[0]``: the opening line of a card whose ``first_mes`` is empty."""
    greetings = fields.get("alternate_greetings")
    if not isinstance(greetings, list) or not greetings:
        return ""
    return _text_field({"alternate_greetings[0]": greetings[0]}, "alternate_greetings[0]", source)


def _decode_text(data: bytes, source: str, where: str) -> str:
    """UTF-8 text (a byte-order mark allowed), or a CardError naming ``where``."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        what = "neither a PNG image nor UTF-8 JSON" if where == "the file" else "not UTF-8 text"
        raise CardError(
            f"{source}: not a character card: {where} is {what} (byte {err.start} cannot "
            "be decoded); give a Character Card V2 .json or .png file"
        ) from None


def _too_large(source: str, size: int) -> str:
    return (
        f"{source}: the card is {size:,} bytes, more than the {MAX_CARD_BYTES:,} "
        "(MAX_CARD_BYTES) a card may have; save the image smaller or give the card as JSON"
    )


# ---------------------------------------------------------------- PNG text chunks
def card_text_from_png(data: bytes, source: str) -> str:
    """The card JSON of a PNG: the base64 text of its ``chara`` chunk (``ccv3`` if it has
    no ``chara``), in a tEXt, zTXt or iTXt chunk."""
    texts = png_text_chunks(data, source)
    keyword = next((k for k in CARD_KEYWORDS if k in texts), None)
    if keyword is None:
        found = ", ".join(sorted(texts)) or "none"
        raise CardError(
            f"{source}: this PNG holds no character card: no text chunk named 'chara' "
            f"(text chunks found: {found}); export the card again as a PNG from the tool "
            "that made it, or give its JSON"
        )
    text = texts[keyword].strip()
    if text.startswith("{"):
        return text  # plain JSON, as a few tools write into iTXt
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise CardError(
            f"{source}: the PNG's '{keyword}' chunk is not valid base64 ({err}); the card "
            "inside is damaged: export it again"
        ) from None
    return _decode_text(raw, source, f"the PNG's '{keyword}' chunk")


def png_text_chunks(data: bytes, source: str) -> dict[str, str]:
    """The text chunks of a PNG, keyword → text (the first of each keyword), every chunk's
    CRC checked; a truncated file or a damaged chunk is a CardError."""
    texts: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise CardError(_truncated(source, pos))
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length + 4
        if end > len(data):
            raise CardError(_truncated(source, pos))
        body = data[pos + 8 : end - 4]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(kind + body) != crc:
            name = kind.decode("latin-1")
            raise CardError(
                f"{source}: the PNG's {name} chunk at byte {pos} is damaged (its CRC does "
                "not match); the file was altered or cut: export the card again"
            )
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, text = _chunk_text(kind, body, source)
            texts.setdefault(keyword, text)
        if kind == b"IEND":
            return texts
        pos = end
    raise CardError(_truncated(source, pos))


def _chunk_text(kind: bytes, body: bytes, source: str) -> tuple[str, str]:
    """Keyword and text of one tEXt (Latin-1), zTXt (compressed Latin-1) or iTXt (UTF-8,
    maybe compressed, after a language tag and a translated keyword) chunk."""
    keyword, _, rest = body.partition(b"\0")
    if kind == b"tEXt":
        return keyword.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        return keyword.decode("latin-1"), _inflate(rest[1:], source).decode("latin-1")
    compressed, rest = rest[:1] == b"\1", rest[2:]
    _language, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    raw = _inflate(text, source) if compressed else text
    return keyword.decode("latin-1"), _decode_text(raw, source, "an iTXt chunk")


def _inflate(data: bytes, source: str) -> bytes:
    """A compressed text chunk's bytes, at most MAX_CARD_BYTES of them (a small chunk can
    inflate to gigabytes)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_CARD_BYTES)
    except zlib.error as err:
        raise CardError(
            f"{source}: a compressed text chunk of the PNG is damaged ({err}); export the "
            "card again"
        ) from None
    if inflater.unconsumed_tail:
        raise CardError(
            f"{source}: a compressed text chunk of the PNG inflates to more than "
            f"{MAX_CARD_BYTES:,} bytes (MAX_CARD_BYTES); that is no character card"
        )
    return out


def _truncated(source: str, pos: int) -> str:
    return (
        f"{source}: the PNG is truncated (it ends inside a chunk or before its IEND chunk, "
        f"at byte {pos}); the file was cut short: download or export it again"
    )
