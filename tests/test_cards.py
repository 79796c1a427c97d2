"""Character cards (Character Card V2 JSON, V1, PNG) read as a persona, and every way a card
can be broken, each with the message the user sees."""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import threading
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
    "Aria's personality: kind, shy",
    "Scenario: Aria meets Sam in a park.",
    "[Example chat]\nSam: hi\nAria: hello",
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
    aria = read_card(path, user="Sam")
    assert (aria.name, aria.personality) == ("Aria", ARIA_PERSONA)
    assert aria.first_message == "Hello Sam, I am Aria."
    assert aria.alternate_greetings == ("Hi there.",)
    assert aria.examples == ((("Sam", "hi"), ("Aria", "hello")),)
    # The user's name defaults to "User"; example messages are a block, never sentences.
    default = read_card(path)
    assert default.first_message == "Hello User, I am Aria."
    assert not any("START" in s or s.startswith("User:") for s in default.personality)


def test_a_v1_card_has_its_fields_at_the_top_level():
    v1 = {"name": "Bo", "description": "<BOT> fixes bikes.", "first_mes": "Yo <user>!"}
    bo = card_from_json(v1, "bo.json", "Sam")
    assert (bo.name, bo.personality, bo.first_message) == ("Bo", ["Bo fixes bikes."], "Yo Sam!")


def test_a_v3_card_is_read_like_v2():
    v3 = {**card(), "spec": "chara_card_v3", "spec_version": "3.0"}
    assert card_from_json(v3, "aria.json", "Sam").personality == ARIA_PERSONA


def test_macros_are_filled_in_whatever_their_case():
    text = "{{Char}} <bot> {{ CHAR }} {{char}}'s; {{USER}} <User> {{ user }}."
    got = card_from_json(card(description=text, personality=""), "a.json", "Sam")
    assert got.personality[0] == "Aria Aria Aria Aria's; Sam Sam Sam."


def test_persona_text_is_split_per_line_and_per_sentence_end():
    description = (
        "I work at a zoo.  I feed the lions!Really.\n"
        "Do you like cats? I do…\n"
        "---\n"
        '   "I live alone." I am 40 (almost.) Yes\n'
    )
    plain = card(description=description, personality="\n\n", scenario="", mes_example="")
    got = card_from_json(plain, "a.json")
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
    assert read_card(path, "Sam") == card_from_json(ARIA, "aria.json", "Sam")
    assert read_card(path, "Sam").personality == ARIA_PERSONA


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
    assert "inflate to more than" in refused(png_with(bomb))


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


def test_a_card_is_bounded_by_characters_after_its_macros_are_filled():
    roomy = card(description="{{char}} likes tea. " * 100)
    assert len(card_from_json(roomy, "a.json").personality) > 100  # no sentence count
    # 64 KB of <bot> under a 200-character name would fill to 13 million characters: refused
    # before it is expanded, naming the field and the limit.
    bomb = card(name="N" * 200, description="<bot>" * 13_000)
    message = refused(bomb, "bomb.json")
    assert '"description" takes its text to 2,600,000 characters' in message
    assert f"more than the {ServeSettings().max_card_chars:,} a card may have" in message
    assert "(max_card_chars)" in message
    assert '"name" has 201 characters' in refused(card(name="N" * 201), "a.json")
    # A server started with a larger max_card_chars takes it; every field counts.
    big = CardLimits.from_settings(ServeSettings(max_card_chars=3_000_000))
    assert card_from_json(bomb, "bomb.json", limits=big).personality[0].startswith("NNN")
    tight = CardLimits(prompt_chars=300)
    assert card_from_json(card(), "a.json", limits=tight).name == "Aria"
    long_greeting = card(first_mes="Hello {{user}}! " * 20)
    assert '"first_mes" takes its text to' in refused(long_greeting, "a.json", limits=tight)


def words(texts: list[str]) -> list[int]:
    """A token counter for tests: one token per word."""
    return [len(t.split()) for t in texts]


def test_card_prompt_tokens_leaves_out_example_chats_first_then_late_sentences():
    full = card_from_json(ARIA, "a.json", "Sam")
    assert full.left_out == 0
    budget = sum(words(ARIA_PERSONA[:5])) + 5  # everything but the example chat
    fit = card_from_json(
        ARIA, "a.json", "Sam", CardLimits(prompt_tokens=budget, count_tokens=words)
    )
    assert fit.personality == ARIA_PERSONA[:5] and fit.left_out == 1
    small = CardLimits(prompt_tokens=18, count_tokens=words)  # 5 + 8, then 5 of 4 sentences
    kept = card_from_json(ARIA, "a.json", "Sam", small).personality
    # personality and scenario come before the description's later sentences
    assert kept == ["Aria is a nurse.", "Aria's personality: kind, shy", ARIA_PERSONA[4]]


