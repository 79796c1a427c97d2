"""The chat service behind the routes: sessions, turns, limits (no HTTP here).

A turn (one message and its reply) runs as its own task, apart from the request that started
it: turns of one session run one after another (each sees the previous reply), turns of
different sessions meet in the batcher, and a client that disconnects mid-reply does not stop
its turn, which is stored whole (``GET`` shows it).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from typing import Any

from personachat.data.cards import CardError, CardLimits, Lorebook, PersonaCard, card_from_json
from personachat.errors import PersonachatError
from personachat.generation.generate import DecodingOptions
from personachat.model.loading import context_size
from personachat.serve.batcher import Batcher
from personachat.serve.bodies import Options
from personachat.serve.context_fit import ContextFitter
from personachat.serve.settings import (
    RequestError,
    ServeSettings,
    clean_personality,
    clean_text,
    decoding_options,
    limit_error,
    server_defaults,
)
from personachat.serve.store import (
    Message,
    Session,
    SessionNotFound,
    SessionStore,
    StoreError,
    StoreFullError,
    Turn,
)

log = logging.getLogger("personachat.serve")
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
DRAIN_SECONDS = 60.0  # how long shutdown waits for replies still being decoded


class KeyedLocks:
    """One asyncio lock per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, list] = {}  # key -> [lock, users]

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]

    def users(self, key: str) -> int:
        """How many hold ``key``'s lock or wait for it (0: nobody), e.g. to refuse a key
        that has too many waiting."""
        entry = self._locks.get(key)
        return entry[1] if entry is not None else 0


