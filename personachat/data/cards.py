"""Character cards: the persona files SillyTavern and its kin share, read as a persona.

A card is JSON (Character Card V2: ``{"spec": "chara_card_v2", "spec_version": "2.0",
"data": {...}}``; V1: the same fields at the top level) or a PNG image carrying that JSON,
base64-encoded, in a text chunk with the keyword ``chara`` (newer tools add a V3 copy under
``ccv3``; either is read). The card becomes the persona the way SillyTavern assembles its
prompt (its default story string), in this order:

- ``system_prompt`` (``{{original}}`` removed: there is no global prompt to put there),
- ``description``, one persona sentence per line and per sentence end,
- ``personality`` as ``"<name>'s personality: …"``, ``scenario`` as ``"Scenario: …"``,
- ``character_book`` entries whose keys appear in the last ``scan_depth`` messages (and
  ``constant`` ones always), by ``insertion_order`` (``PersonaCard.persona_for``),
- ``mes_example`` split at ``<START>``: each example chat one block headed ``[Example
  chat]``, last. Example dialogue is never persona sentences: a block in the persona (the
  system message of a chat-template model) and not history turns, because a persona bot reads
  only the last few turns of its history and the examples would be gone after the first reply.

``first_mes`` is the bot's opening line (``alternate_greetings[0]`` when it is empty);
``{{char}}`` / ``<BOT>`` become the card's name and ``{{user}}`` / ``<USER>`` the user's.
``creator_notes``, ``post_history_instructions``, tags and extensions are not used.

Two budgets bound a card. ``max_card_chars`` (``CardLimits.prompt_chars``): the card's text,
all fields together, *after* the macros are filled (counted before filling, so a card
repeating ``<bot>`` under a long name is refused without being expanded).
``card_prompt_tokens`` (``CardLimits.prompt_tokens``, a model option): the most tokens the
card's persona takes in the model's input; what is beyond is left out, example chats first,
then description sentences from the end (system prompt, personality and scenario last).
The JSON is checked for depth and number size before it is used, and a PNG's text chunks
are inflated within one total budget. Chunks are read here with ``struct`` and ``zlib`` (CRC
checked), so reading a card needs no image library.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import accumulate
from pathlib import Path

from personachat.errors import PersonachatError
from personachat.fs import file_kind
from personachat.text import unicode_problem

# A card is a small JSON or an avatar image; a few MB is a large one. Anything beyond is
# refused before it is read (a server reads cards that users upload).
MAX_CARD_BYTES = 10 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORDS = ("chara", "ccv3")  # chara first: the V2 copy every tool writes
CARD_SPECS = ("chara_card_v2", "chara_card_v3")  # V3 keeps V2's fields under data
MAX_JSON_DEPTH = 64  # a real card nests ~5 deep (data.character_book.entries[i].keys)
MAX_NUMBER_DIGITS = 30  # insertion_order, scan_depth…: small numbers
MAX_NAME_CHARS = 200
MAX_LIST_ITEMS = 1000  # greetings, lorebook entries, keys of an entry
DEFAULT_CARD_CHARS = 32_000  # max_card_chars: SillyTavern's default card is ~6,000
DEFAULT_SCAN_DEPTH = 2  # messages a lorebook key is looked for in (SillyTavern's default)
MAX_SCAN_DEPTH = 1000
EXAMPLE_HEADER = "[Example chat]"
# Kinds of persona pieces, most needed first: what card_prompt_tokens keeps.
PRIORITY = ("system", "personality", "scenario", "description", "example")

_MACROS = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(bot|user)>", re.IGNORECASE)
_ORIGINAL = re.compile(r"\{\{\s*original\s*\}\}", re.IGNORECASE)
_START = re.compile(r"<start>", re.IGNORECASE)
# A sentence ends at . ! ? … (a closing quote or bracket may follow) before whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"'”’)\]*])\s+")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class CardError(PersonachatError, ValueError):
    """A character card that cannot be used: names the file, what is wrong and the fix."""


@dataclass(frozen=True)
class LoreEntry:
    """A ``character_book`` entry: ``content`` joins the persona while one of ``keys`` (and,
    when ``selective``, one of ``secondary_keys``) is in the recent messages."""

    keys: tuple[str, ...]
    content: str
    secondary_keys: tuple[str, ...] = ()
    selective: bool = False
    constant: bool = False
    case_sensitive: bool = False
    insertion_order: int = 100

    def fires(self, text: str) -> bool:
        """Whether the entry belongs in the persona of a conversation whose recent messages
        are ``text`` (keys are matched as plain text, not as regular expressions)."""
        if self.constant:
            return True
        folded = text if self.case_sensitive else text.lower()

        def found(keys: tuple[str, ...]) -> bool:
            return any((k if self.case_sensitive else k.lower()) in folded for k in keys if k)

        return found(self.keys) and (not self.selective or found(self.secondary_keys))


@dataclass(frozen=True)
class PersonaCard:
    """What a character card gives a persona bot.

    ``personality``: the persona pieces in prompt order (sentences, personality and scenario
    lines, example-chat blocks last), as ``interact(personality=...)`` takes them;
    ``first_message``: the bot's opening line, or None when the card has none;
    ``lore`` / ``scan_depth``: the lorebook (see ``persona_for``); ``lore_at``: where its
    entries go in ``personality`` (before the example chats); ``left_out``: pieces left out
    for ``card_prompt_tokens``.
    """

    name: str
    personality: list[str]
    first_message: str | None
    alternate_greetings: tuple[str, ...] = ()
    examples: tuple[tuple[tuple[str, str], ...], ...] = ()
    lore: tuple[LoreEntry, ...] = ()
    scan_depth: int = DEFAULT_SCAN_DEPTH
    lore_at: int | None = None
    left_out: int = 0

    def persona_for(self, history: Sequence[str]) -> list[str]:
        """The persona for a reply to ``history`` (ending with the user's message): the
        card's pieces with the lorebook entries its last ``scan_depth`` messages call up."""
        return Lorebook.of(self).persona_for(self.personality, history)


@dataclass(frozen=True)
class Lorebook:
    """A card's lorebook apart from the card, so a stored session keeps it with its persona:
    ``entries``, the messages their keys are looked for in (``scan_depth``), and where in the
    persona they go (``at``: before the example chats; None: at the end)."""

    entries: tuple[LoreEntry, ...] = ()
    scan_depth: int = DEFAULT_SCAN_DEPTH
    at: int | None = None

    @classmethod
    def of(cls, card: PersonaCard) -> Lorebook:
        return cls(card.lore, card.scan_depth, card.lore_at)

    def persona_for(self, personality: Sequence[str], history: Sequence[str]) -> list[str]:
        """``personality`` with the entries the last ``scan_depth`` messages of ``history``
        (ending with the user's message) call up, by ``insertion_order``."""
        recent = "\n".join(history[-self.scan_depth :]) if history else ""
        hits = sorted((e for e in self.entries if e.fires(recent)), key=lambda e: e.insertion_order)
        if not hits:
            return list(personality)
        at = len(personality) if self.at is None else min(self.at, len(personality))
        return [*personality[:at], *(e.content for e in hits), *personality[at:]]

    def to_json(self) -> dict | None:
        """The lorebook as JSON (None when it has no entries), as ``from_json`` reads it."""
        if not self.entries:
            return None
        return {
            "scan_depth": self.scan_depth,
            "at": self.at,
            "entries": [
                {**asdict(e), "keys": list(e.keys), "secondary_keys": list(e.secondary_keys)}
                for e in self.entries
            ],
        }

    @classmethod
    def from_json(cls, obj: dict | None) -> Lorebook:
        """The lorebook ``to_json`` wrote (an empty one for None)."""
        if not obj:
            return cls()
        entries = tuple(
            LoreEntry(
                **{**e, "keys": tuple(e["keys"]), "secondary_keys": tuple(e["secondary_keys"])}
            )
            for e in obj["entries"]
        )
        return cls(entries, int(obj["scan_depth"]), obj["at"])


@dataclass(frozen=True)
class CardLimits:
    """How much a card may bring: ``prompt_chars`` (max_card_chars) characters of text after
    its macros are filled, and, when ``count_tokens`` is given (token counts of texts, the
    model's tokenizer), ``prompt_tokens`` (card_prompt_tokens) tokens of persona."""

    prompt_chars: int = DEFAULT_CARD_CHARS
    prompt_tokens: int | None = None
    count_tokens: Callable[[list[str]], list[int]] | None = field(default=None, compare=False)

    @classmethod
    def from_settings(cls, settings, model=None) -> CardLimits:
        """The limits of a ``ServeSettings``, with the token budget of a loaded
        ``ConvAIModel`` when one is given (``model_limits``)."""
        limits = cls(getattr(settings, "max_card_chars", DEFAULT_CARD_CHARS))
        return model_limits(model, limits) if model is not None else limits


def model_limits(model, limits: CardLimits | None = None) -> CardLimits:
    """``limits`` (default: the defaults) with ``model``'s token budget: its
    ``card_prompt_tokens``, at most half its context (the conversation needs the rest),
    counted with its tokenizer."""
    from personachat.model.loading import context_size  # torch: only when a model is here

    tokenizer = model.tokenizer
    budget = min(model.args.card_prompt_tokens, context_size(model.model) // 2)

    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return replace(limits or CardLimits(), prompt_tokens=budget, count_tokens=count)


def default_limits() -> CardLimits:
    """The limits a card is read with when none are given: the server's defaults."""
    return CardLimits()


def read_card(
    path: str | Path, user: str = "User", limits: CardLimits | None = None
) -> PersonaCard:
    """The card in the file ``path`` (JSON or PNG). The size is checked before reading."""
    path = Path(path)
    kind = file_kind(path)
    if kind is not None:  # a pipe would block the read forever, a device never end
        raise CardError(f"{path}: is {kind}, not a regular file — save the card to a file")
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
    obj = card_json(text, source, kind)
    if not isinstance(obj, dict):
        raise CardError(
            f"{source}: a character card is a JSON object, got a {type(obj).__name__}; "
            'give a Character Card V2 file ({"spec": "chara_card_v2", "data": {...}})'
        )
    return card_from_json(obj, source, user, limits)


class BigNumber:
    """A JSON integer too long to be a card's number, kept as its digit count (turning 5,000
    digits into an int is slow, and Python refuses more than 4,300)."""

    def __init__(self, digits: str) -> None:
        self.digits = len(digits.lstrip("-"))

    def __repr__(self) -> str:
        return f"a {self.digits}-digit number"


def card_json(text: str, source: str, kind: str = "the file") -> object:
    """``text`` parsed as JSON, refused when nested deeper than ``MAX_JSON_DEPTH``; integers
    longer than ``MAX_NUMBER_DIGITS`` become ``BigNumber`` (refused where a field is read)."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CardError(
            f"{source}: {kind} nests JSON arrays and objects {depth:,} levels deep, more than "
            f"the {MAX_JSON_DEPTH} a character card may (MAX_JSON_DEPTH); that is no card"
        )
    try:
        return json.loads(
            text, parse_int=lambda s: BigNumber(s) if len(s) > MAX_NUMBER_DIGITS else int(s)
        )
    except json.JSONDecodeError as err:
        what = "neither a PNG image nor JSON" if kind == "the file" else "not JSON"
        raise CardError(
            f"{source}: not a character card: {kind} is {what} ({err.msg} at line "
            f"{err.lineno}, column {err.colno}); give a Character Card V2 .json or .png file"
        ) from None


def json_depth(text: str) -> int:
    """How deep the arrays and objects of the JSON ``text`` nest: its brackets outside
    strings counted with regular expressions and ``accumulate``, never recursing (the JSON
    parser recurses, and a card nested 100,000 deep ends it in a RecursionError)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def card_from_json(
    obj: dict, source: str, user: str = "User", limits: CardLimits | None = None
) -> PersonaCard:
    """The persona of a card's JSON object (V2/V3 with ``data``, or V1 at the top level),
    macros filled in within ``limits.prompt_chars`` and the persona fitted to
    ``limits.prompt_tokens`` (when a token counter is given)."""
    limits = limits or default_limits()
    fields = _card_fields(obj, source)
    name = _text_field(fields, "name", source).strip()
    if not name:
        raise CardError(f'{source}: the card has no "name"; give the character a name')
    if len(name) > MAX_NAME_CHARS:
        raise CardError(
            f'{source}: the card\'s "name" has {len(name):,} characters, more than the '
            f"{MAX_NAME_CHARS} a name may have; give the character a shorter name"
        )
    fill = MacroFiller(name, user, limits.prompt_chars, source)
    pieces, examples = _persona_pieces(fields, source, fill, name)
    if not any(kind == "description" or kind == "personality" for kind, _ in pieces):
        raise CardError(
            f'{source}: the card "{name}" has no persona text: its "description" and '
            '"personality" are empty; write a few sentences about the character there'
        )
    greetings = _greetings(fields, source, fill)
    first = fill(_text_field(fields, "first_mes", source), "first_mes").strip()
    lore, scan_depth = _lorebook(fields, source, fill)
    kept = fit_pieces(pieces, limits)
    if not kept:
        raise CardError(
            f'{source}: not even the first line of the card "{name}" fits in '
            f"card_prompt_tokens={limits.prompt_tokens} tokens (at most half the model's "
            "context); raise card_prompt_tokens, or use a model with a longer context"
        )
    return PersonaCard(
        name,
        [text for _, text in kept],
        first or (greetings[0] if greetings else None),
        greetings,
        example_turns(examples, name, user),
        lore,
        scan_depth,
        sum(kind != "example" for kind, _ in kept),
        len(pieces) - len(kept),
    )


class MacroFiller:
    """Fills ``{{char}}`` / ``<BOT>`` and ``{{user}}`` / ``<USER>`` in a card's fields,
    keeping count of the characters filled so far: a field that would take the card past
    ``budget`` characters is refused before it is expanded."""

    def __init__(self, name: str, user: str, budget: int, source: str) -> None:
        self.names = {"char": name, "bot": name, "user": user}
        self.left, self.budget, self.source = budget, budget, source

    def __call__(self, text: str, key: str) -> str:
        grows = sum(
            len(self.names[(m.group(1) or m.group(2)).lower()]) - len(m.group(0))
            for m in _MACROS.finditer(text)
        )
        if len(text) + grows > self.left:
            raise CardError(
                f'{self.source}: the card\'s "{key}" takes its text to '
                f"{self.budget - self.left + len(text) + grows:,} characters once "
                "{{char}} and {{user}} are filled in, more than the "
                f"{self.budget:,} a card may have (max_card_chars); shorten the card, or "
                "raise max_card_chars"
            )
        self.left -= len(text) + grows
        return _MACROS.sub(lambda m: self.names[(m.group(1) or m.group(2)).lower()], text)


def _persona_pieces(
    fields: dict, source: str, fill: MacroFiller, name: str
) -> tuple[list[tuple[str, str]], str]:
    """(kind, text) of the persona in SillyTavern's order (see the module doc), and the
    example messages (macros filled)."""
    system = _ORIGINAL.sub("", _text_field(fields, "system_prompt", source))
    pieces = [("system", s) for s in persona_sentences(fill(system, "system_prompt"))]
    description = fill(_text_field(fields, "description", source), "description")
    pieces += [("description", s) for s in persona_sentences(description)]
    personality = fill(_text_field(fields, "personality", source), "personality").strip()
    if any(c.isalnum() for c in personality):
        pieces.append(("personality", f"{name}'s personality: {' '.join(personality.split())}"))
    scenario = fill(_text_field(fields, "scenario", source), "scenario").strip()
    if any(c.isalnum() for c in scenario):
        pieces.append(("scenario", f"Scenario: {' '.join(scenario.split())}"))
    examples = fill(_text_field(fields, "mes_example", source), "mes_example")
    pieces += [("example", block) for block in example_blocks(examples)]
    return pieces, examples


def persona_sentences(text: str) -> list[str]:
    """``text`` as persona sentences: one per line and per sentence end, wording kept
    (the model's encoder lower-cases where it was trained so); empty pieces and pieces
    without a letter or digit (``***``, ``---`` separators) are dropped."""
    pieces = (p.strip() for line in text.splitlines() for p in _SENTENCE_END.split(line))
    return [p for p in pieces if any(c.isalnum() for c in p)]


def example_blocks(text: str) -> list[str]:
    """``mes_example`` (macros filled) as persona pieces: one block per example chat (the
    text between ``<START>`` markers), headed ``[Example chat]``, its lines kept."""
    blocks = (
        "\n".join(line.strip() for line in chunk.splitlines() if line.strip())
        for chunk in _START.split(text)
    )
    return [f"{EXAMPLE_HEADER}\n{b}" for b in blocks if any(c.isalnum() for c in b)]


def example_turns(text: str, name: str, user: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The example chats as turns, (speaker, text) each: a line starting ``<name>:`` or
    ``<user>:`` begins a turn, other lines continue the one before."""
    chats = []
    for block in example_blocks(text):
        turns: list[list[str]] = []
        for line in block.splitlines()[1:]:
            speaker, _, said = line.partition(":")
            if speaker.strip() in (name, user) and said.strip():
                turns.append([speaker.strip(), said.strip()])
            elif turns:
                turns[-1][1] += "\n" + line
        if turns:
            chats.append(tuple((s, t) for s, t in turns))
    return tuple(chats)


def fit_pieces(pieces: list[tuple[str, str]], limits: CardLimits) -> list[tuple[str, str]]:
    """The pieces that fit ``limits.prompt_tokens``, in their order: kinds are taken by
    ``PRIORITY`` (system prompt, personality, scenario, description, example chats), and
    within a kind from the first piece until one does not fit. All pieces without a token
    counter."""
    if limits.count_tokens is None or limits.prompt_tokens is None or not pieces:
        return pieces
    lengths = limits.count_tokens([text for _, text in pieces])
    kept, used = set(), 0
    for kind in PRIORITY:
        for i, (piece_kind, _) in enumerate(pieces):
            if piece_kind != kind:
                continue
            if used + lengths[i] + 1 > limits.prompt_tokens:  # +1: the newline between pieces
                break
            kept.add(i)
            used += lengths[i] + 1
    return [piece for i, piece in enumerate(pieces) if i in kept]


def persona_and_opening(
    card: PersonaCard | None, personality: list[str] | None, opening: str | None
) -> tuple[list[str] | None, str | None]:
    """The persona to chat with and the bot's opening line: the card's persona and first
    message (unless another opening is given) when no personality is given or the card's own
    is; otherwise ``personality`` and ``opening`` as they are."""
    if card is None or (personality and list(personality) != card.personality):
        return personality, opening
    return card.personality, opening or card.first_message


def _greetings(fields: dict, source: str, fill: MacroFiller) -> tuple[str, ...]:
    """``alternate_greetings``, macros filled, empty ones left out."""
    greetings = _list_field(fields, "alternate_greetings", source)
    return tuple(
        text
        for i, g in enumerate(greetings)
        if (
            text := fill(
                _text_field({"g": g}, "g", source, f"alternate_greetings[{i}]"),
                "alternate_greetings",
            ).strip()
        )
    )


def _lorebook(fields: dict, source: str, fill: MacroFiller) -> tuple[tuple[LoreEntry, ...], int]:
    """The enabled entries of ``character_book`` with content, and its ``scan_depth``."""
    book = fields.get("character_book")
    if book is None:
        return (), DEFAULT_SCAN_DEPTH
    if not isinstance(book, dict):
        raise CardError(_wrong_type(source, "character_book", "an object", book))
    depth = _int_field(book, "scan_depth", source, "character_book", DEFAULT_SCAN_DEPTH)
    depth = min(max(depth, 1), MAX_SCAN_DEPTH)
    entries = []
    for i, entry in enumerate(_list_field(book, "entries", source, "character_book.")):
        where = f"character_book.entries[{i}]"
        if not isinstance(entry, dict):
            raise CardError(_wrong_type(source, where, "an object", entry))
        if entry.get("enabled", True) is False:
            continue
        content = fill(_text_field(entry, "content", source, f"{where}.content"), where).strip()
        if not content:
            continue
        entries.append(
            LoreEntry(
                _keys(entry, "keys", source, where),
                content,
                _keys(entry, "secondary_keys", source, where),
                entry.get("selective") is True,
                entry.get("constant") is True,
                entry.get("case_sensitive") is True,
                _int_field(entry, "insertion_order", source, where, 100),
            )
        )
    return tuple(entries), depth


def _keys(entry: dict, key: str, source: str, where: str) -> tuple[str, ...]:
    items = _list_field(entry, key, source, f"{where}.")
    return tuple(
        _text_field({key: k}, key, source, f"{where}.{key}[{i}]").strip()
        for i, k in enumerate(items)
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


def _text_field(fields: dict, key: str, source: str, name: str | None = None) -> str:
    """A text field of the card ('' when absent or null), refused if it is not text;
    ``name``: the field as the error names it (default ``key``)."""
    value = fields.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CardError(_wrong_type(source, name or key, "text", value))
    problem = unicode_problem(value)
    if problem:
        raise CardError(f'{source}: the card\'s "{name or key}" is {problem}')
    return value


def _list_field(fields: dict, key: str, source: str, prefix: str = "") -> list:
    """A list field ([] when absent or null), refused if not a list or too long."""
    value = fields.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise CardError(_wrong_type(source, prefix + key, "a list", value))
    if len(value) > MAX_LIST_ITEMS:
        raise CardError(
            f'{source}: the card\'s "{prefix}{key}" has {len(value):,} items, more than the '
            f"{MAX_LIST_ITEMS:,} a card may have; that is no character card"
        )
    return value


def _int_field(fields: dict, key: str, source: str, where: str, default: int) -> int:
    """A whole-number field (``default`` when absent or null), within ±10^9."""
    value = fields.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 10**9:
        raise CardError(_wrong_type(source, f"{where}.{key}", "a number within ±10^9", value))
    return value


def _wrong_type(source: str, name: str, expected: str, value: object) -> str:
    got = repr(value) if isinstance(value, BigNumber) else type(value).__name__
    return (
        f'{source}: the card\'s "{name}" must be {expected}, got {got}; fix or re-export the card'
    )


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
    keyword = next((k for k in CARD_KEYWORDS if texts.get(k) is not None), None)
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


def png_text_chunks(data: bytes, source: str) -> dict[str, str | None]:
    """The text chunks of a PNG, keyword → text for the card keywords (the first chunk of
    each), keyword → None for the others (named in errors, never decoded); every chunk's
    CRC checked; a truncated file or a damaged chunk is a CardError. Compressed chunks
    inflate within one budget for the whole file, ``MAX_CARD_BYTES``: a PNG of many small
    compressed chunks must not cost gigabytes."""
    texts: dict[str, str | None] = {}
    budget = [MAX_CARD_BYTES]  # inflated bytes left, shared by every chunk
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise CardError(_truncated(source, pos))
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length + 4
        if end > len(data):
            raise CardError(_truncated(source, pos))
        body = memoryview(data)[pos + 8 : end - 4]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            name = kind.decode("latin-1")
            raise CardError(
                f"{source}: the PNG's {name} chunk at byte {pos} is damaged (its CRC does "
                "not match); the file was altered or cut: export the card again"
            )
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword = bytes(body[: min(80, length)]).partition(b"\0")[0].decode("latin-1")
            if keyword in CARD_KEYWORDS and texts.get(keyword) is None:
                texts[keyword] = _chunk_text(kind, bytes(body), source, budget)
            else:
                texts.setdefault(keyword, None)
        if kind == b"IEND":
            return texts
        pos = end
    raise CardError(_truncated(source, pos))


def _chunk_text(kind: bytes, body: bytes, source: str, budget: list[int]) -> str:
    """The text of one tEXt (Latin-1), zTXt (compressed Latin-1) or iTXt (UTF-8, maybe
    compressed, after a language tag and a translated keyword) chunk."""
    _keyword, _, rest = body.partition(b"\0")
    if kind == b"tEXt":
        return rest.decode("latin-1")
    if kind == b"zTXt":
        return _inflate(rest[1:], source, budget).decode("latin-1")
    compressed, rest = rest[:1] == b"\1", rest[2:]
    _language, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    raw = _inflate(text, source, budget) if compressed else text
    return _decode_text(raw, source, "an iTXt chunk")


def _inflate(data: bytes, source: str, budget: list[int]) -> bytes:
    """A compressed text chunk's bytes, within what is left of the file's ``budget`` (a
    small chunk can inflate to gigabytes), which they are taken from."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, budget[0] + 1)
    except zlib.error as err:
        raise CardError(
            f"{source}: a compressed text chunk of the PNG is damaged ({err}); export the "
            "card again"
        ) from None
    if inflater.unconsumed_tail or len(out) > budget[0]:
        raise CardError(
            f"{source}: the compressed text chunks of the PNG inflate to more than "
            f"{MAX_CARD_BYTES:,} bytes in all (MAX_CARD_BYTES); that is no character card"
        )
    budget[0] -= len(out)
    return out


def _truncated(source: str, pos: int) -> str:
    return (
        f"{source}: the PNG is truncated (it ends inside a chunk or before its IEND chunk, "
        f"at byte {pos}); the file was cut short: download or export it again"
    )