def test_json_nested_too_deep_or_numbers_too_long_are_one_line_errors():
    deep = b'{"name": "x", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    message = refused(deep, "deep.json")
    assert "nests JSON arrays and objects 100,001 levels deep" in message
    assert "more than the 64 a character card may" in message
    assert "\n" not in message
    strings_only = json.dumps(card(description="[[[[{{{{" * 100)).encode()
    assert parse_card(strings_only, "brackets.json").name == "Aria"  # brackets in text are text
    number = json.dumps(card()).replace(
        '"character_book": {"entries": []}', '"character_book": {"scan_depth": ' + "9" * 5000 + "}"
    )
    message = refused(number.encode(), "big.json")
    assert '"character_book.scan_depth" must be a number within' in message
    assert "got a 5000-digit number" in message
    text_number = json.dumps(card()).replace(
        '"personality": "kind, shy"', '"personality": ' + "7" * 5000
    )
    assert '"personality" must be text, got a 5000-digit number' in refused(text_number.encode())


def test_a_png_of_many_compressed_chunks_inflates_within_one_budget():
    """The issue's case: many small zTXt chunks, each inflating to megabytes. Chunks other
    than the card's are never inflated, and the card's inflate within one total budget."""
    import tracemalloc

    filler = zlib.compress(b"\0" * (4 * 1024 * 1024))  # 4 MB each, ~4 KB compressed
    many = [png_chunk(b"zTXt", b"note%d\0\0" % i + filler) for i in range(250)]  # ~1 MB
    data = png_with(*many, text_chunk(ARIA))
    assert 0.9e6 < len(data) < 1.3e6
    tracemalloc.start()
    assert parse_card(data, "many.png", "Sam").personality == ARIA_PERSONA
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * len(data)  # was ~1 GB (250 chunks x 4 MB) before the fix
    both = png_with(
        png_chunk(b"zTXt", b"ccv3\0\0" + zlib.compress(b"A" * (MAX_CARD_BYTES - 10))),
        png_chunk(b"zTXt", b"chara\0\0" + zlib.compress(b"A" * 20)),
    )
    assert "inflate to more than 10,485,760 bytes in all" in refused(both)


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
    persona = model.load_persona_card(path, user="Sam")
    # The tiny model's context is 128 tokens: the card keeps what fits in half of it.
    assert persona == [p for p in ARIA_PERSONA if p in persona]
    assert "Aria's personality: kind, shy" in persona and ARIA_PERSONA[-1] not in persona
    assert model.persona_card.left_out == len(ARIA_PERSONA) - len(persona)
    monkeypatch.setattr("builtins.input", scripted(["hi"]))
    model.interact()
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "Hello Sam, I am Aria." and "Selected personality" not in out
    assert "pieces of the card left out to fit card_prompt_tokens=2048" in err


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


def test_any_json_is_a_card_or_a_card_error():
    """Fuzz: whatever JSON a card holds, reading it ends in a card or one CardError naming
    the source, never another exception (a traceback in the CLI, a 500 in the server)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
    keys = st.sampled_from(
        [
            "name",
            "description",
            "personality",
            "scenario",
            "first_mes",
            "mes_example",
            "system_prompt",
            "alternate_greetings",
            "character_book",
            "spec",
            "data",
        ]
    )
    entry = st.dictionaries(
        st.sampled_from(
            [
                "keys",
                "content",
                "enabled",
                "insertion_order",
                "constant",
                "selective",
                "secondary_keys",
                "case_sensitive",
            ]
        ),
        values,
        max_size=6,
    )
    book = st.fixed_dictionaries({"entries": st.lists(entry | values, max_size=3)}) | values
    cards = st.dictionaries(keys, values | book, max_size=8)

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(cards, st.sampled_from([None, ARIA["data"]]))
    def check(obj, base):
        if base is not None:
            obj = {"spec": "chara_card_v2", "data": {**base, **obj}}
        try:
            card_from_json(obj, "fuzz.json", "Sam")
        except CardError as err:
            assert "fuzz.json" in str(err) and "\n" not in str(err)

    check()


def test_a_named_pipe_as_card_file_is_refused_at_once(tmp_path):
    pipe = tmp_path / "card.json"
    os.mkfifo(pipe)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_card(pipe)
        except CardError as err:
            outcome.append(err)

    reader = threading.Thread(target=read, daemon=True)  # a blocked open must not hang pytest
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a named pipe blocked instead of being refused"
    assert "is a named pipe (FIFO), not a regular file" in str(outcome[0])
