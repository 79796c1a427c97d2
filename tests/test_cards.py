"""Character cards (Character Card V2 JSON, V1, PNG) read as a persona, and every way a card
can be broken, each with the message the user sees."""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from personachat.data.cards import (
    MAX_CARD_BYTES,
    PNG_SIGNATURE,
    CardError,
    CardLimits,
    PersonaCard,
    card_from_json,
    parse_card,
    persona_and_opening,
    read_card,
)
from personachat.errors import PersonachatError
from personachat.repl import run_repl
from personachat.serve.settings import ServeSettings

ARIA = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Aria",
        "description": (
            "{{char}} is a nurse. She has a cat named Tom!\n\n***\nShe calls {{user}} 'dear.'"
        ),
        "personality": "kind, shy",
        "scenario": "{{char}} meets {{user}} in a park.",
        "first_mes": "Hello {{user}}, I am {{char}}.",
        "mes_example": "<START>\n{{user}}: hi\n{{char}}: hello",
        "creator_notes": "",
        "system_prompt": "",
        "post_history_instructions": "",
        "alternate_greetings": ["Hi there."],
        "character_book": {"entries": []},
        "tags": ["nurse"],
        "creator": "someone",
        "character_version": "1",
        "extensions": {},
    },
}
ARIA_PERSONA = [
    "Aria is a nurse.",
    "She has a cat named Tom!",
    "She calls Sam 'dear.'",
    "kind, shy",
]


