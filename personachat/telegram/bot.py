"""The Telegram bot's conversations: one persona chat per Telegram chat.

Each chat is a session of ``personachat serve``'s SQLite store, with the id
``telegram-chat-id-<chat id>``, in the store's ``telegram`` namespace: a restarted bot finds
every conversation, and ``serve`` on the same file cannot reach them unless told to
(``--session-namespace telegram``). Turns go through serve's ``ChatService``: the same
limits, the same store, and the same ``Batcher``, so messages from several chats that arrive
together are decoded in one model call.

A reply is stored undelivered and marked delivered only once Telegram accepted it. A failed
``sendMessage`` is retried with backoff (``SEND_RETRIES``; a ``RetryAfter`` waits what
Telegram asks); replies still undelivered when the bot stopped go out when it is back
(``deliver_pending``).

The messages of one chat are handled one at a time, in the order they came (a ``/reset``
never lands in the middle of a turn); different chats are handled concurrently. A chat may
have at most ``MAX_WAITING_PER_CHAT`` messages waiting: beyond that it is asked to slow down,
so one flooding chat cannot take every slot and starve the others.

Bad input gets a short answer in its chat and goes no further: a message over the limits, a
sticker or photo, an unknown command, a broken card. Nothing a chat sends stops the bot.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import timedelta

from telegram import Document, Message, Update
from telegram.constants import ChatAction, MessageLimit
from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter, TelegramError
from telegram.ext import BaseHandler, CommandHandler, ContextTypes, MessageHandler, filters

from personachat.data.cards import MAX_CARD_BYTES, CardError, CardLimits, Lorebook, parse_card
from personachat.data.cards import persona_sentences as split_sentences
from personachat.serve.service import ChatService, KeyedLocks
from personachat.serve.settings import RequestError, clean_personality, clean_text
from personachat.serve.store import Session, SessionNotFound, StoreError

log = logging.getLogger("personachat.telegram")
SESSION_PREFIX = "telegram-chat-id-"
NAMESPACE = "telegram"  # the store's namespace of the bot's chats (serve's routes: "serve")
SEND_RETRIES = (1.0, 2.0, 4.0, 8.0, 16.0)  # seconds before each new try of a failed send
MAX_WAITING_PER_CHAT = 8  # messages of one chat queued behind the one being answered
EMPTY_REPLY = "…"  # Telegram refuses an empty message; the model may end a reply at once
COMMANDS = {
    "start": "say hello and show my persona",
    "persona": "set my persona: /persona i am a pilot. i have two cats.",
    "card": "send a character card file (.json or .png) with the caption /card",
    "reset": "forget our conversation (the persona stays)",
}
HELP = "Commands:\n" + "\n".join(f"/{name} – {what}" for name, what in COMMANDS.items())
STORE_APOLOGY = (
    "Sorry, I cannot save our conversation right now, so that message did not reach me; "
    "please try again later."
)
CARD_CAPTION = re.compile(r"^/card(@\w+)?(\s|$)", re.IGNORECASE)

Step = Callable[[Message, str], Awaitable[list[str]]]


def session_id(chat_id: int) -> str:
    """The store's session id of a Telegram chat (a valid serve session id for any chat)."""
    return f"{SESSION_PREFIX}{chat_id}"


class StoredReply(str):
    """A reply text that is stored as message ``seq`` of its session: marked delivered once
    Telegram accepts it."""

    seq: int

    def __new__(cls, text: str, seq: int) -> StoredReply:
        reply = super().__new__(cls, text)
        reply.seq = seq
        return reply


def persona_text(personality: list[str]) -> str:
    return "\n".join(f"• {sentence}" for sentence in personality)


def command_arguments(text: str) -> str:
    """What follows the command word of ``/persona@bot i like tea.`` (every line of it)."""
    parts = text.split(maxsplit=1)
    return parts[1] if len(parts) > 1 else ""


