"""Sessions in SQLite: a persona and the messages of one conversation, kept across restarts.

A turn (the user's message and the bot's reply) is written in one transaction after the reply
exists, so the stored history always alternates user, bot, user, bot: a server killed while
decoding loses only the turn it had not finished (the client got no reply either and can send
it again), and never leaves a message without its reply. A message may carry the client's own
id (``client_id``); sending it again returns the stored turn instead of a second one, so a
client that retries after a lost connection never duplicates a message.

WAL journal (readers never wait for the writer) and ``synchronous=FULL``: a turn is on disk
before its reply is sent, so it survives a crash of the machine, not only of the server.

Every session belongs to a namespace: ``serve``'s HTTP sessions to ``"serve"``, the Telegram
bot's chats to ``"telegram"``. A store reads and writes its own namespace only, so ``serve``
pointed at the bot's database cannot read, re-persona or write into a Telegram chat through
its guessable id; sharing them is explicit (``SessionStore(path, namespace="telegram")``,
``personachat serve --session-namespace telegram``). A store that ``track_delivery`` stores
each bot reply as undelivered until ``mark_delivered``: the bot's replies that Telegram has
not accepted yet are found again (``undelivered``) when it restarts.
"""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from personachat.errors import PersonachatError

SCHEMA_VERSION = 3
SERVE_NAMESPACE = "serve"
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    personality TEXT NOT NULL,          -- JSON list of sentences
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    namespace TEXT NOT NULL DEFAULT 'serve', -- who may reach it: 'serve', 'telegram'
    lorebook TEXT                       -- JSON of a character card's lorebook, or NULL
);
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,               -- 1, 2, 3… within the session, never reused
    role TEXT NOT NULL CHECK (role IN ('user', 'bot')),
    text TEXT NOT NULL,
    client_id TEXT,                     -- the client's id of a user message (retries)
    created_at REAL NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 1, -- a bot reply: 0 not yet accepted, 2 given up
    PRIMARY KEY (session_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_id
    ON messages(session_id, client_id) WHERE client_id IS NOT NULL;
"""
# Columns added since schema 1, added to an older database when it is opened. The bot's
# chats of a schema-1 database (ids ``telegram-chat-id-…``) move to its namespace then.
ADDED_COLUMNS = (
    ("sessions", "namespace", "TEXT NOT NULL DEFAULT 'serve'"),
    ("messages", "delivered", "INTEGER NOT NULL DEFAULT 1"),
    ("sessions", "lorebook", "TEXT"),
)
UNDELIVERED, DELIVERED, GIVEN_UP = 0, 1, 2


def as_json(value: object) -> str | None:
    """A column's JSON text (None stays NULL)."""
    return None if value is None else json.dumps(value, ensure_ascii=False)


class StoreError(PersonachatError):
    """The session database cannot be opened or used; the message says which file and why."""


class StoreFullError(StoreError):
    """The session database could not grow: its disk is full (or SQLite's size limit is
    reached). The write that failed was rolled back whole; everything stored before stays."""


def is_full(err: sqlite3.Error) -> bool:
    """Whether SQLite refused a write for lack of space (SQLITE_FULL)."""
    code = getattr(err, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(err)


class SessionNotFound(KeyError):
    """No session with this id (never created, or deleted)."""


@dataclass(frozen=True)
class Message:
    seq: int
    role: str  # "user" or "bot"
    text: str
    created_at: float

    def to_json(self) -> dict:
        return {
            "seq": self.seq,
            "role": self.role,
            "text": self.text,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Turn:
    """A user message and the bot's reply, to be stored together."""

    session_id: str
    text: str
    reply: str
    client_id: str | None = None


@dataclass(frozen=True)
class Session:
    id: str
    personality: list[str]
    messages: list[Message]
    created_at: float
    updated_at: float
    # A character card's lorebook (data.cards.Lorebook.to_json), kept with its persona so its
    # entries keep firing after a restart; None without a card.
    lorebook: dict | None = None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "personality": self.personality,
            "messages": [m.to_json() for m in self.messages],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class SessionStore:
    """Sessions and their messages in one SQLite file (created on first use).

    Two connections: writes go through one (from worker threads), reads through the other.
    In WAL mode a reader sees the last committed state without waiting for a writer, so the
    web app reads directly on its event loop (a read takes well under a millisecond) and only
    sends writes, which wait for the disk, to a thread.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        namespace: str = SERVE_NAMESPACE,
        track_delivery: bool = False,
    ) -> None:
        self.path, self.namespace, self.track_delivery = Path(path), namespace, track_delivery
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
            self._db.execute("PRAGMA journal_mode=WAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer personachat (schema "
                    f"{version}); upgrade personachat or pass another --db"
                )
            self._db.executescript(SCHEMA)
            self._upgrade()
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._reader = self._connect()
        except (sqlite3.Error, OSError) as err:
            raise StoreError(
                f"cannot open the session database {self.path}: {err}; pass a "
                f"writable file with --db PATH"
            ) from err
        self._lock = threading.Lock()  # one writer at a time on the write connection
        self._read_lock = threading.Lock()

    def view(self, namespace: str, track_delivery: bool = False) -> SessionStore:
        """This store (the same connections and locks) reading and writing ``namespace``:
        the bot scopes the store it is given to its own chats. Close the original only."""
        scoped = copy.copy(self)
        scoped.namespace, scoped.track_delivery = namespace, track_delivery
        return scoped

    def _upgrade(self) -> None:
        """Add the columns a database written by an older personachat lacks."""
        for table, column, definition in ADDED_COLUMNS:
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                if column == "namespace":
                    self._db.execute(
                        "UPDATE sessions SET namespace = 'telegram' "
                        "WHERE id LIKE 'telegram-chat-id-%'"
                    )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, check_same_thread=False, timeout=10.0, isolation_level=None
        )  # explicit transactions below
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A write to the database; a disk too full for it is a ``StoreFullError`` naming
        the file (the transaction was rolled back: nothing half written, nothing lost)."""
        try:
            yield
        except sqlite3.OperationalError as err:
            if not is_full(err):
                raise
            raise StoreFullError(
                f"the session database {self.path} is full ({err}): this write was not "
                "stored, the sessions stored before are kept; free space on its disk or "
                "pass another --db PATH"
            ) from err

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``): committed whole, or rolled back on
        any error, a full disk included (``_writing``)."""
        with self._writing(), self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()

    # ------------------------------------------------------------------ sessions
    def create(
        self, session_id: str, personality: list[str], lorebook: dict | None = None
    ) -> Session:
        now = time.time()
        with self._writing(), self._lock:
            self._db.execute(
                "INSERT INTO sessions (id, personality, created_at, updated_at, namespace, "
                "lorebook) VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, as_json(personality), now, now, self.namespace, as_json(lorebook)),
            )
        return Session(session_id, list(personality), [], now, now, lorebook)

    def get(self, session_id: str, last: int | None = None) -> Session:
        """The session with all its kept messages (or only the ``last`` ones), oldest first."""
        with self._read_lock:
            self._reader.execute("BEGIN")  # one snapshot for the session and its messages
            try:
                row = self._reader.execute(
                    "SELECT personality, created_at, updated_at, lorebook FROM sessions "
                    "WHERE id = ? AND namespace = ?",
                    (session_id, self.namespace),
                ).fetchone()
                rows = (
                    []
                    if row is None
                    else self._reader.execute(
                        "SELECT seq, role, text, created_at FROM messages WHERE session_id = ? "
                        "ORDER BY seq DESC LIMIT ?",
                        (session_id, -1 if last is None else last),
                    ).fetchall()
                )
            finally:
                self._reader.execute("COMMIT")
        if row is None:
            raise SessionNotFound(session_id)
        messages = [Message(*r) for r in reversed(rows)]
        lorebook = json.loads(row[3]) if row[3] else None
        return Session(session_id, json.loads(row[0]), messages, row[1], row[2], lorebook)

    def set_personality(
        self, session_id: str, personality: list[str], lorebook: dict | None = None
    ) -> Session:
        """A new persona for the conversation that goes on; the lorebook goes with it
        (a card's, or None: a plain persona has none)."""
        with self._writing(), self._lock:
            cursor = self._db.execute(
                "UPDATE sessions SET personality = ?, lorebook = ?, updated_at = ? "
                "WHERE id = ? AND namespace = ?",
                (as_json(personality), as_json(lorebook), time.time(), session_id, self.namespace),
            )
            if cursor.rowcount == 0:
                raise SessionNotFound(session_id)
        return self.get(session_id)

    def start_over(
        self,
        session_id: str,
        personality: list[str],
        opening: str | None = None,
        lorebook: dict | None = None,
    ) -> Session:
        """Begin the session's conversation again, in one transaction: this persona (and
        ``lorebook``) and no messages but the bot's ``opening`` line, if any (a character
        card's first message);
        the session is created if it does not exist. For front ends that keep one session per
        chat (the Telegram bot's ``/reset`` and ``/card``). Numbering starts again at 1."""
        now = time.time()
        with self._transaction():
            self._check_namespace(session_id)
            self._db.execute(
                "INSERT INTO sessions (id, personality, created_at, updated_at, namespace, "
                "lorebook) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "personality = excluded.personality, updated_at = excluded.updated_at, "
                "lorebook = excluded.lorebook",
                (
                    session_id,
                    as_json(personality),
                    now,
                    now,
                    self.namespace,
                    as_json(lorebook),
                ),
            )
            self._db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            if opening:
                self._db.execute(
                    "INSERT INTO messages (session_id, seq, role, text, created_at) "
                    "VALUES (?, 1, 'bot', ?, ?)",
                    (session_id, opening, now),
                )
        return self.get(session_id)

    def take_back(self, session_id: str, seq: int) -> Session:
        """Remove the messages from ``seq`` on (the last turn, for "regenerate" and "edit"),
        in one transaction: they are gone together or, on a failed write, all kept."""
        with self._transaction():
            found = self._db.execute(
                "UPDATE sessions SET updated_at = ? WHERE id = ? AND namespace = ?",
                (time.time(), session_id, self.namespace),
            ).rowcount
            if not found:
                raise SessionNotFound(session_id)
            self._db.execute(
                "DELETE FROM messages WHERE session_id = ? AND seq >= ?", (session_id, seq)
            )
        return self.get(session_id)

    def _check_namespace(self, session_id: str) -> None:
        """Refuse (SessionNotFound) an id that another namespace holds: never overwritten."""
        row = self._db.execute(
            "SELECT namespace FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        if row is not None and row[0] != self.namespace:
            raise SessionNotFound(session_id)

    def delete(self, session_id: str) -> None:
        with self._writing(), self._lock:
            cursor = self._db.execute(
                "DELETE FROM sessions WHERE id = ? AND namespace = ?", (session_id, self.namespace)
            )
            if cursor.rowcount == 0:
                raise SessionNotFound(session_id)

    def count(self) -> int:
        with self._read_lock:
            return self._reader.execute(
                "SELECT COUNT(*) FROM sessions WHERE namespace = ?", (self.namespace,)
            ).fetchone()[0]

    # ------------------------------------------------------------------ turns
    def find_turn(self, session_id: str, client_id: str) -> tuple[Message, Message] | None:
        """The stored turn whose user message carried ``client_id`` (a retried request)."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT m.seq, m.role, m.text, m.created_at FROM messages AS u "
                "JOIN messages AS m ON m.session_id = u.session_id "
                "AND m.seq IN (u.seq, u.seq + 1) "
                "JOIN sessions AS s ON s.id = u.session_id AND s.namespace = ? "
                "WHERE u.session_id = ? AND u.client_id = ? ORDER BY m.seq",
                (self.namespace, session_id, client_id),
            ).fetchall()
        if len(rows) != 2:  # none, or pruned by max_history_kept
            return None
        return Message(*rows[0]), Message(*rows[1])

    def append_turn(
        self, session_id: str, text: str, reply: str, keep: int, client_id: str | None = None
    ) -> tuple[Message, Message]:
        """Store the user's message and the bot's reply together; keep the last ``keep``
        messages of the session (whole turns: an odd ``keep`` keeps one less)."""
        result = self.append_turns([Turn(session_id, text, reply, client_id)], keep)[0]
        if isinstance(result, Exception):
            raise result
        return result

    def append_turns(
        self, turns: list[Turn], keep: int
    ) -> list[tuple[Message, Message] | Exception]:
        """Store many turns in one transaction, so one disk sync covers them all (the turns
        of a batch finish together). Each turn stands alone: one whose session was deleted
        meanwhile gets its exception in the returned list and the others are stored."""
        results: list[tuple[Message, Message] | Exception] = []
        with self._transaction():
            for turn in turns:
                self._db.execute("SAVEPOINT turn")
                try:
                    results.append(self._insert_turn(turn, keep))
                except (SessionNotFound, sqlite3.IntegrityError) as err:
                    self._db.execute("ROLLBACK TO turn")
                    results.append(err)
                self._db.execute("RELEASE turn")
        return results

    def _insert_turn(self, turn: Turn, keep: int) -> tuple[Message, Message]:
        now = time.time()
        found = self._db.execute(
            "SELECT 1 FROM sessions WHERE id = ? AND namespace = ?",
            (turn.session_id, self.namespace),
        ).fetchone()
        if found is None:
            raise SessionNotFound(turn.session_id)
        last = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE session_id = ?", (turn.session_id,)
        ).fetchone()[0]
        user = Message(last + 1, "user", turn.text, now)
        bot = Message(last + 2, "bot", turn.reply, now)
        delivered = UNDELIVERED if self.track_delivery else DELIVERED
        self._db.executemany(
            "INSERT INTO messages (session_id, seq, role, text, client_id, created_at, "
            "delivered) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (turn.session_id, user.seq, "user", turn.text, turn.client_id, now, DELIVERED),
                (turn.session_id, bot.seq, "bot", turn.reply, None, now, delivered),
            ],
        )
        keep -= keep % 2
        self._db.execute(
            "DELETE FROM messages WHERE session_id = ? AND seq <= ?",
            (turn.session_id, bot.seq - keep),
        )
        self._db.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (now, turn.session_id))
        return user, bot

    # ------------------------------------------------------------------ delivery
    def mark_delivered(self, session_id: str, seq: int, given_up: bool = False) -> None:
        """Record that the reply ``seq`` reached its chat (or, ``given_up``, never will:
        the chat refuses it for good), so ``undelivered`` no longer offers it."""
        with self._writing(), self._lock:
            self._db.execute(
                "UPDATE messages SET delivered = ? WHERE session_id = ? AND seq = ?",
                (GIVEN_UP if given_up else DELIVERED, session_id, seq),
            )

    def undelivered(self) -> list[tuple[str, int, str]]:
        """(session id, seq, text) of every stored reply of this namespace not yet accepted
        by its chat, oldest first."""
        with self._read_lock:
            return self._reader.execute(
                "SELECT m.session_id, m.seq, m.text FROM messages AS m "
                "JOIN sessions AS s ON s.id = m.session_id AND s.namespace = ? "
                "WHERE m.delivered = ? ORDER BY m.created_at, m.seq",
                (self.namespace, UNDELIVERED),
            ).fetchall()
