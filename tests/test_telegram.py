"""``personachat telegram`` end to end: the bot long-polls a stand-in of the Bot API on
127.0.0.1 (``telegram_standin``), the test plays the users and reads what the bot sent.

Decoding is greedy, so every reply can be checked against ``interact_single`` for the same
persona and history: chats answered together keep their histories apart, a restarted bot
continues each conversation, and a chat sending junk changes nothing for the others.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from personachat import ConvAIModel
from personachat.cli import main
from personachat.serve.settings import ServeSettings
from personachat.serve.store import SessionStore

pytest.importorskip("telegram", reason="the telegram extra: pip install -e '.[test]'")
pytest.importorskip("pydantic", reason="the telegram extra: pip install -e '.[test]'")

from personachat.telegram.bot import (  # noqa: E402
    MAX_WAITING_PER_CHAT,
    NAMESPACE,
    STORE_APOLOGY,
    session_id,
)
from personachat.telegram.command import TOKEN_ENV, BotConfig, run_bot  # noqa: E402

from .serve_helpers import fill_the_disk, free_the_disk, model_with_personas  # noqa: E402
from .telegram_standin import BotApiStandIn  # noqa: E402

TOKEN = "123456:stand-in-token"
# Greedy, and at least 4 tokens: a random model's reply may otherwise end at once.
GREEDY = {"do_sample": False, "min_length": 4, "max_length": 8}
SETTINGS = ServeSettings(
    max_message_chars=200,
    max_persona_sentences=4,
    max_persona_chars=80,
    max_history_kept=6,
    max_reply_tokens=16,
    batch_window_ms=200,  # generous: the chats' messages must meet in one batch
)
NURSE = ["i work as a nurse .", "i have a cat ."]
PILOT = ["i am a pilot .", "i love pizza ."]
BAKER = ["i am a baker .", "i have a dog ."]
CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Ada",
        "description": "{{char}} is a farmer. She has two goats.",
        "personality": "cheerful",
        "first_mes": "hello {{user}} , welcome to my farm .",
    },
}


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    return model_with_personas(tiny_checkpoint, tmp_path_factory.mktemp("telegram") / "model")


@pytest.fixture(scope="module")
def model(model_dir) -> ConvAIModel:
    return ConvAIModel("gpt2", model_dir, args=GREEDY, use_cuda=False)


@pytest.fixture()
def api():
    with BotApiStandIn(TOKEN) as api:
        yield api


class BotThread:
    """``run_bot`` in a thread with its own event loop, as the CLI runs it; stopped (and
    joined, within 60 s) when the ``with`` block ends."""

    def __init__(self, model, db: Path, api: BotApiStandIn, retries=(0.2, 0.4)) -> None:
        self.model, self.api, self.store = model, api, SessionStore(db)
        self.config = BotConfig(TOKEN, api.url, poll_timeout=1, send_retries=retries)
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.stats = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def bot() -> None:
            self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
            self.started.set()
            self.stats = await run_bot(self.model, self.store, SETTINGS, self.config, self.stop)

        try:
            asyncio.run(bot())
        except BaseException as err:  # the test reads it
            self.error = err
            self.started.set()

    def __enter__(self) -> BotThread:
        polls = self.api.calls.count("getUpdates")
        self.thread.start()
        deadline = time.monotonic() + 60
        while self.api.calls.count("getUpdates") == polls:  # polling: ready for messages
            assert self.error is None and self.thread.is_alive(), self.error
            assert time.monotonic() < deadline, "the bot did not start polling"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=60)
        self.store.close()
        assert not self.thread.is_alive(), "the bot did not stop"
        assert self.error is None, self.error


def greedy(model, message: str, history: list[str], persona: list[str]) -> str:
    return model.interact_single(message, history, persona)[0]


def set_persona(api: BotApiStandIn, chat: int, persona: list[str]) -> None:
    api.send_text(chat, "/persona " + " ".join(persona))
    (answer,) = api.wait_replies(chat, 1)
    assert answer.startswith("My new persona") and persona[0] in answer


def history(db: Path, chat: int) -> tuple[list[str], list[str]]:
    """A chat's persona and stored messages, read from the database as serve shares them
    (``--session-namespace telegram``)."""
    store = SessionStore(db, namespace=NAMESPACE)
    try:
        session = store.get(session_id(chat))
    finally:
        store.close()
    return session.personality, [m.text for m in session.messages]


# ---------------------------------------------------------------------- chats at once
def test_chats_at_once_are_decoded_together_and_kept_apart(model, api, tmp_path):
    db = tmp_path / "sessions.sqlite3"
    personas = {101: NURSE, 102: PILOT, 103: BAKER}
    texts = ["hi , what do you do ?", "any pets ?"]
    with BotThread(model, db, api) as bot:
        for chat, persona in personas.items():
            set_persona(api, chat, persona)
        for round_, text in enumerate(texts):
            api.send_texts([(chat, text) for chat in personas])  # one getUpdates brings all
            for chat in personas:
                api.wait_replies(chat, 2 + round_)
    assert bot.stats.largest >= 2  # several chats' messages were decoded in one call
    assert "sendChatAction" in api.calls
    for chat, persona in personas.items():
        first, second = api.replies(chat)[1:]  # after the /persona answer
        assert first == greedy(model, texts[0], [], persona)
        assert second == greedy(model, texts[1], [texts[0], first], persona)
        assert history(db, chat) == (persona, [texts[0], first, texts[1], second])


def test_a_restarted_bot_continues_every_conversation(model, api, tmp_path):
    db = tmp_path / "sessions.sqlite3"
    with BotThread(model, db, api):
        set_persona(api, 201, NURSE)
        api.send_text(201, "hi")
        first = api.wait_replies(201, 2)[-1]
    with BotThread(model, db, api):  # a new bot process on the same database
        api.send_text(201, "and you ?")
        second = api.wait_replies(201, 3)[-1]
        api.send_text(201, "/start")
        greeting = api.wait_replies(201, 4)[-1]
    assert first == greedy(model, "hi", [], NURSE)
    assert second == greedy(model, "and you ?", ["hi", first], NURSE)
    assert history(db, 201) == (NURSE, ["hi", first, "and you ?", second])
    assert NURSE[0] in greeting and "/persona" in greeting


# ---------------------------------------------------------------------- junk
def test_a_chat_sending_junk_gets_clear_answers_and_others_go_on(model, api, tmp_path):
    db = tmp_path / "sessions.sqlite3"
    junk, calm = 301, 302
    with BotThread(model, db, api):
        set_persona(api, calm, PILOT)
        api.send_text(junk, "x" * 300)  # over max_message_chars=200
        api.send_sticker(junk)
        api.send_text(junk, "/dance now")
        api.send_document(junk, b"{not a card", "broken.json", caption="/card")
        api.send_text(junk, "bad \ud800 unicode")
        api.send_text(junk, "/persona " + "i like tea . " * 5)  # 5 sentences, max 4
        api.send_text(calm, "hi , what do you do ?")
        answers = api.wait_replies(junk, 6)
        reply = api.wait_replies(calm, 2)[-1]
        api.send_text(junk, "hello")  # the junk chat itself still works
        after = api.wait_replies(junk, 7)[-1]
    too_long, sticker, command, card, surrogate, persona = answers
    assert "300 characters" in too_long and "max_message_chars=200" in too_long
    assert "only read text messages" in sticker
    assert "I do not know the command /dance" in command and "/persona" in command
    assert (
        "cannot use that card" in card and "broken.json" in card and "not a character card" in card
    )
    assert "not valid Unicode" in surrogate
    assert "max_persona_sentences=4" in persona
    assert reply == greedy(model, "hi , what do you do ?", [], PILOT)
    junk_persona, junk_messages = history(db, junk)
    assert junk_messages == ["hello", after]  # none of the junk was stored
    assert after == greedy(model, "hello", [], junk_persona)


def test_a_flooding_chat_is_told_to_slow_down_and_others_are_answered(model, api, tmp_path):
    flood, calm = 311, 312
    with BotThread(model, tmp_path / "sessions.sqlite3", api):
        set_persona(api, calm, NURSE)
        texts = [f"message {i}" for i in range(20)]
        api.send_texts([*((flood, text) for text in texts), (calm, "hi")])
        answers = api.wait_replies(flood, 20)
        reply = api.wait_replies(calm, 2)[-1]
    waiting = MAX_WAITING_PER_CHAT + 1  # the one being answered and those queued behind it
    slow_down = [a for a in answers if a.startswith("I am still answering")]
    assert len(slow_down) == len(texts) - waiting
    assert reply == greedy(model, "hi", [], NURSE)


def test_a_full_disk_gets_an_apology_in_the_chat_and_the_path_in_the_log(
    model, api, tmp_path, caplog
):
    db, chat = tmp_path / "sessions.sqlite3", 203
    with BotThread(model, db, api) as bot:
        set_persona(api, chat, NURSE)
        api.send_text(chat, "hi")
        first = api.wait_replies(chat, 2)[-1]
        fill_the_disk(bot.store)
        api.send_text(chat, "are you there ?")
        sorry = api.wait_replies(chat, 3)[-1]
        free_the_disk(bot.store)
        api.send_text(chat, "are you there ?")
        again = api.wait_replies(chat, 4)[-1]
    assert sorry == STORE_APOLOGY and str(db) not in sorry
    assert any(f"the session database {db} is full" in r.getMessage() for r in caplog.records)
    # nothing stored before was lost, and the chat goes on once there is room
    assert history(db, chat) == (NURSE, ["hi", first, "are you there ?", again])


# ---------------------------------------------------------------------- persona, card, reset
def test_card_file_then_reset(model, api, tmp_path):
    db = tmp_path / "sessions.sqlite3"
    chat, persona = 401, ["Ada is a farmer.", "She has two goats.", "cheerful"]
    opening = f"hello User{chat} , welcome to my farm ."
    with BotThread(model, db, api):
        api.send_document(chat, json.dumps(CARD).encode(), "ada.json", caption="/card")
        intro, first = api.wait_replies(chat, 2)
        api.send_text(chat, "hi")
        reply = api.wait_replies(chat, 3)[-1]
        api.send_text(chat, "/reset")
        reset = api.wait_replies(chat, 4)[-1]
        api.send_text(chat, "hi")
        fresh = api.wait_replies(chat, 5)[-1]
    assert intro.startswith("I am Ada now") and all(s in intro for s in persona)
    assert first == opening
    # the card's prompt as SillyTavern assembles it ("Ada's personality: cheerful", …)
    stored, messages = history(db, chat)
    assert all(any(s in line for line in stored) for s in persona)
    assert reply == greedy(model, "hi", [opening], stored)
    assert reset.startswith("I forgot our conversation") and persona[0] in reset
    assert fresh == greedy(model, "hi", [], stored)
    assert messages == ["hi", fresh]


def test_a_cards_lorebook_is_kept_with_the_chat_across_a_restart_and_a_reset(
    model, api, tmp_path, monkeypatch
):
    book = {"entries": [{"keys": ["goat"], "content": "{{char}}'s goats are Bell and Clover."}]}
    card = {**CARD, "data": {**CARD["data"], "character_book": book}}
    given: list[list[str]] = []
    generate = model.complete

    def recorded(conversations, *args, **kwargs):  # the persona each reply was given
        given.extend(list(c["personality"] if isinstance(c, dict) else c[0]) for c in conversations)
        return generate(conversations, *args, **kwargs)

    monkeypatch.setattr(model, "complete", recorded)
    db, chat = tmp_path / "sessions.sqlite3", 402
    with BotThread(model, db, api):
        api.send_document(chat, json.dumps(card).encode(), "ada.json", caption="/card")
        api.wait_replies(chat, 2)
    with BotThread(model, db, api):  # a new bot process on the same database
        api.send_text(chat, "how are the goats ?")
        api.wait_replies(chat, 3)
        api.send_text(chat, "/reset")
        api.wait_replies(chat, 4)
        api.send_text(chat, "and the GOATS today ?")
        api.wait_replies(chat, 5)
        api.send_text(chat, "/persona " + " ".join(NURSE))  # the card's lorebook goes with it
        assert api.wait_replies(chat, 6)[-1].startswith("My new persona")
        api.send_text(chat, "any goats ?")
        api.wait_replies(chat, 7)
    stored, _ = history(db, chat)
    assert stored == NURSE
    lore = "Ada's goats are Bell and Clover."
    card_persona = [p for p in given[0] if p != lore]
    assert len(card_persona) == 3 and "Ada's personality: cheerful" in card_persona
    assert given == [[*card_persona, lore], [*card_persona, lore], NURSE]


def test_a_png_card_and_card_usage(model, api, tmp_path):
    chat = 501
    with BotThread(model, tmp_path / "sessions.sqlite3", api):
        api.send_text(chat, "/card")
        usage = api.wait_replies(chat, 1)[-1]
        notes = api.send_document(chat, b"plain notes", "notes.txt")  # no /card caption
        hint = api.wait_replies(chat, 2)[-1]
        api.send_text(chat, "/card", reply_to_message=notes)  # /card as the answer to it
        refused = api.wait_replies(chat, 3)[-1]
        api.send_document(chat, png_card(CARD), "ada.png", caption="/card")
        intro, first = api.wait_replies(chat, 5)[-2:]
    assert "caption /card" in usage and "as a file" in usage
    assert "caption /card" in hint
    assert refused.startswith("I cannot use that card: notes.txt: not a character card")
    assert intro.startswith("I am Ada now") and first.startswith(f"hello User{chat}")


def png_card(card: dict) -> bytes:
    """A 1x1 PNG carrying ``card`` in a ``chara`` tEXt chunk, as card editors save them."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    text = b"chara\0" + base64.b64encode(json.dumps(card).encode())
    pixels = zlib.compress(b"\0\0")
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        [chunk(b"IHDR", header), chunk(b"tEXt", text), chunk(b"IDAT", pixels), chunk(b"IEND", b"")]
    )