def addressed_elsewhere(text: str, username: str | None) -> bool:
    """Whether a command names another bot (``/help@OtherBot`` in a group)."""
    word = text.split(maxsplit=1)[0] if text.strip() else ""
    _, at, name = word.partition("@")
    return bool(at) and username is not None and name.lower() != username.lower()


class ChatQueues(KeyedLocks):
    """One lock per chat (serve's ``KeyedLocks``), held while one of its messages is answered,
    that also says when more than ``limit`` messages hold or wait for it."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def full(self, key: str) -> bool:
        return self.users(key) > self.limit


class PersonaBot:
    """The handlers of a persona bot over a ``ChatService`` (started by its caller).

    ``persona``: the persona of a new chat; None: one drawn from the model's personas.
    """

    def __init__(
        self,
        service: ChatService,
        persona: list[str] | None = None,
        retries: tuple[float, ...] = SEND_RETRIES,
    ) -> None:
        self.service, self.store = service, service.store
        self.persona, self.retries = persona, retries
        self.chats = ChatQueues(MAX_WAITING_PER_CHAT)
        self.card_limits = CardLimits.from_settings(service.settings)

    def handlers(self) -> list[BaseHandler]:
        """The handlers in the order they are tried: the commands, a card file, any other
        command, text, then anything else (stickers, photos, voice…)."""
        steps: list[tuple[filters.BaseFilter | str, Step]] = [
            ("start", self.greet),
            ("help", self.greet),
            ("persona", self.set_persona),
            ("reset", self.reset),
            ("card", self.card),
            (filters.Document.ALL & filters.CaptionRegex(CARD_CAPTION), self.card),
            (filters.COMMAND, self.unknown_command),
            (filters.TEXT, self.turn),
            (filters.ALL, self.not_text),
        ]
        return [
            CommandHandler(when, self._handler(step))
            if isinstance(when, str)
            else MessageHandler(when, self._handler(step))
            for when, step in steps
        ]

    def _handler(self, step: Step) -> Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable]:
        async def handle(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            await self.answer(update, step)

        return handle

    async def answer(self, update: Update, step: Step) -> None:
        """Run ``step`` for the update's message in its chat's turn, then send its answers;
        a refusal (limits, a broken card…) is sent as the answer instead."""
        message = update.effective_message
        if message is None or update.effective_chat is None:
            return
        key = session_id(update.effective_chat.id)
        if self.chats.full(key):
            await self.send(message, ["I am still answering your earlier messages; wait a moment."])
            return
        async with self.chats.hold(key):
            try:
                texts = await step(message, key)
            except StoreError as err:  # the chat hears an apology; the log has the path
                log.error("chat %s: the session store refused a write: %s", key, err)
                texts = [STORE_APOLOGY]
            except RequestError as err:
                texts = [refusal(err)]
            except CardError as err:
                texts = [f"I cannot use that card: {err}"]
            await self.send(message, texts)

    async def send(self, message: Message, texts: list[str]) -> None:
        """Send ``texts`` to the message's chat in order; a stored reply is marked delivered
        once accepted. A text that cannot be sent (after the retries) ends the sending: the
        reply stays undelivered and goes out with ``deliver_pending``."""
        key = session_id(message.chat_id)
        for text in texts:
            if not await self.deliver(message.get_bot(), message.chat_id, key, text):
                return

    async def deliver(self, bot, chat_id: int, key: str, text: str) -> bool:
        """``sendMessage``, tried again after each of ``self.retries`` seconds (or as long
        as a RetryAfter asks) while it fails for a passing reason; True once accepted. A
        chat that refuses for good (blocked bot, deleted chat) gives the reply up."""
        for wait in (*self.retries, None):
            try:
                await bot.send_message(chat_id, text[: MessageLimit.MAX_TEXT_LENGTH])
            except (BadRequest, Forbidden, InvalidToken) as err:  # will never be accepted
                log.warning("chat %s refuses the reply for good: %s", chat_id, err)
                await self._delivered(key, text, given_up=True)
                return False
            except TelegramError as err:  # network, Telegram's 5xx, flood control
                if wait is None:
                    log.warning("chat %s: the reply is kept for later (%s)", chat_id, err)
                    return False
                delay = err.retry_after if isinstance(err, RetryAfter) else wait
                if isinstance(delay, timedelta):
                    delay = delay.total_seconds()
                await asyncio.sleep(delay)
            else:
                await self._delivered(key, text)
                return True
        return False

    async def _delivered(self, key: str, text: str, given_up: bool = False) -> None:
        if isinstance(text, StoredReply):
            try:
                await asyncio.to_thread(self.store.mark_delivered, key, text.seq, given_up)
            except StoreError as err:  # sent all the same; offered again after a restart
                log.error("chat %s: reply %d not marked delivered: %s", key, text.seq, err)

    async def deliver_pending(self, bot) -> int:
        """Send the replies stored but never accepted by Telegram (the bot was stopped, or
        Telegram unreachable, before they went out), each in its chat's turn; how many
        went out."""
        sent = 0
        for key, seq, text in await asyncio.to_thread(self.store.undelivered):
            chat = key.removeprefix(SESSION_PREFIX)
            if not chat.lstrip("-").isdigit():
                continue
            async with self.chats.hold(key):
                sent += await self.deliver(bot, int(chat), key, StoredReply(text, seq))
        return sent

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A handler failed on something that is not the chat's fault: log it, tell the chat."""
        log.error("handling an update failed", exc_info=context.error)
        if isinstance(update, Update) and update.effective_chat is not None:
            with suppress(TelegramError):
                await context.bot.send_message(
                    update.effective_chat.id,
                    "Sorry, something went wrong on my side; please send that again.",
                )

    # ---------------------------------------------------------------- sessions
    async def session(self, key: str) -> Session:
        """The chat's session (persona only), created with the default persona if new."""
        try:
            return self.store.get(key, 0)  # a WAL read: well under a millisecond
        except SessionNotFound:
            pass
        try:
            personality = await self.service.personality(self.persona)
        except RequestError as err:
            if err.code != "no_personas":
                raise
            raise RequestError(
                422,
                "no_persona",
                "I have no persona yet (this model has none saved beside it): "
                "give me one with /persona i like tea. i have a dog.",
            ) from None
        return await asyncio.to_thread(self.store.start_over, key, personality)

    # ---------------------------------------------------------------- steps
    async def greet(self, message: Message, key: str) -> list[str]:
        session = await self.session(key)
        return [
            f"Hi! I am a persona bot. My persona:\n{persona_text(session.personality)}\n\n{HELP}"
        ]

    async def set_persona(self, message: Message, key: str) -> list[str]:
        """``/persona s1. s2.``: a new persona; the conversation goes on (as serve's
        ``PUT /v1/sessions/{id}``); ``/reset`` starts it over."""
        sentences = split_sentences(command_arguments(message.text or ""))
        if not sentences:
            session = await self.session(key)
            return [
                f"My persona:\n{persona_text(session.personality)}\n\nTo change it, write "
                "/persona and a few short sentences, e.g. /persona i am a pilot. i love cats."
            ]
        personality = clean_personality(sentences, self.service.settings)
        try:
            await asyncio.to_thread(self.store.set_personality, key, personality)
        except SessionNotFound:  # a new chat starts with this persona
            await asyncio.to_thread(self.store.start_over, key, personality)
        return [
            f"My new persona (our conversation goes on; /reset starts it over):\n"
            f"{persona_text(personality)}"
        ]

    async def reset(self, message: Message, key: str) -> list[str]:
        session = await self.session(key)
        await asyncio.to_thread(
            self.store.start_over, key, session.personality, None, session.lorebook
        )
        return [
            f"I forgot our conversation. My persona stays:\n{persona_text(session.personality)}"
        ]

    async def card(self, message: Message, key: str) -> list[str]:
        """A character card (sent with the caption ``/card``, or answered with ``/card``)
        becomes the persona; the conversation starts over with the card's first message."""
        document = message.document or (
            message.reply_to_message.document if message.reply_to_message else None
        )
        if document is None:
            return [
                "Send a character card file (Character Card V2 .json or .png) with the caption "
                "/card, or answer a card file with /card. Send it as a file, not as a photo: "
                "Telegram re-encodes photos and drops the card inside."
            ]
        name = document.file_name or "the card"
        data = await download(document, name)
        user = message.from_user.first_name if message.from_user else "User"
        # Parsing a card (inflating a PNG, filling macros) is CPU work: off the event loop,
        # so the other chats' messages are not held up behind it.
        card = await asyncio.to_thread(parse_card, data, name, user, self.card_limits)
        personality = clean_personality(card.personality, self.service.settings)
        # The lorebook is stored with the chat: its entries keep firing after a restart.
        lorebook = Lorebook.of(card).to_json()
        await asyncio.to_thread(
            self.store.start_over, key, personality, card.first_message, lorebook
        )
        intro = f"I am {card.name} now; our conversation starts over. My persona:\n"
        return [
            intro + persona_text(personality),
            *([card.first_message] * bool(card.first_message)),
        ]

    async def turn(self, message: Message, key: str) -> list[str]:
        """Plain text: the bot's reply, decoded in a batch with other chats' messages."""
        text = clean_text(message.text or "", self.service.settings)
        await self.session(key)
        # Telegram's message id as the client id: an update delivered again (the bot was
        # stopped before confirming it) gets the stored reply, not a second turn.
        task = await self.service.start_turn(key, text, f"telegram-message-{message.message_id}")
        with suppress(TelegramError):  # only a courtesy: the reply matters
            await message.get_bot().send_chat_action(message.chat_id, ChatAction.TYPING)
        result = await task
        return [StoredReply(result["reply"] or EMPTY_REPLY, result["messages"][1]["seq"])]

    async def unknown_command(self, message: Message, key: str) -> list[str]:
        text = message.text or ""
        if addressed_elsewhere(text, message.get_bot().username):
            return []
        return [f"I do not know the command {text.split(maxsplit=1)[0]}.\n{HELP}"]

    async def not_text(self, message: Message, key: str) -> list[str]:
        if message.document is not None:
            return ["To use this file as a character card, send it again with the caption /card."]
        if message.photo and CARD_CAPTION.match(message.caption or ""):
            return [
                "Send the card as a file, not as a photo: Telegram re-encodes photos and "
                "drops the card inside."
            ]
        return ["I can only read text messages. Write to me, or use a command.\n" + HELP]


async def download(document: Document, name: str) -> bytes:
    """The bytes of a file sent to the bot (getFile, then the file's URL); a file too large
    to be a card is refused before it is downloaded."""
    if document.file_size is not None and document.file_size > MAX_CARD_BYTES:
        raise CardError(
            f"{name}: the file is {document.file_size:,} bytes, more than the "
            f"{MAX_CARD_BYTES:,} a card may have; send the card as JSON or a smaller PNG"
        )
    try:
        file = await document.get_file()
        return bytes(await file.download_as_bytearray())
    except TelegramError as err:
        raise CardError(
            f"{name}: the file could not be downloaded ({err}); send it again"
        ) from None


def refusal(err: RequestError) -> str:
    """A refused message or persona, told in the chat (a reply the store could not keep:
    an apology; ``store_refusal`` logged the database's path)."""
    if err.code == "no_persona":  # not a refusal: the bot's own message
        return err.message
    if err.code in ("storage_full", "storage_unavailable"):
        return STORE_APOLOGY
    return f"Sorry, I cannot take that: {err.message}"
