"""The session store's namespaces and delivery flags: serve's sessions and the Telegram
bot's chats share a database file but not their reach; a database written before
namespaces existed gives the bot's chats to the bot."""

from __future__ import annotations

import sqlite3

import pytest

from personachat.serve.store import SessionNotFound, SessionStore

SCHEMA_1 = """
CREATE TABLE sessions (id TEXT PRIMARY KEY, personality TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE messages (session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL, role TEXT NOT NULL CHECK (role IN ('user', 'bot')),
    text TEXT NOT NULL, client_id TEXT, created_at REAL NOT NULL,
    PRIMARY KEY (session_id, seq));
INSERT INTO sessions VALUES ('telegram-chat-id-42', '["i am a pilot ."]', 1, 1);
INSERT INTO sessions VALUES ('AbCdEfGhIjKlMnOpQrStUvWx', '["i am a nurse ."]', 1, 1);
INSERT INTO messages VALUES ('telegram-chat-id-42', 1, 'user', 'secret', NULL, 1);
INSERT INTO messages VALUES ('telegram-chat-id-42', 2, 'bot', 'kept', NULL, 1);
PRAGMA user_version = 1;
"""
BOT = "telegram-chat-id-42"
WEB = "AbCdEfGhIjKlMnOpQrStUvWx"


@pytest.fixture()
def old_db(tmp_path):
    path = tmp_path / "sessions.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.close()
    return path


def test_a_schema_1_database_gives_the_bots_chats_to_the_bot(old_db):
    serve = SessionStore(old_db)
    bot = serve.view("telegram")
    try:
        assert serve.get(WEB).personality == ["i am a nurse ."]
        with pytest.raises(SessionNotFound):
            serve.get(BOT)
        assert [m.text for m in bot.get(BOT).messages] == ["secret", "kept"]
        with pytest.raises(SessionNotFound):
            bot.get(WEB)
        assert serve.count() == 1 and bot.count() == 1
    finally:
        serve.close()


def test_one_namespace_cannot_write_into_anothers_session(old_db):
    serve = SessionStore(old_db)
    try:
        for write in (
            lambda: serve.set_personality(BOT, ["x ."]),
            lambda: serve.start_over(BOT, ["x ."]),
            lambda: serve.append_turn(BOT, "hi", "hello", keep=10),
            lambda: serve.delete(BOT),
        ):
            with pytest.raises(SessionNotFound):
                write()
        assert serve.find_turn(BOT, "any") is None
        bot = serve.view("telegram").get(BOT)
        assert bot.personality == ["i am a pilot ."] and len(bot.messages) == 2  # untouched
    finally:
        serve.close()


def test_replies_are_undelivered_until_marked(tmp_path):
    store = SessionStore(tmp_path / "s.sqlite3", namespace="telegram", track_delivery=True)
    web = store.view("serve")  # serve's replies are delivered in their response
    try:
        store.start_over(BOT, ["i am a pilot ."])
        web.create(WEB, ["i am a nurse ."])
        _, first = store.append_turn(BOT, "hi", "hello", keep=10)
        _, second = store.append_turn(BOT, "and you ?", "fine", keep=10)
        web.append_turn(WEB, "hi", "hey", keep=10)
        assert store.undelivered() == [(BOT, first.seq, "hello"), (BOT, second.seq, "fine")]
        assert web.undelivered() == []

        store.mark_delivered(BOT, first.seq)
        store.mark_delivered(BOT, second.seq, given_up=True)  # the chat blocked the bot
        assert store.undelivered() == []
    finally:
        store.close()