class TurnWriter:
    """Stores finished turns; those that finish together go in one transaction.

    The turns of a batch all finish at the same moment; stored one by one, each would wait
    for the disk syncs of the others (about 3 ms each), and the clients of a batch of 32
    would come back 0.1 s apart instead of together.
    """

    def __init__(self, store: SessionStore, keep: int) -> None:
        self.store, self.keep = store, keep
        self._pending: list[tuple[Turn, asyncio.Future]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="personachat-turn-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def write(self, turn: Turn) -> tuple[Message, Message]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((turn, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            group, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(
                    self.store.append_turns, [turn for turn, _ in group], self.keep
                )
            except Exception as err:  # the database failed: every waiting turn learns why
                results = [err] * len(group)
            for (_, future), result in zip(group, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class ChatService:
    """Sessions, turns and limits; the routes below are thin wrappers around it."""

    def __init__(self, model, store: SessionStore, settings: ServeSettings) -> None:
        room = context_size(model.model) - 16  # a reply must leave room for the conversation
        if settings.max_reply_tokens > room:
            log.warning(
                "max_reply_tokens lowered to %d: the model's context is %d tokens",
                max(1, room),
                room + 16,
            )
            settings = replace(settings, max_reply_tokens=max(1, room))
        self.model, self.store, self.settings = model, store, settings
        self.defaults = server_defaults(DecodingOptions.from_args(model.args), settings)
        # Session turns and OpenAI requests share one batcher and one call, model.complete
        # (looked up at each call, so a wrapped or patched one is used).
        self.batcher = Batcher(
            lambda *batch: model.complete(*batch),
            settings.max_batch_size,
            settings.batch_window_ms / 1000,
        )
        self.writer = TurnWriter(store, settings.max_history_kept)
        self.fitter = ContextFitter(model)
        self.locks = KeyedLocks()
        self.turns: set[asyncio.Task] = set()
        self.in_flight = 0

    # ---------------------------------------------------------------- sessions
    async def personality(self, sentences: list[str] | None) -> list[str]:
        if sentences:
            return clean_personality(sentences, self.settings)
        try:  # may read Persona-Chat from disk or the network: not on the event loop
            return await asyncio.to_thread(self.model.random_personality)
        except Exception as err:
            raise RequestError(
                422,
                "no_personas",
                "this model has no personas saved beside it (personas.json) and "
                f"none could be loaded ({err}); send a personality",
            ) from err

    async def create(self, sentences: list[str] | None, card: dict | None = None) -> dict:
        """A new session; with a character card, its persona and its first message as the
        bot's opening line (the session's first message)."""
        session_id = secrets.token_urlsafe(24)
        if card is not None:
            # Parsing and tokenizing a card is CPU work: in a worker thread, not the loop.
            persona = await asyncio.to_thread(
                session_card, card, sentences, self.settings, self.model
            )
            session = await asyncio.to_thread(
                self.store.start_over,
                session_id,
                persona.personality,
                persona.first_message,
                Lorebook.of(persona).to_json(),
            )
            return session.to_json()
        personality = await self.personality(sentences)
        session = await asyncio.to_thread(self.store.create, session_id, personality)
        return session.to_json()

    async def get(self, session_id: str) -> dict:
        return self._read(session_id).to_json()

    async def set_personality(
        self, session_id: str, sentences: list[str] | None, card: dict | None = None
    ) -> dict:
        self._read(session_id, 0)  # 404 before drawing a persona
        lorebook = None  # a plain persona has none: the card's goes with its persona
        if card is not None:
            persona = await asyncio.to_thread(
                session_card, card, sentences, self.settings, self.model
            )
            personality, lorebook = persona.personality, Lorebook.of(persona).to_json()
        else:
            personality = await self.personality(sentences)
        session = await self._write(self.store.set_personality, session_id, personality, lorebook)
        return session.to_json()

    async def delete(self, session_id: str) -> None:
        await self._write(self.store.delete, session_id)

    async def undo_turn(self, session_id: str) -> dict:
        """Take back the session's last turn (the user's message and the bot's reply after
        it), for the page's "regenerate" and "edit": ``{"session", "text"}`` with the removed
        message's text. One store transaction (``SessionStore.take_back``: on a full disk
        nothing changes), under the session's lock, so no turn is decoded meanwhile."""
        async with self.locks.hold(session_id):
            last = self._read(session_id, 2).messages
            if len(last) < 2 or (last[0].role, last[1].role) != ("user", "bot"):
                raise RequestError(
                    409,
                    "nothing_to_undo",
                    "the session does not end with a message and its reply: nothing to undo",
                )
            updated = await self._write(self.store.take_back, session_id, last[0].seq)
        return {"session": updated.to_json(), "text": last[0].text}

    def history_read(self, options: DecodingOptions) -> int:
        """How many stored messages a reply may read: the ``max_history`` window (the new
        message completes it), or every kept one when the model reads by tokens."""
        if self.model.special.window_by_tokens:
            return self.settings.max_history_kept
        return 2 * options.max_history

    def _read(self, session_id: str, last: int | None = None) -> Session:
        """A session (with its ``last`` messages); an unknown or malformed id is a 404.
        Read on the event loop: WAL reads never wait for the writer and take microseconds."""
        if not SESSION_ID.fullmatch(session_id):
            raise not_found(session_id)
        try:
            return self.store.get(session_id, last)
        except SessionNotFound:
            raise not_found(session_id) from None

    async def _write(self, fn: Callable, session_id: str, *args: Any) -> Any:
        """A store write in a thread (it waits for the disk); an unknown id is a 404."""
        if not SESSION_ID.fullmatch(session_id):
            raise not_found(session_id)
        try:
            return await asyncio.to_thread(fn, session_id, *args)
        except SessionNotFound:
            raise not_found(session_id) from None

    # ---------------------------------------------------------------- turns
    async def start_turn(
        self,
        session_id: str,
        text: str,
        client_id: str | None = None,
        options: dict | None = None,
        events: asyncio.Queue | None = None,
    ) -> asyncio.Task:
        """Check a message, then run its turn as a task of its own (see the module doc): the
        one way a turn starts, for the HTTP routes and the Telegram bot alike.

        ``client_id``: the client's id of this message; sent again, the stored reply comes
        back instead of a second turn. ``options``: decoding options (``Options``' fields)
        within the server's bounds; None: the server's defaults. ``events``: a queue that
        receives ``token`` events as the reply grows, then ``done`` or ``error``.
        """
        text = clean_text(text, self.settings)
        options = decoding_options(options, self.defaults, self.settings)
        self._read(session_id, 0)
        self.admit()
        task = asyncio.create_task(self._turn(session_id, text, options, client_id, events))
        self.turns.add(task)
        task.add_done_callback(self._turn_done)
        return task

    def admit(self) -> None:
        """Count one more request being answered (a turn or a chat request), or refuse it
        (429) when ``max_in_flight`` are; ``release()`` when it is answered."""
        if self.in_flight >= self.settings.max_in_flight:
            raise limit_error(
                429,
                "max_in_flight",
                self.settings.max_in_flight,
                "too many requests are being answered; retry in a moment",
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def _turn_done(self, task: asyncio.Task) -> None:
        self.turns.discard(task)
        self.release()
        if not task.cancelled():
            task.exception()  # retrieved here: its client may be gone

    async def _turn(
        self,
        session_id: str,
        text: str,
        options: DecodingOptions,
        client_id: str | None,
        events: asyncio.Queue | None,
    ) -> dict:
        try:
            result = await self._reply(session_id, text, options, client_id, events)
        except RequestError as err:
            if events is not None:
                events.put_nowait(("error", err.body()))
            raise
        except Exception as err:
            err = reply_error(err)
            if events is not None:
                events.put_nowait(("error", err.body()))
            raise err from None
        if events is not None:
            events.put_nowait(("done", result))
        return result

    async def _reply(
        self,
        session_id: str,
        text: str,
        options: DecodingOptions,
        client_id: str | None,
        events: asyncio.Queue | None,
    ) -> dict:
        async with self.locks.hold(session_id):
            if client_id is not None:
                stored = self.store.find_turn(session_id, client_id)
                if stored is not None:
                    return turn_json(*stored, options, replayed=True)
            # Only the turns the model can read are fetched, not the whole history: the
            # max_history window, or for chat templates (a token budget) every stored turn.
            session = self._read(session_id, self.history_read(options))
            history = [m.text for m in session.messages] + [text]
            persona = self.persona_for(session, history)
            # What the reply reads (said in the response); a message that cannot be read
            # whole is refused here, not answered from the persona alone. Tokenizes: a thread.
            fit = await asyncio.to_thread(self.fitter.fit_history, persona, history, options)
            on_token = None
            if events is not None:
                on_token = token_forwarder(asyncio.get_running_loop(), events)
            reply = (await self.batcher.reply(persona, history, options, on_token)).text
            try:
                user, bot = await self.writer.write(Turn(session_id, text, reply, client_id))
            except SessionNotFound:  # deleted while the reply was being decoded
                raise not_found(session_id) from None
            except sqlite3.IntegrityError:
                raise RequestError(
                    409,
                    "duplicate_client_id",
                    "a message with this client_id is already stored in this "
                    "session; send a new client_id for a new message",
                ) from None
            return {**turn_json(user, bot, options, replayed=False), "history": fit.to_json()}

    def persona_for(self, session: Session, history: list[str]) -> list[str]:
        """The session's persona for a reply to ``history`` (its read messages and the new
        one), with the entries of its card's lorebook that the recent messages call up. The
        lorebook scans its own ``scan_depth``, read from the store when that reaches past
        the messages the reply reads."""
        lorebook = Lorebook.from_json(session.lorebook)
        if not lorebook.entries:
            return session.personality
        scanned = history
        if lorebook.scan_depth > len(history):
            older = self._read(session.id, lorebook.scan_depth - 1).messages
            scanned = [m.text for m in older] + history[-1:]
        return lorebook.persona_for(session.personality, scanned)

    async def drain(self) -> None:
        """Let the turns being answered finish (and be stored) before the server stops."""
        if self.turns:
            log.info("waiting for %d replies to finish", len(self.turns))
            await asyncio.wait(set(self.turns), timeout=DRAIN_SECONDS)


def session_card(
    card: dict, sentences: list[str] | None, settings: ServeSettings, model=None
) -> PersonaCard:
    """The ``card`` field of a session request as a persona (within ``model``'s
    ``card_prompt_tokens`` when given); a broken card, or a card sent with a personality, is
    a 422 naming the field."""
    if sentences:
        raise RequestError(
            422,
            "invalid_request",
            "card: send a personality or a card, not both",
            field="card",
        )
    try:
        return card_from_json(card, "card", limits=CardLimits.from_settings(settings, model))
    except CardError as err:
        raise RequestError(422, "invalid_card", str(err), field="card") from None


def reply_error(err: Exception) -> RequestError:
    """A failed reply as its client's error. The batcher re-runs a failed batch one request at
    a time, so an error here belongs to this request alone: a ``PersonachatError`` or
    ``ValueError`` (the model refused to encode the conversation) is the input's fault (422);
    anything else is the server's (500, logged with its traceback); a reply that could not be
    stored is ``store_refusal``'s."""
    if isinstance(err, StoreError):
        return store_refusal(err)
    if isinstance(err, PersonachatError | ValueError):
        log.warning("a reply was refused: %s", err)
        return RequestError(
            422,
            "unprocessable_input",
            f"the model cannot read this conversation ({type(err).__name__}: {err}); "
            "change the message or the persona",
        )
    log.error("reply failed", exc_info=err)
    return RequestError(500, "generation_failed", f"the model failed to reply: {err}")


def store_refusal(err: StoreError) -> RequestError:
    """A write the session database refused, as its client's error: 507 when the disk is
    full (``StoreFullError``), 503 otherwise; the message names the database file. Logged
    with the path, for whoever runs the server."""
    log.error("the session store refused a write: %s", err)
    if isinstance(err, StoreFullError):
        return RequestError(507, "storage_full", str(err))
    return RequestError(503, "storage_unavailable", str(err))


def turn_json(user: Message, bot: Message, options: DecodingOptions, replayed: bool) -> dict:
    return {
        "reply": bot.text,
        "messages": [user.to_json(), bot.to_json()],
        "options": {k: getattr(options, k) for k in Options.model_fields},
        "replayed": replayed,
    }


def token_forwarder(
    loop: asyncio.AbstractEventLoop, events: asyncio.Queue
) -> Callable[[str], None]:
    """An ``on_token(text_so_far)`` for the decoding thread that queues ``token`` events
    (the new text and the whole text so far) on the event loop."""
    sent = ""

    def on_token(text: str) -> None:
        nonlocal sent
        delta = text[len(sent) :] if text.startswith(sent) else text
        if text != sent:
            sent = text
            loop.call_soon_threadsafe(events.put_nowait, ("token", {"delta": delta, "text": text}))

    return on_token


def not_found(session_id: str) -> RequestError:
    return RequestError(
        404,
        "session_not_found",
        "no session with this id (it never existed or was deleted); "
        "create one with POST /v1/sessions",
    )