# ---------------------------------------------------------------------- the command line
def start_cli_bot(model_dir: Path, db: Path, api: BotApiStandIn) -> subprocess.Popen:
    """``personachat telegram`` in a subprocess, token from the environment; returns once it
    polls the stand-in."""
    polls = api.calls.count("getUpdates")
    command = [sys.executable, "-m", "personachat.cli", "telegram", "--model", str(model_dir)]
    command += ["--db", str(db), "--base-url", api.url, "--device", "cpu"]
    command += ["--threads", "1", "--prefill-threads", "1"]
    command += [arg for key, value in GREEDY.items() for arg in ("--set", f"{key}={value}")]
    process = subprocess.Popen(
        command,
        env={**os.environ, TOKEN_ENV: TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while api.calls.count("getUpdates") == polls:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the bot did not start polling: {process.communicate()[1]}")
        time.sleep(0.05)
    return process


def test_the_cli_bot_finishes_its_replies_on_sigterm_and_a_new_bot_goes_on(
    model, model_dir, api, tmp_path
):
    """SIGTERM while a reply is being decoded: the reply is still sent and stored, the bot
    exits 0, and a new bot on the same database continues the conversation."""
    db = tmp_path / "sessions.sqlite3"
    process = start_cli_bot(model_dir, db, api)
    try:
        set_persona(api, 601, BAKER)
        api.send_text(601, "hi")
        first = api.wait_replies(601, 2)[-1]
        typing = api.calls.count("sendChatAction")
        api.send_text(601, "and you ?")
        wait_until(lambda: api.calls.count("sendChatAction") > typing)  # its turn started
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == 0, err
    second = api.replies(601)[2]  # sent before the bot exited
    with BotThread(model, db, api):
        api.send_text(601, "bye")
        third = api.wait_replies(601, 4)[-1]
    assert first == greedy(model, "hi", [], BAKER)
    assert second == greedy(model, "and you ?", ["hi", first], BAKER)
    assert third == greedy(model, "bye", ["hi", first, "and you ?", second], BAKER)


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_cli_refuses_a_missing_token_or_extra_in_one_line(model_dir, monkeypatch, capsys):
    argv = ["telegram", "--model", str(model_dir), "--device", "cpu"]
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("personachat telegram: error: no bot token") and TOKEN_ENV in err
    assert err.count("\n") == 1
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setitem(sys.modules, "telegram", None)  # as if the extra were not installed
    assert main(argv) == 2
    assert "pip install 'personachat[telegram]'" in capsys.readouterr().err


def test_the_cli_refuses_a_token_the_api_rejects(model_dir, api, monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setenv(TOKEN_ENV, "999:wrong-token")
    monkeypatch.setenv("PERSONACHAT_KEEP_FREED_MEMORY", "0")  # this test process's malloc
    argv = ["telegram", "--model", str(model_dir), "--device", "cpu", "--base-url", api.url]
    argv += ["--db", str(tmp_path / "sessions.sqlite3")]
    assert main([*argv, "--threads", str(torch.get_num_threads())]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"personachat telegram: error: the Bot API at {api.url} refused")
    assert "Traceback" not in err


# ---------------------------------------------------------------------- delivery
def undelivered(db: Path) -> list[tuple[str, int, str]]:
    store = SessionStore(db, namespace=NAMESPACE)
    try:
        return store.undelivered()
    finally:
        store.close()


def test_a_failed_send_is_retried_with_backoff_and_marked_delivered(model, api, tmp_path):
    db = tmp_path / "sessions.sqlite3"
    with BotThread(model, db, api, retries=(0.3, 0.6, 1.2)):
        set_persona(api, 701, NURSE)
        api.failing_sends = 2  # Telegram answers 502 twice, then accepts
        started = time.monotonic()
        api.send_text(701, "hi")
        (_, reply) = api.wait_replies(701, 2)
        waited = time.monotonic() - started
    assert reply == greedy(model, "hi", [], NURSE)
    assert waited >= 0.9  # 0.3 s, then 0.6 s between the tries
    assert api.failing_sends == 0 and undelivered(db) == []


def test_replies_telegram_never_accepted_go_out_when_the_bot_is_back(model, api, tmp_path):
    db = tmp_path / "sessions.sqlite3"
    with BotThread(model, db, api, retries=(0.1, 0.1)):
        set_persona(api, 702, PILOT)
        api.failing_sends = 10**6  # Telegram is down from here on
        api.send_text(702, "hi")
        wait_until(lambda: len(undelivered(db)) == 1 and api.failing_sends <= 10**6 - 3)
    ((key, seq, stored),) = undelivered(db)
    assert key == session_id(702) and len(api.replies(702)) == 1  # the persona's answer only
    assert stored == greedy(model, "hi", [], PILOT)

    api.failing_sends = 0  # Telegram is back, and so is the bot: nobody writes
    with BotThread(model, db, api):
        (_, late) = api.wait_replies(702, 2)
        wait_until(lambda: undelivered(db) == [])
    assert late == stored


# ---------------------------------------------------------------------- namespaces
def test_serve_on_the_bots_database_cannot_reach_its_chats(model, api, tmp_path):
    pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")
    from fastapi.testclient import TestClient

    from personachat.serve.app import create_app

    db = tmp_path / "sessions.sqlite3"
    with BotThread(model, db, api):
        set_persona(api, 703, BAKER)
    LOOPBACK = "http://127.0.0.1"  # a name serve answers to (--allowed-hosts)
    key = session_id(703)
    store = SessionStore(db)  # what `personachat serve --db` opens: its own namespace
    with TestClient(create_app(model, store, ServeSettings()), base_url=LOOPBACK) as client:
        assert client.get(f"/v1/sessions/{key}").status_code == 404
        assert client.put(f"/v1/sessions/{key}", json={"personality": ["x ."]}).status_code == 404
        sent = client.post(f"/v1/sessions/{key}/messages", json={"text": "hi"})
        assert sent.status_code == 404
        assert client.delete(f"/v1/sessions/{key}").status_code == 404
    store.close()
    assert history(db, 703) == (BAKER, [])  # untouched

    shared = SessionStore(db, namespace=NAMESPACE)  # --session-namespace telegram: explicit
    with TestClient(create_app(model, shared, ServeSettings()), base_url=LOOPBACK) as client:
        assert client.get(f"/v1/sessions/{key}").json()["personality"] == BAKER
    shared.close()