def card(**data) -> dict:
    """ARIA with some of its data fields replaced (None: removed)."""
    fields = {**ARIA["data"], **data}
    return {**ARIA, "data": {k: v for k, v in fields.items() if v is not None}}


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with(*chunks: bytes) -> bytes:
    """A real 1×1 grey PNG image with ``chunks`` between its header and its pixels."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    pixels = png_chunk(b"IDAT", zlib.compress(b"\x00\x80"))  # filter byte, one grey pixel
    return PNG_SIGNATURE + header + b"".join(chunks) + pixels + png_chunk(b"IEND", b"")


def text_chunk(obj: dict, keyword: bytes = b"chara") -> bytes:
    """A tEXt chunk holding ``obj`` as base64 JSON, as SillyTavern writes cards."""
    return png_chunk(b"tEXt", keyword + b"\0" + base64.b64encode(json.dumps(obj).encode()))


def refused(data: bytes | dict, source: str = "aria.png", **kwargs) -> str:
    """The message of the CardError that ``data`` (bytes or a card's JSON) is refused with."""
    with pytest.raises(CardError) as caught:
        if isinstance(data, dict):
            card_from_json(data, source, "Sam", **kwargs)
        else:
            parse_card(data, source, "Sam", **kwargs)
    assert source in str(caught.value)
    return str(caught.value)


# ---------------------------------------------------------------- reading cards
def test_a_v2_json_card_becomes_persona_sentences_and_an_opening_line(tmp_path):
    path = tmp_path / "aria.json"
    path.write_text(json.dumps(ARIA), encoding="utf-8")
    assert read_card(path, user="Sam") == PersonaCard("Aria", ARIA_PERSONA, "Hello Sam, I am Aria.")
    # The user's name defaults to "User"; scenario and example messages are not persona.
    default = read_card(path)
    assert default.first_message == "Hello User, I am Aria."
    assert not any("park" in s or "START" in s for s in default.personality)


def test_a_v1_card_has_its_fields_at_the_top_level():
    v1 = {"name": "Bo", "description": "<BOT> fixes bikes.", "first_mes": "Yo <user>!"}
    assert card_from_json(v1, "bo.json", "Sam") == PersonaCard("Bo", ["Bo fixes bikes."], "Yo Sam!")


def test_a_v3_card_is_read_like_v2():
    v3 = {**card(), "spec": "chara_card_v3", "spec_version": "3.0"}
    assert card_from_json(v3, "aria.json", "Sam").personality == ARIA_PERSONA


def test_macros_are_filled_in_whatever_their_case():
    text = "{{Char}} <bot> {{ CHAR }} {{char}}'s; {{USER}} <User> {{ user }}."
    got = card_from_json(card(description=text, personality=""), "a.json", "Sam")
    assert got.personality == ["Aria Aria Aria Aria's; Sam Sam Sam."]


def test_persona_text_is_split_per_line_and_per_sentence_end():
    description = (
        "I work at a zoo.  I feed the lions!Really.\n"
        "Do you like cats? I do…\n"
        "---\n"
        '   "I live alone." I am 40 (almost.) Yes\n'
    )
    got = card_from_json(card(description=description, personality="\n\n"), "a.json")
    assert got.personality == [
        "I work at a zoo.",
        "I feed the lions!Really.",  # no space: not a sentence end
        "Do you like cats?",
        "I do…",
        '"I live alone."',
        "I am 40 (almost.)",
        "Yes",
    ]


def test_without_first_mes_the_first_alternate_greeting_opens_or_nothing_does():
    assert card_from_json(card(first_mes=""), "a.json").first_message == "Hi there."
    assert (
        card_from_json(card(first_mes=None, alternate_greetings=[]), "a.json").first_message is None
    )


def test_a_png_card_in_a_text_chunk_is_read(tmp_path):
    path = tmp_path / "aria.png"
    path.write_bytes(png_with(png_chunk(b"tEXt", b"Software\0paint"), text_chunk(ARIA)))
    assert read_card(path, "Sam") == PersonaCard("Aria", ARIA_PERSONA, "Hello Sam, I am Aria.")


def test_a_png_card_in_a_compressed_itxt_or_ztxt_chunk_is_read():
    b64 = base64.b64encode(json.dumps(ARIA).encode())
    itxt = png_chunk(b"iTXt", b"chara\0\x01\x00en\0chara\0" + zlib.compress(b64))
    assert parse_card(png_with(itxt), "a.png", "Sam").personality == ARIA_PERSONA
    plain_itxt = png_chunk(b"iTXt", b"chara\0\x00\x00\0\0" + json.dumps(ARIA).encode())
    assert parse_card(png_with(plain_itxt), "a.png", "Sam").personality == ARIA_PERSONA
    ztxt = png_chunk(b"zTXt", b"chara\0\x00" + zlib.compress(b64))
    assert parse_card(png_with(ztxt), "a.png", "Sam").personality == ARIA_PERSONA


def test_chara_is_preferred_to_ccv3_and_ccv3_alone_is_read():
    v3 = {**card(name="Vee"), "spec": "chara_card_v3"}
    both = png_with(text_chunk(v3, b"ccv3"), text_chunk(ARIA))
    assert parse_card(both, "a.png").name == "Aria"
    assert parse_card(png_with(text_chunk(v3, b"ccv3")), "a.png").name == "Vee"


def test_cards_written_by_pillow_are_read(tmp_path):
    image = pytest.importorskip("PIL.Image")
    png_info = pytest.importorskip("PIL.PngImagePlugin")
    ours = tmp_path / "ours.png"
    ours.write_bytes(png_with(text_chunk(ARIA)))
    with image.open(ours) as img:  # the test's PNG is a real image
        assert img.size == (1, 1) and "chara" in img.text
    for itxt in (False, True):
        info = png_info.PngInfo()
        b64 = base64.b64encode(json.dumps(ARIA).encode()).decode()
        if itxt:
            info.add_itxt("chara", b64, zip=True)
        else:
            info.add_text("chara", b64)
        path = tmp_path / f"pillow-{itxt}.png"
        image.new("RGB", (8, 8), "red").save(path, pnginfo=info)
        assert read_card(path, "Sam").personality == ARIA_PERSONA


def test_persona_and_opening_take_the_cards_unless_another_persona_is_given():
    aria = PersonaCard("Aria", ["I am a nurse."], "Hi!")
    assert persona_and_opening(aria, None, None) == (["I am a nurse."], "Hi!")
    assert persona_and_opening(aria, ["I am a nurse."], None) == (["I am a nurse."], "Hi!")
    assert persona_and_opening(aria, [], "Yo.") == (["I am a nurse."], "Yo.")
    assert persona_and_opening(aria, ["i like tea ."], None) == (["i like tea ."], None)
    assert persona_and_opening(None, None, "Yo.") == (None, "Yo.")


def scripted(lines: list[str], printed: list[str] | None = None):
    """An ``input`` that types ``lines`` (noting each prompt), then ends the input."""
    typed = iter(lines)

    def read(prompt: str) -> str:
        if printed is not None:
            printed.append(prompt)
        line = next(typed, None)
        if line is None:
            raise EOFError
        return line

    return read


def test_the_opening_line_is_printed_first_and_enters_the_history():
    seen, printed = [], []

    def reply(message: str, history: list[str]) -> tuple[str, list[str]]:
        seen.append(list(history))
        return "fine.", [*history, message, "fine."]

    def show(*text: str) -> None:
        printed.append(" ".join(text))

    history = run_repl(reply, scripted(["hello"], printed), show, opening="Hi, I am Aria.")
    assert printed[:3] == ["Hi, I am Aria.", ">>> ", "fine."]
    assert seen == [["Hi, I am Aria."]]
    assert history == ["Hi, I am Aria.", "hello", "fine."]


# ---------------------------------------------------------------- broken cards
def test_what_is_not_a_card_is_refused_with_what_to_give():
    assert "neither a PNG image nor JSON" in refused(b"GIF89a not json", "a.gif")
    assert "neither a PNG image nor UTF-8 JSON" in refused(b"\xff\xfe\x00garbage", "a.bin")
    assert "a JSON object, got a list" in refused(b"[1, 2]", "a.json")
    assert "not JSON" in refused(png_with(png_chunk(b"tEXt", b"chara\0bm90IGpzb24=")))


def test_a_png_without_a_card_names_the_chunks_it_has():
    message = refused(png_with(png_chunk(b"tEXt", b"Software\0paint")))
    assert "no text chunk named 'chara'" in message and "found: Software" in message
    assert "found: none" in refused(png_with())


def test_bad_base64_in_the_chara_chunk_is_refused():
    message = refused(png_with(png_chunk(b"tEXt", b"chara\0eyJu@@@")))
    assert "'chara' chunk is not valid base64" in message and "export it again" in message


def test_a_truncated_png_or_a_damaged_chunk_is_refused():
    whole = png_with(text_chunk(ARIA))
    for cut in (len(whole) - 3, len(whole) - 12, len(PNG_SIGNATURE) + 5, 40):
        assert "the PNG is truncated" in refused(whole[:cut])
    chunk = bytearray(text_chunk(ARIA))
    chunk[20] ^= 0xFF  # one byte of the card flipped: the CRC no longer matches
    message = refused(png_with(bytes(chunk)))
    assert "tEXt chunk at byte 33 is damaged (its CRC does not match)" in message
    broken = png_chunk(b"zTXt", b"chara\0\x00" + b"not zlib data")
    assert "compressed text chunk of the PNG is damaged" in refused(png_with(broken))


def test_a_compressed_chunk_inflating_past_the_limit_is_refused():
    bomb = png_chunk(b"zTXt", b"chara\0\x00" + zlib.compress(b"A" * (MAX_CARD_BYTES + 1)))
    assert "inflates to more than" in refused(png_with(bomb))


def test_a_wrong_spec_or_missing_data_is_refused():
    message = refused({**ARIA, "spec": "tavern_card"}, "a.json")
    assert "unknown card \"spec\" 'tavern_card'" in message and "chara_card_v2" in message
    assert 'fields in a "data" object, got none' in refused({"spec": "chara_card_v2"}, "a.json")
    assert "got list" in refused({"spec": "chara_card_v2", "data": []}, "a.json")


def test_a_card_without_a_name_or_any_persona_text_is_refused():
    assert 'no "name"; give the character a name' in refused(card(name=None), "a.json")
    assert 'no "name"' in refused(card(name="   "), "a.json")
    message = refused(card(description="  \n***\n", personality=""), "a.json")
    assert 'the card "Aria" has no persona text' in message and "write a few sentences" in message


def test_fields_that_are_not_text_are_refused():
    assert 'the card\'s "description" must be text, got int' in refused(card(description=5))
    assert '"first_mes" must be text' in refused(card(first_mes=["hi"]))
    assert '"alternate_greetings[0]" must be text' in refused(
        card(first_mes="", alternate_greetings=[{}])
    )
    assert "lone surrogate" in refused(card(personality="\ud800 shy"))


def test_more_persona_than_the_server_takes_is_refused_with_its_limits():
    limits = ServeSettings()
    many = " ".join(f"Fact {i}." for i in range(limits.max_persona_sentences + 1))
    message = refused(card(description=many, personality=""))
    assert f"gives {limits.max_persona_sentences + 1} persona sentences" in message
    assert f"the {limits.max_persona_sentences} allowed (max_persona_sentences)" in message
    assert "shorten the card's description and personality" in message
    long = "She " + "really " * (limits.max_persona_chars // 7) + "likes tea."
    message = refused(card(description=long))
    assert "persona sentence 1 ('She really" in message
    assert f"more than the {limits.max_persona_chars} allowed (max_persona_chars)" in message
    greeting = "Hi! " * (limits.max_message_chars // 4 + 1)
    assert '"first_mes" has' in refused(card(first_mes=greeting))
    # A server started with larger limits takes the same card.
    roomy = CardLimits.from_settings(ServeSettings(max_persona_sentences=20))
    assert len(card_from_json(card(description=many), "a.json", limits=roomy).personality) == 12


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    huge = tmp_path / "huge.png"
    with huge.open("wb") as f:  # sparse: no disk space used
        f.truncate(MAX_CARD_BYTES + 1)
    message = refused_file(huge)
    assert f"{MAX_CARD_BYTES + 1:,} bytes, more than the {MAX_CARD_BYTES:,}" in message
    assert "give the card as JSON" in message
    assert "more than the" in refused(b"x" * (MAX_CARD_BYTES + 1), "upload")
    assert "cannot read the character card" in refused_file(tmp_path / "missing.png")
    assert isinstance(CardError("x"), PersonachatError) and isinstance(CardError("x"), ValueError)


def refused_file(path: Path) -> str:
    with pytest.raises(CardError, match=str(path.name)) as caught:
        read_card(path)
    return str(caught.value)


# ---------------------------------------------------------------- the model and the CLI
def personachat(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "personachat.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_load_persona_card_gives_the_persona_and_interact_opens_with_it(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    from personachat import ConvAIModel

    path = tmp_path / "aria.png"
    path.write_bytes(png_with(text_chunk(ARIA)))
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"max_length": 4})
    assert model.load_persona_card(path, user="Sam") == ARIA_PERSONA
    monkeypatch.setattr("builtins.input", scripted(["hi"]))
    model.interact()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Hello Sam, I am Aria." and "Selected personality" not in "".join(out)


def test_interact_with_a_persona_card_opens_with_its_first_message(tiny_checkpoint, tmp_path):
    path = tmp_path / "aria.png"
    path.write_bytes(png_with(text_chunk(ARIA)))
    model = ["--model", str(tiny_checkpoint), "--set", "max_length=5", "--set", "do_sample=false"]
    chat = personachat("interact", *model, "--persona-card", str(path), stdin="hi\nbye\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.startswith("Hello User, I am Aria.\n>>> ")
    assert chat.stdout.count(">>> ") == 3 and "Selected personality" not in chat.stdout

    broken = tmp_path / "broken.png"
    broken.write_bytes(path.read_bytes()[:-20])
    # Refused before the model loads: a model folder that does not exist is never reached.
    done = personachat("interact", "--model", str(tmp_path / "none"), "--persona-card", str(broken))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"personachat interact: error: {broken}: the PNG is truncated")

    both = personachat("interact", *model, "--persona", "i like tea .", "--persona-card", str(path))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
